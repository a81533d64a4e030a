"""One truth, two front doors: the chart with values-dev.yaml / values-prod.yaml
renders the objects `make manifests ENV=dev|prod` renders, field for field.

Both sides are rendered by the real tools (the pinned helm, kubectl's kustomize)
with the same image. Two things are set aside, and only these:
- the labels Helm adds (managed-by, version, helm.sh/chart), on metadata only;
- the ConfigMap's name. kustomize hashes it with an algorithm of its own that
  a Helm template cannot reproduce, so each side's name is checked against its
  own pattern (a 10-character hash), then replaced by one placeholder in the
  ConfigMap and in the Deployment's volume that refers to it. The ConfigMap's
  data is compared as the YAML the service parses (kustomize keeps the
  overlay file's comments, Helm writes its own).
The Ingress is one object for both environments in k8s/ingress.yaml and one per
release in the chart (charts/fiboserver/README.md says why): the chart's equals
kustomize's with the rules narrowed to the environment's prefix, its name and
labels aside. The HTTPRoute equals k8s/gateway's route of the same name.

The control: the chart copied with one number changed must fail the comparison.
"""

from __future__ import annotations

import copy
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.appk8s import render
from tests.support.helmchart import (
    CHART,
    HELM_LABELS,
    NAMESPACE,
    VALUES,
    by_kind,
    env_release,
    kustomize_env,
    template,
    the,
    without_hooks,
)
from tests.support.kube import Obj

ENVS = ("dev", "prod")
CONFIGMAP = "<configmap with hashed name>"
# Each side's own naming of the generated ConfigMap.
KUSTOMIZE_CM = r"fiboserver-config-{env}-[a-z0-9]{{10}}"
HELM_CM = r"fiboserver-{env}-config-[0-9a-f]{{10}}"
ROUTED_ELSEWHERE = ("Ingress",)  # compared on its own below


def normalise(objs: list[Obj] | tuple[Obj, ...], name_pattern: str) -> dict[tuple[str, str], Obj]:
    """(kind, name) -> object, with only the documented differences set aside."""
    out: dict[tuple[str, str], Obj] = {}
    for o in copy.deepcopy(list(objs)):
        if o["kind"] in ROUTED_ELSEWHERE:
            continue
        meta = o["metadata"]
        for label in HELM_LABELS:
            meta.get("labels", {}).pop(label, None)
        if o["kind"] == "ConfigMap":
            assert re.fullmatch(name_pattern, meta["name"]), meta["name"]
            meta["name"] = CONFIGMAP
            o["data"] = {k: yaml.safe_load(v) for k, v in o["data"].items()}
        if o["kind"] == "Deployment":
            for vol in o["spec"]["template"]["spec"]["volumes"]:
                if "configMap" in vol:
                    assert re.fullmatch(name_pattern, vol["configMap"]["name"])
                    vol["configMap"]["name"] = CONFIGMAP
        key = (o["kind"], meta["name"])
        assert key not in out, f"two objects {key}"
        out[key] = o
    return out


