"""The Fluent Bit pipeline of k8s/logging, as the DaemonSet's container loads it.

The YAML config is parsed out of the rendered ConfigMap the container mounts, so
the checks see exactly what a cluster would get: the tail input, the kubernetes
filter's merge, the es outputs and their routing by namespace, filesystem
buffering, and the service settings the probes and the grace period rely on.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import PurePosixPath
from typing import Any

import pytest
import yaml

from tests.support.kube import Obj
from tests.support.logmanifests import (  # noqa: F401 (fixtures)
    STATE_DIR,
    daemonset_fixture,
    fb_container_fixture,
    logging_objs_fixture,
    one,
    parse_size,
)

ENV_REF = re.compile(r"^\$\{([A-Z_][A-Z0-9_]*)\}$")


def on(value: object) -> bool:
    """Fluent Bit's boolean reading of a config value (PyYAML already turns on/off
    into bools; Fluent Bit itself accepts on/off/true/false, any case)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    assert text in {"on", "off", "true", "false"}, f"not a boolean: {value!r}"
    return text in {"on", "true"}


@pytest.fixture(scope="module")
def pipeline(logging_objs: list[Obj], daemonset: Obj, fb_container: dict[str, Any]) -> Any:
    """The Fluent Bit config as the DaemonSet's container will load it."""
    spec = daemonset["spec"]["template"]["spec"]
    (config_arg,) = [a for a in fb_container["args"] if a.startswith("--config=")]
    config_path = PurePosixPath(config_arg.removeprefix("--config="))
    volumes = {v["name"]: v for v in spec["volumes"]}
    (mount,) = [
        m
        for m in fb_container["volumeMounts"]
        if PurePosixPath(m["mountPath"]) == config_path.parent
    ]
    cm_name = volumes[mount["name"]]["configMap"]["name"]
    configmap = one(logging_objs, "ConfigMap", cm_name)
    assert cm_name.startswith("fluent-bit-config-"), "generated (hashed) name expected"
    return yaml.safe_load(configmap["data"][config_path.name])


# --- the service section: probes and shutdown -------------------------------------------


def test_probes_use_builtin_http_server(fb_container: dict[str, Any], pipeline: Any) -> None:
    service = pipeline["service"]
    assert on(service["http_server"]) and on(service["health_check"])
    (port,) = fb_container["ports"]
    assert port["containerPort"] == service["http_port"] == 2020
    readiness = fb_container["readinessProbe"]["httpGet"]
    liveness = fb_container["livenessProbe"]["httpGet"]
    # Neither probe depends on Elasticsearch: /api/v2/health (health_check) turns
    # 500 when the outputs fail, which an outage must not turn into NotReady agents.
    assert readiness["path"] == liveness["path"] == "/api/v1/uptime"
    for probe in (readiness, liveness):
        assert probe["port"] in {port["name"], port["containerPort"]}


