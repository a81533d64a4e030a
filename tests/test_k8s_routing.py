"""Traffic in (README "Deployment on Kubernetes", docs/kubernetes.md): the Services,
the Ingress and the Gateway API routes.

Every route ends at an existing Service port leading to the pods' `http` port, TLS
terminates at the edge and plain HTTP redirects, and Envoy Gateway closes idle
upstream connections before gunicorn's keep-alive does.
"""

from __future__ import annotations

import re

import pytest

from tests.support.appk8s import (
    ENVOY_GATEWAY_API,
    ENVS,
    container_of,
    find,
    gunicorn_settings,
    one,
    render,
)
from tests.support.kube import Obj


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
