"""The project's Ingress turned into an nginx.conf, for the e2e and cluster edges.

- `rendered_ingress()` runs `kubectl kustomize k8s` and returns the one Ingress.
- `plan_from_ingress()` reads its TLS hosts and rules into an `EdgePlan`.
- `render_nginx_conf()` turns the plan into an nginx.conf: every `host` a TLS server
  (certificate files looked up by the TLS Secret's name), every path a location,
  every backend Service an upstream whose servers the caller supplies (the local
  replicas standing in for the Service's endpoints), HTTP redirected to HTTPS.

`edge.Nginx` runs the result.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.kube import render
from tests.support.repo import REPO_ROOT

TEMPLATE = REPO_ROOT / "tests" / "e2e" / "nginx.conf.tmpl"

Manifest = dict[str, Any]


def rendered_ingress(path: Path = REPO_ROOT / "k8s") -> Manifest:
    """The single Ingress object of the rendered top-level kustomization."""
    ingresses = [o for o in render(path) if o.get("kind") == "Ingress"]
    assert len(ingresses) == 1, f"expected one Ingress in {path}, got {len(ingresses)}"
    ingress: Manifest = ingresses[0]
    return ingress


@dataclass(frozen=True)
class Route:
    """One Ingress path: where it matches and which Service answers it."""

    host: str
    path: str
    path_type: str
    service: str
    port: str  # Service port number or name, as written in the Ingress


@dataclass
class EdgePlan:
    """What the Ingress asks for, in the terms nginx needs."""

    routes: list[Route] = field(default_factory=list)
    tls_hosts: dict[str, str] = field(default_factory=dict)  # host -> Secret name

    @property
    def services(self) -> list[str]:
        return sorted({r.service for r in self.routes})

    @property
    def hosts(self) -> list[str]:
        return sorted({r.host for r in self.routes})


def plan_from_ingress(ingress: Manifest) -> EdgePlan:
    spec = ingress["spec"]
    plan = EdgePlan()
    for tls in spec.get("tls") or []:
        for host in tls.get("hosts") or []:
            plan.tls_hosts[host] = tls["secretName"]
    for rule in spec.get("rules") or []:
        host = rule.get("host", "")
        assert host, "a rule without host would catch every name; the e2e edge needs one"
        for p in rule["http"]["paths"]:
            svc = p["backend"]["service"]
            port = svc["port"].get("number", svc["port"].get("name"))
            plan.routes.append(
                Route(host, p["path"], p.get("pathType", "Prefix"), svc["name"], str(port))
            )
    return plan


def upstream_name(service: str, port: str) -> str:
    # As ingress-nginx names them: <service>-<port>.
    return f"{service}-{port}"


def _locations(routes: Sequence[Route]) -> str:
    out: list[str] = []
    for r in routes:
        target = f"http://{upstream_name(r.service, r.port)}"
        if r.path_type == "Exact":
            matches = [f"= {r.path}"]
        elif r.path.rstrip("/") == "":
            matches = ["/"]
        else:
            # Ingress Prefix matching is per path element: /dev matches /dev and
            # /dev/..., never /devx. nginx needs both forms for that.
            base = r.path.rstrip("/")
            matches = [f"= {base}", f"{base}/"]
        for m in matches:
            out.append(f"        location {m} {{\n            proxy_pass {target};\n        }}")
    if not any(r.path.rstrip("/") == "" for r in routes):
        # Paths no rule matches: 404, as ingress-nginx's default backend answers.
        out.append("        location / {\n            return 404;\n        }")
    return "\n".join(out)


def _upstreams(plan: EdgePlan, backends: Mapping[str, Sequence[str]]) -> list[str]:
    """One upstream per (Service, port) the plan routes to."""
    upstreams: list[str] = []
    seen: set[str] = set()
    for r in plan.routes:
        name = upstream_name(r.service, r.port)
        if name in seen:
            continue
        seen.add(name)
        servers = list(backends.get(r.service, ()))
        # nginx needs at least one server; a Service without endpoints answers 502/503.
        lines = [f"        server {s};" for s in servers] or ["        server 127.0.0.1:1 down;"]
        upstreams.append(
            f"    upstream {name} {{\n"
            + "\n".join(lines)
            + "\n        # idle keep-alive connections per worker (see proxy_http_version)\n"
            + "        keepalive 32;\n    }"
        )
    return upstreams


def _servers(
    plan: EdgePlan, secrets: Mapping[str, tuple[Path, Path]], http_port: int, https_port: int
) -> list[str]:
    """A server per host: plain HTTP, or a redirect to its TLS twin."""
    servers: list[str] = []
    for host in plan.hosts:
        routes = [r for r in plan.routes if r.host == host]
        secret = plan.tls_hosts.get(host)
        if secret is None:
            servers.append(
                f"    server {{\n        listen 127.0.0.1:{http_port};\n"
                f"        server_name {host};\n{_locations(routes)}\n    }}"
            )
            continue
        crt, key = secrets[secret]
        # TLS host: plain HTTP only redirects (ingress-nginx's ssl-redirect, 308 keeps
        # the method). The port is spelled out because the test edge is not on 443.
        servers.append(
            f"    server {{\n        listen 127.0.0.1:{http_port};\n"
            f"        server_name {host};\n"
            f"        return 308 https://$host:{https_port}$request_uri;\n    }}"
        )
        servers.append(
            f"    server {{\n        listen 127.0.0.1:{https_port} ssl;\n"
            f"        server_name {host};\n"
            f"        ssl_certificate {crt};\n        ssl_certificate_key {key};\n"
            f"{_locations(routes)}\n    }}"
        )
    return servers


def render_nginx_conf(
    plan: EdgePlan,
    backends: Mapping[str, Sequence[str]],
    secrets: Mapping[str, tuple[Path, Path]],
    *,
    prefix: Path,
    http_port: int,
    https_port: int,
    control_port: int,
    generation: int,
    retry: bool = True,
) -> str:
    """nginx.conf for `plan`. `backends`: Service name -> "127.0.0.1:port" list (its
    endpoints); `secrets`: TLS Secret name -> (certificate file, key file)."""
    # Workers drop root when the master has it; they write only the temp dirs.
    user = "user nobody nogroup;" if os.geteuid() == 0 else ""
    text = TEMPLATE.read_text()
    for k, v in {
        "@USER@": user,
        "@PREFIX@": str(prefix),
        "@UPSTREAMS@": "\n".join(_upstreams(plan, backends)),
        "@SERVERS@": "\n".join(_servers(plan, secrets, http_port, https_port)),
        "@HTTP_PORT@": str(http_port),
        "@HTTPS_PORT@": str(https_port),
        "@CONTROL_PORT@": str(control_port),
        "@GENERATION@": str(generation),
        "@NEXT_UPSTREAM@": "error timeout" if retry else "off",
    }.items():
        text = text.replace(k, v)
    return text
