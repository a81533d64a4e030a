"""Command line of the local cluster: `python -m tools.cluster up|down|check`
(the Makefile's cluster-up and cluster-down; README "Run it on a real cluster")."""

from __future__ import annotations

import sys
import time

from tools.cluster.down import down, leftovers
from tools.cluster.up import up


def main(argv: list[str]) -> int:
    cmd = argv[1] if len(argv) > 1 else ""
    t0 = time.monotonic()
    if cmd == "up":
        return up()
    if cmd in ("down", "check"):
        left = down() if cmd == "down" else leftovers()
        if left:
            print("cluster: left behind:\n  " + "\n  ".join(left), file=sys.stderr)
            return 1
        if cmd == "down":
            print(f"cluster: nothing left behind ({time.monotonic() - t0:.1f} s)")
        return 0
    print("usage: python -m tools.cluster up|down|check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
