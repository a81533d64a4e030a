"""HTTP API contract (README "The API") through the Flask test client, DEV and PROD."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from fiboserver.app import create_app
from fiboserver.config import parse_config
from tests.support.fibref import fib
from tests.support.logcapture import JsonCapture


@dataclass
class Api:
    app: Flask
    client: FlaskClient
    prefix: str
    other_prefix: str  # the prefix of the other environment, which must 404


def make_app(**config: Any) -> Flask:
    return create_app(parse_config(config, "test.yaml"))


@pytest.fixture(params=["DEV", "PROD"])
def api(request: pytest.FixtureRequest) -> Iterator[Api]:
    env: str = request.param
    app = make_app(env=env, maxseq=100000)
    other = "/prod" if env == "DEV" else "/dev"
    with app.test_client() as client:
        yield Api(app, client, "/" + env.lower(), other)


def body_of(resp: TestResponse) -> Any:
    """The JSON body, with integers as Decimal: exact, and no 4300-digit limit."""
    return json.loads(resp.get_data(as_text=True), parse_int=Decimal)


def check_common(resp: TestResponse) -> str:
    """What every response carries: JSON content type and an X-Request-ID; returns the id."""
    assert resp.mimetype == "application/json", resp.headers
    rid = resp.headers.get("X-Request-ID")
    assert rid, resp.headers
    return rid


def is_uuid4(value: str) -> bool:
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return False
    return parsed.version == 4 and str(parsed) == value


# -- GET P/fibo ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "expected"), [(0, 0), (1, 1), (2, 1), (10, 55), (93, 12200160415121876738)]
)
def test_fibo_known_values(api: Api, n: int, expected: int) -> None:
    resp = api.client.get(f"{api.prefix}/fibo?n={n}")
    assert resp.status_code == 200
    check_common(resp)
    body = body_of(resp)
    assert isinstance(body["result"], Decimal), "result must be a JSON integer, not a string"
    assert body["result"] == expected


@pytest.mark.parametrize("n", [1000, 4999, 30000, 100000])
def test_fibo_large_values_exact(api: Api, n: int) -> None:
    resp = api.client.get(f"{api.prefix}/fibo?n={n}")
    assert resp.status_code == 200
    check_common(resp)
    result = body_of(resp)["result"]
    assert isinstance(result, Decimal)
    assert result == Decimal(fib(n))
    if n == 100000:
        text = resp.get_data(as_text=True)
        assert text.count("\n") <= 1 and len(text) > 20899


def test_fibo_n_equal_to_maxseq_is_served() -> None:
    app = make_app(env="DEV", maxseq=1000)
    resp = app.test_client().get("/dev/fibo?n=1000")
    assert resp.status_code == 200
    assert body_of(resp)["result"] == Decimal(fib(1000))


def test_fibo_n_with_leading_zeros_is_that_integer(api: Api) -> None:
    """A plain base-10 integer may start with zeros, past Python's 4300-digit limit
    on int() too; they count for nothing against maxseq."""
    for raw, expected in (("000", 0), ("010", 55), ("0" * 5000 + "89", fib(89))):
        resp = api.client.get(f"{api.prefix}/fibo?n={raw}")
        assert resp.status_code == 200, resp.get_data(as_text=True)[:200]
        assert body_of(resp)["result"] == Decimal(expected), raw[-10:]
    resp = api.client.get(f"{api.prefix}/fibo?n={'0' * 5000}100001")
    assert resp.status_code == 400 and "maxseq (100000)" in body_of(resp)["error"]


@pytest.mark.parametrize("maxseq", [0, 1000, 100000])
def test_fibo_above_maxseq_is_400_naming_the_limit(maxseq: int) -> None:
    app = make_app(env="PROD", maxseq=maxseq)
    client = app.test_client()
    for raw in (str(maxseq + 1), str(maxseq + 1000), "9" * 5000):
        resp = client.get(f"/prod/fibo?n={raw}")
        assert resp.status_code == 400, raw[:20]
        check_common(resp)
        body = body_of(resp)
        assert set(body) == {"error"}
        assert isinstance(body["error"], str)
        assert str(maxseq) in body["error"], body
    assert client.get(f"/prod/fibo?n={maxseq}").status_code == 200


BAD_N = [
    "",
    "30x",
    "1e3",
    "3.0",
    "+-1",
    "-1",
    "-0x1",
    " 5",
    "5 ",
    "\t5",
    "0x1f",
    "1_000",  # Python's int() accepts underscores; a plain integer has none
    "٣",  # ARABIC-INDIC DIGIT THREE: int() accepts it, str.isdigit() too
    "\uff15",  # FULLWIDTH DIGIT FIVE
    "NaN",
    "five",
]


def case_id(value: str) -> str:
    """A test id in printable ASCII without backslashes, other characters as
    U+XXXX: pytest escapes them in its ids, and an escaped id given back on
    the command line (as `make mutate` gives each mutant its tests) is not found."""
    shown = (
        c if c.isascii() and c.isprintable() and c != "\\" else f"U+{ord(c):04X}" for c in value
    )
    return "'" + "".join(shown) + "'"


@pytest.mark.parametrize("raw", BAD_N, ids=[case_id(b) for b in BAD_N])
def test_fibo_bad_n_is_400(api: Api, raw: str) -> None:
    resp = api.client.get(f"{api.prefix}/fibo", query_string={"n": raw})
    assert resp.status_code == 400
    check_common(resp)
    body = body_of(resp)
    assert set(body) == {"error"}
    assert isinstance(body["error"], str) and body["error"]


def test_fibo_missing_n_is_400(api: Api) -> None:
    for path in (f"{api.prefix}/fibo", f"{api.prefix}/fibo?m=3", f"{api.prefix}/fibo?n="):
        resp = api.client.get(path)
        assert resp.status_code == 400
        check_common(resp)
        assert body_of(resp)["error"] == "query parameter n is required, e.g. ?n=10", path


@pytest.mark.parametrize(
    ("raw", "says"),
    [("30x", "n must be a plain base-10 integer"), ("-1", "n must not be negative")],
)
def test_fibo_bad_n_says_what_is_wrong(api: Api, raw: str, says: str) -> None:
    resp = api.client.get(f"{api.prefix}/fibo", query_string={"n": raw})
    assert resp.status_code == 400
    assert says in body_of(resp)["error"]


def test_fibo_bad_n_logs_warning_with_request_id(api: Api, fibo_logs: JsonCapture) -> None:
    resp = api.client.get(f"{api.prefix}/fibo?n=30x", headers={"X-Request-ID": "bad-n-1"})
    assert resp.status_code == 400
    failed = fibo_logs.find("fibo calculate failed")
    assert len(failed) == 1
    assert failed[0]["level"] == "WARNING"
    assert failed[0]["request_id"] == "bad-n-1"
    assert isinstance(failed[0]["errmsg"], str) and failed[0]["errmsg"]


# -- health and readiness -----------------------------------------------------------


def test_healthz(api: Api) -> None:
    resp = api.client.get(f"{api.prefix}/healthz")
    assert resp.status_code == 200
    check_common(resp)
    assert resp.get_json() == {"status": "ok"}


def test_readyz(api: Api) -> None:
    resp = api.client.get(f"{api.prefix}/readyz")
    assert resp.status_code == 200
    check_common(resp)
    assert resp.get_json() == {"status": "ready"}


# -- HEAD, 404, 405, 500 ----------------------------------------------------------


@pytest.mark.parametrize("path", ["/fibo?n=10", "/healthz", "/readyz"])
def test_head_works_where_get_does(api: Api, path: str) -> None:
    resp = api.client.head(api.prefix + path)
    assert resp.status_code == 200
    check_common(resp)
    assert resp.get_data() == b""


def test_head_of_bad_n_is_400(api: Api) -> None:
    resp = api.client.head(f"{api.prefix}/fibo?n=x")
    assert resp.status_code == 400
    check_common(resp)


def test_nothing_is_served_outside_the_prefix(api: Api) -> None:
    p = api.prefix
    paths = [
        "/",
        "/fibo?n=10",
        "/healthz",
        "/readyz",
        p,
        p + "/",
        p + "/nope",
        p + "/fibo/10",
        api.other_prefix + "/fibo?n=10",
        api.other_prefix + "/healthz",
        p.upper() + "/fibo?n=10",
    ]
    for path in paths:
        resp = api.client.get(path)
        assert resp.status_code == 404, path
        check_common(resp)
        assert body_of(resp) == {"error": "not found"}, path


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("path", ["/fibo?n=10", "/healthz", "/readyz"])
def test_wrong_method_is_405_json(api: Api, method: str, path: str) -> None:
    resp = api.client.open(api.prefix + path, method=method)
    assert resp.status_code == 405
    check_common(resp)
    assert body_of(resp) == {"error": "method not allowed"}
    assert "GET" in resp.headers.get("Allow", "")


def test_unexpected_exception_is_500_without_traceback(fibo_logs: JsonCapture) -> None:
    app = make_app(env="DEV", maxseq=10)
    marker = "secret-detail-7f3a"

    def boom() -> str:
        raise RuntimeError(marker)

    app.add_url_rule("/dev/boom", "boom", boom)
    resp = app.test_client().get("/dev/boom", headers={"X-Request-ID": "boom-1"})
    assert resp.status_code == 500
    assert check_common(resp) == "boom-1"
    text = resp.get_data(as_text=True)
    assert json.loads(text) == {"error": "internal error"}
    assert "Traceback" not in text and marker not in text and "RuntimeError" not in text
    # The traceback goes to one log record instead, tied to the request.
    logged = [r for r in fibo_logs.records if marker in json.dumps(r)]
    assert len(logged) == 1, fibo_logs.records
    assert logged[0]["level"] == "ERROR" and logged[0]["msg"] == "unhandled exception"
    assert "Traceback" in json.dumps(logged[0])
    assert logged[0]["request_id"] == "boom-1"


# -- X-Request-ID ---------------------------------------------------------------------

VALID_IDS = ["a", "abc-123", "A.b_c-9", "x" * 128, "0" * 64, "..", "-_-"]
INVALID_IDS = [
    "",
    "x" * 129,
    "has space",
    "a/b",
    "a;b",
    "a:b",
    "ab\u00e9",
    "{json}",
    "a,b",
]


@pytest.mark.parametrize("rid", VALID_IDS)
def test_request_id_echoed_when_valid(api: Api, rid: str) -> None:
    for path in ("/fibo?n=5", "/healthz", "/fibo?n=x", "/missing"):
        resp = api.client.get(api.prefix + path, headers={"X-Request-ID": rid})
        assert resp.headers["X-Request-ID"] == rid, path


@pytest.mark.parametrize("rid", INVALID_IDS, ids=[case_id(r[:20]) for r in INVALID_IDS])
def test_request_id_replaced_when_invalid(api: Api, rid: str) -> None:
    resp = api.client.get(f"{api.prefix}/fibo?n=5", headers={"X-Request-ID": rid})
    got = check_common(resp)
    assert got != rid
    assert is_uuid4(got), got


def test_request_id_generated_when_absent(api: Api) -> None:
    ids = set()
    for path in ("/fibo?n=5", "/fibo?n=5", "/healthz", "/nope", "/fibo?n=bad"):
        resp = api.client.get(api.prefix + path)
        rid = check_common(resp)
        assert is_uuid4(rid), rid
        ids.add(rid)
    assert len(ids) == 5, "each request gets its own id"


# -- log records of one request (DEV order) --------------------------------------------


def test_dev_uncached_request_logs_in_order_with_request_id(fibo_logs: JsonCapture) -> None:
    app = make_app(env="DEV", maxseq=100000)
    # buffered: the client closes the response as a WSGI server does after
    # sending it, which is when `end` is written.
    resp = app.test_client().get("/dev/fibo?n=1000", buffered=True)
    assert resp.status_code == 200
    rid = resp.headers["X-Request-ID"]
    sequence = [
        r for r in fibo_logs.records if r["msg"] in ("start", "cache miss", "cache fibo", "end")
    ]
    assert [r["msg"] for r in sequence] == ["start", "cache miss", "cache fibo", "end"]
    assert all(r.get("request_id") == rid for r in sequence), sequence
    start, miss, stored, end = sequence
    assert start["level"] == "INFO" and end["level"] == "INFO"
    assert start["method"] == "GET" and start["path"] == "/dev/fibo"
    assert isinstance(start["client"], str)
    assert end["status"] == 200 and type(end["status"]) is int
    assert isinstance(end["duration_ms"], int | float) and end["duration_ms"] >= 0
    assert miss["level"] == "DEBUG" and miss["key"] == 1000 and type(miss["key"]) is int
    digits = str(fib(1000))
    assert stored["level"] == "DEBUG" and stored["key"] == 1000
    assert stored["digits"] == len(digits) == 209
    value = stored["value"]
    assert isinstance(value, str) and len(value) <= 32
    # Elided in the middle: both ends of the number survive.
    assert value[:10] == digits[:10] and value[-10:] == digits[-10:]


def test_cache_fibo_short_value_is_whole(fibo_logs: JsonCapture) -> None:
    app = make_app(env="DEV", maxseq=100)
    app.test_client().get("/dev/fibo?n=30")
    (stored,) = fibo_logs.find("cache fibo")
    assert stored["value"] == "832040" and stored["digits"] == 6 and stored["key"] == 30


def test_end_record_for_errors_carries_status(api: Api, fibo_logs: JsonCapture) -> None:
    # buffered: closed after reading, as a server does; `end` is written then.
    api.client.get(f"{api.prefix}/fibo?n=-1", headers={"X-Request-ID": "neg"}, buffered=True)
    api.client.get("/elsewhere", headers={"X-Request-ID": "nf"}, buffered=True)
    ends = {r["request_id"]: r for r in fibo_logs.find("end")}
    assert ends["neg"]["status"] == 400
    assert ends["nf"]["status"] == 404
