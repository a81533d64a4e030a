"""Images for the cluster, without a registry: built with podman, handed to
containerd's `k8s.io` namespace (the one the CRI uses) with `ctr images import`.

- the pause image: Debian's catatonit, whose `-P` mode is a pause process;
- the app image: `make image` of `make print-image`'s IMAGE:TAG (the tag `make
  deploy` sets), on the local debootstrap base as tests/e2e builds it
  (podmanlib.build_image). `up` records the reference in its state; the tests
  render the manifests with it (clusterlib.Cluster.render).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.support.podmanlib import build_image, podman_env
from tests.support.repo import REPO_ROOT
from tools.cluster.binaries import CONTAINERD
from tools.cluster.layout import CONTAINERD_SOCK, PAUSE_IMAGE

CTR = CONTAINERD.path("ctr")


def app_image_ref() -> str:
    """IMAGE:TAG that `make image` builds and `make deploy` sets, at this commit."""
    return _run("make", "-s", "--no-print-directory", "-C", REPO_ROOT, "print-image").strip()


def normalize(ref: str) -> str:
    """The name containerd (and so the kubelet) resolves `ref` to: a name without a
    registry host is Docker Hub's, `fiboserver:0.1.0` is docker.io/library/fiboserver:0.1.0."""
    first, _, rest = ref.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return ref
    return f"docker.io/{ref}" if rest else f"docker.io/library/{ref}"


def podman_name(ref: str) -> str:
    """How podman names a build tagged `ref` (no registry host: localhost/)."""
    first, _, rest = ref.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return ref
    return f"localhost/{ref}"


def _run(*argv: str | Path, env: dict[str, str] | None = None, timeout: float = 900) -> str:
    proc = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, env=env, timeout=timeout
    )
    if proc.returncode != 0:
        raise SystemExit(
            f"cluster: {' '.join(map(str, argv))} exited {proc.returncode}:\n"
            f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        )
    return proc.stdout


def build_pause(podman: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        ctx = Path(d)
        shutil.copy2(shutil.which("catatonit") or "/usr/bin/catatonit", ctx / "pause")
        # 65535: the user the upstream pause image runs as; a pod's runAsUser
        # overrides it.
        (ctx / "Containerfile").write_text(
            'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause", "-P"]\n'
        )
        _run(podman, "build", "--pull=never", "-q", "-t", PAUSE_IMAGE, str(ctx), env=podman_env())


def build_app(podman: str, ref: str) -> None:
    """`make image` for `ref`, as the e2e tests build it (CONTAINERS_CONF, local base)."""
    with tempfile.TemporaryDirectory() as d:
        build_image(podman, Path(d), tag=ref)


def import_image(podman: str, podman_ref: str, cri_ref: str) -> None:
    """podman's image -> containerd's k8s.io namespace, named `cri_ref`."""
    with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
        archive = Path(d) / "image.tar"
        _run(podman, "save", "--format", "docker-archive", "-o", archive, podman_ref,
             env=podman_env())  # fmt: skip
        ctr: list[str | Path] = [CTR, "--address", CONTAINERD_SOCK, "-n", "k8s.io"]
        _run(*ctr, "images", "import", archive)
        if podman_ref != cri_ref:
            _run(*ctr, "images", "tag", "--force", podman_ref, cri_ref)
            _run(*ctr, "images", "rm", podman_ref)


def load_images(podman: str) -> dict[str, str]:
    """Build and import both images; {what: containerd name}."""
    build_pause(podman)
    import_image(podman, PAUSE_IMAGE, PAUSE_IMAGE)
    ref = app_image_ref()
    build_app(podman, ref)
    import_image(podman, podman_name(ref), normalize(ref))
    return {"pause": PAUSE_IMAGE, "app": normalize(ref)}
