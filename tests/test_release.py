"""Reproducible, traceable images (issue 11): the dependency lock, the image tag,
and what `make deploy` applies.

- requirements.lock must agree with pyproject.toml: every direct requirement
  (runtime and build) pinned at a version its specifier allows, with hashes, and
  nothing in the lock that no requirement leads to. Checked offline from the
  files; the image build (tests/e2e) installs from it with `--require-hashes`.
- The tag comes from the Makefile alone (`make print-image`): version and commit,
  `-dirty-<tree>` for uncommitted changes; run in a scratch git repository.
- `make manifests` renders what `make deploy` applies: the environment with its
  image set to that tag, and no tracked file touched.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.support import kube
from tests.support.hosttools import require_tool
from tests.support.repo import REPO_ROOT

LOCK = REPO_ROOT / "requirements.lock"
PYPROJECT = REPO_ROOT / "pyproject.toml"
PROJECT_REF = "fiboserver (pyproject.toml)"
SHA256 = re.compile(r"--hash=sha256:([0-9a-f]{64})")


# --- the lock ------------------------------------------------------------------------


@dataclass
class Pin:
    version: str
    hashes: list[str] = field(default_factory=list)
    via: set[str] = field(default_factory=set)


def parse_lock(text: str) -> dict[str, Pin]:
    """`name==version` entries of a hashed requirements file (uv or pip-compile
    output) with their hashes and `# via` annotations (one line or split)."""
    pins: dict[str, Pin] = {}
    current: Pin | None = None
    in_via = False
    for raw in text.splitlines():
        line = raw.strip().removesuffix("\\").strip()
        if not raw.startswith((" ", "#")) and line:
            match = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", line)
            assert match, f"not a plain pin (markers or ranges are not expected): {raw!r}"
            current = pins.setdefault(str(canonicalize_name(match[1])), Pin(match[2]))
            in_via = False
        elif current is not None and line.startswith("--hash="):
            hashed = SHA256.fullmatch(line)
            assert hashed, f"not a sha256 hash: {raw!r}"
            current.hashes.append(hashed[1])
        elif current is not None and line.startswith("# via"):
            rest = line.removeprefix("# via").strip()
            in_via = not rest
            if rest:
                current.via.add(rest)
        elif current is not None and in_via and line.startswith("#   "):
            current.via.add(line.removeprefix("#").strip())
    return pins


def direct_requirements(pyproject: dict[str, Any]) -> list[Requirement]:
    """What the image needs: the project's dependencies and its build backend."""
    reqs = pyproject["project"]["dependencies"] + pyproject["build-system"]["requires"]
    return [Requirement(r) for r in reqs]


def lock_problems(pyproject: dict[str, Any], lock_text: str) -> list[str]:
    """Every way the lock disagrees with pyproject.toml (empty: they agree)."""
    pins = parse_lock(lock_text)
    problems: list[str] = []
    direct = {str(canonicalize_name(r.name)): r for r in direct_requirements(pyproject)}
    for name, req in direct.items():
        pin = pins.get(name)
        if pin is None:
            problems.append(f"{req} is not in the lock")
        elif not req.specifier.contains(Version(pin.version), prereleases=True):
            problems.append(f"{name}=={pin.version} does not satisfy {req}")
    for name, pin in pins.items():
        if not pin.hashes:
            problems.append(f"{name}=={pin.version} has no hash")
        for parent in pin.via - {PROJECT_REF}:
            if str(canonicalize_name(parent)) not in pins:
                problems.append(f"{name} is required via {parent}, which is not locked")
    # Nothing unreferenced: every pin is direct or reached from one through `via`.
    reached = set(direct) & set(pins)
    frontier = list(reached)
    while frontier:
        parent = frontier.pop()
        for name, pin in pins.items():
            if name not in reached and parent in {str(canonicalize_name(v)) for v in pin.via}:
                reached.add(name)
                frontier.append(name)
    unreached = sorted(set(pins) - reached)
    problems += [f"{name} is locked but nothing requires it" for name in unreached]
    return problems


def pyproject() -> dict[str, Any]:
    return tomllib.loads(PYPROJECT.read_text())


