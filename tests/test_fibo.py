"""fibonacci_digits against a plain iterative reference.

Comparisons go through decimal.Decimal, which converts ints without Python's
4300-digit int/str limit, so this process never raises the limit: the function
under test must cope with the default limit on its own.
"""

from __future__ import annotations

import sys
from decimal import Decimal

import pytest

from fiboserver.app.fibo import fibonacci_digits
from tests.support.fibref import fib_table

SPOT = [2001, 4000, 20000, 20577, 20578, 50000, 77777, 99999, 100000]


@pytest.fixture(scope="module")
def reference() -> dict[int, int]:
    return fib_table(set(range(2001)) | set(SPOT))


def test_default_int_str_limit_is_in_force() -> None:
    # If something raised or disabled the limit for this process, the large cases
    # below would prove nothing about the service.
    assert sys.get_int_max_str_digits() == 4300


def test_known_values() -> None:
    assert fibonacci_digits(0) == "0"
    assert fibonacci_digits(1) == "1"
    assert fibonacci_digits(2) == "1"
    assert fibonacci_digits(10) == "55"
    assert fibonacci_digits(93) == "12200160415121876738"  # first one past uint64


def test_a_negative_n_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^n must be >= 0, got -1$"):
        fibonacci_digits(-1)


def test_every_n_up_to_2000(reference: dict[int, int]) -> None:
    wrong = []
    for n in range(2001):
        digits = fibonacci_digits(n)
        if not (digits.isascii() and digits.isdigit() and Decimal(digits) == reference[n]):
            wrong.append(n)
    assert wrong == []


@pytest.mark.parametrize("n", SPOT)
def test_spot_values(reference: dict[int, int], n: int) -> None:
    digits = fibonacci_digits(n)
    assert digits.isascii() and digits.isdigit()
    assert digits == str(Decimal(reference[n]))  # same digits, no leading zeros


def test_f100000_has_20899_digits() -> None:
    digits = fibonacci_digits(100000)
    assert len(digits) == 20899
    # Both ends, taken from a separate iterative computation.
    assert digits.startswith("2597406934722172416615503402127591541488")
    assert digits.endswith("0015699780289236362349895374653428746875")
