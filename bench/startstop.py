"""Start (process start -> first 200 on /readyz) and stop (SIGTERM -> exit), idle and loaded."""

from __future__ import annotations

import signal
import time
from typing import Any

from bench.log import log
from bench.servers import Bench
from bench.stats import median
from bench.wrk import WrkSettings, cached_load, parse_summary, start_wrk, wrk_argv


def section_start_stop(
    bench: Bench, ws: WrkSettings, start_trials: int, stop_trials: int
) -> dict[str, Any]:
    ready, idle_stop, idle_codes = [], [], []
    for i in range(start_trials):
        s = bench.server(f"startstop-{i}")
        try:
            ready.append(bench.start(s))
            time.sleep(0.5)  # idle: no request in flight, no open connection
            took, code = s.stop()
        finally:
            s.close()
        idle_stop.append(took)
        idle_codes.append(code)
        log(f"start {ready[-1]:.3f} s, idle stop {took:.3f} s (exit {code})")
    loaded_stop, loaded_codes, loaded_inflight = [], [], []
    load = cached_load(bench.prefix)
    for i in range(stop_trials):
        s = bench.server(f"loadstop-{i}")
        try:
            bench.start(s)
            # No --timeout: wrk's default (2 s).
            client = start_wrk(wrk_argv(s.port, load, ws.threads, ws.connections, 30))
            time.sleep(2.0)  # under full load by now
            took, code = s.stop()
            client.send_signal(signal.SIGINT)  # wrk prints its summary on SIGINT
            client_out, _ = client.communicate(timeout=30)
        finally:
            s.close()
        loaded_stop.append(took)
        loaded_codes.append(code)
        loaded_inflight.append(parse_summary(client_out) or {})
        log(f"stop under load {took:.3f} s (exit {code})")
    return {
        "ready_s": median(ready),
        "ready_samples": ready,
        "idle_stop_s": median(idle_stop),
        "idle_stop_samples": idle_stop,
        "idle_exit_codes": idle_codes,
        "loaded_stop_s": median(loaded_stop),
        "loaded_stop_samples": loaded_stop,
        "loaded_exit_codes": loaded_codes,
        "loaded_client_summaries": loaded_inflight,
    }
