"""nginx at the edge: a child process serving the nginx.conf of `nginxconf`.

`Nginx` runs one nginx master on loopback ports with its own prefix, and
`set_backends()` swaps the upstream lists (an endpoint change) by `nginx -s reload`,
returning once the new workers answer. Its clients are in `edgeclients`.

Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.support.nginxconf import EdgePlan, render_nginx_conf
from tests.support.procinfo import HOST, free_port


class Nginx:
    """One nginx master as a child process, configured from an `EdgePlan`."""

    def __init__(
        self,
        nginx: str,
        plan: EdgePlan,
        secrets: Mapping[str, tuple[Path, Path]],
        prefix: Path,
    ) -> None:
        self.nginx = nginx
        self.plan = plan
        self.secrets = secrets
        self.prefix = prefix
        self.conf = prefix / "nginx.conf"
        self.http_port = free_port()
        self.https_port = free_port()
        self.control_port = free_port()
        self.generation = 0
        # False: no retry on the next replica (proxy_next_upstream off).
        self.retry = True
        self.proc: subprocess.Popen[bytes] | None = None
        for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (prefix / "tmp" / d).mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            # Workers run as nobody and buffer large responses into proxy temp files.
            prefix.chmod(0o755)
            tmp = prefix / "tmp"
            for sub in (tmp, *tmp.iterdir()):
                shutil.chown(sub, "nobody", "nogroup")

    def _write(self, backends: Mapping[str, Sequence[str]]) -> None:
        self.generation += 1
        self.conf.write_text(
            render_nginx_conf(
                self.plan,
                backends,
                self.secrets,
                prefix=self.prefix,
                http_port=self.http_port,
                https_port=self.https_port,
                control_port=self.control_port,
                generation=self.generation,
                retry=self.retry,
            )
        )
        subprocess.run(self._cmd("-t", "-q"), check=True, capture_output=True)

    def _cmd(self, *extra: str) -> list[str]:
        # -e: the startup error log too, else nginx tries /var/log/nginx first.
        return [
            self.nginx, "-p", str(self.prefix), "-e", str(self.prefix / "error.log"),
            "-c", str(self.conf), *extra,
        ]  # fmt: skip

    def start(self, backends: Mapping[str, Sequence[str]]) -> Nginx:
        self._write(backends)
        log = (self.prefix / "stderr.log").open("wb")
        self.proc = subprocess.Popen(
            self._cmd(), stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
        self._await_generation(self.generation, 10.0)
        return self

    def set_backends(self, backends: Mapping[str, Sequence[str]], timeout: float = 10.0) -> float:
        """Endpoint change: new upstream lists, `nginx -s reload`; returns the seconds
        until the new workers answered (old workers finish their requests and exit)."""
        t0 = time.monotonic()
        self._write(backends)
        subprocess.run(self._cmd("-s", "reload"), check=True, capture_output=True)
        self._await_generation(self.generation, timeout)
        return time.monotonic() - t0

    def _await_generation(self, gen: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://{HOST}:{self.control_port}/generation"
        last = "nothing"
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.error_log()
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    last = resp.read().decode().strip()
                    if last == str(gen):
                        return
            except OSError as exc:
                last = repr(exc)
            time.sleep(0.02)
        raise AssertionError(f"nginx did not load generation {gen} in {timeout}s ({last})")

    def error_log(self) -> str:
        parts = []
        for name in ("stderr.log", "error.log"):
            p = self.prefix / name
            if p.exists():
                parts.append(p.read_text(errors="replace")[-3000:])
        return "\n".join(parts)

    def access_lines(self) -> list[str]:
        p = self.prefix / "access.log"
        return p.read_text().splitlines() if p.exists() else []

    def stop(self) -> int | None:
        """Graceful stop (SIGQUIT), SIGKILL of the group if it lingers. Idempotent."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            subprocess.run(self._cmd("-s", "quit"), capture_output=True)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(timeout=10)
        return self.proc.returncode