def test_grace_period_covers_flush(daemonset: Obj, pipeline: Any) -> None:
    spec = daemonset["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] > int(pipeline["service"]["grace"])


# --- inputs, filters, outputs, buffering -----------------------------------------------


def test_tail_input(pipeline: Any, fb_container: dict[str, Any]) -> None:
    (tail,) = pipeline["pipeline"]["inputs"]
    assert tail["name"] == "tail"
    assert tail["path"] == "/var/log/containers/*.log"
    assert tail["tag"] == "kube.*"
    parsers = [p.strip() for p in tail["multiline.parser"].split(",")]
    assert parsers == ["docker", "cri"]
    # No classic `parser: cri` (it writes `message`, not `log`: Merge_Log then merges nothing).
    assert "parser" not in tail
    db = PurePosixPath(tail["db"])
    assert db.parent == PurePosixPath(STATE_DIR)
    assert any(m["mountPath"] == STATE_DIR for m in fb_container["volumeMounts"])
    # Filesystem buffering: reading never pauses (a paused tail loses what the
    # kubelet rotates away); mem_buf_limit would only apply to memory buffering.
    assert tail["storage.type"] == "filesystem"
    assert on(tail["storage.pause_on_chunks_overlimit"]) is False
    assert "mem_buf_limit" not in tail
    assert on(tail["skip_long_lines"])
    # Fluent Bit's own pod is excluded (no feedback loop), the app's pods are not.
    own = "/var/log/containers/fluent-bit-x7k2p_logging_fluent-bit-" + "a" * 64 + ".log"
    app = (
        "/var/log/containers/fiboserver-prod-5d9f-x7k2p_cloudnative_fiboserver-" + "b" * 64 + ".log"
    )
    assert fnmatch.fnmatch(own, tail["exclude_path"])
    assert not fnmatch.fnmatch(app, tail["exclude_path"])


def test_kubernetes_filter(pipeline: Any) -> None:
    (kube,) = pipeline["pipeline"]["filters"]
    assert kube["name"] == "kubernetes"
    assert kube["match"] == pipeline["pipeline"]["inputs"][0]["tag"]
    assert kube["kube_tag_prefix"] == "kube.var.log.containers."
    assert on(kube["merge_log"]) is True
    assert on(kube["keep_log"]) is False
    assert on(kube["k8s-logging.parser"]) is True
    # A pod cannot hide its own logs by annotation.
    assert on(kube["k8s-logging.exclude"]) is False
    assert on(kube["labels"]) is True
    # No custom merge key: the app's keys land at the top level, where the
    # saved searches and KQL examples look for them.
    assert "merge_log_key" not in kube


def test_es_outputs(pipeline: Any, logging_objs: list[Obj], fb_container: dict[str, Any]) -> None:
    outputs = pipeline["pipeline"]["outputs"]
    assert outputs and all(o["name"] == "es" for o in outputs)
    # Variables the container's environment provides (ConfigMap + Secret).
    provided: set[str] = set()
    for src in fb_container["envFrom"]:
        if "configMapRef" in src:
            provided |= set(one(logging_objs, "ConfigMap", src["configMapRef"]["name"])["data"])
        else:
            provided |= set(one(logging_objs, "Secret", src["secretRef"]["name"])["data"])
    assert {"ES_USER", "ES_PASSWORD"} <= set(
        one(logging_objs, "Secret", "fluent-bit-es-credentials")["data"]
    )
    prefixes = set()
    for out in outputs:
        assert on(out["logstash_format"]) is True
        assert on(out["suppress_type_name"]) is True
        assert on(out["replace_dots"]) is True
        if out["logstash_prefix"] == "fiboserver":
            # Ours: retried until delivered (the template and the contract test
            # rule out permanent refusals); the disk limit bounds the outage.
            assert out["retry_limit"] == "no_limits"
        else:
            # Other namespaces' records may be refused for good: bounded.
            assert isinstance(out["retry_limit"], int) and not isinstance(out["retry_limit"], bool)
            assert 1 <= out["retry_limit"] <= 100
        assert re.fullmatch(r"\d+G", out["storage.total_limit_size"]), out
        # Address, credentials and TLS come from the environment, not this file.
        for key in ("host", "port", "http_user", "http_passwd", "tls", "tls.verify"):
            ref = ENV_REF.match(str(out[key]))
            assert ref, f"{key} must be ${{VAR}}, is {out[key]!r}"
            assert ref.group(1) in provided, f"{ref.group(1)} is not in the pod's environment"
        prefixes.add(out["logstash_prefix"])
        assert not out["logstash_prefix"].startswith("logs-")  # ES's built-in data stream template
    assert "fiboserver" in prefixes and len(prefixes) == len(outputs)


def test_output_routing(pipeline: Any) -> None:
    """Each container log file goes to exactly one output: ours by namespace."""
    outputs = pipeline["pipeline"]["outputs"]
    routes = [(o["logstash_prefix"], re.compile(o["match_regex"])) for o in outputs]

    def tag(pod: str, namespace: str, container: str) -> str:
        file = f"{pod}_{namespace}_{container}-{'c' * 64}.log"
        return "kube." + f"/var/log/containers/{file}".lstrip("/").replace("/", ".")

    cases = {
        tag("fiboserver-dev-7c9d8-abcde", "cloudnative", "fiboserver"): "fiboserver",
        tag("fiboserver-prod-6b5f4-x2x9q", "cloudnative", "fiboserver"): "fiboserver",
        tag("coredns-7db6d8ff4d-4kq2l", "kube-system", "coredns"): "k8s",
        tag("cloudnative-exporter-1", "monitoring", "exporter"): "k8s",
        tag("web-1", "cloudnative-staging", "web"): "k8s",
    }
    for t, expected in cases.items():
        matched = [prefix for prefix, rx in routes if rx.search(t)]
        assert matched == [expected], (t, matched)


def test_filesystem_buffering(pipeline: Any, fb_container: dict[str, Any], daemonset: Obj) -> None:
    """Every input buffers to files on the node, every output bounds its share of the
    disk, and what may sit in memory fits the container's memory limit."""
    service = pipeline["service"]
    storage = PurePosixPath(service["storage.path"])
    assert storage.is_relative_to(STATE_DIR), "the buffer must be on the hostPath"
    assert any(m["mountPath"] == STATE_DIR for m in fb_container["volumeMounts"])
    assert service["storage.sync"] == "normal"
    assert on(service["storage.checksum"]) and on(service["storage.delete_irrecoverable_chunks"])
    assert on(service["storage.metrics"])
    inputs = pipeline["pipeline"]["inputs"]
    outputs = pipeline["pipeline"]["outputs"]
    assert inputs and all(i["storage.type"] == "filesystem" for i in inputs)
    assert outputs and all("storage.total_limit_size" in o for o in outputs)
    # Chunks are ~2 MB; up to max_chunks_up of them plus the backlog being loaded
    # must leave half of the memory limit to the rest of Fluent Bit.
    chunks_up = int(service["storage.max_chunks_up"])
    backlog = parse_size(service["storage.backlog.mem_limit"])
    limit = parse_size(fb_container["resources"]["limits"]["memory"])
    assert chunks_up * 2 * 10**6 + backlog <= limit / 2, (chunks_up, backlog, limit)
    # Retry waits are capped, so buffered chunks go out soon after a recovery.
    assert int(service["scheduler.base"]) < int(service["scheduler.cap"]) <= 120