def test_lock_agrees_with_pyproject() -> None:
    assert lock_problems(pyproject(), LOCK.read_text()) == []
    pins = parse_lock(LOCK.read_text())
    # The four the service imports, and setuptools for building it with the lock.
    assert {"flask", "gunicorn", "pyyaml", "python-json-logger", "setuptools"} <= set(pins)
    assert LOCK.read_text().startswith("# This file was autogenerated by uv")
    assert "#    make lock" in LOCK.read_text()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        # A dependency added to pyproject.toml but not locked (requests is locked
        # since the OTLP exporter needs it: a name nothing here requires).
        (lambda p, t: (p["project"]["dependencies"].append("tomli-w>=1"), t), "tomli-w>=1 is"),
        # A range moved past the pinned version.
        (lambda p, t: (p["project"]["dependencies"].__setitem__(0, "flask>=4"), t),
         "does not satisfy flask>=4"),
        # A hash dropped from an entry.
        (lambda p, t: (None, re.sub(r"(blinker==\S+) \\\n(\s+--hash=\S+ \\\n)*\s+--hash=\S+",
                                   r"\1", t)), "blinker==1.9.0 has no hash"),
        # A leftover pin nothing requires any more.
        (lambda p, t: (None, t + "six==1.17.0 \\\n    --hash=sha256:" + "0" * 64 + "\n"),
         "six is locked but nothing requires it"),
        # A dependency removed from pyproject.toml: its pin (and its own) dangle.
        (lambda p, t: (p["project"]["dependencies"].remove(
            next(d for d in p["project"]["dependencies"] if d.startswith("flask"))), t),
         "flask is locked but nothing requires it"),
    ],
    ids=["unlocked", "out-of-range", "no-hash", "unreferenced", "removed"],
)  # fmt: skip
def test_lock_check_catches_drift(change: Any, expected: str) -> None:
    project = pyproject()
    text = LOCK.read_text()
    _, new_text = change(project, text)
    problems = lock_problems(project, new_text if new_text is not None else text)
    assert any(expected in p for p in problems), problems


