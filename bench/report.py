"""The results: latest.md's Markdown (targets from bench.targets, notes on the
unmet), and the files."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import tracing_cost
from bench.metrics_cost import BUDGET_RATIO, METRICS_OFF, METRICS_ON
from bench.overload import overload_markdown
from bench.pairs import cores_text
from bench.proxy import proxy_markdown
from bench.stats import median
from bench.targets import targets
from bench.worker_cost import WORKER_COST_BUDGET


def fmt_ms(x: float) -> str:
    return f"{x:.2f}"


def verdict(ok: bool) -> str:
    return "met" if ok else "**NOT met**"


def distribution(r: dict[str, Any], labels: Sequence[str]) -> list[str]:
    """Every round counts (none is measured again): the worst beside the median,
    and each run's CPU per worker, in cores."""
    lines = [
        f"Over the {len(r['rounds'][labels[0]])} rounds: ratio {r['rps_ratio']:.2f} median, "
        f"{r['rps_ratio_worst']:.2f} worst; p99 ratio {r['p99_ratio']:.2f} median, "
        f"{r['p99_ratio_worst']:.2f} worst; rounds with a worker idle (under a quarter "
        f"of its server's CPU): {r['idle_round_share']:.0%}.",
        "",
        "| | worst req/s | worst p99 ms | CPU per worker, each run (cores) |",
        "|---|---|---|---|",
    ]
    for label in labels:
        s = r[label]
        lines.append(
            f"| {label} | {s['rps_worst']:.0f} | {s['p99_ms_worst']:.2f} | "
            f"{cores_text(s['worker_cores'])} |"
        )
    return [*lines, ""]


def samples_row(what: str, samples: Sequence[float]) -> str:
    shown = ", ".join(f"{x:.3f}" for x in samples)
    return f"| {what} | {median(samples):.3f} | {shown} |"


def notes(res: dict[str, Any]) -> list[str]:
    """What a reader of an unmet target needs next to it."""
    out = []
    c = res.get("cached")
    if c and c["rps_ratio"] < 0.5:
        line = (
            f"Cached throughput is {c['rps_ratio']:.2f} of the ceiling, short of 0.5. "
            "Where a worker's time goes: bench/results/profile-cached.txt "
            "(`.venv/bin/python -m bench.profile`)."
        )
        floor = c.get("flask floor")
        if floor:
            floor_ratio = floor["rps"] / c["ceiling"]["rps"]
            line += (
                f" A plain Flask app with no logging reaches {floor_ratio:.2f}"
                " on its own, so 0.5 would leave the service's features (request id, two JSON"
                " records, validation, cache) almost nothing; README, Performance."
            )
        out.append(line)
    return out


def header(res: dict[str, Any]) -> list[str]:
    m = res["machine"]
    st = res["settings"]
    return [
        f"# fiboserver benchmark, {res['finished']}",
        "",
        f"Machine: {m['cores']} cores ({m['cpu_model']}), Linux {m['kernel']}, "
        f"Python {m['python']}, gunicorn {m['gunicorn']}, Flask {m['flask']}, {m['wrk']}; "
        f"commit {m['git_commit']}.",
        f"Load average before/after: {' '.join(f'{x:.2f}' for x in m['loadavg_before'])} / "
        f"{' '.join(f'{x:.2f}' for x in m['loadavg_after'])}.",
        f"Command: `{res['command']}`. wrk: {st['wrk_threads']} thread, "
        f"{st['connections']} connections, {st['duration_s']:g} s per run after "
        f"{st['warmup_s']:g} s warm-up, {st['rounds']} rounds "
        "alternating fiboserver, ceiling (and, cached, the Flask floor); medians. "
        "The load average includes the benchmark's own processes; "
        "'other load' below is what the rest of the machine used during the runs.",
        "",
    ]


def targets_section(res: dict[str, Any]) -> list[str]:
    rows = targets(res)
    if not rows:
        return []
    return [
        "## Targets",
        "",
        "| target | measured | |",
        "|---|---|---|",
        *[f"| {t} | {v} | {verdict(ok)} |" for t, v, ok in rows],
        "",
    ]


