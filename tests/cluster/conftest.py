"""The `cluster` fixture of tests/cluster (marker `cluster`): the local Kubernetes
cluster of the tool tools/cluster (`make cluster-up`, README "Run it on a real
cluster")."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.clusterlib import HOW_TO, Cluster, api_ready, run_make
from tests.support.hosttools import IN_CI
from tools.cluster.layout import KUBECONFIG, ROUTE_LOCALNET
from tools.cluster.up import host_dirs


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """With CI=true the run brings the cluster up (`make cluster-up` keeps one this
    clone already runs) and down at the end; otherwise a cluster that is up is used
    as it is, or the tests skip, saying how to run them."""
    if api_ready() and not IN_CI:
        yield Cluster(owned=False)
        return
    if not IN_CI:
        pytest.skip(f"no local cluster is up; run them with `{HOW_TO}` (the first "
                    "start compiles Kubernetes: README 'Run it on a real cluster')")  # fmt: skip
    # The host as it was, for test_teardown.py to compare with after the down.
    before: dict[str, object] = {
        "route_localnet": ROUTE_LOCALNET.read_text().strip(),
        "host_dirs": host_dirs(),
    }
    up = run_make("cluster-up", timeout=3600)
    if up.returncode != 0:
        run_make("cluster-down", timeout=600)
        pytest.fail(f"make cluster-up failed:\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}")
    cluster = Cluster(owned=True, host_before=before)
    os.environ["KUBECONFIG"] = str(KUBECONFIG)
    try:
        yield cluster
    finally:
        if not cluster.down_done:
            run_make("cluster-down", timeout=600)
