"""A local Prometheus (Debian's `prometheus` package) for fiboserver, configured from
k8s/monitoring: `make monitor`, and the tests that need a real one.

- ``rules(path)``: the PrometheusRule's groups as a plain Prometheus rules file,
  which is what the Prometheus Operator hands its Prometheus.
- ``config(targets, job, rules_file, interval)``: a prometheus.yml scraping
  fiboserver's /metrics under the job name the PodMonitor gives a pod
  (``fiboserver-<env>``), so the rules and the dashboard work unchanged.
- ``write(directory, ...)``: both files into ``directory``; returns the config's path.
- ``command(config_file, data_dir, listen)``: the prometheus command line.
- ``Prometheus(workdir, target, job)``: that command run on 127.0.0.1 for a test,
  scraping and evaluating the rules every second, with its HTTP API at hand.

Run as a module (what `make monitor` does), it writes the files into ``--dir``
and replaces itself with Prometheus in the foreground::

    python -m tests.support.promlocal --target 127.0.0.1:9464 --listen 127.0.0.1:9090
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.support.procinfo import HOST, free_port
from tests.support.repo import REPO_ROOT

MONITORING = REPO_ROOT / "k8s" / "monitoring"
RULES = MONITORING / "prometheusrule.yaml"
DASHBOARD = MONITORING / "dashboards" / "fiboserver.json"


def rules(path: Path = RULES) -> dict[str, Any]:
    """The `groups` of the PrometheusRule at `path`, as a Prometheus rules file."""
    rule = yaml.safe_load(path.read_text())
    assert rule["kind"] == "PrometheusRule", path
    return {"groups": rule["spec"]["groups"]}


def config(targets: Sequence[str], job: str, rules_file: str, interval: str) -> dict[str, Any]:
    """prometheus.yml: scrape `targets` (host:port of metrics_port) as `job`."""
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [rules_file],
        "scrape_configs": [
            {
                "job_name": job,
                "metrics_path": "/metrics",
                "static_configs": [{"targets": list(targets)}],
            }
        ],
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the rules' expressions) as `|` blocks, as they are written."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=1000)


def write(
    directory: Path, targets: Sequence[str], job: str = "fiboserver-dev", interval: str = "15s"
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "rules.yml").write_text(dump(rules()))
    path = directory / "prometheus.yml"
    path.write_text(dump(config(targets, job, "rules.yml", interval)))
    return path


def command(prometheus: str, config_file: Path, data_dir: Path, listen: str) -> list[str]:
    return [
        prometheus,
        f"--config.file={config_file}",
        f"--storage.tsdb.path={data_dir}",
        f"--web.listen-address={listen}",
        # A local look at the numbers: a day of history is plenty.
        "--storage.tsdb.retention.time=1d",
    ]


def alert_expr(name: str, path: Path = RULES) -> str:
    """The expression of the alert `name` in the PrometheusRule at `path`."""
    groups = rules(path)["groups"]
    (found,) = [r["expr"] for g in groups for r in g["rules"] if r.get("alert") == name]
    expr: str = found
    return expr


class Prometheus:
    """Debian's prometheus on 127.0.0.1:<free port>, scraping `target` as `job` and
    evaluating k8s/monitoring's rules every second. A test without the program
    skips, or fails with CI=true (hosttools.require_tool)."""

    def __init__(self, workdir: Path, target: str, job: str) -> None:
        # Here, not at the top: `make monitor` runs this module without pytest.
        from tests.support.hosttools import require_tool

        self.port = free_port()
        config = write(workdir, [target], job, interval="1s")
        self.log = (workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            command(require_tool("prometheus"), config, workdir / "data", f"{HOST}:{self.port}"),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def api(self, path: str, **params: str) -> Any:
        url = f"http://{HOST}:{self.port}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.load(resp)

    def query(self, expr: str) -> list[dict[str, Any]]:
        body = self.api("/api/v1/query", query=expr)
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def values(self, expr: str) -> list[float]:
        """The sample values `expr` returns now."""
        return [float(r["value"][1]) for r in self.query(expr)]

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "prometheus exited"
            ready = f"http://{HOST}:{self.port}/-/ready"
            with contextlib.suppress(OSError), urllib.request.urlopen(ready, timeout=2):
                return
            time.sleep(0.2)
        raise AssertionError("prometheus not ready")

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:9464", help="fiboserver's metrics_port")
    parser.add_argument("--job", default="fiboserver-dev", help="job label, as the PodMonitor's")
    parser.add_argument("--listen", default="127.0.0.1:9090", help="Prometheus' own address")
    parser.add_argument("--dir", default=".monitor", type=Path, help="config, rules and data")
    args = parser.parse_args(argv)
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        print("make monitor needs prometheus: apt-get install -y prometheus", file=sys.stderr)
        return 2
    config_file = write(args.dir, [args.target], args.job)
    argv_ = command(prometheus, config_file, args.dir / "data", args.listen)
    print(
        f"Prometheus on http://{args.listen} scraping http://{args.target}/metrics "
        f"(job {args.job}); Ctrl-C stops it",
        file=sys.stderr,
    )
    os.execv(prometheus, argv_)


if __name__ == "__main__":
    sys.exit(main())
