"""The assignment map's tables (README.zh-CN.md, docs/assignment-map.md) read and
checked against the repository: GitHub's heading anchors, the tables' rows, and
every file, line, anchor and test id a row names.

A row names a place in one of three ways, each a Markdown link:
  [`keyword`](path#L12)   line 12 of `path` exists and still contains `keyword`
  [text](path.md#anchor)  `anchor` is a heading of that Markdown file
  [text](#anchor)         a heading of the file the table is in
and a test as a code span `tests/...py::test_name` (optionally `[param-id]`, or
`Class::test_name`). Paths are relative to the Markdown file, as GitHub reads them.

A row whose work is on a branch not yet merged says so in its proof cell with
`<!-- pending: <branch> <link target> -->`, the target being what the branch adds
when it is done (its README section). While that target does not resolve the row
needs no test id; once it does, the row is stale: the branch has landed and the row
must name its lines and tests instead.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import unicodedata
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from tests.support.repo import REPO_ROOT

LINK = re.compile(r"\[([^\]]*)\]\(([^)\s]+)\)")
CODE = re.compile(r"`([^`]+)`")
TEST_ID = re.compile(r"^(tests/[\w/]+\.py)::([\w:]+)(\[[^\]]+\])?$")
LINE_TARGET = re.compile(r"^(.*)#L(\d+)$")
FENCE = re.compile(r"^\s{0,3}(```|~~~)")
ATX = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
# The first header cell of a map table, in either language.
MAP_HEADERS = ("作业要求", "Requirement")
PENDING = re.compile(r"<!-- pending: (\S+) (\S+) -->")
# A proof cell with no test id and nothing pending must say why with this mark (an
# em dash): nothing here to test.
NOTHING_HERE = "\u2014"


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading's text: Markdown reduced to its text, lower
    case, every character but letters, marks, numbers, `_`, `-` and space dropped
    (full-width Chinese punctuation included, ideographs kept), spaces to `-`."""
    text = LINK.sub(r"\1", heading)
    text = text.replace("`", "").lower()
    kept = (
        c
        for c in text
        if c in "- " or unicodedata.category(c)[0] in "LMN" or unicodedata.category(c) == "Pc"
    )
    return "".join(kept).replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Every heading anchor of a Markdown text, duplicates numbered as GitHub does
    (`x`, `x-1`, `x-2`); headings inside fenced code blocks are not headings."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    fenced = False
    for line in markdown.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        heading = None if fenced else ATX.match(line)
        if heading is None:
            continue
        base = github_anchor(heading.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


@dataclass
class Row:
    """One row of a map table: the requirement, the links of its "where" cell and
    the test ids and links of its "proof" cell."""

    line: int
    requirement: str
    where: list[tuple[str, str]] = field(default_factory=list)
    tests: list[str] = field(default_factory=list)
    proof_links: list[tuple[str, str]] = field(default_factory=list)
    proof_text: str = ""
    pending: list[tuple[str, str]] = field(default_factory=list)


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def tables(markdown: str) -> list[list[Row]]:
    """The map tables of a Markdown text, in order: tables whose first header cell
    is one of MAP_HEADERS, with three columns (requirement, where, proof)."""
    found: list[list[Row]] = []
    current: list[Row] | None = None
    for number, line in enumerate(markdown.splitlines(), start=1):
        if not line.lstrip().startswith("|"):
            current = None
            continue
        row = cells(line)
        if current is None:
            if row[0] in MAP_HEADERS:
                current = []
                found.append(current)
            continue
        if set(row[0]) <= set("-: "):
            continue
        if len(row) != 3:
            raise ValueError(f"line {number}: a map row has 3 cells, this one {len(row)}")
        where, proof = row[1], row[2]
        tests = [c for c in CODE.findall(proof) if c.startswith("tests/")]
        current.append(
            Row(
                line=number,
                requirement=row[0],
                where=LINK.findall(where),
                tests=tests,
                proof_links=LINK.findall(proof),
                proof_text=proof,
                pending=PENDING.findall(proof),
            )
        )
    return found


@cache
def _collected(test_file: Path) -> frozenset[str]:
    """The node ids pytest collects from one test file (parametrized ids included)."""
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         str(test_file.relative_to(REPO_ROOT))],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        # Not a missing parameter: the file does not collect at all. Say why.
        raise RuntimeError(f"pytest --collect-only {test_file.name} failed:\n{out.stdout[-2000:]}")
    return frozenset(line.strip() for line in out.stdout.splitlines() if "::" in line)


Definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


def _definition(scope: list[ast.stmt], name: str) -> Definition | None:
    """The function or class `name` defined directly in `scope`, if any."""
    return next((n for n in scope if isinstance(n, Definition) and n.name == name), None)


def check_test_id(test_id: str, root: Path = REPO_ROOT) -> str | None:
    """None when the test exists; else what is wrong. A plain name is found in the
    file's syntax tree (module level, or `Class::name`); a `[param-id]` by pytest's
    collection, so a renamed parameter is found too."""
    match = TEST_ID.match(test_id)
    if match is None:
        return f"{test_id}: not a test id (tests/<file>.py::<name>)"
    rel, name, param = match.groups()
    path = root / rel
    if not path.is_file():
        return f"{test_id}: no file {rel}"
    scope: list[ast.stmt] = ast.parse(path.read_text(encoding="utf-8")).body
    for part in name.split("::"):
        node = _definition(scope, part)
        if node is None:
            return f"{test_id}: no {part} in {rel}"
        scope = node.body
    if param is not None and root == REPO_ROOT and test_id not in _collected(path):
        return f"{test_id}: pytest collects no such parameter from {rel}"
    return None


def check_link(target: str, text: str, md_file: Path, root: Path = REPO_ROOT) -> str | None:
    """None when a link's target exists; else what is wrong."""
    if "://" in target or target.startswith("mailto:"):
        return f"{target}: the map links only into the repository"
    path_part, _, anchor = target.partition("#")
    path = (md_file.parent / path_part).resolve() if path_part else md_file
    shown = path.relative_to(root) if path.is_relative_to(root) else path
    if not path.exists():
        return f"{target}: no such file or directory {shown}"
    if not anchor:
        return None
    line = LINE_TARGET.match(target)
    if line is not None:
        if path.suffix == ".md":
            return f"{target}: link a Markdown file by heading, not by line"
        keyword = CODE.fullmatch(text)
        if keyword is None:
            return f"{target}: a line link's text is the `keyword` the line contains"
        lines = path.read_text(encoding="utf-8").splitlines()
        number = int(line.group(2))
        if not 1 <= number <= len(lines):
            return f"{target}: {shown} has {len(lines)} lines"
        if keyword.group(1) not in lines[number - 1]:
            return f"{target}: line {number} of {shown} no longer contains `{keyword.group(1)}`"
        return None
    if path.suffix != ".md":
        return f"{target}: an anchor needs a Markdown file"
    if anchor not in anchors(path.read_text(encoding="utf-8")):
        return f"{target}: no heading #{anchor} in {shown}"
    return None


def check_row(row: Row, md_file: Path, root: Path = REPO_ROOT) -> list[str]:
    """Everything wrong with one row, each message naming the row."""
    errors: list[str] = []
    if not row.where and not row.pending:
        errors.append("no place named")
    if not row.tests and not row.pending and NOTHING_HERE not in row.proof_text:
        errors.append(f"no test id, no pending branch, and no {NOTHING_HERE} saying why")
    for branch, target in row.pending:
        if check_link(target, "", md_file, root) is None:
            errors.append(
                f"branch {branch} has landed ({target} exists): replace its pending mark "
                "with the lines and test ids it added, here and in the other language's map"
            )
    for text, target in [*row.where, *row.proof_links]:
        errors.append(check_link(target, text, md_file, root) or "")
    for test_id in row.tests:
        errors.append(check_test_id(test_id, root) or "")
    where = f"{md_file.name}:{row.line} ({row.requirement})"
    return [f"{where}: {e}" for e in errors if e]


def file_refs(row: Row, md_file: Path) -> set[str]:
    """The row's lines and tests, as repository paths: what must be the same in the
    Chinese and the English map (headings differ by language, so anchors do not count)."""
    refs = set(row.tests) | {f"pending {b} {repo_target(t, md_file)}" for b, t in row.pending}
    for _, target in [*row.where, *row.proof_links]:
        if LINE_TARGET.match(target) is not None:
            refs.add(repo_target(target, md_file))
    return refs


def repo_target(target: str, md_file: Path) -> str:
    """A link target relative to the Markdown file, as a path from the repository root."""
    path_part, sep, anchor = target.partition("#")
    path = (md_file.parent / path_part).resolve() if path_part else md_file
    return f"{path.relative_to(REPO_ROOT)}{sep}{anchor}"
