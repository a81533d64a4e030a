"""The kubelet's own CRI log files pass the Fluent Bit contract (issue 9 item 7).

tests/test_log_contract.py checks every line the service prints as it would reach
Elasticsearch, from CRI files it writes itself the way containerd does. Here the
same checks (the same test functions, imported) read the files containerd wrote
for the cluster's pods under /var/log/pods, after the same kinds of requests went
through the edge to the dev and prod pods.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.clusterlib import NS, Cluster
from tests.support.edges import Edge, cluster_edge
from tests.support.testlog import say
from tests.test_log_contract import (  # noqa: F401 (pytest collects them here too)
    CUSTOM_ID,
    drive,
    merged,
    test_each_key_keeps_one_type,
    test_every_line_merges,
    test_integers_fit_int64,
    test_no_key_collides_or_changes_name,
    test_query_fields_exist_with_their_types,
)
from tools.cluster.layout import POD_LOGS

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def edge(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    cluster.deploy()
    with cluster_edge(cluster, tmp_path_factory.mktemp("edge")) as e:
        yield e


@pytest.fixture(scope="module")
def cri_files(cluster: Cluster, edge: Edge) -> dict[str, list[str]]:
    """{log file: its lines} of the app container of every dev and prod pod."""
    statuses: set[int] = set()
    for prefix in ("/dev", "/prod"):
        statuses |= drive(edge, prefix)
    assert {200, 400, 404, 405} <= statuses, statuses
    time.sleep(2)  # the last records reach the files
    files: dict[str, list[str]] = {}
    for env in ("dev", "prod"):
        for pod in cluster.ready_pods(f"fiboserver-{env}"):
            meta = pod["metadata"]
            pod_dir = POD_LOGS / f"{NS}_{meta['name']}_{meta['uid']}" / "fiboserver"
            for f in sorted(pod_dir.glob("*.log")):
                files[str(f)] = f.read_text().splitlines()
    assert len(files) >= 6, sorted(files)
    said = sum(CUSTOM_ID in ln for lines in files.values() for ln in lines)
    assert said, "the request with the custom id is in no pod's log file"
    say("cluster", f"kubelet CRI log files: {len(files)} files, "
        f"{sum(map(len, files.values()))} lines, e.g. {next(iter(files))}")  # fmt: skip
    return files


def test_files_are_where_the_kubelet_puts_them(cri_files: dict[str, list[str]]) -> None:
    for path in cri_files:
        assert Path(path).is_relative_to(POD_LOGS), path
