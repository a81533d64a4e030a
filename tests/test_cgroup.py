"""Worker count from the container's CPU limit: cgroup v1 and v2 layouts built in tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fiboserver.server.cgroup import cpu_limit, default_workers, workers_for

AFFINITY = len(os.sched_getaffinity(0))


def v2(root: Path, cpu_max: str) -> Path:
    """A cgroup v2 mount: cpu.max directly at the root, as inside a container."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cpu.max").write_text(cpu_max + "\n")
    return root


def v1(root: Path, quota: str, period: str = "100000", controller: str = "cpu") -> Path:
    """A cgroup v1 hierarchy: <root>/<controller>/cpu.cfs_{quota,period}_us."""
    ctl = root / controller
    ctl.mkdir(parents=True, exist_ok=True)
    (ctl / "cpu.cfs_quota_us").write_text(quota + "\n")
    (ctl / "cpu.cfs_period_us").write_text(period + "\n")
    return root


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [
        ("200000 100000", 2.0),
        ("150000 100000", 1.5),
        ("50000 100000", 0.5),
        ("100000 50000", 2.0),  # the period is not always 100 ms
        ("max 100000", None),
        ("max", None),
        ("50000", 0.5),  # no period given: the kernel's default, 100 ms
    ],
)
def test_v2_cpu_max(tmp_path: Path, cpu_max: str, expected: float | None) -> None:
    assert cpu_limit(str(v2(tmp_path, cpu_max))) == expected


@pytest.mark.parametrize(
    ("quota", "period", "expected"),
    [
        ("200000", "100000", 2.0),
        ("150000", "100000", 1.5),
        ("50000", "100000", 0.5),
        ("-1", "100000", None),
    ],
)
@pytest.mark.parametrize("controller", ["cpu", "cpu,cpuacct", "cpuacct,cpu"])
def test_v1_cfs_quota(
    tmp_path: Path, quota: str, period: str, expected: float | None, controller: str
) -> None:
    assert cpu_limit(str(v1(tmp_path, quota, period, controller))) == expected


def test_no_cgroup_files_means_no_limit(tmp_path: Path) -> None:
    assert cpu_limit(str(tmp_path)) is None
    assert cpu_limit(str(tmp_path / "does-not-exist")) is None


def test_v1_controller_without_both_files_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    assert cpu_limit(str(tmp_path)) is None
    v1(tmp_path, "300000", controller="cpu,cpuacct")
    assert cpu_limit(str(tmp_path)) == 3.0


def test_v2_wins_over_v1_when_both_exist(tmp_path: Path) -> None:
    v1(tmp_path, "400000")
    v2(tmp_path, "100000 100000")
    assert cpu_limit(str(tmp_path)) == 1.0


@pytest.mark.parametrize(
    ("cpu_max", "workers"),
    [
        ("200000 100000", 2),
        ("150000 100000", 2),  # 1.5 CPUs: round up, the spare share is still usable
        ("50000 100000", 1),  # 0.5 CPU: never fewer than one worker
        ("10000 100000", 1),
        ("400000 100000", 4),
    ],
)
def test_default_workers_follow_v2_limit(tmp_path: Path, cpu_max: str, workers: int) -> None:
    assert default_workers({}, str(v2(tmp_path, cpu_max))) == workers


@pytest.mark.parametrize(("quota", "workers"), [("300000", 3), ("150000", 2), ("50000", 1)])
def test_default_workers_follow_v1_limit(tmp_path: Path, quota: str, workers: int) -> None:
    assert default_workers({}, str(v1(tmp_path, quota))) == workers


@pytest.mark.parametrize(
    "make_root",
    [
        lambda p: v2(p, "max 100000"),
        lambda p: v1(p, "-1"),
        lambda p: p,  # no cgroup files at all
    ],
    ids=["v2-max", "v1-minus-one", "empty"],
)
def test_default_workers_without_limit_use_affinity(tmp_path: Path, make_root: object) -> None:
    assert callable(make_root)
    root = make_root(tmp_path)
    assert default_workers({}, str(root)) == AFFINITY


def test_web_concurrency_overrides_the_limit(tmp_path: Path) -> None:
    root = str(v2(tmp_path, "50000 100000"))
    assert default_workers({"WEB_CONCURRENCY": "5"}, root) == 5
    assert default_workers({"WEB_CONCURRENCY": "1"}, str(v1(tmp_path / "v1", "800000"))) == 1
    # Unrelated variables do not matter.
    assert default_workers({"OTHER": "7"}, root) == 1


@pytest.mark.parametrize(("limit", "usable", "workers"), [(None, 1, 1), (None, 3, 3), (0.5, 8, 1)])
def test_workers_for(limit: float | None, usable: int, workers: int) -> None:
    assert workers_for(limit, usable) == workers


@pytest.mark.parametrize("value", ["0", "-3"])
def test_web_concurrency_below_one_is_refused_with_the_reason(tmp_path: Path, value: str) -> None:
    with pytest.raises(ValueError, match=rf"^WEB_CONCURRENCY must be >= 1, got '{value}'$"):
        default_workers({"WEB_CONCURRENCY": value}, str(tmp_path))
