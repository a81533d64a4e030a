"""`make mutate` runs a mutant's tests module by module, cheapest module first
(tests/mutation/order.py): a module's fixtures are set up once, and a quick
killing test is not kept waiting behind a slow one."""

from __future__ import annotations

from tests.mutation.order import cheapest_modules_first


def ids(items: list[str]) -> list[str]:
    return cheapest_modules_first(items, lambda nodeid: nodeid, SECONDS)


SECONDS = {
    "tests/test_slow.py::a": 30.0,
    "tests/test_slow.py::b": 0.1,
    "tests/test_quick.py::a": 0.2,
    "tests/test_quick.py::b[x-1]": 0.3,
    "tests/test_mid.py::a": 2.0,
}


def test_interleaved_modules_come_together_cheapest_first() -> None:
    given = [
        "tests/test_slow.py::a",
        "tests/test_quick.py::b[x-1]",
        "tests/test_mid.py::a",
        "tests/test_slow.py::b",
        "tests/test_quick.py::a",
    ]
    assert ids(given) == [
        "tests/test_quick.py::b[x-1]",  # a module's tests keep their given order
        "tests/test_quick.py::a",
        "tests/test_mid.py::a",
        "tests/test_slow.py::a",  # 30.1 s in all, though one of its tests is the quickest
        "tests/test_slow.py::b",
    ]


def test_a_module_without_figures_is_free_and_ties_keep_their_order() -> None:
    given = ["tests/test_mid.py::a", "tests/test_new.py::b", "tests/test_other.py::c"]
    assert ids(given) == ["tests/test_new.py::b", "tests/test_other.py::c", "tests/test_mid.py::a"]


def test_nothing_is_lost_or_repeated() -> None:
    given = list(SECONDS)
    assert sorted(ids(given)) == sorted(given)
    assert ids([]) == []
