"""The order in which a mutant's tests run under `make mutate` (tests/conftest.py
applies it; docs/mutation.md).

mutmut hands pytest a mutant's tests as a set, in no useful order, and stops at
the first failure. Two costs follow. Tests of one module interleaved with other
modules' set the module's fixtures (a Jaeger, a Prometheus, a server) up again
each time they come back. And a test of forty seconds may run before the one of
a millisecond that kills the mutant. So each module's tests stay together, in
the order pytest collected them (a module's tests may share a fixture's state),
and the modules run cheapest first, by the test durations mutmut recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

Item = TypeVar("Item")


def module_of(nodeid: str) -> str:
    return nodeid.partition("::")[0]


def cheapest_modules_first(
    items: Sequence[Item], nodeid: Callable[[Item], str], seconds: Mapping[str, float]
) -> list[Item]:
    """`items` grouped by module, each group in its given order, groups by their
    summed `seconds` (a test without a figure counts as free), ties by first
    appearance."""
    groups: dict[str, list[Item]] = {}
    for item in items:
        groups.setdefault(module_of(nodeid(item)), []).append(item)
    cost = {
        module: sum(seconds.get(nodeid(item), 0.0) for item in group)
        for module, group in groups.items()
    }
    ordered = sorted(groups, key=cost.__getitem__)  # sorted() is stable: ties keep their order
    return [item for module in ordered for item in groups[module]]
