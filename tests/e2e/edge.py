"""nginx at the edge, configured from the project's Ingress, plus an HTTPS load client.

- `rendered_ingress()` runs `kubectl kustomize k8s` and returns the one Ingress.
- `render_nginx_conf()` turns its rules into an nginx.conf: every `host` a TLS server
  (certificate files looked up by the TLS Secret's name), every path a location,
  every backend Service an upstream whose servers the caller supplies (the local
  replicas standing in for the Service's endpoints), HTTP redirected to HTTPS.
- `Nginx` runs it as a child process on loopback ports with its own prefix, and
  `set_backends()` swaps the upstream lists (an endpoint change) by `nginx -s reload`,
  returning once the new workers answer.
- `Load` sends HTTPS requests from several threads and counts what failed.

Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kube import render
from procinfo import free_port

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
TEMPLATE = HERE / "nginx.conf.tmpl"
HOST = "127.0.0.1"

Manifest = dict[str, Any]


def rendered_ingress(path: Path = REPO_ROOT / "k8s") -> Manifest:
    """The single Ingress object of the rendered top-level kustomization."""
    ingresses = [o for o in render(path) if o.get("kind") == "Ingress"]
    assert len(ingresses) == 1, f"expected one Ingress in {path}, got {len(ingresses)}"
    ingress: Manifest = ingresses[0]
    return ingress


@dataclass(frozen=True)
class Route:
    """One Ingress path: where it matches and which Service answers it."""

    host: str
    path: str
    path_type: str
    service: str
    port: str  # Service port number or name, as written in the Ingress


@dataclass
class EdgePlan:
    """What the Ingress asks for, in the terms nginx needs."""

    routes: list[Route] = field(default_factory=list)
    tls_hosts: dict[str, str] = field(default_factory=dict)  # host -> Secret name

    @property
    def services(self) -> list[str]:
        return sorted({r.service for r in self.routes})

    @property
    def hosts(self) -> list[str]:
        return sorted({r.host for r in self.routes})


def plan_from_ingress(ingress: Manifest) -> EdgePlan:
    spec = ingress["spec"]
    plan = EdgePlan()
    for tls in spec.get("tls") or []:
        for host in tls.get("hosts") or []:
            plan.tls_hosts[host] = tls["secretName"]
    for rule in spec.get("rules") or []:
        host = rule.get("host", "")
        assert host, "a rule without host would catch every name; the e2e edge needs one"
        for p in rule["http"]["paths"]:
            svc = p["backend"]["service"]
            port = svc["port"].get("number", svc["port"].get("name"))
            plan.routes.append(
                Route(host, p["path"], p.get("pathType", "Prefix"), svc["name"], str(port))
            )
    return plan


def upstream_name(service: str, port: str) -> str:
    # As ingress-nginx names them: <service>-<port>.
    return f"{service}-{port}"


def _locations(routes: Sequence[Route]) -> str:
    out: list[str] = []
    for r in routes:
        target = f"http://{upstream_name(r.service, r.port)}"
        if r.path_type == "Exact":
            matches = [f"= {r.path}"]
        elif r.path.rstrip("/") == "":
            matches = ["/"]
        else:
            # Ingress Prefix matching is per path element: /dev matches /dev and
            # /dev/..., never /devx. nginx needs both forms for that.
            base = r.path.rstrip("/")
            matches = [f"= {base}", f"{base}/"]
        for m in matches:
            out.append(f"        location {m} {{\n            proxy_pass {target};\n        }}")
    if not any(r.path.rstrip("/") == "" for r in routes):
        # Paths no rule matches: 404, as ingress-nginx's default backend answers.
        out.append("        location / {\n            return 404;\n        }")
    return "\n".join(out)


def render_nginx_conf(
    plan: EdgePlan,
    backends: Mapping[str, Sequence[str]],
    secrets: Mapping[str, tuple[Path, Path]],
    *,
    prefix: Path,
    http_port: int,
    https_port: int,
    control_port: int,
    generation: int,
    retry: bool = True,
) -> str:
    """nginx.conf for `plan`. `backends`: Service name -> "127.0.0.1:port" list (its
    endpoints); `secrets`: TLS Secret name -> (certificate file, key file)."""
    upstreams: list[str] = []
    seen: set[str] = set()
    for r in plan.routes:
        name = upstream_name(r.service, r.port)
        if name in seen:
            continue
        seen.add(name)
        servers = list(backends.get(r.service, ()))
        # nginx needs at least one server; a Service without endpoints answers 502/503.
        lines = [f"        server {s};" for s in servers] or ["        server 127.0.0.1:1 down;"]
        upstreams.append(
            f"    upstream {name} {{\n"
            + "\n".join(lines)
            + "\n        # idle keep-alive connections per worker (see proxy_http_version)\n"
            + "        keepalive 32;\n    }"
        )
    servers_out: list[str] = []
    for host in plan.hosts:
        routes = [r for r in plan.routes if r.host == host]
        secret = plan.tls_hosts.get(host)
        if secret is None:
            servers_out.append(
                f"    server {{\n        listen 127.0.0.1:{http_port};\n"
                f"        server_name {host};\n{_locations(routes)}\n    }}"
            )
            continue
        crt, key = secrets[secret]
        # TLS host: plain HTTP only redirects (ingress-nginx's ssl-redirect, 308 keeps
        # the method). The port is spelled out because the test edge is not on 443.
        servers_out.append(
            f"    server {{\n        listen 127.0.0.1:{http_port};\n"
            f"        server_name {host};\n"
            f"        return 308 https://$host:{https_port}$request_uri;\n    }}"
        )
        servers_out.append(
            f"    server {{\n        listen 127.0.0.1:{https_port} ssl;\n"
            f"        server_name {host};\n"
            f"        ssl_certificate {crt};\n        ssl_certificate_key {key};\n"
            f"{_locations(routes)}\n    }}"
        )
    # Workers drop root when the master has it; they write only the temp dirs.
    user = "user nobody nogroup;" if os.geteuid() == 0 else ""
    text = TEMPLATE.read_text()
    for k, v in {
        "@USER@": user,
        "@PREFIX@": str(prefix),
        "@UPSTREAMS@": "\n".join(upstreams),
        "@SERVERS@": "\n".join(servers_out),
        "@HTTP_PORT@": str(http_port),
        "@HTTPS_PORT@": str(https_port),
        "@CONTROL_PORT@": str(control_port),
        "@GENERATION@": str(generation),
        "@NEXT_UPSTREAM@": "error timeout" if retry else "off",
    }.items():
        text = text.replace(k, v)
    return text


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


# -- clients ---------------------------------------------------------------------------


def curl(curl_bin: str, *args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    """Run curl; never raises on its exit status (the tests assert it)."""
    return subprocess.run(
        [curl_bin, "--silent", "--show-error", "--max-time", "10", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class _TLSConnection(http.client.HTTPSConnection):
    """HTTPS to 127.0.0.1 while speaking to `host` (SNI and certificate check), as
    `curl --resolve host:port:127.0.0.1` does. Reuses the previous TLS session."""

    def __init__(
        self, host: str, port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None
    ) -> None:
        super().__init__(host, port, timeout=15, context=ctx)
        self._ctx = ctx
        self._session = session

    def connect(self) -> None:
        raw = socket.create_connection((HOST, self.port), timeout=self.timeout)
        self.sock = self._ctx.wrap_socket(raw, server_hostname=self.host, session=self._session)


def fib(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


@dataclass
class LoadReport:
    sent: int = 0
    ok: int = 0
    failures: list[str] = field(default_factory=list)  # first few, for the log
    failed: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    def line(self) -> str:
        lat = sorted(self.latencies) or [0.0]
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        return (
            f"requests sent={self.sent} ok={self.ok} failed={self.failed} "
            f"in {self.seconds:.1f} s ({self.sent / max(self.seconds, 1e-9):.0f} req/s, "
            f"latency p99 {p99 * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms)"
        )


class Load:
    """`threads` clients, each sending GET <path>?n=<random> at about `rate` req/s over
    HTTPS to the edge, one TLS connection per request (session resumed).

    Failed = anything but a 200 whose JSON `result` is the right Fibonacci number:
    other statuses, resets, timeouts, TLS errors. One connection per request keeps
    nginx's own config reloads (the drill's stand-in for an endpoint change, which
    ingress-nginx applies without a reload) from closing idle client connections
    under a request and counting that against the replicas."""

    def __init__(
        self,
        host: str,
        port: int,
        cafile: Path,
        path: str,
        *,
        threads: int = 4,
        rate: float = 25.0,
        max_n: int = 3000,
    ) -> None:
        self.host, self.port, self.path = host, port, path
        self.ctx = ssl.create_default_context(cafile=str(cafile))
        self.threads, self.rate, self.max_n = threads, rate, max_n
        self.report = LoadReport()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self._t0 = 0.0
        self._expected = {n: fib(n) for n in range(max_n + 1)}

    def _one(self, rng: random.Random, session: ssl.SSLSession | None) -> ssl.SSLSession | None:
        n = rng.randint(0, self.max_n)
        conn = _TLSConnection(self.host, self.port, self.ctx, session)
        err: str | None = None
        t0 = time.monotonic()
        try:
            conn.request("GET", f"{self.path}?n={n}", headers={"Connection": "close"})
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                err = f"status {resp.status}"
            elif json.loads(body).get("result") != self._expected[n]:
                err = f"wrong result for n={n}"
            sock = conn.sock
            if isinstance(sock, ssl.SSLSocket) and sock.session is not None:
                session = sock.session
        except Exception as exc:  # every transport error is a failed request
            err = f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()
        with self._lock:
            self.report.latencies.append(time.monotonic() - t0)
            self.report.sent += 1
            if err is None:
                self.report.ok += 1
            else:
                self.report.failed += 1
                if len(self.report.failures) < 5:
                    t = time.monotonic() - self._t0
                    self.report.failures.append(f"t={t:.2f}s {err}")
        return session

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        session: ssl.SSLSession | None = None
        period = 1.0 / self.rate
        next_at = time.monotonic()
        while not self._stop.is_set():
            session = self._one(rng, session)
            next_at += period
            delay = next_at - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                next_at = time.monotonic()  # behind: do not burst to catch up

    def failed(self) -> int:
        """Requests failed so far."""
        with self._lock:
            return self.report.failed

    def start(self) -> Load:
        self._t0 = time.monotonic()
        for i in range(self.threads):
            t = threading.Thread(target=self._run, args=(i,), daemon=True, name=f"load-{i}")
            t.start()
            self._workers.append(t)
        return self

    def stop(self) -> LoadReport:
        self._stop.set()
        for t in self._workers:
            t.join(timeout=30)
        self.report.seconds = time.monotonic() - self._t0
        return self.report
