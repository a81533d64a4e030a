"""The KQL of the Kibana saved searches (k8s/logging/kibana/saved-objects.ndjson) as
OpenSearch query DSL, so the real engine runs them (issue 19), and as a predicate
over records, so a test knows which records each search must find.

Kibana itself is not here; this is a translator for the simple forms the searches
use, and it refuses (UnsupportedKql) anything else rather than guess:

- ``field : "text"``                  -> match_phrase (as Kibana sends it)
- ``field : ("a" or "b" or ...)``     -> bool.should of match_phrase, one must match
- ``field : *``                       -> exists
- ``field > 1.5`` (``>=``, ``<``, ``<=``, numbers only) -> range
- ``clause and clause and ...``       -> bool.filter of the clauses

Not supported (an error, never a silent mistranslation): ``or`` or ``not`` between
clauses, parentheses around clauses, unquoted values and wildcards inside values,
nested-field syntax ``a:{b:...}``, ranges on dates or strings.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.support.logpipeline import leaves

TOKEN = re.compile(
    r'\s*(?:(?P<string>"(?:[^"\\]|\\.)*")|(?P<op><=|>=|<|>|:)|(?P<paren>[()])'
    r"|(?P<star>\*)|(?P<number>-?\d+(?:\.\d+)?(?![\w.]))|(?P<word>[A-Za-z_@][\w.@/-]*))"
)
RANGE_OPS: dict[str, tuple[str, Callable[[float, float], bool]]] = {
    ">": ("gt", lambda a, b: a > b),
    ">=": ("gte", lambda a, b: a >= b),
    "<": ("lt", lambda a, b: a < b),
    "<=": ("lte", lambda a, b: a <= b),
}


class UnsupportedKql(ValueError):
    """A KQL form this translator does not handle (see the module's list)."""


@dataclass(frozen=True)
class Phrase:
    field: str
    values: tuple[str, ...]  # any of them


@dataclass(frozen=True)
class Exists:
    field: str


@dataclass(frozen=True)
class Range:
    field: str
    op: str
    bound: float


Clause = Phrase | Exists | Range


def tokens(query: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    query = query.rstrip()
    while pos < len(query):
        m = TOKEN.match(query, pos)
        if m is None or m.end() == pos:
            raise UnsupportedKql(f"cannot read {query[pos:]!r} in {query!r}")
        kind = m.lastgroup
        assert kind is not None
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def unquote(text: str) -> str:
    body = text[1:-1]
    return re.sub(r"\\(.)", r"\1", body)


def parse(query: str) -> list[Clause]:
    """The clauses of `query`, joined by `and`."""
    toks = tokens(query)
    clauses: list[Clause] = []
    i = 0
    while True:
        clause, i = _clause(toks, i, query)
        clauses.append(clause)
        if i == len(toks):
            return clauses
        kind, text = toks[i]
        if kind != "word" or text.lower() != "and":
            raise UnsupportedKql(f"only `and` may join clauses, got {text!r} in {query!r}")
        i += 1


def _clause(toks: list[tuple[str, str]], i: int, query: str) -> tuple[Clause, int]:
    def at(j: int) -> tuple[str, str]:
        if j >= len(toks):
            raise UnsupportedKql(f"{query!r} ends early")
        return toks[j]

    kind, field = at(i)
    if kind != "word" or field.lower() in {"and", "or", "not"}:
        raise UnsupportedKql(f"expected a field name, got {field!r} in {query!r}")
    kind, op = at(i + 1)
    if kind != "op":
        raise UnsupportedKql(f"expected an operator after {field!r} in {query!r}")
    kind, value = at(i + 2)
    if op in RANGE_OPS:
        if kind != "number":
            raise UnsupportedKql(f"ranges on numbers only, got {value!r} in {query!r}")
        return Range(field, op, float(value)), i + 3
    if kind == "star":
        return Exists(field), i + 3
    if kind == "string":
        return Phrase(field, (unquote(value),)), i + 3
    if kind == "paren":
        return _alternatives(toks, i + 3, field, query)
    raise UnsupportedKql(f"unquoted value {value!r} in {query!r}")


def _alternatives(
    toks: list[tuple[str, str]], i: int, field: str, query: str
) -> tuple[Clause, int]:
    values: list[str] = []
    while True:
        if i >= len(toks) or toks[i][0] != "string":
            raise UnsupportedKql(f"expected a quoted value in (...) of {query!r}")
        values.append(unquote(toks[i][1]))
        if i + 1 < len(toks) and toks[i + 1] == ("paren", ")"):
            return Phrase(field, tuple(values)), i + 2
        if i + 1 >= len(toks) or toks[i + 1][1].lower() != "or":
            raise UnsupportedKql(f"only `or` between values in (...) of {query!r}")
        i += 2


def to_dsl(clauses: list[Clause]) -> dict[str, Any]:
    """OpenSearch's query for the clauses (filter context: Discover sorts, not scores)."""
    out: list[dict[str, Any]] = []
    for c in clauses:
        if isinstance(c, Phrase):
            phrases = [{"match_phrase": {c.field: v}} for v in c.values]
            out.append(
                phrases[0]
                if len(phrases) == 1
                else {"bool": {"should": phrases, "minimum_should_match": 1}}
            )
        elif isinstance(c, Exists):
            out.append({"exists": {"field": c.field}})
        else:
            out.append({"range": {c.field: {RANGE_OPS[c.op][0]: c.bound}}})
    return {"bool": {"filter": out}}


def matches(clauses: list[Clause], record: dict[str, Any]) -> bool:
    """Whether `record` (as indexed: nested objects, dotted paths) satisfies every
    clause, phrases taken as whole-value equality (the fields queried are keywords)."""
    fields: dict[str, list[Any]] = {}
    for path, value in leaves(record):
        if value is not None:
            fields.setdefault(path, []).append(value)
    for c in clauses:
        values = fields.get(c.field, [])
        if isinstance(c, Phrase):
            ok = any(v in c.values for v in values)
        elif isinstance(c, Exists):
            ok = bool(values)
        else:
            compare = RANGE_OPS[c.op][1]
            ok = any(
                isinstance(v, int | float) and not isinstance(v, bool) and compare(v, c.bound)
                for v in values
            )
        if not ok:
            return False
    return True
