"""Big n, cold: compute + serialize F(n) in a fresh interpreter against a plain iterative loop."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from bench.log import log
from bench.stats import median
from tests.support.repo import REPO_ROOT

_BIG_N_PROBE = r"""
import json, sys, time
n = int(sys.argv[1])
sys.set_int_max_str_digits(0)
from fiboserver.app.fibo import fibonacci_digits
t0 = time.perf_counter()
fast = fibonacci_digits(n)
t1 = time.perf_counter()
a, b = 0, 1
for _ in range(n):
    a, b = b, a + b
loop = str(a)
t2 = time.perf_counter()
assert fast == loop, "fibonacci_digits disagrees with the iterative loop"
print(json.dumps({"fast_s": t1 - t0, "loop_s": t2 - t1, "digits": len(fast)}))
"""


def section_big_n(samples_per_n: int) -> dict[str, Any]:
    """Cold: each sample is the first call in a fresh interpreter (nothing cached)."""
    out: dict[str, Any] = {}
    for n in (1_000, 10_000, 100_000):
        samples = []
        for _ in range(samples_per_n):
            text = subprocess.run(
                [sys.executable, "-c", _BIG_N_PROBE, str(n)],
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            ).stdout
            samples.append(json.loads(text))
        fast = median([s["fast_s"] for s in samples])
        loop = median([s["loop_s"] for s in samples])
        out[str(n)] = {
            "digits": samples[0]["digits"],
            "fibonacci_digits_ms": fast * 1000,
            "iterative_loop_ms": loop * 1000,
            "speedup": median([s["loop_s"] / s["fast_s"] for s in samples]),
            "samples": samples,
        }
        log(f"big n {n}: {fast * 1000:.2f} ms vs loop {loop * 1000:.1f} ms")
    return out
