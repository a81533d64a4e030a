"""The two environments (README "Deployment on Kubernetes"): names, labels, selectors,
config, image.

Each overlay's objects carry its name and labels, every selector picks exactly
its own environment's pods, the hashed immutable ConfigMap is mounted where
`FIBOSERVER_CONFIG` points and holds a config the service accepts, and the image
tag is the project version.
"""

from __future__ import annotations

import re
import tomllib

import pytest
import yaml

from fiboserver.config import Config, parse_config
from tests.support.appk8s import (
    ENVS,
    K8S,
    container_of,
    find,
    gunicorn_settings,
    key,
    one,
    overlay_config,
    pod_of,
    render,
)
from tests.support.helmchart import VALUES, template
from tests.support.repo import REPO_ROOT


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


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


def prod_configs() -> dict[str, Config]:
    """Every PROD configuration the repository deploys, by where it comes from, as
    the service reads it: the kustomize overlay and the Helm chart's PROD values."""
    (cm,) = [
        o
        for o in find(render("k8s/overlays/prod"), "ConfigMap")
        if o["metadata"]["name"].startswith("fiboserver-config-prod-")
    ]
    source = "k8s/overlays/prod ConfigMap"
    configs = {source: parse_config(yaml.safe_load(cm["data"]["config.yaml"]), source)}
    rendered = template("fiboserver-prod", VALUES["prod"])
    (chart_cm,) = [o for o in rendered if o["kind"] == "ConfigMap"]
    chart_source = "charts/fiboserver values-prod.yaml ConfigMap"
    chart_config = yaml.safe_load(chart_cm["data"]["config.yaml"])
    configs[chart_source] = parse_config(chart_config, chart_source)
    return configs


def test_prod_keeps_fault_injection_off() -> None:
    """README "Fault injection": never in PROD, whatever a default becomes."""
    configs = prod_configs()
    assert configs
    for source, config in configs.items():
        assert config.env.upper() == "PROD", source
        assert (config.fault_delay_ms, config.fault_error_ratio) == (0, 0.0), source


def test_generated_config_maps_are_immutable() -> None:
    maps = find(render("k8s"), "ConfigMap")
    assert {m["metadata"]["name"].rsplit("-", 1)[0] for m in maps} == {
        f"fiboserver-config-{env}" for env in ENVS
    }
    assert all(m["immutable"] is True for m in maps)


@pytest.mark.parametrize("env", ENVS)
def test_image_tag_pinned_to_the_project_version(env: str) -> None:
    version = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    image = container_of(env)["image"]
    name, _, tag = image.rpartition(":")
    assert name and tag == version and tag != "latest", image
