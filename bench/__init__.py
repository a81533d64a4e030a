"""Benchmark harness for fiboserver: `make bench` (README "Performance").

The modules, by concern:
  run         the CLI (`python -m bench.run`): options, the sections to run, results
  servers     PROD config, server variants (service, ceiling, Flask floor), checks
              that a comparison is fair; servers start through tests/serverproc.py
  wrk         the wrk client: command line, summary parsing, lopsided runs
  procstat    CPU and memory of processes and of the machine, from /proc
  pairs       alternating rounds of two (or more) servers under one load; ratios
  throughput  the cached and uncached pairs against the ceiling
  bign        cold F(n) against the iterative loop
  startstop   ready time, idle and loaded stop time
  memory      worker RSS over walks of large n against cache_max_bytes
  report      targets, notes and the Markdown of latest.md; writing results
  compare, profile, hotpath  tools for one question each (their docstrings)
  ceiling, flask_floor       the apps the service is compared with
"""

import sys
from pathlib import Path

# tests/serverproc.py is THE helper that starts a real server, for tests, e2e and the
# benchmark alike. tests/ is not a package: put it on the path, as pytest does.
_TESTS = str(Path(__file__).resolve().parent.parent / "tests")
if _TESTS not in sys.path:
    sys.path.append(_TESTS)