def differences(a: Any, b: Any, path: str = "") -> Iterator[str]:
    """Every path where `a` (kustomize) and `b` (helm) differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in b:
                yield f"{path}.{k}: only in kustomize ({a[k]!r})"
            elif k not in a:
                yield f"{path}.{k}: only in helm ({b[k]!r})"
            else:
                yield from differences(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            yield from differences(x, y, f"{path}[{i}]")
    elif a != b or type(a) is not type(b):
        yield f"{path}: kustomize {a!r}, helm {b!r}"


def compare(env: str, helm_objs: list[Obj]) -> list[str]:
    ours = normalise(without_hooks(helm_objs), HELM_CM.format(env=env))
    theirs = normalise(kustomize_env(env), KUSTOMIZE_CM.format(env=env))
    errors = [f"{k}: only in kustomize" for k in sorted(set(theirs) - set(ours))]
    errors += [f"{k}: only in helm" for k in sorted(set(ours) - set(theirs))]
    for k in sorted(set(ours) & set(theirs)):
        errors += [f"{k}{d}" for d in differences(theirs[k], ours[k])]
    return errors


@pytest.mark.parametrize("env", ENVS)
def test_chart_renders_what_kustomize_renders(env: str) -> None:
    helm_objs = env_release(env)
    kinds = sorted(o["kind"] for o in without_hooks(helm_objs))
    expected = ["ConfigMap", "Deployment", "Ingress", "NetworkPolicy", "PodDisruptionBudget",
                "Service"] + (["HorizontalPodAutoscaler"] if env == "prod" else [])  # fmt: skip
    assert kinds == sorted(expected)
    errors = compare(env, helm_objs)
    assert not errors, f"helm ({env}) and kustomize differ:\n" + "\n".join(errors)


def ingress_for(env: str) -> Obj:
    """k8s/ingress.yaml (as `kubectl kustomize k8s` renders it) narrowed to `env`."""
    ingress = copy.deepcopy(next(o for o in render("k8s") if o["kind"] == "Ingress"))
    for rule in ingress["spec"]["rules"]:
        rule["http"]["paths"] = [p for p in rule["http"]["paths"] if p["path"] == f"/{env}"]
    return ingress


@pytest.mark.parametrize("env", ENVS)
def test_ingress_is_the_kustomize_one_for_this_environment(env: str) -> None:
    ours = the(env_release(env), "Ingress")
    theirs = ingress_for(env)
    assert [p["backend"]["service"]["name"] for r in theirs["spec"]["rules"]
            for p in r["http"]["paths"]] == [f"fiboserver-{env}"]  # fmt: skip
    assert ours["metadata"]["name"] == f"fiboserver-{env}"
    assert ours["metadata"]["namespace"] == theirs["metadata"]["namespace"] == NAMESPACE
    assert ours["metadata"]["annotations"] == theirs["metadata"]["annotations"]
    assert list(differences(theirs["spec"], ours["spec"])) == []


@pytest.mark.parametrize("env", ENVS)
def test_httproute_is_k8s_gateway_route(env: str) -> None:
    assert by_kind(env_release(env), "HTTPRoute") == [], "the route is off by default"
    ours = the(env_release(env, sets=["gateway.enabled=true"]), "HTTPRoute")
    theirs = next(o for o in render("k8s/gateway") if o["kind"] == "HTTPRoute"
                  and o["metadata"]["name"] == f"fiboserver-{env}")  # fmt: skip
    assert ours["metadata"]["name"] == theirs["metadata"]["name"]
    assert list(differences(theirs["spec"], ours["spec"])) == []


# --- the control -----------------------------------------------------------------


def changed_chart(tmp: Path, template_file: str, old: str, new: str) -> Path:
    chart = tmp / "fiboserver"
    shutil.copytree(CHART, chart, symlinks=False)
    path = chart / "templates" / template_file
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} is not once in {template_file}"
    path.write_text(text.replace(old, new))
    return chart


@pytest.mark.parametrize(
    ("template_file", "old", "new", "path"),
    [
        ("deployment.yaml", "minReadySeconds: 5", "minReadySeconds: 6", ".spec.minReadySeconds"),
        ("pdb.yaml", "maxUnavailable: 1", "maxUnavailable: 2", ".spec.maxUnavailable"),
        ("service.yaml", "port: 80", "port: 8000", ".spec.ports[0].port"),
    ],
)
def test_a_changed_number_breaks_the_equivalence(
    tmp_path: Path, template_file: str, old: str, new: str, path: str
) -> None:
    chart = changed_chart(tmp_path, template_file, old, new)
    errors = compare("dev", template("fiboserver-dev", VALUES["dev"], chart=chart))
    assert errors, f"{old} -> {new} went unnoticed"
    assert all(path in e for e in errors), errors


def test_a_changed_config_value_breaks_the_equivalence() -> None:
    errors = compare("prod", env_release("prod", sets=["config.maxseq=99999"]))
    assert [e for e in errors if "('ConfigMap'" in e and ".data.config.yaml.maxseq" in e], errors
