"""Instructions per cached WSGI call, counted by callgrind: an A/B other load cannot disturb.

On a shared machine a timing moves by tens of percent from one minute to the
next; the number of instructions the interpreter executes does not. This runs
the PROD app's WSGI callable (logging configured as under gunicorn, records to a
file, metrics into PROMETHEUS_MULTIPROC_DIR files) under valgrind's callgrind
twice, for CALLS and for 3 x CALLS cached requests, and prints the difference
per request: start-up cancels out. With `metrics: on` and `off`. Counts user-space
instructions only: a system call costs one (the kernel's work is not counted).

    .venv/bin/python -m bench.instructions [--calls 1000] [--ref COMMIT]

`--ref` counts the app as it was at an older commit too (`git archive`, as
bench/compare.py extracts it), with this checkout's interpreter and packages.
About a minute per figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging.config
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.compare import tree_at
from tests.support.repo import REPO_ROOT


def serve(calls: int, metrics: bool) -> None:
    """In the child under callgrind: `calls` cached requests."""
    import yaml

    from bench.hotpath import environ_for
    from bench.servers import PROD_CONFIG

    tmp = Path(tempfile.mkdtemp(prefix="fiboserver-instructions-"))
    config_path = tmp / "prod.yaml"
    config_path.write_text(yaml.safe_dump(yaml.safe_load(PROD_CONFIG.read_text())))
    (tmp / "metrics").mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(tmp / "metrics")
    from fiboserver.app import create_app
    from fiboserver.config import load_config
    from fiboserver.logs import logconfig_dict

    config = load_config(str(config_path))
    if not metrics:
        config = dataclasses.replace(config, metrics_port=0)
    sys.stdout = open(tmp / "records.log", "w")  # noqa: SIM115 (until the process ends)
    logging.config.dictConfig(logconfig_dict(config.loglevel))
    app: Any = create_app(config)  # called as gunicorn calls it, with a dummy start_response

    def start_response(*_: object) -> None:
        pass

    for _ in range(calls):
        body = app(environ_for(f"{config.prefix}/fibo", "n=30"), start_response)
        for _chunk in body:
            pass
        body.close()


def counted(tree: Path, calls: int, metrics: bool) -> int:
    """Instructions callgrind counts for the whole child process."""
    # Run from `tree`: its packages (the app's, bench's) are the ones imported.
    argv = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable]
    argv += ["-m", "bench.instructions", "--serve", str(calls), "on" if metrics else "off"]
    out = subprocess.run(argv, cwd=tree, capture_output=True, text=True, check=True)
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None:
        raise RuntimeError(f"no count from callgrind: {out.stderr[-500:]}")
    return int(found.group(1))


def per_request(tree: Path, calls: int, metrics: bool) -> float:
    return (counted(tree, 3 * calls, metrics) - counted(tree, calls, metrics)) / (2 * calls)


def report(tree: Path, calls: int, name: str) -> None:
    on = per_request(tree, calls, metrics=True)
    off = per_request(tree, calls, metrics=False)
    print(
        f"{name}: {on / 1000:.1f}k instructions per cached request with metrics on, "
        f"{off / 1000:.1f}k off: metrics {(on - off) / 1000:.1f}k ({(on - off) / on:.1%})"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=1000)
    p.add_argument("--ref", help="an older commit to count as well")
    p.add_argument("--serve", nargs=2, metavar=("CALLS", "METRICS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(int(args.serve[0]), args.serve[1] == "on")
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: apt-get install -y valgrind", file=sys.stderr)
        return 2
    if args.ref:
        with tempfile.TemporaryDirectory(prefix="fiboserver-instructions-") as tmp:
            tree = tree_at(args.ref, Path(tmp))
            shutil.copy(Path(__file__), tree / "bench" / "instructions.py")
            report(tree, args.calls, args.ref)
    report(REPO_ROOT, args.calls, "working tree")
    return 0


if __name__ == "__main__":
    sys.exit(main())
