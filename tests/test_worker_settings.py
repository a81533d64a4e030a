"""gunicorn settings the worker cannot honour are refused at start, by the real
server: exit 78 (EX_CONFIG) with one CRITICAL `invalid configuration` record that
names the setting, and no worker ever boots. The worker's event loop reads
request heads as plain HTTP/1 bytes and holds idle connections as descriptors,
so TLS, HTTP/2 in cleartext, a PROXY protocol header and a worker_connections
cap would each be silently wrong (README "Architecture", docs/worker.md)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from gunicorn.config import Config

from fiboserver.worker import RequestThreadWorker
from tests.support.serverproc import ServerProcess

CONFIG = {"env": "PROD", "maxseq": 100}


@pytest.mark.parametrize(
    ("args", "setting"),
    [
        ("--http2-cleartext prior-knowledge", "http2_cleartext"),
        ("--http2-cleartext upgrade", "http2_cleartext"),
        ("--proxy-protocol v1", "proxy_protocol"),
        ("--worker-connections 50", "worker_connections"),
    ],
)
def test_a_setting_the_worker_cannot_honour_stops_the_server(
    tmp_path: Path, args: str, setting: str
) -> None:
    env = {"GUNICORN_CMD_ARGS": args, "WEB_CONCURRENCY": "1"}
    with ServerProcess(CONFIG, tmp_path, env=env) as srv:
        rc = srv.wait(timeout=30)
    assert rc == os.EX_CONFIG == 78, srv.output()
    assert srv.bad_lines == [] and "Traceback" not in srv.output()
    (record,) = [r for r in srv.records if r.get("level") == "CRITICAL"]
    assert record["msg"] == "invalid configuration" and setting in record["errmsg"], record
    assert not [r for r in srv.records if r.get("msg") in ("server start", "worker booted")]


def test_tls_is_refused(tmp_path: Path) -> None:
    # Files that exist are enough: the check comes before anything reads them.
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_text("x")
    key.write_text("x")
    cfg = Config()
    cfg.set("certfile", str(cert))
    cfg.set("keyfile", str(key))
    with pytest.raises(SystemExit) as stopped:
        RequestThreadWorker.check_config(cfg, None)
    assert stopped.value.code == 78


def test_the_defaults_are_accepted() -> None:
    RequestThreadWorker.check_config(Config(), None)
