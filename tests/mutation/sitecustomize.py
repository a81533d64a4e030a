"""Started by Python in every server a test launches under `make mutate` (docs/mutation.md).

mutmut learns which tests reach a function from its trampolines, which record
each call in the test process's memory. A gunicorn server started by a test
(tests/support/serverproc.py) is another process: without this, its calls would be lost,
and a mutant reached only through a real server would be run against no test
at all, or only against the tests that call the function in-process.

tests/conftest.py puts this directory on PYTHONPATH and names a file in
FIBOSERVER_MUTMUT_HITS while mutmut collects its statistics (MUTANT_UNDER_TEST
is "stats"); here each function the server reaches is appended to that file
once per process, and conftest hands the names to mutmut after each test.
Outside that phase this module does nothing.
"""

from __future__ import annotations

import os


def _report_hits(path: str) -> None:
    try:
        from mutmut.mutation import trampoline
    except ImportError:  # another program's interpreter (checkov's venv, ...)
        return
    seen: set[str] = set()
    # Opened once, at the first hit (in the master, before it forks): a worker
    # that has run out of descriptors on purpose (tests/test_hostile.py) still
    # records what it reaches there.
    fd = -1

    def record(name: str, caller: str | None = None) -> None:
        nonlocal fd
        if name in seen:
            return
        seen.add(name)
        if fd < 0:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        # One short O_APPEND write per line: lines of concurrent workers never mix.
        os.write(fd, f"{name}\n".encode())

    trampoline.record_trampoline_hit = record  # type: ignore[attr-defined,unused-ignore]


_hits_file = os.environ.get("FIBOSERVER_MUTMUT_HITS")
if _hits_file and os.environ.get("MUTANT_UNDER_TEST") == "stats":
    _report_hits(_hits_file)
