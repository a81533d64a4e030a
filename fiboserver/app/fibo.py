"""Fibonacci numbers, exact, as decimal digits.

Fast doubling needs O(log n) steps. It runs on `decimal.Decimal` integers
rather than `int` because the answer is wanted in base 10: CPython's int-to-str
conversion is quadratic and refuses numbers over 4300 digits unless the limit
is raised for the whole process, while libmpdec multiplies large numbers with a
number-theoretic transform and prints them in linear time. Every operation
below is exact: the context's precision exceeds the digits of F(n+1).
"""

from __future__ import annotations

import decimal
import math

# log10 of the golden ratio: F(n) has about n * _LOG10_PHI digits.
_LOG10_PHI = math.log10((1 + math.sqrt(5)) / 2)
_ZERO = decimal.Decimal(0)
_ONE = decimal.Decimal(1)


def fibonacci_digits(n: int) -> str:
    """F(n) in base 10, with F(0) = 0 and F(1) = 1."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n < 2:
        return str(n)
    ctx = decimal.Context(prec=int(n * _LOG10_PHI) + 16, traps=[decimal.Inexact])
    mul, add, sub = ctx.multiply, ctx.add, ctx.subtract
    # Invariant: (a, b) == (F(k), F(k+1)) for k = the bits of n read so far.
    a, b = _ZERO, _ONE
    bits = bin(n)[2:]
    for bit in bits[:-1]:
        # F(2k) = F(k) * (2F(k+1) - F(k));  F(2k+1) = F(k)^2 + F(k+1)^2
        a, b = mul(a, sub(add(b, b), a)), add(mul(a, a), mul(b, b))
        if bit == "1":
            a, b = b, add(a, b)
    # The last step needs F(n) alone, which saves the largest multiplication.
    if bits[-1] == "1":
        return str(add(mul(a, a), mul(b, b)))
    return str(mul(a, sub(add(b, b), a)))
