"""e2e, TLS edge and rollout drill: nginx configured from the project's Ingress in front
of real gunicorn processes of the service, certificates from `make certgen`.

Only 127.0.0.1 is contacted; nginx listens on free high loopback ports.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.drill import PRESTOP_S, PROPAGATION_S, DrillResult, Replica, rolling_update
from tests.support.edge import Nginx
from tests.support.edgeclients import Load, LoadReport, curl
from tests.support.hosttools import require_tool
from tests.support.nginxconf import EdgePlan, plan_from_ingress, rendered_ingress
from tests.support.repo import REPO_ROOT
from tests.support.serverproc import ServerProcess
from tests.support.testlog import say

pytestmark = pytest.mark.e2e

HOST = "cloudnative"


@pytest.fixture(scope="module")
def tools() -> dict[str, str]:
    return {name: require_tool(name) for name in ("nginx", "curl", "kubectl", "make", "openssl")}


@pytest.fixture(scope="module")
def tls_files(tools: dict[str, str]) -> dict[str, Path]:
    """The CA and server certificate `make certgen` writes into tls/ (it keeps files
    that exist, so a developer's own certificates are left alone)."""
    subprocess.run([tools["make"], "-s", "certgen"], cwd=REPO_ROOT, check=True, capture_output=True)
    files = {name: REPO_ROOT / "tls" / name for name in ("ca.crt", "tls.crt", "tls.key")}
    for path in files.values():
        assert path.is_file(), f"make certgen did not write {path}"
    return files


@pytest.fixture(scope="module")
def plan(tools: dict[str, str]) -> EdgePlan:
    ingress = rendered_ingress()
    plan = plan_from_ingress(ingress)
    assert plan.hosts == [HOST]
    assert {(r.path, r.service) for r in plan.routes} == {
        ("/dev", "fiboserver-dev"),
        ("/prod", "fiboserver-prod"),
    }
    assert plan.tls_hosts == {HOST: "cloudnative"}
    return plan


def overlay_config(service: str) -> dict[str, Any]:
    """The config file of the overlay behind a Service (fiboserver-<env>)."""
    env = service.removeprefix("fiboserver-")
    data = yaml.safe_load((REPO_ROOT / "k8s" / "overlays" / env / "config.yaml").read_text())
    assert isinstance(data, dict)
    data.pop("port", None)  # ServerProcess picks a free loopback port
    return data


@pytest.fixture
def make_nginx(
    tools: dict[str, str], tls_files: dict[str, Path], plan: EdgePlan, tmp_path: Path
) -> Iterator[Any]:
    started: list[Nginx] = []

    def make(backends: dict[str, list[str]]) -> Nginx:
        prefix = tmp_path / f"nginx{len(started)}"
        prefix.mkdir()
        secrets = {"cloudnative": (tls_files["tls.crt"], tls_files["tls.key"])}
        ngx = Nginx(tools["nginx"], plan, secrets, prefix)
        started.append(ngx)
        return ngx.start(backends)

    yield make
    for ngx in started:
        ngx.stop()


def assert_routes(curl_bin: str, https: str, ca: list[str], resolve: list[str]) -> None:
    """Both environments routed by path, the request id passed through, prefixes
    matched per path element, and the certificate verified against the CA."""
    for prefix in ("/dev", "/prod"):
        out = curl(curl_bin, *ca, *resolve, f"{https}{prefix}/fibo?n=10")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["result"] == 55, out.stdout
        say("e2e", f"edge: curl --cacert tls/ca.crt {prefix}/fibo?n=10 -> {out.stdout}")

    # The request id a client sends comes back through the edge.
    out = curl(
        curl_bin, *ca, *resolve, "-D", "-", "-o", "/dev/null",
        "-H", "X-Request-ID: e2e-edge-1", f"{https}/dev/healthz",
    )  # fmt: skip
    assert "x-request-id: e2e-edge-1" in out.stdout.lower(), out.stdout

    # Prefix matching is per path element, as the Ingress's pathType Prefix.
    out = curl(curl_bin, *ca, *resolve, "-o", "/dev/null", "-w", "%{http_code}",
               f"{https}/devx/fibo?n=10")  # fmt: skip
    assert out.stdout == "404", out

    # Without the CA the certificate does not verify: curl exit 60.
    out = curl(curl_bin, *resolve, f"{https}/dev/fibo?n=10")
    assert out.returncode == 60, (out.returncode, out.stderr)
    say(
        "e2e",
        f"edge: curl without the CA -> exit {out.returncode} ({out.stderr.splitlines()[0]})",
    )


def assert_http_redirect(curl_bin: str, https: str, http_port: int) -> None:
    """Plain HTTP: a redirect to the same URL over HTTPS."""
    http_url = f"http://{HOST}:{http_port}/dev/fibo?n=10"
    out = curl(
        curl_bin, "--resolve", f"{HOST}:{http_port}:127.0.0.1",
        "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", http_url,
    )  # fmt: skip
    assert out.stdout == f"308 {https}/dev/fibo?n=10", out.stdout
    say("e2e", f"edge: plain HTTP -> {out.stdout}")


def assert_tls_versions(
    tools: dict[str, str], https: str, ca: list[str], resolve: list[str], https_port: int
) -> None:
    """TLS 1.2 and 1.3 served, 1.1 refused by the server."""
    for flags, want in ((["--tlsv1.2", "--tls-max", "1.2"], 0), (["--tlsv1.3"], 0)):
        out = curl(tools["curl"], *ca, *resolve, *flags, f"{https}/prod/fibo?n=10")
        assert out.returncode == want, (flags, out.stderr)
    old = subprocess.run(
        [tools["openssl"], "s_client", "-connect", f"127.0.0.1:{https_port}",
         "-servername", HOST, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"],
        input="", capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert old.returncode != 0
    # The server's protocol_version alert, not a client-side refusal.
    assert "alert protocol version" in old.stderr, old.stderr
    say("e2e", "edge: TLS 1.2 ok, TLS 1.3 ok, TLS 1.1 -> server alert protocol version")


def test_tls_edge_routes_like_the_ingress(
    tools: dict[str, str],
    tls_files: dict[str, Path],
    plan: EdgePlan,
    make_nginx: Any,
    tmp_path: Path,
) -> None:
    servers = {
        svc: ServerProcess(overlay_config(svc), tmp_path, name=f"{svc}.yaml")
        for svc in plan.services
    }
    try:
        for srv in servers.values():
            srv.start()
            srv.wait_for("server start", timeout=30)
        ngx: Nginx = make_nginx({svc: [f"127.0.0.1:{s.port}"] for svc, s in servers.items()})
        say(
            "e2e",
            f"edge: nginx from the Ingress: host {HOST}, "
            + ", ".join(f"{r.path} -> {r.service}" for r in plan.routes)
            + f"; https 127.0.0.1:{ngx.https_port}, http 127.0.0.1:{ngx.http_port}",
        )
        https = f"https://{HOST}:{ngx.https_port}"
        resolve = ["--resolve", f"{HOST}:{ngx.https_port}:127.0.0.1"]
        ca = ["--cacert", str(tls_files["ca.crt"])]

        assert_routes(tools["curl"], https, ca, resolve)
        assert_http_redirect(tools["curl"], https, ngx.http_port)
        assert_tls_versions(tools, https, ca, resolve, ngx.https_port)
    finally:
        for srv in servers.values():
            srv.close()


def _retried(lines: list[str]) -> int:
    """Requests nginx sent to more than one replica (upstream=[a, b])."""
    return sum(1 for ln in lines if "upstream=[" in ln and ", " in ln.split("upstream=[")[1])


def drill_run(
    label: str,
    prestop: float,
    retry: bool,
    ngx: Nginx,
    service: str,
    replicas: list[Replica],
    make_replica: Callable[[], Replica],
    others: dict[str, list[str]],
    tls_files: dict[str, Path],
) -> tuple[str, DrillResult, LoadReport, int]:
    """One rolling update of `service` under load through nginx: what it cost, and
    how many requests nginx retried on another replica."""
    if ngx.retry != retry:
        ngx.retry = retry
        ngx.set_backends({**others, service: [r.addr for r in replicas]})
    lines_before = len(ngx.access_lines())
    load = Load(HOST, ngx.https_port, tls_files["ca.crt"], "/dev/fibo").start()
    try:
        res = rolling_update(
            ngx, service, replicas, make_replica, others, steps=10, prestop=prestop,
            failed_so_far=load.failed,
        )  # fmt: skip
    finally:
        report = load.stop()
    retried = _retried(ngx.access_lines()[lines_before:])
    say(
        "e2e",
        f"drill {label} (preStop {prestop:.0f} s, endpoint removal reaches nginx "
        f"after {PROPAGATION_S:.0f} s): {res.steps} replacements in "
        f"{res.seconds:.1f} s; {report.line()}; nginx retried {retried} on "
        f"another replica; old replicas' exit codes {sorted(set(res.exit_codes))}, "
        f"SIGTERM->exit max {max(res.stop_seconds):.2f} s; new replica ready in "
        f"max {max(res.ready_seconds):.2f} s; failed per replacement "
        f"{res.failed_per_step}",
    )
    for f in report.failures:
        say("e2e", f"  failed: {f}")
    return label, res, report, retried


def assert_drill(results: list[tuple[str, DrillResult, LoadReport, int]]) -> None:
    """With preStop nothing is lost; the two controls show the drill can fail."""
    say(
        "e2e",
        "drill summary, failed/sent (retried by nginx): "
        + "; ".join(
            f"{label}: {rep.failed}/{rep.sent} ({retried})" for label, _, rep, retried in results
        ),
    )
    for _, res, report, _ in results:
        assert res.steps == 10
        assert res.exit_codes == [0] * 10, res.exit_codes
        # The load really ran through every replacement (not a near-idle drill):
        # 100 req/s offered, fewer seen without preStop (1 s connect stalls);
        # 10 is a generous floor for a busy machine (docs/e2e.md has the figures).
        assert report.sent >= 10 * res.seconds, report.line()
    (_, _, with_prestop, _), (_, _, _, rerouted), (_, _, lossy, _) = results
    # The bar: a rolling update with preStop loses nothing.
    assert with_prestop.failed == 0, with_prestop.failures
    # The controls show that the drill can fail. Without preStop the old replica
    # stops listening while nginx still sends it requests for 1 s: behind the
    # retrying proxy, some of them had to be retried on another replica...
    assert rerouted > 0, "without preStop, no request reached the stopping replica"
    # ...and without retry they are lost. Odds of a false pass: every one of 10
    # replacements would have to lose nothing. A replacement loses the requests
    # routed to the stopped replica in that second (one connect stall per
    # client thread); even if one in two lost none, a run of 10 would lose
    # nothing once in 1024 runs (docs/e2e.md, "The rollout drill", has what a
    # measured run lost).
    assert lossy.failed > 0, "without preStop and retry, the drill lost nothing"


def test_rollout_drill(
    plan: EdgePlan,
    tls_files: dict[str, Path],
    make_nginx: Any,
    tmp_path: Path,
) -> None:
    service = "fiboserver-dev"
    # INFO, not the DEV default DEBUG: the drill's thousands of cache records would
    # only cost CPU on the shared cores. Everything else is the dev overlay's config.
    config = {**overlay_config(service), "loglevel": "INFO"}
    counter = iter(range(1000))
    replicas: list[Replica] = []
    prod = ServerProcess(overlay_config("fiboserver-prod"), tmp_path, name="prod.yaml")

    def make_replica() -> Replica:
        return Replica(config, tmp_path, next(counter))

    try:
        prod.start()
        prod.wait_for("server start", timeout=30)
        others = {"fiboserver-prod": [f"127.0.0.1:{prod.port}"]}
        for _ in range(2):
            replicas.append(make_replica())
            replicas[-1].start()
        ngx: Nginx = make_nginx({**others, service: [r.addr for r in replicas]})

        # 1. The Kubernetes way with preStop; 2. without preStop, behind a proxy that
        # retries (ingress-nginx's default); 3. without preStop and without retry:
        # what traffic that is not retried sees (a POST already sent, clients going
        # through kube-proxy's Service address, proxies configured without retries).
        runs = (
            ("with preStop", PRESTOP_S, True),
            ("without preStop", 0.0, True),
            ("without preStop, proxy without retry", 0.0, False),
        )
        results = [
            drill_run(
                label, prestop, retry, ngx, service, replicas, make_replica, others, tls_files
            )
            for label, prestop, retry in runs
        ]
        assert_drill(results)
    finally:
        for r in replicas:
            r.close()
        prod.close()
