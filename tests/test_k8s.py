"""The Kubernetes manifests (SPEC section 7), checked on what kustomize renders.

Everything here reads the output of the real `kubectl kustomize`, never the
source files' fragments: what is asserted is what `kubectl apply -k` would send.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kube
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions

from fiboserver.cgroup import workers_for
from fiboserver.config import Config, load_config

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
GATEWAY_SCHEMAS = Path(__file__).resolve().parent / "schemas" / "gateway-api-v1.6.1"
NAMESPACE = "cloudnative"
ENVS = ("dev", "prod")
RENDER_DIRS = ("k8s", "k8s/overlays/dev", "k8s/overlays/prod", "k8s/gateway")
GATEWAY_API = "gateway.networking.k8s.io/v1"
# Envoy Gateway's own API (k8s/gateway/envoy-gateway), checked by its own test.
ENVOY_GATEWAY_API = "gateway.envoyproxy.io/v1alpha1"
# 1.30 (preStop `sleep` is beta and on by default from there) and the newest the
# validator ships, found from the package, so an upgrade widens the test.
K8S_VERSIONS = kube.schema_versions()

Obj = dict[str, Any]


# --- rendering -----------------------------------------------------------------


@functools.cache
def render(rel: str) -> tuple[Obj, ...]:
    """`kubectl kustomize` of a directory under the repo, once per session."""
    objs = tuple(kube.render(ROOT / rel))
    assert objs, f"kubectl kustomize {rel} rendered nothing"
    return objs


def find(objs: tuple[Obj, ...], kind: str, name: str | None = None) -> list[Obj]:
    return [
        o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def one(objs: tuple[Obj, ...], kind: str, name: str | None = None) -> Obj:
    found = find(objs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def key(o: Obj) -> tuple[str, str, str]:
    return (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("rel", RENDER_DIRS)
def test_kustomize_renders(rel: str) -> None:
    objs = render(rel)
    for o in objs:
        assert o.get("apiVersion") and o.get("kind") and o["metadata"].get("name"), o
        if o["kind"] != "Namespace":
            assert o["metadata"].get("namespace") == NAMESPACE, key(o)


def test_root_is_namespace_both_environments_and_the_ingress() -> None:
    """k8s/ = what the seed's `kubectl apply -f manifest/` made, and nothing else."""
    expected = {("Namespace", "", NAMESPACE), ("Ingress", NAMESPACE, "fiboserver")}
    for env in ENVS:
        expected |= {key(o) for o in render(f"k8s/overlays/{env}")}
    assert {key(o) for o in render("k8s")} == expected
    # The overlays rendered alone are what the root deploys, byte for byte.
    root = {key(o): o for o in render("k8s")}
    for env in ENVS:
        for o in render(f"k8s/overlays/{env}"):
            assert root[key(o)] == o


# --- schema validation -----------------------------------------------------------


def k8s_objects() -> Iterator[Obj]:
    for rel in ("k8s", "k8s/gateway"):
        for o in render(rel):
            if o["apiVersion"] not in (GATEWAY_API, ENVOY_GATEWAY_API):
                yield o


