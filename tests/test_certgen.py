"""`make certgen` (tls/README.md), run for real in a temporary copy of the repo's
Makefile and tls/ with the real openssl; the repo's own tls/ is never touched."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.support.hosttools import require_tool
from tests.support.repo import REPO_ROOT

FILES = ("ca.crt", "ca.key", "tls.crt", "tls.key")


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        args,
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, f"{args} failed:\n{out.stdout}\n{out.stderr}"
    return out


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    require_tool("openssl")
    require_tool("make")
    shutil.copy(REPO_ROOT / "Makefile", tmp_path / "Makefile")
    shutil.copytree(REPO_ROOT / "tls", tmp_path / "tls", ignore=shutil.ignore_patterns(*FILES))
    return tmp_path


def certgen(workdir: Path, **env: str) -> None:
    run(["make", "--no-print-directory", "certgen"], workdir, **env)


def snapshot(tls: Path) -> dict[str, tuple[bytes, int]]:
    return {f: ((tls / f).read_bytes(), (tls / f).stat().st_mtime_ns) for f in FILES}


def x509_text(cert: Path) -> str:
    return run(["openssl", "x509", "-in", str(cert), "-noout", "-text"], cert.parent).stdout


def test_certgen_creates_a_ca_and_a_server_certificate(workdir: Path) -> None:
    certgen(workdir)
    tls = workdir / "tls"
    for name in FILES:
        mode = stat.S_IMODE((tls / name).stat().st_mode)
        if name.endswith(".key"):
            assert mode == 0o600, f"{name}: {oct(mode)}"
        else:
            assert mode & 0o077 in (0o044, 0o000), f"{name}: {oct(mode)}"
    # Only the four files are left behind (no CSR, serial or temp directory).
    assert sorted(p.name for p in tls.iterdir() if p.name in FILES) == sorted(FILES)
    assert not [p for p in tls.iterdir() if p.name.startswith(".certgen")]

    verify = run(["openssl", "verify", "-CAfile", "ca.crt", "tls.crt"], tls)
    assert verify.stdout.strip() == "tls.crt: OK"

    server = x509_text(tls / "tls.crt")
    assert "DNS:cloudnative" in server
    assert "TLS Web Server Authentication" in server  # EKU serverAuth
    assert "CA:FALSE" in server
    ca = x509_text(tls / "ca.crt")
    assert "CA:TRUE" in ca
    assert "Certificate Sign" in ca

    # The key pair is consistent: kubectl builds the TLS Secret from it (it
    # checks that key and certificate belong together), as `make tls-secret` does.
    kubectl = require_tool("kubectl")
    secret = run(
        [kubectl, "create", "secret", "tls", "cloudnative", "--namespace", "cloudnative",
         "--cert=tls/tls.crt", "--key=tls/tls.key", "--dry-run=client", "-o", "yaml"],
        workdir,
    ).stdout  # fmt: skip
    assert "type: kubernetes.io/tls" in secret
    assert "namespace: cloudnative" in secret


def test_certgen_keeps_existing_files_unless_forced(workdir: Path) -> None:
    certgen(workdir)
    tls = workdir / "tls"
    first = snapshot(tls)
    certgen(workdir)
    assert snapshot(tls) == first, "a second run must keep every file as it is"

    certgen(workdir, FORCE="1")
    forced = snapshot(tls)
    for name in FILES:
        assert forced[name][0] != first[name][0], f"FORCE=1 kept {name}"
    run(["openssl", "verify", "-CAfile", "ca.crt", "tls.crt"], tls)


def test_certgen_renews_only_a_missing_server_certificate(workdir: Path) -> None:
    """Losing tls.crt must not replace the CA that clients already trust."""
    certgen(workdir)
    tls = workdir / "tls"
    ca = (tls / "ca.crt").read_bytes()
    (tls / "tls.crt").unlink()
    certgen(workdir)
    assert (tls / "ca.crt").read_bytes() == ca
    run(["openssl", "verify", "-CAfile", "ca.crt", "tls.crt"], tls)


def test_keys_and_certificates_stay_out_of_git(workdir: Path) -> None:
    git = require_tool("git")
    certgen(workdir)
    run([git, "init", "--quiet"], workdir)
    out = subprocess.run(
        [git, "check-ignore", *(f"tls/{f}" for f in FILES)],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=False,
    )
    assert sorted(out.stdout.split()) == sorted(f"tls/{f}" for f in FILES)
    for kept in ("tls/certgen.sh", "tls/README.md"):
        assert subprocess.run([git, "check-ignore", "-q", kept], cwd=workdir).returncode == 1
