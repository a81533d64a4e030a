"""The edge in front of the cluster, listening on 127.0.0.1 only.

- `traefik_edge()`: a real Ingress controller, Traefik v3.6 (built like the
  cluster's parts, binaries.TRAEFIK), run as a host process with the cluster's
  kubeconfig. Its kubernetesIngress provider serves the Ingress unchanged: the
  IngressClass `nginx` (k8s/ingress.yaml's one controller-specific field) is
  created here naming Traefik as its controller, as a cluster admin would; TLS
  comes from the Ingress's Secret; requests go to the Service's endpoints (pod
  IPs) as the EndpointSlices list them, terminating pods fenced off from new
  requests. Traefik's static configuration here is generic (entry points `web`
  and `websecure`, the kubernetesIngress and kubernetesCRD providers): HTTPS on
  `websecure` comes from the Ingress's Traefik annotations, the plain-HTTP
  redirect from k8s/edge/traefik (a Middleware and the IngressRoute using it),
  applied here with Traefik's vendored CRDs. (Traefik's kubernetesIngressNGINX
  provider, which reads the ssl-redirect annotation, keeps sending new requests to
  terminating pods in v3.6: traefik/traefik#13287, fixed in v3.7, which cannot be
  built here: docs/cluster.md.)
- `nginx_edge()`: tests/support/edge.py's nginx, rendered from the same Ingress (nginxconf), its
  upstreams pointed at each Service's ClusterIP, so every request crosses kube-proxy.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.support.clients import request_once
from tests.support.clusterlib import NS, Cluster
from tests.support.edge import Nginx
from tests.support.edgeclients import Load, LoadReport, TLSConnection
from tests.support.hosttools import require_tool
from tests.support.nginxconf import plan_from_ingress, rendered_ingress
from tests.support.procinfo import free_port
from tests.support.repo import REPO_ROOT
from tests.support.testlog import say
from tools.cluster.binaries import TRAEFIK
from tools.cluster.layout import KUBECONFIG

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
        return request_once(TLSConnection(HOST, self.https_port, ctx, None), method, path, headers)

    def load(self, path: str, *, threads: int = 4, rate: float = 25.0) -> Load:
        """edgeclients.Load against this edge: HTTPS to 127.0.0.1 with SNI `cloudnative`."""
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


# The class the Ingress names, served by Traefik's Ingress provider on this cluster.
INGRESS_CLASS = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "IngressClass",
    "metadata": {"name": "nginx"},
    "spec": {"controller": "traefik.io/ingress-controller"},
}
# Traefik's CRDs, vendored from the version built (tests/schemas/traefik-v3.6.12).
TRAEFIK_CRDS = REPO_ROOT / "tests/schemas/traefik-v3.6.12/kubernetes-crd-definition-v1.yml"
# What k8s/ ships for a Traefik edge besides the Ingress: the plain-HTTP redirect.
TRAEFIK_EDGE_OBJECTS = REPO_ROOT / "k8s/edge/traefik"


def traefik_static(
    http_port: int, https_port: int, providers: Mapping[str, object]
) -> dict[str, object]:
    """Traefik's static configuration: generic, no routing, TLS or redirect of ours.

    Two entry points named as Traefik's charts name them (the objects in k8s/ pick
    theirs by these names), on 127.0.0.1; which of them serves TLS and what plain
    HTTP answers come from the objects the providers read."""
    return {
        "entryPoints": {"web": {"address": f"127.0.0.1:{http_port}"},
                        "websecure": {"address": f"127.0.0.1:{https_port}"}},
        # Endpoint changes reach a real cluster's edge seconds late (controllers
        # batch them; Traefik's default throttle is 2 s). On this one node they
        # arrive within milliseconds, which would let a pod without its preStop
        # sleep stop before anyone noticed: 7 s of batching is what the 10 s sleep
        # must cover, and what makes the control lose requests (test_disruptions).
        "providers": {"providersThrottleDuration": "7s", **providers},
        "log": {"level": "INFO"},
    }  # fmt: skip


# Traefik's name in a trace (its default, said here because the tests look for it).
TRAEFIK_SERVICE_NAME = "traefik"


def traefik_tracing(otlp_traces_url: str) -> dict[str, object]:
    """The static `tracing` section that makes Traefik export every request's spans
    over OTLP/HTTP to `otlp_traces_url` (the full URL with /v1/traces, as Traefik's
    docs write it) and send the W3C traceparent on to the backend
    (docs/tracing.md, "Through the edge")."""
    return {"tracing": {
        "serviceName": TRAEFIK_SERVICE_NAME,
        # Every request that comes without a sampling decision; a caller's
        # traceparent decides for its own.
        "sampleRate": 1.0,
        "otlp": {"http": {"endpoint": otlp_traces_url}},
    }}  # fmt: skip


def install_traefik_objects(cluster: Cluster) -> None:
    """The IngressClass, Traefik's CRDs and k8s/edge/traefik, as a cluster admin
    running Traefik would install them (idempotent: server-side apply)."""
    cluster.kubectl("apply", "--server-side", "-f", "-", stdin=json.dumps(INGRESS_CLASS))
    cluster.kubectl("apply", "--server-side", "-f", str(TRAEFIK_CRDS))
    # Objects of a CRD are refused until the API server serves the new kind.
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "-f", str(TRAEFIK_CRDS))  # fmt: skip
    cluster.kubectl("apply", "--server-side", "-k", str(TRAEFIK_EDGE_OBJECTS))


@contextlib.contextmanager
def run_traefik(
    prefix: Path, static: object, kind: str, ready_paths: tuple[str, ...]
) -> Iterator[Edge]:
    """Traefik as a host process (the cluster's kubeconfig: out of the cluster it
    needs no RBAC of its own), until every path in `ready_paths` answers 200."""
    entry = static["entryPoints"]  # type: ignore[index]
    ports = [int(entry[n]["address"].rpartition(":")[2]) for n in ("websecure", "web")]
    conf = prefix / "traefik.yaml"
    conf.write_text(json.dumps(static))
    log_path = prefix / "traefik.log"
    log = log_path.open("ab")
    proc = subprocess.Popen(
        [str(TRAEFIK.path("traefik")), f"--configFile={conf}"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        env={**os.environ, "KUBECONFIG": str(KUBECONFIG)},
    )  # fmt: skip
    edge = Edge(kind, ports[0], ports[1], tls_files()["ca.crt"])
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            with contextlib.suppress(OSError):
                if all(edge.get(f"{p}/readyz")[0] == 200 for p in ready_paths):
                    break
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.5)
        yield edge
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@contextlib.contextmanager
def traefik_edge(
    cluster: Cluster, prefix: Path, otlp_traces_url: str | None = None
) -> Iterator[Edge]:
    """Traefik as the Ingress controller; `otlp_traces_url`: tracing on, to there."""
    install_traefik_objects(cluster)
    static = traefik_static(free_port(), free_port(), {"kubernetesIngress": {},
                            "kubernetesCRD": {}})  # fmt: skip
    if otlp_traces_url is not None:
        static = {**static, **traefik_tracing(otlp_traces_url)}
    with run_traefik(prefix, static, f"Traefik {TRAEFIK.version} (Ingress controller)",
                     ("/dev", "/prod")) as edge:  # fmt: skip
        yield edge


def cluster_edge(cluster: Cluster, prefix: Path) -> contextlib.AbstractContextManager[Edge]:
    """The edge the cluster tests use: Traefik (FIBOSERVER_EDGE=nginx picks nginx)."""
    if os.environ.get("FIBOSERVER_EDGE") == "nginx":
        return nginx_edge(cluster, prefix)
    return traefik_edge(cluster, prefix)


def load_through(
    edge: Edge,
    tag: str,
    label: str,
    action: Callable[[], object],
    settled: Callable[[], object],
) -> LoadReport:
    """HTTPS load on /dev/fibo through `edge` from 2 s before `action` until
    `settled()` returns, and 1 s more (a terminating pod still serves through its
    preStop sleep and drain: its loss window is then over). One line says sent,
    failed, p99 and duration; each failure follows."""
    load = edge.load("/dev/fibo").start()
    try:
        time.sleep(2)
        action()
        settled()
        time.sleep(1)
    finally:
        report = load.stop()
    lat = sorted(report.latencies) or [0.0]
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    say(tag, f"{label}: sent {report.sent}, failed {report.failed}, p99 {p99 * 1000:.0f} ms, "
        f"duration {report.seconds:.1f} s  [{report.line()}]")  # fmt: skip
    for f in report.failures:
        say(tag, f"  failed: {f}")
    # The load really ran through the whole action (generous floor: 2 shared cores).
    assert report.sent >= 10 * report.seconds, report.line()
    return report
