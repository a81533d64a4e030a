"""A local Jaeger v2 (tools/cluster/binaries.JAEGER, built from its pinned Go module)
for the tracing tests, `make bench` and `make traces`.

Memory storage, OTLP/HTTP in, the query API out, every port on 127.0.0.1 (free
ones unless given; the OTLP receiver may listen on another of the host's
addresses instead, e.g. the cluster's pod bridge): ``write_config`` writes the
collector-style YAML Jaeger v2 reads, ``JaegerProcess`` runs it and reads traces
back through the v3 query API (``GET /api/v3/traces/<trace id>``: OTLP JSON, ids in hex).

Run as a module (what `make traces` does), it builds Jaeger if needed, prints
the variables that make `make run` export to it, and runs it in the foreground::

    python -m tests.support.jaeger --otlp-port 4318 --query-port 16686
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from tests.support.procinfo import HOST, free_port
from tools.cluster.binaries import GO, JAEGER, build

BINARY = JAEGER.path("jaeger")
BUILD_LOG = JAEGER.bindir.with_name(JAEGER.bindir.name + ".log")
# OTLP JSON's span kinds (opentelemetry-proto trace.proto).
INTERNAL, SERVER, CLIENT = 1, 2, 3


def ensure_built() -> Path:
    """The Jaeger binary, built first if this machine has none (minutes: see
    docs/tracing.md); the build's output goes to BUILD_LOG."""
    if not JAEGER.cached():
        print(
            f"jaeger: building {JAEGER.version} with {GO} (first time on this machine; "
            f"log {BUILD_LOG})",
            file=sys.stderr,
            flush=True,
        )
        BUILD_LOG.parent.mkdir(parents=True, exist_ok=True)
        build(JAEGER, BUILD_LOG)
    return BINARY


@dataclass(frozen=True)
class Ports:
    otlp_http: int
    query_http: int
    query_grpc: int
    health: int

    @classmethod
    def free(cls, otlp_http: int = 0, query_http: int = 0) -> Ports:
        """The given ports (0: any free one), four different ones."""
        taken: list[int] = []
        for wanted in (otlp_http, query_http, 0, 0):
            port = wanted or free_port()
            while port in taken:
                port = free_port()
            taken.append(port)
        return cls(*taken)


def config(ports: Ports, otlp_host: str = HOST) -> dict[str, Any]:
    """Jaeger v2's configuration: OTLP/HTTP receiver (on `otlp_host`), memory
    store, query API; no other receiver, and no telemetry endpoint of its own
    (its default is :8888 on every address)."""
    store = "memstore"
    return {
        "service": {
            "extensions": ["jaeger_storage", "jaeger_query", "healthcheckv2"],
            "pipelines": {
                "traces": {
                    "receivers": ["otlp"],
                    "processors": ["batch"],
                    "exporters": ["jaeger_storage_exporter"],
                }
            },
            "telemetry": {"metrics": {"level": "none"}, "logs": {"level": "warn"}},
        },
        "extensions": {
            "healthcheckv2": {
                "use_v2": True,
                "http": {"endpoint": f"{HOST}:{ports.health}"},
            },
            "jaeger_storage": {"backends": {store: {"memory": {"max_traces": 100000}}}},
            "jaeger_query": {
                "storage": {"traces": store},
                "http": {"endpoint": f"{HOST}:{ports.query_http}"},
                "grpc": {"endpoint": f"{HOST}:{ports.query_grpc}"},
            },
        },
        "receivers": {
            "otlp": {"protocols": {"http": {"endpoint": f"{otlp_host}:{ports.otlp_http}"}}}
        },
        # Short batches: a test waits for its spans, not for the default 200 ms.
        "processors": {"batch": {"timeout": "50ms"}},
        "exporters": {"jaeger_storage_exporter": {"trace_storage": store}},
    }


def write_config(directory: Path, ports: Ports, otlp_host: str = HOST) -> Path:
    path = directory / "jaeger.yaml"
    path.write_text(yaml.safe_dump(config(ports, otlp_host), sort_keys=False))
    return path


