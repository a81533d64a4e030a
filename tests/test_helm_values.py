"""Bad values are refused before anything reaches a cluster, naming the key.

Each file in tests/helm_bad_values/ is one mistake; its first line says what the
error must name (`# names: ...`). `helm template`, `helm lint --strict` and
`helm install --dry-run=client` (the install path without a cluster) all refuse
it. Where the mistake is in the service's config, a second line (`# service:
<key>`) says the service itself refuses the same config, naming the same key: the
chart refuses what the service would, before a pod crash-loops on it. (The
cluster tests run the real `helm install` and `helm upgrade` with some of them.)
The one check JSON Schema cannot express (two keys compared: metrics_port equal
to port) is a template `fail`, marked `# check: template`: `helm lint` runs
templates in a mode where `fail` is only reported, so lint names the key there
without refusing; template and install refuse it.

Controls: values at the edges of every range are accepted, and the schema's
grace-period rules match gunicorn's real graceful_timeout.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from fiboserver.config import ConfigError, parse_config
from tests.support.appk8s import gunicorn_settings
from tests.support.helmchart import CHART, helm, template, write_values

BAD = Path(__file__).resolve().parent / "helm_bad_values"
BAD_FILES = sorted(p.name for p in BAD.glob("*.yaml"))
SCHEMA = json.loads((CHART / "values.schema.json").read_text())


def header(path: Path, field: str) -> str | None:
    m = re.search(rf"^# {field}: (\S+)$", path.read_text(), re.M)
    return m.group(1) if m else None


def test_there_are_enough_bad_values_files() -> None:
    assert len(BAD_FILES) >= 8
    for name in BAD_FILES:
        assert header(BAD / name, "names"), f"{name} does not say what the error names"


def refusal(out_stderr: str, returncode: int, named: str) -> None:
    assert returncode != 0, "accepted"
    assert named in out_stderr, f"the error does not name {named}:\n{out_stderr}"


@pytest.mark.parametrize("name", BAD_FILES)
def test_helm_template_refuses(name: str) -> None:
    out = helm("template", "fiboserver-dev", str(CHART), "--values", str(BAD / name))
    refusal(out.stderr, out.returncode, header(BAD / name, "names") or "")
    assert out.stdout.strip() == "", "nothing is rendered"


@pytest.mark.parametrize("name", BAD_FILES)
def test_helm_lint_strict_refuses(name: str) -> None:
    out = helm("lint", "--strict", str(CHART), "--values", str(BAD / name))
    named = header(BAD / name, "names") or ""
    if header(BAD / name, "check") == "template":
        assert "funcMap fail" in out.stderr and named in out.stderr, out.stderr
        return
    refusal(out.stdout + out.stderr, out.returncode, named)


@pytest.mark.parametrize("name", BAD_FILES)
def test_helm_install_refuses_before_any_request(name: str, tmp_path: Path) -> None:
    """--dry-run=client: the whole install action, no cluster (a kubeconfig that
    points nowhere proves none is asked)."""
    kubeconfig = write_values(tmp_path, "kubeconfig", yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "none",
        "clusters": [{"name": "none", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "none", "user": {"token": "none"}}],
        "contexts": [{"name": "none", "context": {"cluster": "none", "user": "none"}}],
    }))  # fmt: skip
    out = helm("install", "fiboserver-dev", str(CHART), "--dry-run=client", "--values",
               str(BAD / name), "--kubeconfig", str(kubeconfig))  # fmt: skip
    refusal(out.stderr, out.returncode, header(BAD / name, "names") or "")
    assert "127.0.0.1:1" not in out.stderr


def merged_config(path: Path) -> dict[str, Any]:
    """The config the service would get: the chart's default config with the file's
    `config` over it (null removes a key, as in Helm)."""
    config: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())["config"]
    for k, v in (yaml.safe_load(path.read_text()).get("config") or {}).items():
        if v is None:
            config.pop(k, None)
        else:
            config[k] = v
    return config


@pytest.mark.parametrize("name", [n for n in BAD_FILES if header(BAD / n, "service")])
def test_the_service_refuses_the_same_config(name: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(merged_config(BAD / name), name)
    assert exc.value.key == header(BAD / name, "service")


def test_the_default_config_is_one_the_service_accepts() -> None:
    config = merged_config(CHART / "values.yaml")
    assert parse_config(config, "values.yaml").env == "DEV"


# --- controls: the edges are accepted -------------------------------------------

GOOD = {
    "maxseq at its limit": "config:\n  maxseq: 100000\n",
    "maxseq 0": "config:\n  maxseq: 0\n",
    "loglevel in lower case": "config:\n  loglevel: warning\n",
    "every config key": "config:\n  env: Staging-2\n  maxseq: 10\n  cacheresult: false\n"
    "  port: 1024\n  loglevel: ERROR\n  cache_max_bytes: 0\n  metrics_port: 65535\n"
    "  fault_delay_ms: 10000\n  fault_error_ratio: 1\n",
    "grace exactly preStop + 25": "preStopSleepSeconds: 20\nterminationGracePeriodSeconds: 45\n",
    "shortest preStop and grace": "preStopSleepSeconds: 1\nterminationGracePeriodSeconds: 26\n",
    "image tag set": "image:\n  tag: 0.1.0-abc1234\n",
    "everything optional on": "gateway:\n  enabled: true\nmonitoring:\n  enabled: true\n"
    "autoscaling:\n  enabled: true\n",
}


@pytest.mark.parametrize("case", GOOD)
def test_values_at_the_edges_are_accepted(case: str, tmp_path: Path) -> None:
    path = write_values(tmp_path, "good.yaml", GOOD[case])
    objs = template("fiboserver-dev", path)
    (cm,) = [o for o in objs if o["kind"] == "ConfigMap" and "config.yaml" in o["data"]]
    config = yaml.safe_load(cm["data"]["config.yaml"])
    parse_config(config, case)  # and the service takes the config it is given


def test_grace_period_rules_follow_gunicorn_graceful_timeout() -> None:
    """Every preStop value the schema allows has its rule: grace >= preStop +
    gunicorn's graceful_timeout (read from the real gunicorn.conf.py) + 5."""
    graceful = int(gunicorn_settings("dev")["graceful_timeout"])
    prestop = SCHEMA["properties"]["preStopSleepSeconds"]
    allowed = range(prestop["minimum"], prestop["maximum"] + 1)
    rules = {
        r["if"]["properties"]["preStopSleepSeconds"]["const"]:
        r["then"]["properties"]["terminationGracePeriodSeconds"]["minimum"]
        for r in SCHEMA["allOf"]
    }  # fmt: skip
    assert rules == {p: p + graceful + 5 for p in allowed}
    assert SCHEMA["properties"]["terminationGracePeriodSeconds"]["minimum"] == min(rules.values())


def test_unknown_keys_are_refused_everywhere_in_the_schema() -> None:
    """Every object of the schema lists its keys and refuses others."""

    def objects(node: Any, path: str) -> list[str]:
        found = []
        if isinstance(node, dict):
            listed = node.get("type") == "object" and "properties" in node
            if listed and node.get("additionalProperties") is not False:
                found.append(path)
            for k, v in node.items():
                found += objects(v, f"{path}/{k}")
        return found

    open_objects = [p for p in objects(SCHEMA, "") if not p.endswith("/global")]
    assert open_objects == []
