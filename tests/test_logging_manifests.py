"""k8s/logging (Fluent Bit) and k8s/logging/elastic (demo backend), as rendered.

Everything is read from `kubectl kustomize` output, the pipeline included: the
Fluent Bit YAML config is parsed out of the rendered ConfigMap, so the checks see
exactly what a cluster would get.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from kube import (
    REPO_ROOT,
    Obj,
    assert_checkov_fails_only_skips,
    render,
    schema_versions,
    validate_strict,
)

LOGGING = REPO_ROOT / "k8s" / "logging"
ELASTIC = LOGGING / "elastic"
CONFIG_KEY = "fluent-bit.yaml"
# The position DB and the filesystem buffer: the one host path Fluent Bit may write.
STATE_DIR = "/var/lib/fluent-bit"
# What it reads: the container log files and the links to them, nothing else.
LOG_DIRS = {"/var/log/pods", "/var/log/containers"}
ENV_REF = re.compile(r"^\$\{([A-Z_][A-Z0-9_]*)\}$")


@pytest.fixture(scope="module")
def logging_objs() -> list[Obj]:
    return render(LOGGING)


@pytest.fixture(scope="module")
def elastic_objs() -> list[Obj]:
    return render(ELASTIC)


def one(objs: list[Obj], kind: str, name_prefix: str = "") -> Obj:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"].startswith(name_prefix)]
    assert len(found) == 1, f"expected one {kind} {name_prefix}*, found {len(found)}"
    return found[0]


def pod_specs(objs: list[Obj]) -> list[tuple[str, dict[str, Any]]]:
    kinds = {"DaemonSet", "Deployment", "StatefulSet", "Job"}
    return [
        (f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]["spec"])
        for o in objs
        if o["kind"] in kinds
    ]


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def on(value: object) -> bool:
    """Fluent Bit's boolean reading of a config value (PyYAML already turns on/off
    into bools; Fluent Bit itself accepts on/off/true/false, any case)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    assert text in {"on", "off", "true", "false"}, f"not a boolean: {value!r}"
    return text in {"on", "true"}


@pytest.fixture(scope="module")
def daemonset(logging_objs: list[Obj]) -> Obj:
    return one(logging_objs, "DaemonSet", "fluent-bit")


