"""The Helm chart (charts/fiboserver) as the real, pinned helm renders it.

- ``helm_binary()``: the helm that `make helm` builds from its pinned Go module
  (binaries.HELM, cached outside the clone). Without it the test skips saying so,
  or fails with CI=true, like a missing tool.
- ``helm(*args)``: one helm command, its result (checked by the caller).
- ``template(release, *values, ...)``: ``helm template`` parsed into objects.
- ``kustomize_env(env)``: ``make manifests ENV=<env>`` with the same image, the
  reference the chart is compared with.
"""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

from tests.support.hosttools import IN_CI
from tests.support.kube import Obj
from tests.support.repo import REPO_ROOT
from tools.cluster.binaries import HELM

CHART = REPO_ROOT / "charts" / "fiboserver"
VALUES = {"dev": CHART / "values-dev.yaml", "prod": CHART / "values-prod.yaml"}
NAMESPACE = "cloudnative"
# The image both front doors are rendered with: any fixed name and tag will do.
IMAGE, TAG = "localhost/fiboserver", "0.1.0-equivalence"
# What Helm adds to each object's labels (the chart's helpers put them on
# metadata only): the one difference the chart may have with kustomize.
HELM_LABELS = ("app.kubernetes.io/managed-by", "app.kubernetes.io/version", "helm.sh/chart")
HOOK = "helm.sh/hook"
# The Prometheus Operator's kinds, which the chart renders only where the cluster
# serves them (helm template --api-versions says it does).
MONITORING_APIS = ("monitoring.coreos.com/v1/PodMonitor", "monitoring.coreos.com/v1/PrometheusRule")


def helm_binary() -> Path:
    path = HELM.path("helm")
    if not HELM.cached():
        reason = f"helm {HELM.version} is not built: run `make helm` (it builds {path})"
        if IN_CI:
            pytest.fail(f"{reason} (CI=true: no test may skip for a missing tool)")
        pytest.skip(reason)
    return path


def helm(*args: str, cwd: Path = REPO_ROOT, timeout: float = 120,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run(
        [str(helm_binary()), *args], cwd=cwd, capture_output=True, text=True,
        timeout=timeout, check=False, env={**os.environ, **(env or {})},
    )  # fmt: skip


def template_args(
    release: str,
    *values: Path,
    sets: Sequence[str] = (),
    api_versions: Sequence[str] = (),
    chart: Path = CHART,
    namespace: str = NAMESPACE,
) -> list[str]:
    args = ["template", release, str(chart), "--namespace", namespace]
    for v in values:
        args += ["--values", str(v)]
    for s in (f"image.repository={IMAGE}", f"image.tag={TAG}", *sets):
        args += ["--set", s]
    for a in api_versions:
        args += ["--api-versions", a]
    return args


def template(
    release: str,
    *values: Path,
    sets: Sequence[str] = (),
    api_versions: Sequence[str] = (),
    chart: Path = CHART,
    namespace: str = NAMESPACE,
) -> list[Obj]:
    """`helm template` of the chart, every object (test hooks included)."""
    args = template_args(release, *values, sets=sets, api_versions=api_versions,
                         chart=chart, namespace=namespace)  # fmt: skip
    out = helm(*args)
    if out.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed:\n{out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def env_release(env: str, **kw: object) -> list[Obj]:
    """The chart for one environment, as `helm install fiboserver-<env> -f values-<env>.yaml`."""
    return template(f"fiboserver-{env}", VALUES[env], **kw)  # type: ignore[arg-type]


def without_hooks(objs: Sequence[Obj]) -> list[Obj]:
    return [o for o in objs if HOOK not in o["metadata"].get("annotations", {})]


def hooks(objs: Sequence[Obj]) -> list[Obj]:
    return [o for o in objs if HOOK in o["metadata"].get("annotations", {})]


@functools.cache
def kustomize_env(env: str) -> tuple[Obj, ...]:
    """`make manifests ENV=<env>` with IMAGE and TAG set: what `make deploy` applies."""
    out = subprocess.run(
        ["make", "-s", "--no-print-directory", "manifests", f"ENV={env}", f"IMAGE={IMAGE}",
         f"TAG={TAG}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def by_kind(objs: Sequence[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def the(objs: Sequence[Obj], kind: str) -> Obj:
    found = by_kind(objs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def write_values(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    return path
