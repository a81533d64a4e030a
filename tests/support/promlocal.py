"""A local Prometheus (Debian's `prometheus` package) for fiboserver, configured from
k8s/monitoring: `make monitor`, and the tests that need a real one.

- ``rules(path)``: the PrometheusRule's groups as a plain Prometheus rules file,
  which is what the Prometheus Operator hands its Prometheus.
- ``config(targets, job, rules_file, interval)``: a prometheus.yml scraping
  fiboserver's /metrics under the job name the PodMonitor gives a pod
  (``fiboserver-<env>``), so the rules and the dashboard work unchanged.
- ``write(directory, ...)``: both files into ``directory``; returns the config's path.
- ``command(config_file, data_dir, listen)``: the prometheus command line.

Run as a module (what `make monitor` does), it writes the files into ``--dir``
and replaces itself with Prometheus in the foreground::

    python -m tests.support.promlocal --target 127.0.0.1:9464 --listen 127.0.0.1:9090
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

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
