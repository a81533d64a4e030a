"""The e2e fixtures (tests/e2e, `make e2e`): the podman tools and the service image,
built once per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.hosttools import require_tool
from tests.support.podmanlib import NAME_PREFIX, build_image, podman


@pytest.fixture(scope="session")
def podman_tools() -> dict[str, str]:
    # runc: containers.conf selects it (crun fails on this host's cgroup layout).
    found = {name: require_tool(name) for name in ("podman", "runc", "kubectl")}
    require_tool("debootstrap")  # for the base image, when it is not cached yet
    return found


@pytest.fixture(scope="session")
def e2e_image(
    podman_tools: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, float, str]]:
    """The service image, built once per session by `make image` on the local
    debootstrap base: (tag, build seconds, what the base image builder said)."""

    def remove_leftovers() -> None:
        binary = podman_tools["podman"]
        names = podman(
            binary, "ps", "-a", "--filter", f"name=^{NAME_PREFIX}", "--format", "{{.Names}}"
        ).stdout.split()
        if names:
            podman(binary, "rm", "-f", "-t", "0", *names, check=False)

    remove_leftovers()
    yield build_image(podman_tools["podman"], tmp_path_factory.mktemp("build"))
    remove_leftovers()
