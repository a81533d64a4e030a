"""fiboserver's own k8s/ tree as `kubectl kustomize` renders it, for the test_k8s_* modules.

Rendered once per directory per session (through ``kube.render``), then looked up
by kind and name; plus each overlay's config as the service and gunicorn read it.
What is checked is the rendered output, never the source files' fragments: it is
what `kubectl apply -k` would send.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

from fiboserver.config import Config, load_config
from tests.support import kube
from tests.support.kube import Obj
from tests.support.repo import REPO_ROOT

K8S = REPO_ROOT / "k8s"
NAMESPACE = "cloudnative"
ENVS = ("dev", "prod")
# Envoy Gateway's own API (k8s/gateway/envoy-gateway), checked in test_k8s_routing.py.
ENVOY_GATEWAY_API = "gateway.envoyproxy.io/v1alpha1"


@functools.cache
def render(rel: str) -> tuple[Obj, ...]:
    """`kubectl kustomize` of a directory under the repo, once per session."""
    objs = tuple(kube.render(REPO_ROOT / rel))
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


def pod_of(env: str) -> Obj:
    template: Obj = one(render("k8s"), "Deployment", f"fiboserver-{env}")["spec"]["template"]
    return template


def container_of(env: str) -> Obj:
    container: Obj
    (container,) = pod_of(env)["spec"]["containers"]
    return container


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
        cwd=REPO_ROOT,
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
