"""The Helm chart (charts/fiboserver) with the real, pinned helm: the helm itself,
`helm lint --strict`, strict Kubernetes schemas for the oldest and newest versions
we claim, the vendored CRDs, checkov with the project's skip file, the monitoring
objects only where their API is served, a config change that rolls the pods, the
`helm test` Pod, and `make chart`.
"""

from __future__ import annotations

import copy
import functools
import re
import subprocess
import tarfile
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.support import kube
from tests.support.helmchart import (
    CHART,
    HELM_LABELS,
    MONITORING_APIS,
    VALUES,
    by_kind,
    env_release,
    helm,
    helm_binary,
    hooks,
    template,
    the,
    without_hooks,
)
from tests.support.kube import Obj
from tests.support.repo import REPO_ROOT
from tools.cluster.binaries import HELM

SCHEMAS = REPO_ROOT / "tests" / "schemas"
GATEWAY_CRDS = SCHEMAS / "gateway-api-v1.6.1"
OPERATOR_CRDS = SCHEMAS / "prometheus-operator-v0.93.0"
VERSION = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
LINT_VALUES = {"default": None, "dev": VALUES["dev"], "prod": VALUES["prod"]}


def test_helm_is_the_pinned_release() -> None:
    out = helm("version", "--template", "{{ .Version }} {{ .GitTreeState }}")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{HELM.version} clean"
    gomod = (HELM.moddir / "go.mod").read_text()
    assert re.search(rf"^\s*helm\.sh/helm/v4 {re.escape(HELM.version)}( //.*)?$", gomod, re.M)
    assert "tool helm.sh/helm/v4/cmd/helm" in gomod
    assert f"helm.sh/helm/v4 {HELM.version} h1:" in (HELM.moddir / "go.sum").read_text()


def test_chart_version_is_the_project_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["version"] == VERSION
    # The tag scheme without git: the version alone (`make chart` sets the real one).
    assert chart["appVersion"] == VERSION


@pytest.mark.parametrize("values", LINT_VALUES)
def test_lint_strict_passes(values: str) -> None:
    path = LINT_VALUES[values]
    out = helm("lint", "--strict", str(CHART), *(("--values", str(path)) if path else ()))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in out.stdout
    assert "[WARNING]" not in out.stdout and "[ERROR]" not in out.stdout


def test_lint_strict_fails_a_broken_template(tmp_path: Path) -> None:
    """The control: lint does look at the templates."""
    chart = tmp_path / "fiboserver"
    import shutil

    shutil.copytree(CHART, chart)
    (chart / "templates" / "service.yaml").write_text("kind: Service\n  bad: [indent\n")
    out = helm("lint", "--strict", str(chart))
    assert out.returncode != 0 and "[ERROR]" in out.stdout, out.stdout


# --- strict schemas and checkov --------------------------------------------------


def everything(env: str) -> list[Obj]:
    """Every object the chart can render for `env`: route, monitoring and test hooks on."""
    return env_release(env, sets=["gateway.enabled=true", "monitoring.enabled=true"],
                       api_versions=MONITORING_APIS)  # fmt: skip


CRD_KINDS = {"HTTPRoute": GATEWAY_CRDS / "httproutes.yaml",
             "PodMonitor": OPERATOR_CRDS / "podmonitors.yaml",
             "PrometheusRule": OPERATOR_CRDS / "prometheusrules.yaml"}  # fmt: skip


@functools.cache
def crd_validator(kind: str) -> jsonschema.protocols.Validator:
    found, validator = kube.crd_validator(CRD_KINDS[kind], "v1")
    assert found == kind
    return validator


@pytest.mark.parametrize("version", kube.schema_versions())
@pytest.mark.parametrize("env", ["dev", "prod"])
def test_rendered_objects_valid_in_strict_mode(env: str, version: str) -> None:
    objs = everything(env)
    core = [o for o in objs if o["kind"] not in CRD_KINDS]
    kinds = sorted(o["kind"] for o in core)
    assert kinds == sorted(["ConfigMap", "ConfigMap", "Deployment", "Ingress", "NetworkPolicy",
                            "NetworkPolicy", "PodDisruptionBudget", "Service", "Pod"]
                           + (["HorizontalPodAutoscaler"] if env == "prod" else []))  # fmt: skip
    kube.validate_strict(core, version)
    for o in objs:
        if o["kind"] in CRD_KINDS:
            assert kube.schema_errors(crd_validator(o["kind"]), o) == [], o["kind"]


