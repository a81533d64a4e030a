"""Pod security (README "Deployment on Kubernetes"): the container's and pod's security context, no
service links, and the namespace's Pod Security Standard labels.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.appk8s import ENVS, NAMESPACE, container_of, one, pod_of, render


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
def test_no_service_links(env: str) -> None:
    assert pod_of(env)["spec"]["enableServiceLinks"] is False


def test_namespace() -> None:
    labels = one(render("k8s"), "Namespace", NAMESPACE)["metadata"]["labels"]
    # The pods meet the `restricted` Pod Security Standard: enforced, and warned
    # about and audited at the same level, all pinned to one Kubernetes minor.
    for mode in ("enforce", "warn", "audit"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted", mode
        version = labels[f"pod-security.kubernetes.io/{mode}-version"]
        assert version == "v1.34", f"{mode}-version {version}: pin a minor, not latest"
