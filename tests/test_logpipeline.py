"""The pipeline model of tests/support/logpipeline.py: it reassembles what containerd cuts,
and its checks are not vacuous (each flags the kind of record Elasticsearch refuses),
so the contract test's passing on the service's records means something.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.support.logpipeline import (
    CRI_MAX_LINE,
    MergeError,
    containerd_lines,
    cri_records,
    int64_overflows,
    merge_log,
    type_conflicts,
)


def test_cri_regex_reassembles_long_lines() -> None:
    # A record longer than containerd's line limit arrives in pieces and is joined.
    line = json.dumps({"msg": "x" * (2 * CRI_MAX_LINE + 10)})
    file_lines = containerd_lines("stdout", line, time.time_ns())
    assert [ln.split(" ", 3)[2] for ln in file_lines] == ["P", "P", "F"]
    (record,) = cri_records(file_lines)
    assert record["log"] == line and record["_p"] == "F"


def test_the_checks_catch_what_elasticsearch_rejects() -> None:
    """The contract's checks are not vacuous: each flags the kind of record ES refuses."""

    def one_line(line: str) -> dict[str, Any]:
        (record,) = cri_records(containerd_lines("stdout", line, time.time_ns()))
        return merge_log(record)

    for bad in ("plain text", "[1, 2]", '{"msg": "x", "time": "now"}', '{"log": "x"}'):
        with pytest.raises(MergeError):
            one_line(bad)
    lines = ['{"n": 1}', '{"n": 1.5}', '{"b": true}', '{"b": 0}', '{"o": {"k": 1}}', '{"o": "s"}']
    assert set(type_conflicts([one_line(x) for x in lines])) == {"n", "b", "o"}
    assert type_conflicts([one_line('{"n": 1}'), one_line('{"n": null}')]) == {}
    # A string field first seen holding a date is a date field from then on.
    dates = ['{"d": "2026-11-26T19:00:00.123Z"}', '{"d": "2026-11"}', '{"d": "soon"}']
    assert set(type_conflicts([one_line(x) for x in dates])) == {"d"}
    assert type_conflicts([one_line('{"d": "2026"}'), one_line('{"d": "x"}')]) == {}
    assert len(int64_overflows([one_line('{"n": 9223372036854775808}')])) == 1
    assert int64_overflows([one_line('{"n": -9223372036854775808}')]) == []