def floor_paragraph(r: dict[str, Any]) -> list[str]:
    """Where the cached section's server CPU goes: Flask, then the service's features."""
    floor, ceil, svc = r["flask floor"], r["ceiling"], r["fiboserver"]
    cpu_key = "server_cpu_us_per_req"
    flask_us = floor[cpu_key] - ceil[cpu_key]
    features_us = svc[cpu_key] - floor[cpu_key]
    return [
        "Ratio is fiboserver / ceiling (median of the rounds' ratios). The Flask floor "
        "(bench/flask_floor.py: a plain Flask app, same gunicorn settings, no logging) "
        f"reaches {floor['rps'] / ceil['rps']:.2f} of the ceiling by itself; "
        f"fiboserver reaches {svc['rps'] / floor['rps']:.2f} of the floor. Server CPU per "
        f"request: Flask adds {flask_us:.0f} us to the ceiling's {ceil[cpu_key]:.0f} us, "
        "the service's features (request id, two JSON records, validation, cache) "
        f"another {features_us:.0f} us.",
        "",
    ]


def service_section(title: str, r: dict[str, Any]) -> list[str]:
    """The cached or the uncached pair: the service, the Flask floor and the ceiling."""
    g = r["gunicorn"]
    lines = [
        f"## {title}",
        "",
        f"gunicorn for all: worker_class {g['worker_class']}, workers {g['workers']}, "
        f"threads {g['threads']}, keepalive {g['keepalive']}. Other load on the machine during "
        f"the runs: at most {r['other_cores_max']:.2f} cores.",
        "",
        "| | req/s | p50 ms | p99 ms | server CPU us/req | errors |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("fiboserver", "flask floor", "ceiling"):
        if name in r:
            lines.append(run_row(name, r[name]))
    lines += [f"| **ratio** | **{r['rps_ratio']:.2f}** | | {r['p99_ratio']:.2f} x | | |", ""]
    if "flask floor" in r:
        lines += floor_paragraph(r)
    return [
        *lines,
        *distribution(r, ("fiboserver", "ceiling")),
        f"Service `end` log records written: {r['service_end_records']} for "
        f"{r['service_requests']} measured requests (+ warm-up).",
        "",
    ]


def run_row(name: str, s: dict[str, Any]) -> str:
    return (
        f"| {name} | {s['rps']:.0f} | {fmt_ms(s['p50_ms'])} | {fmt_ms(s['p99_ms'])} | "
        f"{s['server_cpu_us_per_req']:.0f} | {s['errors']} |"
    )


def metrics_section(mc: dict[str, Any]) -> list[str]:
    on, off, ceil = mc[METRICS_ON.label], mc[METRICS_OFF.label], mc["ceiling"]
    return [
        "## Metrics on and off, cached `n=30`",
        "",
        "The service with `/metrics` served (PROD config as deployed) and with "
        "`metrics_port: 0`, the ceiling in the same rounds. Other load on the machine "
        f"during the runs: at most {mc['other_cores_max']:.2f} cores.",
        "",
        "| | req/s | p50 ms | p99 ms | server CPU us/req | errors |",
        "|---|---|---|---|---|---|",
        *[
            run_row(name, row)
            for name, row in ((METRICS_ON.label, on), (METRICS_OFF.label, off), ("ceiling", ceil))
        ],
        "",
        f"Metrics cost {mc['cost_us_per_req']:.1f} us of server CPU per request; "
        f"throughput with metrics on is {mc['rps_ratio']:.3f} of metrics off (median of the "
        f"rounds' ratios; budget >= {BUDGET_RATIO}). Cached ratio to the ceiling: "
        f"{mc['on_ceiling_ratio']:.2f} with metrics on, {mc['off_ceiling_ratio']:.2f} off.",
        "",
        *distribution(mc, (METRICS_ON.label, METRICS_OFF.label, "ceiling")),
    ]


def big_n_section(b: dict[str, Any]) -> list[str]:
    return [
        "## Big n, cold (first call in a fresh interpreter), compute + serialize",
        "",
        "| n | digits | fibonacci_digits ms | iterative loop + str ms | speed-up |",
        "|---|---|---|---|---|",
        *[
            f"| {int(n):,} | {r['digits']:,} | {r['fibonacci_digits_ms']:.2f} | "
            f"{r['iterative_loop_ms']:.1f} | {r['speedup']:.0f} x |"
            for n, r in b.items()
        ],
        "",
    ]


def start_stop_section(s: dict[str, Any]) -> list[str]:
    return [
        "## Start and stop",
        "",
        "| | median s | samples s |",
        "|---|---|---|",
        samples_row("start -> first 200 on /readyz", s["ready_samples"]),
        samples_row("SIGTERM -> exit, idle", s["idle_stop_samples"]),
        samples_row("SIGTERM -> exit, under wrk load", s["loaded_stop_samples"]),
        "",
        f"Exit codes: idle {s['idle_exit_codes']}, under load {s['loaded_exit_codes']}.",
        "",
    ]


def worker_section(w: dict[str, Any]) -> list[str]:
    lines = [
        "## The worker's cost, cached `n=30`",
        "",
        f"The service with the worker of {w['before_ref']} (gthread plus the SIGTERM "
        "drain) and with today's, and the ceiling (at that commit), in the same rounds. "
        f"Other load: at most {w['other_cores_max']:.2f} cores.",
        "",
        "| | req/s | p99 ms | server CPU us/req | ratio to the ceiling |",
        "|---|---|---|---|---|",
    ]
    ratios = {"worker before": w["ratio_before"], "worker after": w["ratio_after"]}
    for label in ("worker before", "worker after", "ceiling"):
        m = w[label]
        ratio = f"{ratios[label]:.3f}" if label in ratios else ""
        lines.append(
            f"| {label} | {m['rps']:.0f} | {m['p99_ms']:.2f} | "
            f"{m['server_cpu_us_per_req']:.0f} | {ratio} |"
        )
    return [
        *lines,
        "",
        f"Cost: {w['cost']:.1%} of the ratio (budget {WORKER_COST_BUDGET:.0%}).",
        "",
    ]


def memory_section(memory: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Memory",
        "",
        "Worker RSS before and after each of three walks over distinct large n; each "
        "walk sends every worker about twice the cache budget in digits. The cache-off "
        "run is the control: what serving such responses grows a worker by without a cache.",
        "",
        "| cache | requests | n | worker | RSS before MiB | after walks 1, 2, 3 MiB | growth MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for mm in memory:
        cache = f"{mm['cache_max_bytes'] / 2**20:.0f} MiB" if mm["cache"] else "off"
        for w in mm["workers"]:
            walks = ", ".join(f"{x / 2**20:.1f}" for x in w["rss_after_walks"])
            lines.append(
                f"| {cache} | {mm['requests']} | "
                f"{mm['n_range'][0]:,}..{mm['n_range'][1]:,} | {w['pid']} | "
                f"{w['rss_baseline'] / 2**20:.1f} | {walks} | {w['growth'] / 2**20:.1f} |"
            )
    return [*lines, ""]


def markdown(res: dict[str, Any]) -> str:
    """latest.md: the targets, then a section for each part the run measured."""
    lines = header(res) + targets_section(res)
    for key, title in (
        ("cached", "Cached `n=30`"),
        ("uncached", "Uncached, random n in 0..maxseq, cache off"),
    ):
        if res.get(key):
            lines += service_section(title, res[key])
    if res.get("metrics"):
        lines += metrics_section(res["metrics"])
    lines += proxy_markdown(res)
    if res.get("big_n"):
        lines += big_n_section(res["big_n"])
    if res.get("start_stop"):
        lines += start_stop_section(res["start_stop"])
    lines += tracing_cost.markdown(res)
    if res.get("worker"):
        lines += worker_section(res["worker"])
    if res.get("memory"):
        lines += memory_section(res["memory"])
    lines += overload_markdown(res)
    all_notes = [*res.get("notes", []), *notes(res)]
    if all_notes:
        lines += ["## Notes", "", *[f"- {n}" for n in all_notes], ""]
    return "\n".join(lines)


def write_results(out: Path, res: dict[str, Any], finished: dt.datetime, tag: str = "") -> str:
    """latest.json and latest.md in `out` (plus timestamped copies with `tag`); the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    text_json = json.dumps(res, indent=2) + "\n"
    text_md = markdown(res) + "\n"
    (out / "latest.json").write_text(text_json)
    (out / "latest.md").write_text(text_md)
    if tag:
        stamp = finished.strftime("%Y%m%dT%H%M%SZ")
        (out / f"{stamp}-{tag}.json").write_text(text_json)
        (out / f"{stamp}-{tag}.md").write_text(text_md)
    return text_md


def render(source: Path) -> None:
    """Rewrite the Markdown next to a results JSON (after a change to markdown())."""
    source.with_suffix(".md").write_text(markdown(json.loads(source.read_text())) + "\n")