def test_validator_ships_the_versions_we_claim() -> None:
    versions = all_versions()
    assert "1.30.0" in versions
    assert ["1.30.0", versions[-1]] == K8S_VERSIONS


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_objects_valid_in_strict_mode(version: str) -> None:
    objs = list(k8s_objects())
    # Namespace, 2 ConfigMaps, 2 Services, 2 Deployments, 2 PDBs, 2 NetworkPolicies,
    # the HPA, the Ingress: every one has a schema (a missing one is an error).
    assert len(objs) == 13
    kube.validate_strict(objs, version)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_strict_validation_rejects_an_unknown_field(version: str) -> None:
    """The validator really is strict: a misspelt field inside the pod fails."""
    deployment = copy.deepcopy(one(render("k8s"), "Deployment", "fiboserver-dev"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, version, strict=True)


@functools.cache
def gateway_validators() -> dict[str, jsonschema.protocols.Validator]:
    validators = {}
    for name in ("gateways", "httproutes"):
        crd_file = GATEWAY_SCHEMAS / f"{name}.yaml"
        annotations = yaml.safe_load(crd_file.read_text())["metadata"]["annotations"]
        assert annotations["gateway.networking.k8s.io/bundle-version"] == "v1.6.1"
        assert annotations["gateway.networking.k8s.io/channel"] == "standard"
        kind, validator = kube.crd_validator(crd_file, "v1")
        validators[kind] = validator
    return validators


def gateway_errors(o: Obj) -> list[str]:
    return kube.schema_errors(gateway_validators()[o["kind"]], o)


def test_gateway_api_objects_valid_against_v1_crds() -> None:
    objs = tuple(o for o in render("k8s/gateway") if o["apiVersion"] != ENVOY_GATEWAY_API)
    assert {o["kind"] for o in objs} == {"Gateway", "HTTPRoute"}
    for o in objs:
        assert o["apiVersion"] == GATEWAY_API, key(o)
        assert gateway_errors(o) == [], key(o)


def test_gateway_validation_rejects_an_unknown_field() -> None:
    gateway = copy.deepcopy(one(render("k8s/gateway"), "Gateway"))
    gateway["spec"]["listeners"][0]["tls"]["certificateRef"] = {"name": "typo"}
    assert gateway_errors(gateway)
    route = copy.deepcopy(one(render("k8s/gateway"), "HTTPRoute", "fiboserver-dev"))
    route["spec"]["rules"][0]["backendRefs"][0]["servicePort"] = 80
    assert gateway_errors(route)


# --- the environments: SPEC section 7 line by line -------------------------------


def overlay_config(env: str) -> Config:
    # The service's own loader: this also proves each overlay's file is accepted.
    return load_config(str(K8S / "overlays" / env / "config.yaml"))


@functools.cache
def gunicorn_settings(env: str) -> dict[str, str]:
    """gunicorn's resolved settings for this overlay's config, from the real
    gunicorn.conf.py (`--print-config`), as name -> printed value."""
    gunicorn = Path(sys.executable).with_name("gunicorn")
    out = subprocess.run(
        [str(gunicorn), "-c", "gunicorn.conf.py", "--print-config"],
        cwd=ROOT,
        env={**os.environ, "FIBOSERVER_CONFIG": str(K8S / "overlays" / env / "config.yaml")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    settings = {}
    for line in out.stdout.splitlines():
        name, sep, value = line.partition("=")
        if sep:
            settings[name.strip()] = value.strip()
    return settings


def pod_of(env: str) -> Obj:
    template: Obj = one(render("k8s"), "Deployment", f"fiboserver-{env}")["spec"]["template"]
    return template


def container_of(env: str) -> Obj:
    container: Obj
    (container,) = pod_of(env)["spec"]["containers"]
    return container


def parse_quantity(q: str | int | float) -> float:
    """A Kubernetes resource quantity as a number (CPUs or bytes)."""
    units = {
        "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
        "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
    }  # fmt: skip
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(q))
    assert match, f"bad quantity {q!r}"
    number, unit = match.groups()
    return float(number) * (units[unit] if unit else 1)


def qos_class(pod_spec: Obj) -> str:
    """The QoS class Kubernetes gives a pod (init containers included): Guaranteed
    when every container has CPU and memory limits and its requests equal them
    (an unset request defaults to the limit), BestEffort when no container sets
    any request or limit, Burstable otherwise."""
    containers = pod_spec.get("initContainers", []) + pod_spec["containers"]
    any_set = False
    guaranteed = True
    for c in containers:
        limits = c.get("resources", {}).get("limits", {})
        requests = {**limits, **c.get("resources", {}).get("requests", {})}
        if limits or requests:
            any_set = True
        for resource in ("cpu", "memory"):
            if resource not in limits or parse_quantity(requests[resource]) != parse_quantity(
                limits[resource]
            ):
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


def _c(requests: dict[str, str] | None = None, limits: dict[str, str] | None = None) -> Obj:
    resources: Obj = {}
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits
    return {"name": "c", "resources": resources}


@pytest.mark.parametrize(
    ("containers", "expected"),
    [
        ([_c()], "BestEffort"),
        ([_c(limits={"cpu": "1", "memory": "1Gi"})], "Guaranteed"),
        ([_c({"cpu": "1000m", "memory": "1024Mi"}, {"cpu": "1", "memory": "1Gi"})], "Guaranteed"),
        ([_c({"cpu": "100m", "memory": "128Mi"}, {"cpu": "1", "memory": "1Gi"})], "Burstable"),
        ([_c(limits={"cpu": "1"})], "Burstable"),
        ([_c(limits={"cpu": "1", "memory": "1Gi"}), _c()], "Burstable"),
        ([_c({"cpu": "1"})], "Burstable"),
    ],
)
def test_qos_class_rule(containers: list[Obj], expected: str) -> None:
    assert qos_class({"containers": containers}) == expected


@pytest.mark.parametrize("env", ENVS)
def test_names_and_labels(env: str) -> None:
    objs = render(f"k8s/overlays/{env}")
    name = f"fiboserver-{env}"
    kinds = {"Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy"}
    if env == "prod":
        kinds.add("HorizontalPodAutoscaler")
    for kind in kinds:
        one(objs, kind, name)
    assert {o["kind"] for o in objs} == kinds | {"ConfigMap"}
    labels = {"app.kubernetes.io/name": "fiboserver", "app.kubernetes.io/instance": name}
    for o in objs:
        assert selects(labels, o["metadata"]["labels"]), key(o)
    assert selects(labels, pod_of(env)["metadata"]["labels"])


@pytest.mark.parametrize("env", ENVS)
def test_selectors_pick_exactly_this_environment(env: str) -> None:
    objs = render("k8s")
    pods = {e: pod_of(e)["metadata"]["labels"] for e in ENVS}
    other = next(e for e in ENVS if e != env)
    name = f"fiboserver-{env}"
    deployment = one(objs, "Deployment", name)
    selectors = {
        "Deployment": deployment["spec"]["selector"]["matchLabels"],
        "Service": one(objs, "Service", name)["spec"]["selector"],
        "PodDisruptionBudget": one(objs, "PodDisruptionBudget", name)["spec"]["selector"][
            "matchLabels"
        ],
        "NetworkPolicy": one(objs, "NetworkPolicy", name)["spec"]["podSelector"]["matchLabels"],
    }
    for tsc in deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]:
        selectors[f"spread {tsc['topologyKey']}"] = tsc["labelSelector"]["matchLabels"]
    for what, selector in selectors.items():
        assert selects(selector, pods[env]), f"{what} does not select the {env} pods"
        assert not selects(selector, pods[other]), f"{what} also selects the {other} pods"


@pytest.mark.parametrize("env", ENVS)
def test_config_map_generated_mounted_and_accepted(env: str) -> None:
    objs = render("k8s")
    config_file = K8S / "overlays" / env / "config.yaml"
    (cm,) = [
        o
        for o in find(objs, "ConfigMap")
        if o["metadata"]["name"].startswith(f"fiboserver-config-{env}-")
    ]
    # configMapGenerator's content hash in the name: a changed file is a new name,
    # so the pod template changes and the pods roll.
    assert re.fullmatch(rf"fiboserver-config-{env}-[a-z0-9]{{10}}", cm["metadata"]["name"])
    assert cm["data"] == {"config.yaml": config_file.read_text()}

    config = overlay_config(env)
    assert config.env.lower() == env
    pod = pod_of(env)["spec"]
    container = container_of(env)
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = [m for m in container["volumeMounts"] if "configMap" in volumes[m["name"]]]
    assert len(mounts) == 1
    mount = mounts[0]
    source = volumes[mount["name"]]["configMap"]
    assert source["name"] == cm["metadata"]["name"]
    assert mount.get("readOnly") is True
    (item,) = source["items"]
    assert item["key"] == "config.yaml"
    env_vars = {e["name"]: e.get("value") for e in container["env"]}
    assert env_vars["FIBOSERVER_CONFIG"] == mount["mountPath"] + "/" + item["path"]
    # The container port is the port the config makes gunicorn bind.
    (port,) = [p for p in container["ports"] if p["name"] == "http"]
    assert port == {"name": "http", "containerPort": config.port, "protocol": "TCP"}
    assert gunicorn_settings(env)["bind"] == repr([f"0.0.0.0:{config.port}"])


@pytest.mark.parametrize("env", ENVS)
def test_replicas_and_rolling_update(env: str) -> None:
    objs = render("k8s")
    spec = one(objs, "Deployment", f"fiboserver-{env}")["spec"]
    if env == "prod":
        # No `replicas`: the HPA owns the count (a manifest value would be reset
        # over the HPA's on every server-side apply or GitOps sync).
        assert "replicas" not in spec
        hpa = one(objs, "HorizontalPodAutoscaler", "fiboserver-prod")
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": "fiboserver-prod",
        }
        assert hpa["spec"]["minReplicas"] == 3
        assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
        (metric,) = hpa["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"
        # Utilization is relative to the request: there must be one.
        assert "cpu" in container_of(env)["resources"]["requests"]
    else:
        assert spec["replicas"] == 3
        assert not find(objs, "HorizontalPodAutoscaler", f"fiboserver-{env}")
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    # With maxUnavailable 0 a surge of at least one is what lets the rollout move.
    assert parse_quantity(spec["strategy"]["rollingUpdate"]["maxSurge"]) >= 1


@pytest.mark.parametrize("env", ENVS)
def test_probes_carry_the_environment_prefix(env: str) -> None:
    prefix = overlay_config(env).prefix
    assert prefix == f"/{env}"
    container = container_of(env)
    expected = {
        "startupProbe": f"{prefix}/healthz",
        "livenessProbe": f"{prefix}/healthz",
        "readinessProbe": f"{prefix}/readyz",
    }
    for probe, path in expected.items():
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}, probe


