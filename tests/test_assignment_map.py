"""The assignment map (issue 22): the tables in README.zh-CN.md and
docs/assignment-map.md that say, for every requirement of the course's modules 8,
10 and 12, where the project does it and which test proves it. Every file, line,
keyword, heading and test id they name must exist, and a stale one fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.mdmap import (
    LINK,
    Row,
    anchors,
    check_link,
    check_row,
    check_test_id,
    file_refs,
    github_anchor,
    tables,
)
from tests.support.repo import REPO_ROOT

ZH = REPO_ROOT / "README.zh-CN.md"
EN = REPO_ROOT / "docs" / "assignment-map.md"
MAPS = [ZH, EN]
# Module 8's requirements as the seed's assignment names them, in its order, then
# the next steps its answer names (Helm; Filebeat into Elasticsearch, Kibana).
MODULE_8 = [
    "优雅启动",
    "优雅终止",
    "资源需求和 QoS 保证",
    "探活",
    "日志等级",
    "配置和代码分离",
    "Service",
    "Ingress",
    "高可用",
    "Helm",
    "Elasticsearch",
]


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def map_tables(path: Path) -> list[list[Row]]:
    return tables(read(path))


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Step by step on minikube (or kind)", "step-by-step-on-minikube-or-kind"),
        (
            "End to end: real containers, `podman kube play`, TLS edge, rollout drill",
            "end-to-end-real-containers-podman-kube-play-tls-edge-rollout-drill",
        ),
        (
            "ingress-nginx was retired in March 2026: `k8s/gateway`",
            "ingress-nginx-was-retired-in-march-2026-k8sgateway",
        ),
        ("Why not the seed's way", "why-not-the-seeds-way"),
        ("`make monitor`", "make-monitor"),
        ("作业对照表", "作业对照表"),
        ("用 Helm 部署", "用-helm-部署"),
        # Full-width punctuation goes, as ASCII punctuation does (written as
        # escapes: U+FF1A colon, U+FF08 and U+FF09 parentheses).
        ("模块十二\uff1a服务网格与链路追踪", "模块十二服务网格与链路追踪"),
        ("Ingress\uff08含 TLS 证书\uff09", "ingress含-tls-证书"),
        ("深入阅读\uff08英文\uff09", "深入阅读英文"),
        ("[a link](x.md) and snake_case", "a-link-and-snake_case"),
    ],
)
def test_github_anchor(heading: str, anchor: str) -> None:
    assert github_anchor(heading) == anchor


def test_anchors_number_duplicates_and_skip_code_blocks() -> None:
    text = "# A\n\n```console\n# not a heading\n```\n\n## A\n### A ##\n"
    assert anchors(text) == {"a", "a-1", "a-2"}


def test_readmes_link_each_other_and_the_english_map() -> None:
    # README.md: the line after the title paragraph (the title, a blank line, the
    # paragraph, a blank line) links the Chinese README.
    readme = read(REPO_ROOT / "README.md").splitlines()
    after_paragraph = readme.index("", 2) + 1
    assert "](README.zh-CN.md)" in readme[after_paragraph]
    assert "](docs/assignment-map.md)" in "\n".join(readme)
    zh = read(ZH)
    assert "](README.md)" in zh.splitlines()[2]
    assert "](docs/assignment-map.md)" in zh


@pytest.mark.parametrize("path", MAPS, ids=["zh", "en"])
def test_three_tables_module_8_10_12(path: Path) -> None:
    found = map_tables(path)
    assert len(found) == 3, f"{path.name}: {len(found)} map tables"
    assert [len(t) for t in found] == [len(t) for t in map_tables(ZH)]


@pytest.mark.parametrize("path", MAPS, ids=["zh", "en"])
def test_module_8_has_a_row_per_requirement_of_the_seed(path: Path) -> None:
    rows = [r.requirement for r in map_tables(path)[0]]
    assert len(rows) == len(MODULE_8)
    for requirement, row in zip(MODULE_8, rows, strict=True):
        assert requirement in row, f"{path.name}: row {row!r} should be {requirement!r}"


@pytest.mark.parametrize("path", MAPS, ids=["zh", "en"])
def test_every_file_line_anchor_and_test_exists(path: Path) -> None:
    errors = [e for table in map_tables(path) for row in table for e in check_row(row, path)]
    assert not errors, "stale rows in the assignment map:\n" + "\n".join(errors)


@pytest.mark.parametrize("path", MAPS, ids=["zh", "en"])
def test_every_other_link_of_the_page_resolves(path: Path) -> None:
    # The prose around the tables too: a Chinese reader has no other way in.
    found = [check_link(target, text, path) for text, target in LINK.findall(read(path))]
    errors = [e for e in found if e]
    assert not errors, "broken links:\n" + "\n".join(errors)


def test_both_maps_name_the_same_lines_and_tests() -> None:
    for zh_table, en_table in zip(map_tables(ZH), map_tables(EN), strict=True):
        for zh_row, en_row in zip(zh_table, en_table, strict=True):
            assert file_refs(zh_row, ZH) == file_refs(en_row, EN), (
                f"README.zh-CN.md:{zh_row.line} and docs/assignment-map.md:{en_row.line} differ"
            )


# --- controls: the checks see what goes stale ------------------------------------


def zh_row_text(requirement: str) -> str:
    """One real row of the Chinese map, as its Markdown line."""
    return next(line for line in read(ZH).splitlines() if line.startswith(f"| {requirement} |"))


def errors_of(row_line: str) -> list[str]:
    header = "| 作业要求 | 在哪里实现 | 由哪个测试证明 |\n|---|---|---|\n"
    [[row]] = tables(header + row_line + "\n")
    return check_row(row, ZH)


STALE = {
    "line moved": (r"deployment\.yaml#L109\)", "deployment.yaml#L110)"),
    "line past the end": (r"deployment\.yaml#L109\)", "deployment.yaml#L9999)"),
    "file gone": (r"k8s/base/deployment\.yaml#L109", "k8s/base/deploy.yaml#L109"),
    "heading renamed": (r"\(docs/graceful\.md\)", "(docs/graceful.md#no-such-heading)"),
    "test renamed": (r"test_bad_file_stops_the_process`", "test_bad_file_stops`"),
    "test file gone": (r"tests/test_config\.py::", "tests/test_configs.py::"),
    "parameter renamed": (
        r"test_probes_carry_the_environment_prefix`",
        "test_probes_carry_the_environment_prefix[staging]`",
    ),
    "keyword dropped": (r"\[`startupProbe:`\]", "[startup probe]"),
    "no test left": (r"\| `tests/.*\|$", "| |"),
}


def test_the_real_row_used_by_the_controls_passes() -> None:
    assert errors_of(zh_row_text("优雅启动")) == []


@pytest.mark.parametrize("change", list(STALE), ids=list(STALE))
def test_a_stale_row_fails(change: str) -> None:
    pattern, replacement = STALE[change]
    row = zh_row_text("优雅启动")
    stale, count = re.subn(pattern, replacement, row, count=1)
    assert count == 1, f"the control {change!r} no longer applies to the row"
    assert errors_of(stale), f"{change}: the stale row passed"


def test_a_landed_branch_makes_its_pending_row_fail() -> None:
    # A pending mark whose target exists: the branch has landed, the row is stale.
    row = "| Helm | [x](#作业对照表) | later<!-- pending: helm README.md#configuration --> |"
    [message] = errors_of(row)
    assert "branch helm has landed" in message
    assert errors_of(row.replace("#configuration", "#no-such-section")) == []


def test_checks_refuse_what_the_map_must_not_hold() -> None:
    assert check_link("https://example.com/x", "x", ZH) is not None
    assert check_link("docs/kubernetes.md#L3", "`Kubernetes`", ZH) is not None
    assert check_link("k8s/base/pdb.yaml#L9", "maxUnavailable", ZH) is not None
    assert check_link("k8s/base/pdb.yaml#L9", "`maxUnavailable: 1`", ZH) is None
    assert check_test_id("tests/test_api.py") is not None
    assert check_test_id("tests/test_api.py::test_healthz") is None
