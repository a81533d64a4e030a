"""Summary of a `make mutate` run: score, and every mutant that no test killed.

Reads `mutmut results --all true` (run in the repository root after `mutmut run`)
and prints the counts per status, the score (caught / tested) and the surviving
mutants; given name patterns (a shard, `make mutate MUTATE_ONLY=...`), only
theirs. Exit status 1 when a survivor is not judged harmless in
docs/mutation.md, where each one has its reason: a new survivor is either
killed by a new test or explained there. Otherwise 3 while mutants of a
stopped run are still untested ("not checked": `make mutate` goes on with
them), so that a part of the tree does not pass for all of it. Rows of
docs/mutation.md that name no mutant of today's tree (the whole tree's, not a
shard's) are listed, to be removed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from fnmatch import fnmatchcase

from tests.support.repo import REPO_ROOT

JUDGED = REPO_ROOT / "docs" / "mutation.md"
# `mutmut results` prints "    <mutant name>: <status>".
_RESULT_LINE = re.compile(r"\s+(\S+__mutmut_\d+): (.+)")
UNTESTED = "not checked"
# A test failed, a test ran out of time, or mypy rejected the mutant (as `make lint` would).
CAUGHT = ("killed", "timeout", "caught by type check")
# In docs/mutation.md a judged survivor is a table row starting with its name in backticks.
_JUDGED_ROW = re.compile(r"^\| `(\S+__mutmut_\d+)` \|", re.MULTILINE)


def results(mutmut: str) -> dict[str, str]:
    out = subprocess.run(
        [mutmut, "results", "--all", "true"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    found = {}
    for line in out.stdout.splitlines():
        match = _RESULT_LINE.fullmatch(line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def judged_harmless() -> set[str]:
    return set(_JUDGED_ROW.findall(JUDGED.read_text())) if JUDGED.exists() else set()


def main(mutmut: str, only: list[str]) -> int:
    status = results(mutmut)
    if only:
        status = {m: s for m, s in status.items() if any(fnmatchcase(m, p) for p in only)}
    if not status:
        print("no mutmut results: run `mutmut run` first", file=sys.stderr)
        return 2
    counts = Counter(status.values())
    untested = counts[UNTESTED]
    tested = len(status) - untested
    caught = sum(counts[s] for s in CAUGHT)
    print("mutation testing of fiboserver/ (mutmut):")
    for name, count in sorted(counts.items(), key=lambda kv: -kv[1]):
        print(f"  {name:>22}: {count}")
    if tested:
        print(f"  score: {caught} caught / {tested} mutants tested = {caught / tested:.1%}")
    not_killed = sorted(m for m, s in status.items() if s not in (*CAUGHT, UNTESTED))
    harmless = judged_harmless()
    unexplained = [m for m in not_killed if m not in harmless]
    print(f"\nnot killed: {len(not_killed)}, judged harmless in docs/mutation.md: "
          f"{len(not_killed) - len(unexplained)}")  # fmt: skip
    for mutant in unexplained:
        print(f"  {status[mutant]}: {mutant}    (mutmut show {mutant})")
    stale = sorted(harmless - set(status)) if not only else []
    if stale:
        # A function changed or moved since: its mutants have new names or are gone.
        print(f"\nrows of docs/mutation.md naming no mutant of today's tree: {len(stale)}")
        for mutant in stale:
            print(f"  {mutant}")
    if untested:
        print(f"\n{untested} of {len(status)} mutants not tested yet: `make mutate` goes on")
    return 1 if unexplained else 3 if untested else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "mutmut", sys.argv[2:]))