@pytest.mark.parametrize("env", ENVS)
def test_termination_budget(env: str) -> None:
    """preStop sleep, then SIGTERM and gunicorn's drain, all inside the grace period;
    readiness notices quickly; liveness cannot kill a pod that is draining."""
    graceful_timeout = int(gunicorn_settings(env)["graceful_timeout"])
    assert graceful_timeout == 20
    pod = pod_of(env)["spec"]
    container = container_of(env)
    pre_stop = container["lifecycle"]["preStop"]
    assert list(pre_stop) == ["sleep"], "preStop must be the native sleep action"
    sleep = pre_stop["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] >= sleep + graceful_timeout + 5

    readiness = container["readinessProbe"]
    assert readiness["periodSeconds"] * readiness.get("failureThreshold", 3) < sleep
    # Endpoint removal (kube-proxy, ingress controller) needs a few seconds.
    assert sleep >= 5

    # The earliest liveness restart after SIGTERM: a first failure right away,
    # then failureThreshold - 1 more periods. It must come after the drain.
    liveness = container["livenessProbe"]
    earliest_kill = (liveness.get("failureThreshold", 3) - 1) * liveness.get("periodSeconds", 10)
    assert earliest_kill > graceful_timeout

    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 10


@pytest.mark.parametrize("env", ENVS)
def test_security_context(env: str) -> None:
    pod = pod_of(env)["spec"]
    container = container_of(env)
    pod_sc = pod["securityContext"]
    sc = container["securityContext"]

    def effective(field: str) -> Any:
        return sc.get(field, pod_sc.get(field))

    assert effective("runAsNonRoot") is True
    assert effective("runAsUser") == 10001
    assert effective("seccompProfile") == {"type": "RuntimeDefault"}
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc.get("privileged", False) is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert pod["automountServiceAccountToken"] is False
    # The writable places a read-only root filesystem leaves: /tmp on an emptyDir.
    volumes = {v["name"]: v for v in pod["volumes"]}
    (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert "emptyDir" in volumes[tmp["name"]]
    assert pod.get("hostNetwork", False) is False
    assert pod.get("hostPID", False) is False


@pytest.mark.parametrize("env", ENVS)
def test_spread_over_nodes_and_zones(env: str) -> None:
    constraints = {c["topologyKey"]: c for c in pod_of(env)["spec"]["topologySpreadConstraints"]}
    host = constraints["kubernetes.io/hostname"]
    assert host["maxSkew"] == 1
    assert host["whenUnsatisfiable"] == "DoNotSchedule"
    # Zones are a preference only: single-zone clusters must still schedule.
    assert constraints["topology.kubernetes.io/zone"]["whenUnsatisfiable"] == "ScheduleAnyway"
    # Tainted and cordoned nodes are not empty domains that would block a drain.
    assert {c.get("nodeTaintsPolicy") for c in constraints.values()} == {"Honor"}


@pytest.mark.parametrize("env", ENVS)
def test_no_service_links(env: str) -> None:
    assert pod_of(env)["spec"]["enableServiceLinks"] is False


def test_generated_config_maps_are_immutable() -> None:
    maps = find(render("k8s"), "ConfigMap")
    assert {m["metadata"]["name"].rsplit("-", 1)[0] for m in maps} == {
        f"fiboserver-config-{env}" for env in ENVS
    }
    assert all(m["immutable"] is True for m in maps)


@pytest.mark.parametrize("env", ENVS)
def test_image_tag_pinned_to_the_project_version(env: str) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    image = container_of(env)["image"]
    name, _, tag = image.rpartition(":")
    assert name and tag == version and tag != "latest", image


@pytest.mark.parametrize(
    ("env", "expected_qos", "expected"),
    [
        # The seed's numbers, Burstable.
        ("dev", "Burstable", {"requests": {"cpu": 0.1, "memory": 128 * 2**20},
                              "limits": {"cpu": 1.0, "memory": 2**30}}),
        ("prod", "Guaranteed", None),
    ],
)  # fmt: skip
def test_resources_and_qos(env: str, expected_qos: str, expected: Obj | None) -> None:
    pod = pod_of(env)["spec"]
    assert qos_class(pod) == expected_qos
    resources = container_of(env)["resources"]
    if expected is not None:
        actual = {
            kind: {r: parse_quantity(q) for r, q in values.items()}
            for kind, values in resources.items()
        }
        assert actual == expected
    # gunicorn starts one worker per whole CPU of the limit: give it whole CPUs,
    # and check that the printed worker count is derived from the same rule.
    cpu = parse_quantity(resources["limits"]["cpu"])
    assert cpu >= 1 and cpu == int(cpu)
    assert workers_for(cpu, usable_cpus=64) == int(cpu)


@pytest.mark.parametrize("env", ENVS)
def test_pod_disruption_budget(env: str) -> None:
    pdb = one(render("k8s"), "PodDisruptionBudget", f"fiboserver-{env}")["spec"]
    replicas = 3  # the Deployment's replicas and prod's HPA floor (checked above)
    allowed = pdb.get("maxUnavailable", replicas - pdb.get("minAvailable", replicas))
    # At least one voluntary eviction allowed (node drains can proceed), and at
    # least two pods keep serving.
    assert allowed == 1
    assert replicas - allowed >= 2
    # Crash-looping pods do not hold a node drain hostage.
    assert pdb["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def service_port(objs: tuple[Obj, ...], name: str, port: int | str) -> Obj:
    """The Service `name` in the render, and its port given by number or name."""
    svc = one(objs, "Service", name)
    match: Obj
    (match,) = [p for p in svc["spec"]["ports"] if port in (p["port"], p.get("name"))]
    return match


@pytest.mark.parametrize("env", ENVS)
def test_service(env: str) -> None:
    objs = render("k8s")
    svc = one(objs, "Service", f"fiboserver-{env}")
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    ]
    assert "http" in {p["name"] for p in container_of(env)["ports"]}


# Where the proxies named in k8s/ run by default: the Ingress class `nginx` is
# ingress-nginx's controller in namespace ingress-nginx; the GatewayClass `eg` is
# Envoy Gateway, whose Envoy proxies run in envoy-gateway-system. Prometheus runs
# in `monitoring` (SPEC 11).
PROXY_NAMESPACES = {
    ("Ingress", "nginx"): "ingress-nginx",
    ("Gateway", "eg"): "envoy-gateway-system",
}
MONITORING_NAMESPACE = "monitoring"
METRICS_PORT = 9464  # SPEC 11: the container port named `metrics`


def proxy_namespaces() -> list[str]:
    """The namespaces of the Ingress controller and the Gateway data plane that the
    classes set in k8s/ingress.yaml and k8s/gateway/gateway.yaml stand for."""
    ingress = one(render("k8s"), "Ingress")["spec"]["ingressClassName"]
    gateway = one(render("k8s/gateway"), "Gateway")["spec"]["gatewayClassName"]
    return [PROXY_NAMESPACES[("Ingress", ingress)], PROXY_NAMESPACES[("Gateway", gateway)]]


def selector_matches(selector: Obj, labels: dict[str, str]) -> bool:
    """A label selector (matchLabels and the In/NotIn/Exists/DoesNotExist
    expressions) against a set of labels, as the API server evaluates it."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        present = expr["key"] in labels
        value = labels.get(expr["key"])
        ok = {
            "In": present and value in expr.get("values", []),
            "NotIn": not present or value not in expr.get("values", []),
            "Exists": present,
            "DoesNotExist": not present,
        }[expr["operator"]]
        if not ok:
            return False
    return True


def admits(policy: Obj, container: Obj, namespace: str, port: int) -> bool:
    """Whether the NetworkPolicy lets a pod in `namespace` (any pod there) open a
    TCP connection to `port` of `container`. Named ports resolve to the
    container's ports; a rule without ports or peers allows all of them."""
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    ns_labels = {"kubernetes.io/metadata.name": namespace}
    for rule in policy.get("ingress", []):
        ports = [named.get(p["port"], p["port"]) for p in rule.get("ports", [])]
        if ports and port not in ports:
            continue
        for peer in rule.get("from", [{}]):
            assert set(peer) == {"namespaceSelector"}, f"unexpected peer {peer}"
            if selector_matches(peer["namespaceSelector"], ns_labels):
                return True
    return False


@pytest.mark.parametrize("env", ENVS)
def test_network_policy_rules(env: str) -> None:
    """Exactly two rules: the proxies in front of the service to `http`, Prometheus
    to `metrics`; no egress at all. Ports and namespaces checked against the
    Service, the Deployment, the Ingress and the Gateway."""
    objs = render("k8s")
    policy = one(objs, "NetworkPolicy", f"fiboserver-{env}")["spec"]
    container = container_of(env)
    proxies = proxy_namespaces()
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["egress"] == []
    assert policy["ingress"] == [
        {
            "from": [
                {
                    "namespaceSelector": {
                        "matchExpressions": [
                            {"key": "kubernetes.io/metadata.name", "operator": "In",
                             "values": proxies}
                        ]
                    }
                }
            ],
            "ports": [{"protocol": "TCP", "port": "http"}],
        },
        {
            "from": [
                {"namespaceSelector": {"matchLabels": {
                    "kubernetes.io/metadata.name": MONITORING_NAMESPACE}}}
            ],
            "ports": [{"protocol": "TCP", "port": "metrics"}],
        },
    ]  # fmt: skip
    # The port names exist on the container: `http` is what the Service targets,
    # `metrics` is SPEC 11's 9464 and no Service port leads to it.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": overlay_config(env).port, "metrics": METRICS_PORT}
    svc_ports = one(objs, "Service", f"fiboserver-{env}")["spec"]["ports"]
    assert [p["targetPort"] for p in svc_ports] == ["http"]
    # And what that means, connection by connection.
    http, metrics = ports["http"], ports["metrics"]
    for ns in proxies:
        assert admits(policy, container, ns, http)
        assert not admits(policy, container, ns, metrics)
    assert admits(policy, container, MONITORING_NAMESPACE, metrics)
    assert not admits(policy, container, MONITORING_NAMESPACE, http)
    for ns in (NAMESPACE, "default", "kube-system", "logging"):
        assert not admits(policy, container, ns, http), ns
        assert not admits(policy, container, ns, metrics), ns


def test_network_policy_evaluator() -> None:
    """The evaluator above is not vacuous: it admits and refuses as Kubernetes does."""
    container = {"ports": [{"name": "http", "containerPort": 8080}]}
    by_name = {"kubernetes.io/metadata.name": "a"}
    allow_a: Obj = {"ingress": [{"from": [{"namespaceSelector": {"matchLabels": by_name}}],
                            "ports": [{"port": "http"}]}]}  # fmt: skip
    assert admits(allow_a, container, "a", 8080)
    assert not admits(allow_a, container, "b", 8080)
    assert not admits(allow_a, container, "a", 9464)
    allow_all_ns: Obj = {"ingress": [{"from": [{"namespaceSelector": {}}]}]}
    assert admits(allow_all_ns, container, "b", 9464)
    assert not admits({"ingress": []}, container, "a", 8080)
    expr = {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                                  "values": ["a"]}]}  # fmt: skip
    assert selector_matches(expr, {"kubernetes.io/metadata.name": "b"})
    assert not selector_matches(expr, by_name)