@pytest.fixture(scope="module")
def fb_container(daemonset: Obj) -> dict[str, Any]:
    (container,) = daemonset["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


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


# --- rendering and schemas --------------------------------------------------------


@pytest.mark.parametrize("version", schema_versions())
@pytest.mark.parametrize("path", [LOGGING, ELASTIC], ids=["logging", "elastic"])
def test_renders_and_validates_strictly(path: Any, version: str) -> None:
    objs = render(path)
    assert objs
    validate_strict(objs, version)


def test_everything_in_logging_namespace(logging_objs: list[Obj], elastic_objs: list[Obj]) -> None:
    for o in logging_objs + elastic_objs:
        if o["kind"] in {"Namespace", "ClusterRole", "ClusterRoleBinding"}:
            continue
        assert o["metadata"].get("namespace") == "logging", o["metadata"]["name"]
    for objs in (logging_objs, elastic_objs):
        assert one(objs, "Namespace")["metadata"]["name"] == "logging"


# --- RBAC ------------------------------------------------------------------------------


def test_rbac_is_read_only_on_pods_and_namespaces(logging_objs: list[Obj], daemonset: Obj) -> None:
    roles = [o for o in logging_objs if o["kind"] in {"ClusterRole", "Role"}]
    assert len(roles) == 1
    (role,) = roles
    assert role["kind"] == "ClusterRole"
    assert "aggregationRule" not in role
    granted: set[tuple[str, str]] = set()
    for rule in role["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "verbs"}, rule  # no resourceNames/URLs
        assert rule["apiGroups"] == [""], rule
        assert set(rule["resources"]) <= {"pods", "namespaces"}, rule
        assert set(rule["verbs"]) <= {"get", "list", "watch"}, rule
        granted |= {(r, v) for r in rule["resources"] for v in rule["verbs"]}
    # And it is enough for the kubernetes filter: get/list/watch on both.
    assert granted == {(r, v) for r in ("pods", "namespaces") for v in ("get", "list", "watch")}

    bindings = [o for o in logging_objs if o["kind"] in {"ClusterRoleBinding", "RoleBinding"}]
    assert len(bindings) == 1
    (binding,) = bindings
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    sa = one(logging_objs, "ServiceAccount")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "logging"}
    ]
    assert daemonset["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]


# --- pods: host access, images, security, resources ------------------------------------


def test_host_mounts_are_read_only(logging_objs: list[Obj], elastic_objs: list[Obj]) -> None:
    seen_host_paths: set[str] = set()
    for name, spec in pod_specs(logging_objs + elastic_objs):
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(flag), f"{name}: {flag}"
        host_volumes = {
            v["name"]: v["hostPath"]["path"] for v in spec.get("volumes", []) if "hostPath" in v
        }
        for c in containers(spec):
            for m in c.get("volumeMounts", []):
                if m["name"] not in host_volumes:
                    continue
                host_path = host_volumes[m["name"]]
                seen_host_paths.add(host_path)
                # Mounted at the same path: /var/log/containers links resolve.
                assert m["mountPath"] == host_path
                if host_path == STATE_DIR:
                    assert not m.get("readOnly", False)
                else:
                    assert m.get("readOnly") is True, f"{name}: {host_path} must be read-only"
    assert seen_host_paths == LOG_DIRS | {STATE_DIR}


def test_images_pinned(logging_objs: list[Obj], elastic_objs: list[Obj]) -> None:
    versions: dict[str, str] = {}
    for name, spec in pod_specs(logging_objs + elastic_objs):
        for c in containers(spec):
            image = c["image"]
            repo, _, tag = image.rpartition(":")
            assert repo and "/" not in tag, f"{name}: {image} has no tag"
            assert tag != "latest", f"{name}: {image}"
            assert re.fullmatch(r"\d+\.\d+\.\d+", tag), f"{name}: {image}: exact release expected"
            versions[repo.rsplit("/", 1)[-1]] = tag
    # Official Fluent Bit image, a current major (4.x or 5.x).
    assert int(versions["fluent-bit"].split(".")[0]) in {4, 5}
    assert any(
        c["image"].startswith("cr.fluentbit.io/fluent/fluent-bit:")
        for _, spec in pod_specs(logging_objs)
        for c in containers(spec)
    )
    # Kibana only works with the same Elasticsearch version.
    assert versions["elasticsearch"] == versions["kibana"]


def test_fluent_bit_security_context(daemonset: Obj, fb_container: dict[str, Any]) -> None:
    spec = daemonset["spec"]["template"]["spec"]
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = fb_container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc.get("privileged", False) is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "add" not in sc["capabilities"]


def test_demo_backend_security_context(elastic_objs: list[Obj]) -> None:
    for name, spec in pod_specs(elastic_objs):
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["automountServiceAccountToken"] is False, name
        for c in containers(spec):
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], name


def test_resources_everywhere(logging_objs: list[Obj], elastic_objs: list[Obj]) -> None:
    for name, spec in pod_specs(logging_objs + elastic_objs):
        for c in containers(spec):
            res = c["resources"]
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res[kind]), f"{name}: {kind}"


def test_runs_on_every_node(daemonset: Obj) -> None:
    tolerations = daemonset["spec"]["template"]["spec"]["tolerations"]
    # operator Exists without a key tolerates every taint, whatever its effect.
    assert {"operator": "Exists"} in tolerations
    assert "nodeSelector" not in daemonset["spec"]["template"]["spec"]
    assert "affinity" not in daemonset["spec"]["template"]["spec"]


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