def test_crd_validation_sees_an_unknown_field() -> None:
    route = copy.deepcopy(the(everything("dev"), "HTTPRoute"))
    route["spec"]["rules"][0]["backendRefs"][0]["servicePort"] = 80
    assert kube.schema_errors(crd_validator("HTTPRoute"), route)


def test_checkov_fails_only_the_listed_checks(tmp_path: Path) -> None:
    """The project's skip file (k8s/checkov-skips.yaml) plus the chart's own for the
    `helm test` Pod (charts/checkov-skips.yaml): nothing else fails, no skip is stale."""
    skips = yaml.safe_load((REPO_ROOT / "k8s" / "checkov-skips.yaml").read_text())
    for check, entry in yaml.safe_load((REPO_ROOT / "charts" / "checkov-skips.yaml")
                                       .read_text()).items():  # fmt: skip
        skips.setdefault(check, {"resources": [], "reason": entry["reason"]})
        skips[check]["resources"] = skips[check]["resources"] + entry["resources"]
    merged = tmp_path / "skips.yaml"
    merged.write_text(yaml.safe_dump(skips))
    scan = tmp_path / "scan"
    scan.mkdir()
    objects = [o for env in ("dev", "prod") for o in everything(env)]
    # Monitoring objects are shared by both releases; once is what a cluster gets.
    unique = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o
              for o in objects}  # fmt: skip
    kube.assert_checkov_fails_only_skips(list(unique.values()), merged, scan)


# --- monitoring behind its API --------------------------------------------------


def test_monitoring_needs_the_value_and_the_api() -> None:
    off = env_release("dev", api_versions=MONITORING_APIS)
    assert not [o for o in off if o["metadata"].get("namespace") == "monitoring"]
    no_api = env_release("dev", sets=["monitoring.enabled=true"])
    assert [o["kind"] for o in no_api if o["metadata"].get("namespace") == "monitoring"] == [
        "ConfigMap"
    ]
    on = everything("dev")
    assert sorted(o["kind"] for o in on if o["metadata"].get("namespace") == "monitoring") == [
        "ConfigMap", "PodMonitor", "PrometheusRule"]  # fmt: skip


def test_monitoring_objects_are_k8s_monitoring() -> None:
    """The chart reads the project's own files: what `kubectl apply -k k8s/monitoring`
    applies, Helm's labels aside, watching the release's namespace."""
    ours = {
        o["kind"]: o for o in everything("prod") if o["metadata"].get("namespace") == "monitoring"
    }
    theirs = {o["kind"]: o for o in kube.render(REPO_ROOT / "k8s" / "monitoring")}
    assert set(ours) == set(theirs)
    for kind, o in ours.items():
        o = copy.deepcopy(o)
        for label in HELM_LABELS:
            del o["metadata"]["labels"][label]
        assert o == theirs[kind], kind
    other_ns = env_release("prod", sets=["monitoring.enabled=true"], api_versions=MONITORING_APIS,
                           namespace="shop")  # fmt: skip
    monitor = the(other_ns, "PodMonitor")
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["shop"]}


# --- config rolls the pods; helm labels stay off the pods -------------------------


def pod_template(objs: list[Obj]) -> Obj:
    template_: Obj = the(objs, "Deployment")["spec"]["template"]
    return template_


def test_a_config_change_is_a_new_configmap_and_a_new_pod_template() -> None:
    before = env_release("dev")
    after = env_release("dev", sets=["config.maxseq=50000"])
    old, new = the(before, "ConfigMap"), the(after, "ConfigMap")
    assert old["metadata"]["name"] != new["metadata"]["name"]
    assert yaml.safe_load(new["data"]["config.yaml"])["maxseq"] == 50000
    assert new["immutable"] is True
    vols = {v["name"]: v for v in pod_template(after)["spec"]["volumes"]}
    assert vols["config"]["configMap"]["name"] == new["metadata"]["name"]
    assert pod_template(before) != pod_template(after)
    # The same config is the same name: an upgrade without a config change rolls nothing.
    assert the(env_release("dev"), "ConfigMap")["metadata"]["name"] == old["metadata"]["name"]


def test_a_chart_version_change_alone_rolls_nothing(tmp_path: Path) -> None:
    chart = tmp_path / "fiboserver"
    import shutil

    shutil.copytree(CHART, chart)
    meta = chart / "Chart.yaml"
    meta.write_text(meta.read_text().replace(f"version: {VERSION}", "version: 9.9.9"))
    before = pod_template(env_release("dev"))
    after_objs = template("fiboserver-dev", VALUES["dev"], chart=chart)
    assert the(after_objs, "Service")["metadata"]["labels"]["helm.sh/chart"] == "fiboserver-9.9.9"
    assert pod_template(after_objs) == before


