"""The tests' Fibonacci oracle: F(n) by plain addition from F(0) = 0, F(1) = 1, the
definition itself, sharing nothing with fiboserver's fast doubling."""

from __future__ import annotations

from collections.abc import Iterable


def fib_table(values: Iterable[int]) -> dict[int, int]:
    """F(n) for every n in `values`, in one walk up to the largest."""
    keep = set(values)
    out: dict[int, int] = {}
    a, b = 0, 1
    for n in range(max(keep) + 1):
        if n in keep:
            out[n] = a
        a, b = b, a + b
    return out


def fib(n: int) -> int:
    return fib_table([n])[n]