def test_namespace() -> None:
    labels = one(render("k8s"), "Namespace", NAMESPACE)["metadata"]["labels"]
    # The pods meet the `restricted` Pod Security Standard: enforced, and warned
    # about and audited at the same level, all pinned to one Kubernetes minor.
    for mode in ("enforce", "warn", "audit"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted", mode
        version = labels[f"pod-security.kubernetes.io/{mode}-version"]
        assert version == "v1.34", f"{mode}-version {version}: pin a minor, not latest"


ROUTES = {"/dev": "fiboserver-dev", "/prod": "fiboserver-prod"}


def test_ingress_routes_tls_and_class() -> None:
    objs = render("k8s")
    (ingress,) = find(objs, "Ingress")
    spec = ingress["spec"]
    assert spec["ingressClassName"]
    assert spec["tls"] == [{"hosts": ["cloudnative"], "secretName": "cloudnative"}]
    (rule,) = spec["rules"]
    assert rule["host"] == "cloudnative"
    routes = {}
    for path in rule["http"]["paths"]:
        assert path["pathType"] == "Prefix"
        backend = path["backend"]["service"]
        port = backend["port"].get("number", backend["port"].get("name"))
        # The Service exists in the same render and the port leads to the pods' `http`.
        assert service_port(objs, backend["name"], port)["targetPort"] == "http"
        routes[path["path"]] = backend["name"]
    assert routes == ROUTES
    # Plain HTTP redirects to HTTPS (ingress-nginx; others ignore the annotation).
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/ssl-redirect"] == "true"


def test_controller_names_are_set_in_one_place() -> None:
    """The ingress class, the Gateway class and each namespace the NetworkPolicy
    admits: each appears in exactly one manifest line of the app's k8s/ tree."""
    own = {"logging", "monitoring"}  # their own stacks, with their own namespaces
    files = [p for p in K8S.rglob("*.yaml") if not own & set(p.relative_to(K8S).parts)]

    def lines_with(pattern: str) -> list[str]:
        return [
            f"{p.relative_to(ROOT)}:{n}"
            for p in files
            for n, line in enumerate(p.read_text().splitlines(), 1)
            if not line.strip().startswith("#") and re.search(pattern, line)
        ]

    for needle in ("ingressClassName:", "gatewayClassName:", "kubernetes.io/metadata.name"):
        found = lines_with(re.escape(needle))
        assert len(found) == (2 if needle.startswith("kubernetes.io") else 1), (needle, found)
    for namespace in [*proxy_namespaces(), MONITORING_NAMESPACE]:
        found = lines_with(rf"(^|[\s:-]){re.escape(namespace)}\s*$")
        assert len(found) == 1, (namespace, found)


def test_gateway_and_routes() -> None:
    services = render("k8s")
    objs = render("k8s/gateway")
    gateway = one(objs, "Gateway")
    gw_name = gateway["metadata"]["name"]
    listeners = {listener["name"]: listener for listener in gateway["spec"]["listeners"]}
    https = listeners["https"]
    assert (https["protocol"], https["port"], https["hostname"]) == ("HTTPS", 443, "cloudnative")
    assert https["tls"]["mode"] == "Terminate"
    assert https["tls"]["certificateRefs"] == [
        {"kind": "Secret", "group": "", "name": "cloudnative"}
    ]
    assert listeners["http"]["protocol"] == "HTTP"

    routes = {}
    redirects = 0
    for route in find(objs, "HTTPRoute"):
        spec = route["spec"]
        assert spec["hostnames"] == ["cloudnative"]
        (parent,) = spec["parentRefs"]
        assert parent["name"] == gw_name
        (rule,) = spec["rules"]
        if parent["sectionName"] == "http":
            # The plain-HTTP listener only redirects.
            (flt,) = rule["filters"]
            assert flt["type"] == "RequestRedirect"
            assert flt["requestRedirect"]["scheme"] == "https"
            assert "backendRefs" not in rule
            redirects += 1
            continue
        assert parent["sectionName"] == "https"
        (match,) = rule["matches"]
        (backend,) = rule["backendRefs"]
        assert match["path"]["type"] == "PathPrefix"
        assert service_port(services, backend["name"], backend["port"])["targetPort"] == "http"
        routes[match["path"]["value"]] = backend["name"]
    assert routes == ROUTES
    assert redirects == 1


# Envoy Gateway's duration format (BackendTrafficPolicy CRD, gateway.envoyproxy.io).
ENVOY_DURATION = re.compile(r"^([0-9]{1,5}(h|m|s|ms)){1,4}$")
# ingress-nginx's default upstream keep-alive timeout (`upstream-keepalive-timeout`).
INGRESS_NGINX_UPSTREAM_IDLE_S = 60


def envoy_seconds(duration: str) -> float:
    assert ENVOY_DURATION.match(duration), duration
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(int(n) * units[u] for n, u in re.findall(r"([0-9]+)(ms|h|m|s)", duration))


def test_gateway_closes_idle_upstream_connections_first() -> None:
    """The proxy, not gunicorn, closes an idle pooled connection: otherwise the next
    request may go out on a connection gunicorn is closing (a 503 for the client).
    Gateway API v1.6.1 standard has no such field; Envoy Gateway's
    BackendTrafficPolicy sets it, for the Gateway of class `eg` only."""
    objs = render("k8s/gateway")
    gateway = one(objs, "Gateway")
    policies = find(objs, "BackendTrafficPolicy")
    assert (gateway["spec"]["gatewayClassName"] == "eg") == bool(policies)
    (policy,) = policies
    assert policy["apiVersion"] == ENVOY_GATEWAY_API
    assert policy["metadata"]["namespace"] == gateway["metadata"]["namespace"]
    spec = policy["spec"]
    assert spec["targetRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway",
         "name": gateway["metadata"]["name"]}
    ]  # fmt: skip
    assert set(spec) == {"targetRefs", "timeout"} and list(spec["timeout"]) == ["http"]
    idle = envoy_seconds(spec["timeout"]["http"]["connectionIdleTimeout"])
    for env in ENVS:
        keepalive = float(gunicorn_settings(env)["keepalive"])
        # At least 10 s earlier: timers on both sides are not exact.
        assert 0 < idle <= keepalive - 10, (env, idle, keepalive)
        assert keepalive - 10 >= INGRESS_NGINX_UPSTREAM_IDLE_S, env
    assert envoy_seconds("1h30m") == 5400 and envoy_seconds("250ms") == 0.25


# --- checkov ----------------------------------------------------------------------


def test_checkov_fails_only_the_listed_checks(tmp_path: Path) -> None:
    objects = render("k8s") + render("k8s/gateway")
    kube.assert_checkov_fails_only_skips(objects, K8S / "checkov-skips.yaml", tmp_path)
