"""On the real cluster: requests reach the pods through kube-proxy (a NodePort on
127.0.0.1 in front of the Service's pods; nginx's upstreams at the Services'
ClusterIPs) and through the edge the Ingress describes, a real Ingress controller
(issue 9 item 3). The tests connect to 127.0.0.1 only."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.clusterlib import NS, Cluster
from tests.support.edgeclients import curl
from tests.support.edges import HOST, TRAEFIK_EDGE_OBJECTS, Edge, nginx_edge, traefik_edge
from tests.support.hosttools import require_tool
from tests.support.podmanlib import wait_http
from tests.support.testlog import say

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module", params=["traefik", "nginx"])
def edge(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Edge]:
    """Both edges: Traefik, the Ingress controller (to the pods' endpoints), and the
    nginx rendered from the Ingress (to the Services' ClusterIPs, through kube-proxy)."""
    cluster.deploy()
    make = traefik_edge if request.param == "traefik" else nginx_edge
    with make(cluster, tmp_path_factory.mktemp("edge")) as e:
        yield e


@pytest.fixture
def nodeport(cluster: Cluster) -> Iterator[int]:
    """A NodePort Service (test-only) with the dev Service's selector and ports."""
    svc = cluster.get("-n", NS, "service", "fiboserver-dev")
    probe = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "fiboserver-dev-nodeport", "namespace": NS},
        "spec": {"type": "NodePort", "selector": svc["spec"]["selector"],
                 "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }  # fmt: skip
    cluster.kubectl("apply", "--server-side", "-f", "-", stdin=json.dumps(probe))
    try:
        got = cluster.get("-n", NS, "service", "fiboserver-dev-nodeport")
        port = int(got["spec"]["ports"][0]["nodePort"])
        # kube-proxy writes the rules within a second or so of the Service's creation.
        wait_http(f"http://127.0.0.1:{port}/dev/healthz", timeout=30)
        yield port
    finally:
        cluster.kubectl("delete", "-n", NS, "service", "fiboserver-dev-nodeport",
                        "--ignore-not-found")  # fmt: skip


def test_nodeport_on_loopback_reaches_the_pods(cluster: Cluster, nodeport: int) -> None:
    cluster.deploy()
    seen: set[str] = set()
    for _ in range(30):
        with urllib.request.urlopen(f"http://127.0.0.1:{nodeport}/dev/fibo?n=10",
                                    timeout=5) as r:  # fmt: skip
            assert r.status == 200
            assert json.loads(r.read())["result"] == 55
    # kube-proxy spreads connections over the endpoints: the pods' logs show it.
    for pod in cluster.ready_pods("fiboserver-dev"):
        logs = cluster.kubectl("logs", "-n", NS, pod["metadata"]["name"], "--since=2m").stdout
        if "/dev/fibo" in logs:
            seen.add(pod["metadata"]["name"])
    assert len(seen) >= 2, seen
    say("cluster", f"NodePort 127.0.0.1:{nodeport} -> 30 requests, answered by {len(seen)} pods")


def test_edge_routes_like_the_ingress(cluster: Cluster, edge: Edge) -> None:
    curl_bin = require_tool("curl")
    https = f"https://{HOST}:{edge.https_port}"
    resolve = ["--resolve", f"{HOST}:{edge.https_port}:127.0.0.1", "--cacert", str(edge.cafile)]
    for prefix in ("/dev", "/prod"):
        out = curl(curl_bin, *resolve, f"{https}{prefix}/fibo?n=10")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["result"] == 55, out.stdout
    out = curl(curl_bin, *resolve, "-o", "/dev/null", "-w", "%{http_code}",
               f"{https}/devx/fibo?n=10")  # fmt: skip
    assert out.stdout == "404", out
    http = f"http://{HOST}:{edge.http_port}/dev/fibo?n=10"
    out = curl(curl_bin, "--resolve", f"{HOST}:{edge.http_port}:127.0.0.1", "-o", "/dev/null",
               "-w", "%{http_code}", http)  # fmt: skip
    assert out.stdout in {"301", "302", "307", "308"}, out
    say("cluster", f"edge {edge.kind}: https 127.0.0.1:{edge.https_port} /dev and /prod -> 55, "
        f"/devx -> 404, plain HTTP -> {out.stdout}")  # fmt: skip


def test_load_through_the_edge_loses_nothing(edge: Edge, tmp_path: Path) -> None:
    """A baseline for the disruption runs: steady load, nothing happening."""
    import time

    load = edge.load("/prod/fibo").start()
    time.sleep(5)
    report = load.stop()
    say("cluster", f"steady load via {edge.kind}: {report.line()}")
    assert report.failed == 0, report.failures
    assert report.sent >= 100, report.line()


def plain_http(edge: Edge, path: str = "/dev/fibo?n=10") -> tuple[str, str]:
    """(status, Location) of one plain-HTTP request to the edge for our host."""
    out = curl(require_tool("curl"), "--resolve", f"{HOST}:{edge.http_port}:127.0.0.1",
               "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
               f"http://{HOST}:{edge.http_port}{path}")  # fmt: skip
    status, _, location = out.stdout.partition(" ")
    return status, location


def wait_plain_http(edge: Edge, want: str, timeout: float = 30) -> tuple[str, str]:
    """Poll until plain HTTP answers `want` (Traefik applies changes after its 7 s
    throttle), returning the last (status, Location)."""
    deadline = time.monotonic() + timeout
    while (got := plain_http(edge))[0] != want and time.monotonic() < deadline:
        time.sleep(0.5)
    return got


def test_traefik_redirect_is_the_middleware_in_k8s(cluster: Cluster, tmp_path_factory:
                                                   pytest.TempPathFactory) -> None:  # fmt: skip
    """Traefik's redirect is k8s/edge/traefik's Middleware, not the harness's: with
    the Middleware deleted, plain HTTP is no longer redirected (the control); applied
    again, it is, permanently, to the same URL over HTTPS."""
    cluster.deploy()
    with traefik_edge(cluster, tmp_path_factory.mktemp("edge-control")) as edge:
        https_url = f"https://{HOST}/dev/fibo?n=10"
        # Permanent: 301 for a GET (Traefik's redirectScheme; 308 for other methods).
        assert plain_http(edge) == ("301", https_url)
        cluster.kubectl("delete", "-n", NS, "middleware.traefik.io", "redirect-https")
        try:
            # The IngressRoute now names a missing Middleware: Traefik drops its
            # router, and nothing answers plain HTTP for the host.
            assert wait_plain_http(edge, "404") == ("404", "")
            # HTTPS is the Ingress's own, untouched.
            assert edge.get("/dev/readyz")[0] == 200
        finally:
            cluster.kubectl("apply", "--server-side", "-k", str(TRAEFIK_EDGE_OBJECTS))
        assert wait_plain_http(edge, "301") == ("301", https_url)
    say("cluster", "Traefik: plain HTTP -> 301 to https (Middleware redirect-https); "
        "Middleware deleted -> 404; applied again -> 301")  # fmt: skip
