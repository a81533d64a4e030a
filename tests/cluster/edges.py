"""The edge in front of the cluster, listening on 127.0.0.1 only.

`nginx_edge()`: tests/e2e/edge.py's nginx, rendered from the same Ingress, its
upstreams pointed at each Service's ClusterIP, so every request crosses kube-proxy.
"""

from __future__ import annotations

import contextlib
import http.client
import ssl
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from clusterlib import NS, Cluster
from conftest import require_tool
from edge import Load, Nginx, _TLSConnection, plan_from_ingress, rendered_ingress
from layout import REPO_ROOT

HOST = "cloudnative"  # the Ingress's host, also the certificate's name


@dataclass
class Edge:
    kind: str
    https_port: int
    http_port: int
    cafile: Path

    def get(
        self, path: str, headers: Mapping[str, str] | None = None, method: str = "GET"
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        """One HTTPS request through the edge (like ServerProcess.get)."""
        ctx = ssl.create_default_context(cafile=str(self.cafile))
        conn = _TLSConnection(HOST, self.https_port, ctx, None)
        try:
            conn.request(method, path, headers={"Connection": "close", **(headers or {})})
            resp = conn.getresponse()
            return resp.status, resp.headers, resp.read()
        finally:
            conn.close()

    def load(self, path: str, *, threads: int = 4, rate: float = 25.0) -> Load:
        """edge.Load against this edge: HTTPS to 127.0.0.1 with SNI `cloudnative`."""
        return Load(HOST, self.https_port, self.cafile, path, threads=threads, rate=rate)


def tls_files() -> dict[str, Path]:
    """`make certgen`'s files (cluster-up ran it and made Secret `cloudnative` of them)."""
    subprocess.run(["make", "-s", "certgen"], cwd=REPO_ROOT, check=True, capture_output=True)
    return {n: REPO_ROOT / "tls" / n for n in ("ca.crt", "tls.crt", "tls.key")}


@contextlib.contextmanager
def nginx_edge(cluster: Cluster, prefix: Path) -> Iterator[Edge]:
    plan = plan_from_ingress(rendered_ingress())
    backends = {
        svc: [f"{cluster.get('-n', NS, 'service', svc)['spec']['clusterIP']}:{port}"]
        for svc, port in {(r.service, r.port) for r in plan.routes}
    }
    files = tls_files()
    ngx = Nginx(require_tool("nginx"), plan, {"cloudnative": (files["tls.crt"],
                files["tls.key"])}, prefix)  # fmt: skip
    try:
        ngx.start(backends)
        yield Edge("nginx (rendered from the Ingress, upstreams = Service ClusterIPs)",
                   ngx.https_port, ngx.http_port, files["ca.crt"])  # fmt: skip
    finally:
        ngx.stop()
