"""The pinned helm (binaries.HELM): `python -m tools.cluster.helm` prints the path of
the cached binary; with --build it builds it first when it is not cached (the
first time on a machine: minutes; README "Install with Helm")."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tools.cluster.binaries import GO, HELM, build


def main(argv: list[str]) -> int:
    if "--build" in argv and not HELM.cached():
        if not Path(GO).is_file():
            print(f"make helm: needs Go 1.26 or newer ({GO} not found)", file=sys.stderr)
            return 1
        log = HELM.bindir.with_name(HELM.bindir.name + ".log")
        print(f"helm: building {HELM.version} (first time on this machine; log {log})",
              file=sys.stderr, flush=True)  # fmt: skip
        t0 = time.monotonic()
        build(HELM, log)
        print(f"helm: built in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    print(HELM.path("helm"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
