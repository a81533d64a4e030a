"""k8s/edge/traefik (Traefik only): the plain-HTTP side of the Ingress on a
Traefik edge, valid against Traefik v3.6.12's vendored CRDs, and tied to the
Ingress (README "HTTPS redirect"). tests/cluster/test_edge.py shows Traefik
serving them, and that without the Middleware plain HTTP is not redirected."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import jsonschema
import yaml

from tests.support import kube
from tests.support.appk8s import NAMESPACE, one, render
from tests.support.kube import Obj

CRDS = Path(__file__).resolve().parent / "schemas" / "traefik-v3.6.12"
TRAEFIK_API = "traefik.io/v1alpha1"


@functools.cache
def validators() -> dict[str, jsonschema.protocols.Validator]:
    out = {}
    for crd in yaml.safe_load_all((CRDS / "kubernetes-crd-definition-v1.yml").read_text()):
        assert crd["spec"]["group"] == "traefik.io"
        (served,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
        schema = kube.strict_schema(served["schema"]["openAPIV3Schema"])
        out[crd["spec"]["names"]["kind"]] = jsonschema.Draft7Validator(schema)
    return out


def errors(o: Obj) -> list[str]:
    return kube.schema_errors(validators()[o["kind"]], o)


def test_edge_objects_are_a_middleware_and_the_route_using_it() -> None:
    objs = render("k8s/edge/traefik")
    assert sorted(o["kind"] for o in objs) == ["IngressRoute", "Middleware"]
    for o in objs:
        assert o["apiVersion"] == TRAEFIK_API, o
        assert o["metadata"]["namespace"] == NAMESPACE, o
        assert errors(o) == [], o["kind"]


def test_middleware_redirects_to_https_permanently() -> None:
    mw = one(render("k8s/edge/traefik"), "Middleware", "redirect-https")
    assert mw["spec"] == {"redirectScheme": {"scheme": "https", "permanent": True}}


def test_route_is_plain_http_only_and_only_redirects() -> None:
    route = one(render("k8s/edge/traefik"), "IngressRoute", "fiboserver-http")
    ingress = one(render("k8s"), "Ingress", "fiboserver")
    assert route["spec"]["entryPoints"] == ["web"]
    (rule,) = route["spec"]["routes"]
    (host,) = {r["host"] for r in ingress["spec"]["rules"]}
    assert rule["match"] == f"Host(`{host}`)"
    assert rule["middlewares"] == [{"name": "redirect-https"}]
    assert rule["services"] == [{"kind": "TraefikService", "name": "noop@internal"}]


def test_ingress_is_https_only_on_traefik() -> None:
    """The Ingress's routes on Traefik: `websecure` only, TLS on (with the Secret
    of `tls`); ingress-nginx's redirect annotation stays for ingress-nginx."""
    notes = one(render("k8s"), "Ingress", "fiboserver")["metadata"]["annotations"]
    assert notes["traefik.ingress.kubernetes.io/router.entrypoints"] == "websecure"
    assert notes["traefik.ingress.kubernetes.io/router.tls"] == "true"
    assert notes["nginx.ingress.kubernetes.io/ssl-redirect"] == "true"
    # No middleware on the HTTPS routes: a redirect there would loop.
    assert "traefik.ingress.kubernetes.io/router.middlewares" not in notes


def test_validation_rejects_an_unknown_field() -> None:
    objs = render("k8s/edge/traefik")
    mw = copy.deepcopy(one(objs, "Middleware", "redirect-https"))
    mw["spec"]["redirectScheme"]["permanant"] = True
    assert errors(mw)
    route = copy.deepcopy(one(objs, "IngressRoute", "fiboserver-http"))
    route["spec"]["entrypoints"] = ["web"]
    assert errors(route)
