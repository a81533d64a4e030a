"""The Kubernetes manifests (README "Deployment on Kubernetes") as a whole: what kustomize renders.

Every directory renders with the real `kubectl kustomize`; the root is exactly the
namespace, both environments and the Ingress; every object is valid in strict
mode for the Kubernetes versions we claim, the Gateway API objects against the
vendored v1 CRDs; checkov fails only the checks listed with their reasons.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions

from tests.support import kube
from tests.support.appk8s import ENVOY_GATEWAY_API, ENVS, K8S, NAMESPACE, key, one, render
from tests.support.kube import Obj

GATEWAY_SCHEMAS = Path(__file__).resolve().parent / "schemas" / "gateway-api-v1.6.1"
RENDER_DIRS = ("k8s", "k8s/overlays/dev", "k8s/overlays/prod", "k8s/gateway")
GATEWAY_API = "gateway.networking.k8s.io/v1"
# 1.30 (preStop `sleep` is beta and on by default from there) and the newest the
# validator ships, found from the package, so an upgrade widens the test.
K8S_VERSIONS = kube.schema_versions()


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


# --- checkov ----------------------------------------------------------------------


def test_checkov_fails_only_the_listed_checks(tmp_path: Path) -> None:
    objects = render("k8s") + render("k8s/gateway")
    kube.assert_checkov_fails_only_skips(objects, K8S / "checkov-skips.yaml", tmp_path)