def make_dry_run(*args: str) -> str:
    make = require_tool("make")
    out = subprocess.run(
        [make, "--no-print-directory", "-n", *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_make_lock_resolves_for_the_image_platform() -> None:
    """`make lock` asks uv for hashed pins for CPython 3.11 on glibc Linux x86_64 (the
    Dockerfile's python:3.11 bookworm base and the debootstrap bookworm one), from
    pyproject.toml's dependencies and build requirements."""
    command = make_dry_run("lock")
    assert "uv pip compile" in command
    for option in (
        "--generate-hashes",
        "--python-version 3.11",
        "--python-platform x86_64-manylinux_2_36",
        "--output-file requirements.lock",
    ):
        assert option in command, option  # fmt: skip
    assert '["build-system"]["requires"]' in command and "pyproject.toml -" in command


# --- the tag ---------------------------------------------------------------------------


def git(repo: Path, *args: str) -> str:
    out = subprocess.run(
        [require_tool("git"), "-c", "user.name=t", "-c", "user.email=t@example.invalid",
         *args], cwd=repo, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return out.stdout.strip()


def print_image(repo: Path, *args: str) -> str:
    out = subprocess.run(
        [require_tool("make"), "--no-print-directory", "-s", "print-image", *args],
        cwd=repo, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.fixture
def scratch_repo(tmp_path: Path) -> Path:
    """A git repository holding the project's Makefile and pyproject.toml."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(REPO_ROOT / name, tmp_path / name)
    (tmp_path / "app.py").write_text("x = 1\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "first")
    return tmp_path


def test_tag_is_version_and_commit_and_dirty_state(scratch_repo: Path) -> None:
    version = pyproject()["project"]["version"]
    short = git(scratch_repo, "rev-parse", "--short", "HEAD")
    clean = print_image(scratch_repo)
    assert clean == f"localhost/fiboserver:{version}-{short}"

    # An uncommitted change: -dirty plus a hash of the working tree, so two
    # different dirty states never share a tag, and the same state keeps its own.
    (scratch_repo / "app.py").write_text("x = 2\n")
    dirty = print_image(scratch_repo)
    assert re.fullmatch(rf"localhost/fiboserver:{version}-{short}-dirty-[0-9a-f]{{7}}", dirty)
    assert print_image(scratch_repo) == dirty
    (scratch_repo / "app.py").write_text("x = 3\n")
    assert print_image(scratch_repo) not in {dirty, clean}
    (scratch_repo / "app.py").write_text("x = 2\n")
    assert print_image(scratch_repo) == dirty
    # An untracked file counts too; the index is never touched.
    (scratch_repo / "app.py").write_text("x = 1\n")
    (scratch_repo / "new.py").write_text("y = 1\n")
    assert "-dirty-" in print_image(scratch_repo)
    assert git(scratch_repo, "status", "--porcelain") == "?? new.py"

    # A commit is a new tag; IMAGE and TAG can be given.
    git(scratch_repo, "add", "-A")
    git(scratch_repo, "commit", "-qm", "second")
    new_short = git(scratch_repo, "rev-parse", "--short", "HEAD")
    assert print_image(scratch_repo) == f"localhost/fiboserver:{version}-{new_short}"
    assert print_image(scratch_repo, "IMAGE=reg.example/fibo", "TAG=t1") == "reg.example/fibo:t1"


def test_tag_without_git_is_the_version(tmp_path: Path) -> None:
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(REPO_ROOT / name, tmp_path / name)
    version = pyproject()["project"]["version"]
    out = subprocess.run(
        [require_tool("make"), "-s", "print-image"], cwd=tmp_path, capture_output=True,
        text=True, timeout=60, check=False,
        env={"PATH": "/usr/bin:/bin", "GIT_DIR": "/nonexistent"},
    )  # fmt: skip
    assert out.stdout.strip() == f"localhost/fiboserver:{version}", out.stderr


def test_image_and_deploy_share_the_tag() -> None:
    """`make image` tags, `make deploy` sets, the same IMAGE:TAG, with OCI labels."""
    image = print_image(REPO_ROOT)
    build = make_dry_run("image", "CONTAINER_ENGINE=podman")
    assert f"-t {image} ." in build
    assert "--label org.opencontainers.image.version=" in build
    revision = re.search(r"org\.opencontainers\.image\.revision=(\S+)", build)
    assert revision and revision[1].startswith(git(REPO_ROOT, "rev-parse", "HEAD"))


# --- what make deploy applies ----------------------------------------------------------


def make_manifests(env: str, *args: str) -> list[kube.Obj]:
    require_tool("kubectl")
    out = subprocess.run(
        [require_tool("make"), "--no-print-directory", "-s", "manifests", f"ENV={env}", *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.mark.parametrize(("env", "rendered"), [("dev", "k8s/overlays/dev"), ("all", "k8s")])
def test_manifests_set_the_image_and_nothing_else(env: str, rendered: str) -> None:
    before = git(REPO_ROOT, "status", "--porcelain")
    objs = make_manifests(env, "IMAGE=reg.example/fibo", "TAG=0.1.0-abc1234")
    assert git(REPO_ROOT, "status", "--porcelain") == before, "make manifests changed tracked files"
    plain = kube.render(REPO_ROOT / rendered)
    assert len(objs) == len(plain)
    deployments = [o for o in objs if o["kind"] == "Deployment"]
    assert len(deployments) == (2 if env == "all" else 1)
    for o in deployments:
        (c,) = o["spec"]["template"]["spec"]["containers"]
        assert c["image"] == "reg.example/fibo:0.1.0-abc1234"
        c["image"] = "fiboserver:" + pyproject()["project"]["version"]
    # Apart from the image, exactly what `kubectl apply -k` of the directory sends.
    key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731
    assert sorted(objs, key=key) == sorted(plain, key=key)


def test_manifests_default_to_the_built_image() -> None:
    objs = make_manifests("prod")
    (deploy,) = [o for o in objs if o["kind"] == "Deployment"]
    assert deploy["spec"]["template"]["spec"]["containers"][0]["image"] == print_image(REPO_ROOT)


def test_deploy_applies_the_rendered_manifests() -> None:
    command = make_dry_run("deploy", "ENV=prod")
    assert "kubectl kustomize" in command and "kubectl apply -f -" in command
    assert "newTag: " + print_image(REPO_ROOT).rpartition(":")[2] in command