def spans_of(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Every span of a v3 answer, each with its resource's attributes under
    "resource", every attribute list turned into a dict, and the attributes
    Jaeger adds (named @jaeger@...) moved to "jaeger"."""
    spans = []
    for resource_spans in result.get("resourceSpans", []):
        resource = attributes(resource_spans.get("resource", {}).get("attributes", []))
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                attrs = attributes(span.get("attributes", []))
                # Jaeger's own remarks (e.g. that the parent is not in the trace,
                # which is so for every caller that is not traced here).
                notes = {k: attrs.pop(k) for k in [k for k in attrs if k.startswith("@jaeger@")]}
                spans.append({**span, "attributes": attrs, "resource": resource, "jaeger": notes})
    return spans


def attributes(kvs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """OTLP JSON key/value pairs as a dict; int values (JSON strings there) as int."""
    out: dict[str, Any] = {}
    for kv in kvs:
        value = kv.get("value", {})
        if "intValue" in value:
            out[kv["key"]] = int(value["intValue"])
        elif value:
            out[kv["key"]] = next(iter(value.values()))
    return out


class JaegerProcess:
    """Jaeger running on 127.0.0.1 (its OTLP receiver on `otlp_host`) with its
    config in `workdir`, its output in workdir/jaeger.log. Leaving the `with`
    block stops it."""

    def __init__(self, workdir: Path, ports: Ports | None = None, otlp_host: str = HOST) -> None:
        self.ports = ports or Ports.free()
        self.workdir = workdir
        self.otlp_host = otlp_host
        self.config_path = write_config(workdir, self.ports, otlp_host)
        self.log_path = workdir / "jaeger.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def otlp_endpoint(self) -> str:
        """OTEL_EXPORTER_OTLP_ENDPOINT for a service that exports here."""
        return f"http://{self.otlp_host}:{self.ports.otlp_http}"

    @property
    def query_url(self) -> str:
        return f"http://{HOST}:{self.ports.query_http}"

    def start(self, timeout: float = 30.0) -> JaegerProcess:
        binary = ensure_built()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(binary), "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jaeger exited {self.proc.returncode}: {self.output()}")
            if (
                self._get(f"http://{HOST}:{self.ports.health}/status") is not None
                and self._get(f"{self.query_url}/api/v3/services") is not None
            ):
                return self
            time.sleep(0.1)
        raise RuntimeError(f"jaeger not ready in {timeout} s: {self.output()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def __enter__(self) -> JaegerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @staticmethod
    def _get(url: str) -> Any:
        """The JSON at `url`; None for a 404, a 503 or no answer."""
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            # 503: the health check's answer while Jaeger is still starting.
            if exc.code in (404, 503):
                return None
            raise
        except OSError:
            return None

    def trace(self, trace_id: str) -> list[dict[str, Any]]:
        """The spans stored for `trace_id` (32 hex digits); [] while there are none."""
        found = self._get(f"{self.query_url}/api/v3/traces/{trace_id}")
        return spans_of(found["result"]) if found else []

    def services(self) -> list[str]:
        """The service names Jaeger has spans of."""
        found = self._get(f"{self.query_url}/api/v3/services") or {}
        return sorted(found.get("services", []))

    def wait_spans(self, trace_id: str, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        """The trace's spans once it has at least `count`, or what it has at `timeout`."""
        deadline = time.monotonic() + timeout
        spans = self.trace(trace_id)
        while len(spans) < count and time.monotonic() < deadline:
            time.sleep(0.1)
            spans = self.trace(trace_id)
        return spans


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Jaeger on 127.0.0.1 for `make run` (make traces)")
    p.add_argument("--dir", type=Path, default=Path(".traces"))
    p.add_argument("--otlp-port", type=int, default=4318)
    p.add_argument("--query-port", type=int, default=16686)
    args = p.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    ports = Ports.free(args.otlp_port, args.query_port)
    binary = ensure_built()
    config_path = write_config(args.dir, ports)
    print(
        "Jaeger: OTLP/HTTP on {otlp}, query API on {query}. In another terminal:\n\n"
        "  OTEL_EXPORTER_OTLP_ENDPOINT={otlp} make run\n\n"
        "then e.g. curl -H 'traceparent: 00-0af7651916cd43dd8448eb211c80319c-"
        "b7ad6b7169203331-01' 'localhost:8080/dev/fibo?n=30' and\n"
        "  curl {query}/api/v3/traces/0af7651916cd43dd8448eb211c80319c\n"
        "(docs/tracing.md: a UI for these traces). Ctrl-C stops Jaeger.".format(
            otlp=f"http://{HOST}:{ports.otlp_http}", query=f"http://{HOST}:{ports.query_http}"
        ),
        flush=True,
    )
    os.execv(binary, [str(binary), "--config", str(config_path)])


if __name__ == "__main__":
    sys.exit(main())
