"""Configuration (README "Configuration") given to the real process: bad files, and good
files at the edges. (The pure rules of parse_config: test_config_rules.py.)

Each bad file is run as `gunicorn -c gunicorn.conf.py` with FIBOSERVER_CONFIG set:
it must exit with status 78 (EX_CONFIG, as the README promises) before listening,
print only JSON lines and no traceback, and log an ERROR or CRITICAL record naming
the file and the offending key. The processes run a few at a time in a module
fixture; each case is its own test.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from fiboserver.config import CONFIG_ENV
from tests.support.procinfo import free_port, is_listening
from tests.support.serverlog import Record
from tests.support.serverproc import ServerProcess

# -- bad files given to the real process ---------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    # Writes the file (or not) into the case directory; returns its path, None: unset.
    make: Callable[[Path, int], Path | None]
    key: str | None  # the key the error must name (None: a fault of the whole file)
    reason: str  # how the record's errmsg goes on after "<file>: key '<key>': " (a prefix)
    port_valid: bool = True


def text_file(text: str | bytes) -> Callable[[Path, int], Path]:
    def make(d: Path, port: int) -> Path:
        path = d / "fiboserver.yaml"
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text.replace("PORT", str(port)))
        return path

    return make


def good_with(**change: Any) -> Callable[[Path, int], Path]:
    """A valid file with some keys changed (value None: key removed)."""

    def make(d: Path, port: int) -> Path:
        data: dict[str, Any] = {"env": "DEV", "maxseq": 100, "port": port}
        for k, v in change.items():
            if v is None:
                data.pop(k, None)
            else:
                data[k] = v
        path = d / "fiboserver.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    return make


def missing_file(d: Path, port: int) -> Path:
    return d / "no-such-file.yaml"


def directory(d: Path, port: int) -> Path:
    # Unreadable even for root (CI runs as root, where chmod 000 changes nothing).
    path = d / "config.yaml"
    path.mkdir()
    return path


KNOWN = (
    "env, maxseq, cacheresult, port, loglevel, cache_max_bytes, metrics_port, "
    "fault_delay_ms, fault_error_ratio"
)
CASES = [
    Case("missing-file", missing_file, None, "cannot read: No such file or directory"),
    Case("directory", directory, None, "cannot read: Is a directory"),
    Case("not-utf8", text_file(b"env: DEV\nmaxseq: \xff\xfe10\n"), None, "not UTF-8 text: "),
    Case(
        "invalid-yaml",
        text_file("env: [DEV\nmaxseq: 10\nport: PORT\n"),
        None,
        "invalid YAML: while parsing a flow sequence in ",
    ),
    Case("yaml-tab-indent", text_file("env: DEV\n\tmaxseq: 10\n"), None, "invalid YAML: "),
    Case(
        "top-level-list",
        text_file("- env\n- DEV\n"),
        None,
        "must be a YAML mapping of keys to values, got list",
    ),
    Case(
        "top-level-scalar",
        text_file("DEV\n"),
        None,
        "must be a YAML mapping of keys to values, got str",
    ),
    Case("empty-file", text_file(""), None, "must be a YAML mapping of keys to values, got empty"),
    Case("unknown-key", good_with(bogus_key=1), "bogus_key", f"unknown key (known: {KNOWN})"),
    Case("maxseq-string", good_with(maxseq="ten"), "maxseq", "must be an integer, got str"),
    Case("maxseq-float", good_with(maxseq=1.5), "maxseq", "must be an integer, got float"),
    Case(
        "cacheresult-string",
        good_with(cacheresult="yes"),
        "cacheresult",
        "must be true or false, got 'yes'",
    ),
    Case(
        "port-bool", good_with(port=True), "port", "must be an integer, got bool", port_valid=False
    ),
    Case("env-int", good_with(env=5), "env", "must be a string, got int"),
    Case("maxseq-negative", good_with(maxseq=-1), "maxseq", "must be in 0..100000, got -1"),
    Case("maxseq-too-big", good_with(maxseq=100001), "maxseq", "must be in 0..100000, got 100001"),
    Case("port-zero", good_with(port=0), "port", "must be in 1..65535, got 0", port_valid=False),
    Case(
        "port-too-big",
        good_with(port=65536),
        "port",
        "must be in 1..65535, got 65536",
        port_valid=False,
    ),
    Case(
        "env-underscore",
        good_with(env="dev_1"),
        "env",
        "must match ^[A-Za-z][A-Za-z0-9-]{0,30}$, got 'dev_1'",
    ),
    Case("env-empty", good_with(env=""), "env", "must match ^[A-Za-z][A-Za-z0-9-]{0,30}$, got ''"),
    Case("env-32-chars", good_with(env="D" * 32), "env", "must match "),
    Case(
        "loglevel-trace",
        good_with(loglevel="TRACE"),
        "loglevel",
        "must be one of DEBUG, INFO, WARNING, ERROR, got 'TRACE'",
    ),
    Case(
        "cache-max-bytes-negative",
        good_with(cache_max_bytes=-1),
        "cache_max_bytes",
        "must be >= 0, got -1",
    ),
    Case(
        "metrics-port-too-big",
        good_with(metrics_port=70000),
        "metrics_port",
        "must be in 0..65535, got 70000",
    ),
    Case(
        "metrics-port-is-port",
        lambda d, p: good_with(metrics_port=p)(d, p),
        "metrics_port",
        "must differ from port",
    ),
    Case(
        "fault-delay-too-big",
        good_with(fault_delay_ms=10001),
        "fault_delay_ms",
        "must be in 0..10000, got 10001",
    ),
    Case(
        "fault-delay-float",
        good_with(fault_delay_ms=2.5),
        "fault_delay_ms",
        "must be an integer, got float",
    ),
    Case(
        "fault-ratio-above-one",
        good_with(fault_error_ratio=1.5),
        "fault_error_ratio",
        "must be in 0..1, got 1.5",
    ),
    Case(
        "fault-ratio-bool",
        good_with(fault_error_ratio=True),
        "fault_error_ratio",
        "must be a number, got bool",
    ),
    Case(
        "fault-ratio-string",
        text_file("env: DEV\nmaxseq: 10\nport: PORT\nfault_error_ratio: '0.2'\n"),
        "fault_error_ratio",
        "must be a number, got str",
    ),
    Case("missing-env", good_with(env=None), "env", "required key is missing"),
    Case("missing-maxseq", good_with(maxseq=None), "maxseq", "required key is missing"),
]


@dataclass
class Outcome:
    path: Path | None
    port: int
    rc: int
    records: list[Record]
    bad_lines: list[tuple[str, str]]
    output: str
    listening_after: bool


def run_case(base: Path, make: Callable[[Path, int], Path | None]) -> Outcome:
    base.mkdir()
    port = free_port()
    path = make(base, port)
    with ServerProcess(path, base) as srv:
        try:
            rc = srv.wait(timeout=30)  # generous: a config error stops at once
        except Exception:
            rc = -999  # still running after 30 s: reported by the test
    return Outcome(
        path, port, rc, srv.records, srv.bad_lines, srv.output(), is_listening(port, 0.2)
    )


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    root = tmp_path_factory.mktemp("badconf")
    cases: dict[str, Callable[[Path, int], Path | None]] = {c.id: c.make for c in CASES}
    cases["env-var-unset"] = lambda d, p: None
    # A few at a time: 2 shared cores, and each start costs an interpreter.
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {cid: pool.submit(run_case, root / cid, make) for cid, make in cases.items()}
        return {cid: f.result() for cid, f in futures.items()}


def error_records(out: Outcome) -> list[Record]:
    return [r for r in out.records if r.get("level") in ("ERROR", "CRITICAL")]


def check_refused_start(out: Outcome) -> None:
    assert out.rc == os.EX_CONFIG == 78, f"exit status {out.rc}\n{out.output}"
    assert "Traceback" not in out.output, out.output
    assert out.bad_lines == [], f"non-JSON lines: {out.bad_lines}"
    assert out.records, "no log record at all"
    assert not [r for r in out.records if r.get("msg") == "server start"]
    assert error_records(out), out.output


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_file_stops_the_process(outcomes: dict[str, Outcome], case: Case) -> None:
    out = outcomes[case.id]
    check_refused_start(out)
    assert out.path is not None
    texts = [json.dumps(r) for r in error_records(out)]
    naming_file = [t for t in texts if str(out.path) in t]
    assert naming_file, f"no ERROR/CRITICAL record names {out.path}: {texts}"
    if case.key is not None:
        assert [t for t in naming_file if case.key in t], f"no record names key {case.key}"
    # The message says what is wrong, on one line: "<file>: key '<key>': <reason>".
    where = "file" if case.key is None else f"key {case.key!r}"
    (record,) = [r for r in error_records(out) if r.get("msg") == "invalid configuration"]
    assert record["errmsg"].startswith(f"{out.path}: {where}: {case.reason}"), record["errmsg"]
    assert "\n" not in record["errmsg"] and "XX" not in record["errmsg"], record["errmsg"]
    assert record["file"] == str(out.path) and record.get("config_key") == case.key, record
    if case.port_valid:
        assert not out.listening_after


def test_unset_variable_stops_the_process(outcomes: dict[str, Outcome]) -> None:
    out = outcomes["env-var-unset"]
    check_refused_start(out)
    assert any(CONFIG_ENV in json.dumps(r) for r in error_records(out)), out.output


def test_zero_web_concurrency_stops_the_process(tmp_path: Path) -> None:
    # (gunicorn itself rejects a negative or non-integer value before our config runs.)
    with ServerProcess({"env": "DEV", "maxseq": 10}, tmp_path, env={"WEB_CONCURRENCY": "0"}) as srv:
        rc = srv.wait(timeout=30)
        port = srv.port
    out = Outcome(None, port, rc, srv.records, srv.bad_lines, srv.output(), False)
    check_refused_start(out)
    assert not is_listening(port, 0.2)
    assert any("WEB_CONCURRENCY" in json.dumps(r) for r in error_records(out)), out.output


# -- good files at the edges, given to the real process --------------------------------


def test_the_lowest_allowed_values_start_the_service(tmp_path: Path) -> None:
    """maxseq 0 serves F(0) alone; cache_max_bytes 0 caches nothing."""
    config = {"env": "DEV", "maxseq": 0, "cache_max_bytes": 0}
    with ServerProcess(config, tmp_path, env={"WEB_CONCURRENCY": "1"}) as srv:
        srv.wait_for("worker booted", timeout=30)
        for _ in range(2):
            status, _, body = srv.get("/dev/fibo?n=0")
            assert (status, json.loads(body)) == (200, {"result": 0})
        status, _, body = srv.get("/dev/fibo?n=1")
        assert status == 400 and "maxseq (0)" in json.loads(body)["error"]
        srv.wait_for("end", where=lambda r: r.get("status") == 400)
        assert len(srv.find("cache miss")) == 2 and srv.find("cache fibo") == []


def test_the_file_is_read_as_utf8_whatever_the_locale(tmp_path: Path) -> None:
    path = tmp_path / "fiboserver.yaml"
    # The C locale without coercion: Python's default encoding is ASCII there.
    c_locale = {"LC_ALL": "C", "LANG": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}
    srv = ServerProcess(path, tmp_path, env={"WEB_CONCURRENCY": "1", **c_locale})
    text = f"# Fibonacci, naïvely\nenv: DEV\nmaxseq: 10\nport: {srv.port}\n"
    path.write_text(text, encoding="utf-8")
    with srv:
        srv.wait_for("worker booted", timeout=30)
        status, _, body = srv.get("/dev/fibo?n=10")
        assert (status, json.loads(body)) == (200, {"result": 55})
