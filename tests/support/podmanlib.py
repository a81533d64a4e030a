"""podman plumbing for the e2e tests: the project's containers.conf, the local base
image, the service image build, and JSON-log helpers.

Every podman call gets CONTAINERS_CONF=tests/e2e/containers.conf (runc, cgroupfs,
fixed ulimits), so nothing under /etc is changed. Only 127.0.0.1 is ever contacted:
containers publish their port on 127.0.0.1 or get a hostPort bound to it.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.repo import REPO_ROOT

E2E = REPO_ROOT / "tests" / "e2e"
CONTAINERS_CONF = E2E / "containers.conf"
BASE_IMAGE = os.environ.get("BASE_IMAGE", "localhost/fiboserver-base:bookworm")
# A tag of its own: the tests never overwrite an image a user built with `make image`.
TEST_IMAGE = "localhost/fiboserver:e2e"
# Every container and pod the tests make carries this prefix, so a leftover from a
# killed run is recognisable (and removed by the next run's fixtures).
NAME_PREFIX = "fiboserver-e2e"

Record = dict[str, Any]


def podman_env() -> dict[str, str]:
    env = dict(os.environ)
    env["CONTAINERS_CONF"] = str(CONTAINERS_CONF)
    return env


def podman(
    binary: str, *args: str, check: bool = True, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [binary, *args], capture_output=True, text=True, env=podman_env(), timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"podman {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n"
            f"{proc.stderr[-3000:]}"
        )
    return proc


def ensure_base_image() -> str:
    """Build the debootstrap base unless it exists (cached across runs); returns
    what the builder said (kept or built, and in how many seconds)."""
    out = subprocess.run(
        ["bash", str(E2E / "base-image.sh")],
        env={**podman_env(), "BASE_IMAGE": BASE_IMAGE},
        capture_output=True,
        text=True,
        timeout=900,
    )
    if out.returncode != 0:
        raise AssertionError(f"base-image.sh exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
    return out.stdout.strip().splitlines()[-1]


def image_id(binary: str, tag: str) -> str | None:
    proc = podman(binary, "image", "inspect", "--format", "{{.Id}}", tag, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def pip_conf_for_build(tmp: Path) -> Path:
    """A pip.conf for `pip` inside `podman build`, carrying over what this host's pip
    needs to reach the index: the CA bundle (an intercepting proxy's CA lives in the
    host's /etc/ssl/certs, which the build mounts) and an http(s) index URL if one is
    set. Mounted at /etc/pip.conf for the build only; it never lands in a layer."""
    lines = ["[global]"]
    cert = os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt"
    if cert.startswith("/etc/ssl/certs/") and Path(cert).exists():
        lines.append(f"cert = {cert}")
    index = os.environ.get("PIP_INDEX_URL", "")
    if index.startswith(("http://", "https://")):
        lines.append(f"index-url = {index}")
    path = tmp / "pip.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


def make(*args: str, timeout: float = 900.0) -> subprocess.CompletedProcess[str]:
    """`make <args>` in the repository with podman's CONTAINERS_CONF; fails loudly."""
    proc = subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=podman_env(),
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"make {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n"
            f"{proc.stderr[-3000:]}"
        )
    return proc


def build_image(binary: str, tmp: Path, tag: str = TEST_IMAGE) -> tuple[str, float, str]:
    """`make image` (the project's Dockerfile, labels and all) with podman on the
    local base; (tag, seconds, what the base image builder said)."""
    base_note = ensure_base_image()
    previous = image_id(binary, tag)
    pip_conf = pip_conf_for_build(tmp)
    name, _, version_tag = tag.rpartition(":")
    # No registry: the base is local; pip reaches the package index through the
    # host network with the host's CA bundle.
    flags = (
        f"--network host --pull=never -v /etc/ssl/certs:/etc/ssl/certs:ro"
        f" -v {pip_conf}:/etc/pip.conf:ro"
    )
    t0 = time.monotonic()
    make(
        "image",
        f"CONTAINER_ENGINE={binary}",
        f"BASE_IMAGE={BASE_IMAGE}",
        f"IMAGE={name}",
        f"TAG={version_tag}",
        f"BUILD_FLAGS={flags}",
    )
    seconds = time.monotonic() - t0
    if previous is not None and previous != image_id(binary, tag):
        # The superseded test image only; build-cache layers stay for fast rebuilds.
        podman(binary, "rmi", previous, check=False)
    return tag, seconds, base_note


def json_records(text: str) -> tuple[list[Record], list[str]]:
    """(JSON object records, lines that are not one JSON object)."""
    records: list[Record] = []
    bad: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            bad.append(line)
            continue
        if isinstance(obj, dict):
            records.append(obj)
        else:
            bad.append(line)
    return records, bad


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_http(url: str, timeout: float = 60.0, want: int = 200) -> float:
    """Poll `url` until it answers `want`; seconds waited."""
    t0 = time.monotonic()
    last = "no answer"
    while time.monotonic() - t0 < timeout:
        try:
            status, body = http_get(url, timeout=2)
            if status == want:
                return time.monotonic() - t0
            last = f"{status} {body[:100]!r}"
        except OSError as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer {want} within {timeout}s: {last}")
