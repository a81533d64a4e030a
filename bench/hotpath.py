"""The request hot path without the network: microseconds per WSGI call, and its profile.

Calls the PROD app's WSGI callable in a loop with logging configured exactly as
gunicorn configures it (fiboserver.logs.logconfig_dict), records going to a
file, and metrics recorded into PROMETHEUS_MULTIPROC_DIR files as under
gunicorn; the same app with `metrics_port: 0` in alternating passes; and the
bare ceiling app. Far less noisy than wrk on a shared machine, so it is what
each optimisation was judged by; the wrk pairs in `make bench` are what the
targets are judged by.

    .venv/bin/python -m bench.hotpath            # us per request, service and ceiling
    .venv/bin/python -m bench.hotpath --profile  # plus the top of a cProfile
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import dataclasses
import io
import logging.config
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from bench.servers import PROD_CONFIG

if TYPE_CHECKING:
    from fiboserver.config import Config

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


@contextlib.contextmanager
def prod_app_environment() -> Iterator[tuple[Config, Path]]:
    """This process set up as a PROD worker is, for apps built inside the block:
    the PROD config (named by $FIBOSERVER_CONFIG), metrics in
    PROMETHEUS_MULTIPROC_DIR files, logging as gunicorn configures it
    (fiboserver.logs.logconfig_dict) with stdout a file. Yields the config and
    that file's path (gone after the block)."""
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "prod.yaml"
        config_path.write_text(yaml.safe_dump(yaml.safe_load(PROD_CONFIG.read_text())))
        os.environ["FIBOSERVER_CONFIG"] = str(config_path)
        # Before prometheus_client is imported: values in memory-mapped files.
        (Path(tmp) / "metrics").mkdir()
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(Path(tmp) / "metrics")
        from fiboserver.config import load_config
        from fiboserver.logs import logconfig_dict

        config = load_config(str(config_path))
        log_path = Path(tmp) / "records.log"
        with open(log_path, "w") as records:
            saved, sys.stdout = sys.stdout, records
            try:
                logging.config.dictConfig(logconfig_dict(config.loglevel))
                yield config, log_path
            finally:
                sys.stdout = saved


def environ_for(path: str, query: str) -> dict[str, Any]:
    """What gunicorn's gthread worker hands the app for a keep-alive GET from wrk."""
    return {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "RAW_URI": f"{path}?{query}",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8080",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "40000",
        "HTTP_HOST": "127.0.0.1:8080",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.version": (1, 0),
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }


def per_call_us(app: WsgiApp, path: str, query: str, calls: int, passes: int = 3) -> float:
    """Best of `passes` (the least disturbed by other load) loops of `calls` calls."""
    return best_per_call_us([app], path, query, calls, passes)[0]


def best_per_call_us(
    apps: list[WsgiApp], path: str, query: str, calls: int, passes: int
) -> list[float]:
    """Best per-call time of each app, the apps taking turns pass after pass, so
    that a burst of other load on the machine hits them alike."""

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        pass

    best = [float("inf")] * len(apps)
    for _ in range(passes):
        for i, app in enumerate(apps):
            t0 = time.perf_counter()
            for _ in range(calls):
                body = app(environ_for(path, query), start_response)
                for _chunk in body:
                    pass
                close = getattr(body, "close", None)
                if close is not None:
                    close()
            best[i] = min(best[i], (time.perf_counter() - t0) / calls * 1e6)
    return best


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=20000)
    p.add_argument("--passes", type=int, default=5, help="alternating passes, metrics on/off")
    p.add_argument("--n", type=int, default=30)
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()
    with prod_app_environment() as (config, log_path):
        from bench import ceiling  # reads $FIBOSERVER_CONFIG as it is imported
        from fiboserver.app import create_app

        app = create_app(config)
        off_app = create_app(dataclasses.replace(config, metrics_port=0))
        path, query = f"{config.prefix}/fibo", f"n={args.n}"
        service_us, off_us = best_per_call_us([app, off_app], path, query, args.calls, args.passes)
        ceiling_us = per_call_us(ceiling.app, path, query, args.calls)
        profile_text = ""
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            per_call_us(app, path, query, args.calls // 4)
            prof.disable()
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
            profile_text = out.getvalue()
        sys.stdout.flush()
        lines = len(log_path.read_bytes().splitlines())
    # Both service apps made `passes` passes; the profile another three of a quarter each.
    requests = 2 * args.passes * args.calls + (3 * (args.calls // 4) if args.profile else 0)
    print(
        f"service {service_us:.1f} us/request (metrics off: {off_us:.1f}, so metrics cost "
        f"{service_us - off_us:.1f}), ceiling {ceiling_us:.1f} us/request"
    )
    print(f"({lines / requests:.2f} JSON log lines per service request)")
    if profile_text:
        print(profile_text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