# --- the helm test Pod -------------------------------------------------------------


def test_helm_test_pod_meets_pod_security_restricted() -> None:
    """The `restricted` profile's rules, read off the Pod (the cluster tests run it
    in a namespace that enforces the profile)."""
    pod = the(hooks(env_release("dev")), "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    spec = pod["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC", "volumes"))
    for c in spec["containers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert not c.get("ports")


def test_helm_test_pod_asks_the_service_for_readyz_and_fibo() -> None:
    objs = env_release("prod")
    pod = the(hooks(objs), "Pod")
    (container,) = pod["spec"]["containers"]
    assert container["image"] == the(objs, "Deployment")["spec"]["template"]["spec"][
        "containers"][0]["image"]  # fmt: skip
    script, service, prefix = container["command"][2:]
    assert (service, prefix) == ("fiboserver-prod", "/prod")
    assert service == the(without_hooks(objs), "Service")["metadata"]["name"]
    assert pod["spec"]["enableServiceLinks"] is True  # FIBOSERVER_PROD_SERVICE_HOST
    assert '"/readyz"' in script and '"/fibo?n=10"' in script and "== 55" in script
    # Not one of the app's pods: no Service endpoint, not under its NetworkPolicy.
    selector = the(without_hooks(objs), "Service")["spec"]["selector"]
    assert not selector.items() <= pod["metadata"]["labels"].items()
    opening = the(hooks(objs), "NetworkPolicy")
    peer = opening["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    assert peer.items() <= pod["metadata"]["labels"].items()
    assert opening["spec"]["podSelector"]["matchLabels"] == selector


def test_helm_test_script_runs(tmp_path: Path) -> None:
    """The test Pod's script, run here against a Service address where nothing
    listens, and without the Service's variables: it fails, saying why."""
    (container,) = the(hooks(env_release("dev")), "Pod")["spec"]["containers"]
    script, *args = container["command"][2:]
    script = script.replace("time.monotonic() + 60", "time.monotonic() + 1")
    env = {"FIBOSERVER_DEV_SERVICE_HOST": "127.0.0.1", "FIBOSERVER_DEV_SERVICE_PORT_HTTP": "9"}
    out = subprocess.run(["python3", "-c", script, *args], env=env,
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert out.returncode != 0 and "/dev/readyz: no answer" in out.stderr, out.stderr
    assert "http://127.0.0.1:9/dev" in out.stderr
    out = subprocess.run(["python3", "-c", script, *args], env={},
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert "FIBOSERVER_DEV_SERVICE_HOST unset" in out.stderr, out.stderr


# --- make chart --------------------------------------------------------------------


def make(*args: str) -> str:
    out = subprocess.run(["make", "-s", "--no-print-directory", *args], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_make_chart_packages_the_version_with_the_image_tag(tmp_path: Path) -> None:
    helm_binary()
    dist = tmp_path / "dist"
    out = make("chart", f"DIST={dist}")
    tgz = dist / f"fiboserver-{VERSION}.tgz"
    assert tgz.is_file(), out
    tag = make("print-image").strip().rpartition(":")[2]
    with tarfile.open(tgz) as tar:
        meta = yaml.safe_load(tar.extractfile("fiboserver/Chart.yaml").read())  # type: ignore[union-attr]
        member = tar.getmember("fiboserver/files/dashboard.json")
        assert member.isfile(), "the link to k8s/monitoring is stored as the file itself"
        dashboard = tar.extractfile(member).read()  # type: ignore[union-attr]
    assert (meta["version"], meta["appVersion"]) == (VERSION, tag)
    assert dashboard == (REPO_ROOT / "k8s/monitoring/dashboards/fiboserver.json").read_bytes()
    deployment = the(template("fiboserver-dev", VALUES["dev"], chart=tgz,
                              sets=["image.tag="]), "Deployment")  # fmt: skip
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"].endswith(f":{tag}")


def test_dist_is_ignored_by_git() -> None:
    out = subprocess.run(["git", "check-ignore", "-q", "dist/fiboserver-0.1.0.tgz"],
                         cwd=REPO_ROOT, check=False)  # fmt: skip
    assert out.returncode == 0


def test_chart_objects_by_kind_per_environment() -> None:
    dev, prod = without_hooks(env_release("dev")), without_hooks(env_release("prod"))
    assert "replicas" in the(dev, "Deployment")["spec"] and not by_kind(
        dev, "HorizontalPodAutoscaler"
    )
    assert "replicas" not in the(prod, "Deployment")["spec"]
    assert (
        the(prod, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"] == "fiboserver-prod"
    )