def test_elasticsearch_heap_fits_its_limit(elastic_objs: list[Obj]) -> None:
    sts = one(elastic_objs, "StatefulSet", "elasticsearch")
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    # The demo's security choice is explicit, not a default someone forgot.
    assert env["xpack.security.enabled"] == "false"
    assert env["discovery.type"] == "single-node"
    heap = re.search(r"-Xmx(\d+)m", env["ES_JAVA_OPTS"])
    assert heap
    limit = c["resources"]["limits"]["memory"]
    assert limit.endswith("Gi")
    # Heap at most half the memory limit: the rest is off-heap and file cache.
    assert int(heap.group(1)) <= int(limit.removesuffix("Gi")) * 1024 // 2


# --- the pipeline itself ---------------------------------------------------------------


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


def parse_size(text: str) -> int:
    """Fluent Bit sizes (K, M, G: decimal, as flb_utils_size_to_bytes reads them)
    and Kubernetes quantities (Ki, Mi, Gi: binary)."""
    m = re.fullmatch(r"(\d+)(K|M|G|KB|MB|GB|Ki|Mi|Gi)?", str(text))
    assert m, text
    unit = m.group(2) or ""
    factor = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "Ki": 2**10, "Mi": 2**20,
              "Gi": 2**30}[unit.removesuffix("B") if unit.endswith("B") else unit]  # fmt: skip
    return int(m.group(1)) * factor


def test_priority_and_its_quota(daemonset: Obj, logging_objs: list[Obj]) -> None:
    spec = daemonset["spec"]["template"]["spec"]
    # Never evicted by the kubelet under node pressure (critical priority).
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["enableServiceLinks"] is False
    quota = one(logging_objs, "ResourceQuota")["spec"]
    assert quota["scopeSelector"]["matchExpressions"] == [
        {"scopeName": "PriorityClass", "operator": "In", "values": ["system-node-critical"]}
    ]
    assert int(quota["hard"]["pods"]) >= 5000  # one per node, the largest clusters


def test_generated_config_is_immutable(logging_objs: list[Obj]) -> None:
    generated = [o for o in logging_objs if o["kind"] in {"ConfigMap", "Secret"}]
    assert len(generated) == 3
    assert all(o["immutable"] is True for o in generated)


def test_undeploy_label_spares_the_namespace(logging_objs: list[Obj]) -> None:
    # `make undeploy-logging` deletes by app.kubernetes.io/name=fluent-bit: that
    # must be every Fluent Bit object and not the namespace (Elasticsearch may live there).
    for o in logging_objs:
        labels = o["metadata"].get("labels", {})
        is_ours = labels.get("app.kubernetes.io/name") == "fluent-bit"
        assert is_ours == (o["kind"] != "Namespace"), f"{o['kind']}/{o['metadata']['name']}"


# --- checkov ------------------------------------------------------------------------------


def test_checkov_fails_only_the_listed_checks(
    tmp_path: Path, logging_objs: list[Obj], elastic_objs: list[Obj]
) -> None:
    objects = logging_objs + elastic_objs
    assert_checkov_fails_only_skips(objects, LOGGING / "checkov-skips.yaml", tmp_path)


def test_unauthenticated_elasticsearch_is_fenced(elastic_objs: list[Obj]) -> None:
    # Security is off in the demo: only Fluent Bit and Kibana may reach port 9200.
    policy = one(elastic_objs, "NetworkPolicy", "elasticsearch")
    assert policy["spec"]["podSelector"] == {
        "matchLabels": {"app.kubernetes.io/name": "elasticsearch"}
    }
    (rule,) = policy["spec"]["ingress"]
    peers = {p["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for p in rule["from"]}
    assert peers == {"fluent-bit", "kibana"}
    assert all(set(p) == {"podSelector"} for p in rule["from"])  # this namespace only
    assert rule["ports"] == [{"port": 9200, "protocol": "TCP"}]
