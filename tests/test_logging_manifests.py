"""k8s/logging (Fluent Bit) and k8s/logging/elastic (demo backend), as rendered.

Everything is read from `kubectl kustomize` output: schemas, namespace, RBAC, what
the pods may do on the node, images, resources, scheduling, and the fence around
the demo Elasticsearch. The Fluent Bit config inside the rendered ConfigMap has
its own tests (test_fluent_bit_config.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.support.kube import (
    Obj,
    assert_checkov_fails_only_skips,
    render,
    schema_versions,
    validate_strict,
)
from tests.support.logmanifests import (  # noqa: F401 (fixtures)
    LOGGING,
    STATE_DIR,
    daemonset_fixture,
    fb_container_fixture,
    logging_objs_fixture,
    one,
)

ELASTIC = LOGGING / "elastic"
# What it reads: the container log files and the links to them, nothing else.
LOG_DIRS = {"/var/log/pods", "/var/log/containers"}


@pytest.fixture(scope="module")
def elastic_objs() -> list[Obj]:
    return render(ELASTIC)


def pod_specs(objs: list[Obj]) -> list[tuple[str, dict[str, Any]]]:
    kinds = {"DaemonSet", "Deployment", "StatefulSet", "Job"}
    return [
        (f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]["spec"])
        for o in objs
        if o["kind"] in kinds
    ]


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


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
