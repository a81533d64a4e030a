"""What the worker costs on the cached path: the service with the worker it had
before (gthread-based DrainingThreadWorker, at WORKER_BEFORE) and with today's
(fiboserver.worker.RequestThreadWorker), each against the same ceiling in the
same rounds. Issue 12's budget: probe isolation and shedding cost at most 3 %.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.compare import tree_at
from bench.pairs import measure_pair, round_ratio
from bench.servers import CEILING, SAME_SETTINGS, SERVICE, Bench
from bench.wrk import WrkSettings, cached_load

# The last commit of main whose worker is gthread's plus the SIGTERM drain
# (metrics on, as today, so only the worker differs).
WORKER_BEFORE = "810cb8a"
# At most this much of the cached ratio to the ceiling may go (issue 12).
WORKER_COST_BUDGET = 0.03


def section_worker_cost(bench: Bench, ws: WrkSettings, before: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fiboserver-worker-before-") as tmp:
        old_tree = tree_at(before, Path(tmp))
        after_variant = replace(SERVICE, label="worker after")
        before_variant = replace(SERVICE, label="worker before", cwd=old_tree)
        # The ceiling runs the old tree's gunicorn settings: the reference the
        # published cached ratio was measured against.
        ceiling = replace(CEILING, cwd=old_tree)
        result, _ = measure_pair(
            bench,
            "worker",
            after_variant,
            before_variant,
            cached_load(bench.prefix),
            ws,
            others=[ceiling],
            same_settings=[k for k in SAME_SETTINGS if k != "worker_class"],
        )
    rounds = result["rounds"]
    result["before_ref"] = before
    result["ratio_before"] = round_ratio(rounds, before_variant.label, ceiling.label)
    result["ratio_after"] = round_ratio(rounds, after_variant.label, ceiling.label)
    result["cost"] = 1 - result["ratio_after"] / result["ratio_before"]
    return result
