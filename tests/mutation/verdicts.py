"""mutmut's verdicts kept in the repository, so that a run in several sittings
adds up across machines (docs/mutation.md, "A run in several sittings").

mutmut keeps each mutant's verdict in `mutants/<source>.meta`, beside a hash of
its function's source, and tests again only the mutants of functions whose hash
changed. `mutants/` is scratch, gone with the machine. `save` copies the
verdicts and hashes into one JSON file; `restore` writes them back as `.meta`
files where `mutants/` has none, before `mutmut run`, which then judges for
itself which verdicts still hold. The hashes are of Python's AST and the mutant
numbers are mutmut's, so a record made under another mutmut or Python is not
restored.

    python -m tests.mutation.verdicts save|restore [RECORD]
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

from tests.support.repo import REPO_ROOT

RECORD = REPO_ROOT / "tests" / "mutation" / "verdicts.json"
MUTANTS = REPO_ROOT / "mutants"
_META = ".meta"


def producer() -> dict[str, str]:
    """What the hashes and mutant names depend on."""
    return {
        "mutmut": version("mutmut"),
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
    }


def gather(mutants: Path, made_by: dict[str, str]) -> dict[str, Any]:
    """Every `.meta` under `mutants/`: its decided verdicts and function hashes,
    by source path."""
    files = {}
    for meta_path in sorted(mutants.rglob("*.py" + _META)):
        meta = json.loads(meta_path.read_text())
        decided = {k: v for k, v in sorted(meta["exit_code_by_key"].items()) if v is not None}
        source = meta_path.relative_to(mutants).as_posix().removesuffix(_META)
        files[source] = {
            "hash_by_function_name": dict(sorted(meta["hash_by_function_name"].items())),
            "exit_code_by_key": decided,
        }
    return {"producer": made_by, "files": files}


def save(mutants: Path, record: Path, made_by: dict[str, str]) -> int:
    gathered = gather(mutants, made_by)
    if not gathered["files"]:
        print(f"no verdicts under {mutants}: nothing saved", file=sys.stderr)
        return 2
    record.write_text(json.dumps(gathered, indent=1, ensure_ascii=False) + "\n")
    count = sum(len(f["exit_code_by_key"]) for f in gathered["files"].values())
    print(f"{count} verdicts of {len(gathered['files'])} files saved to {record}")
    return 0


def restore(mutants: Path, record: Path, made_by: dict[str, str]) -> int:
    if not record.exists():
        return 0
    kept = json.loads(record.read_text())
    if kept["producer"] != made_by:
        print(f"{record} is from {kept['producer']}, not {made_by}: not restored",
              file=sys.stderr)  # fmt: skip
        return 0
    restored = 0
    for source, entry in kept["files"].items():
        meta_path = mutants / (source + _META)
        if meta_path.exists():  # this machine's own run goes on
            continue
        meta_path.parent.mkdir(parents=True, exist_ok=True)
        # The shape mutmut's SourceFileMutationData.load() reads; durations are
        # estimates it records again.
        meta = {
            "exit_code_by_key": entry["exit_code_by_key"],
            "hash_by_function_name": entry["hash_by_function_name"],
            "type_check_error_by_key": {},
            "durations_by_key": {},
            "estimated_durations_by_key": {},
        }
        meta_path.write_text(json.dumps(meta, indent=1))
        restored += len(entry["exit_code_by_key"])
    print(f"{restored} verdicts restored from {record}")
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0] not in ("save", "restore"):
        sys.exit(__doc__)
    command = save if args[0] == "save" else restore
    sys.exit(command(MUTANTS, Path(args[1]) if len(args) > 1 else RECORD, producer()))
