"""The contract between fiboserver.tracing.exporting and the pinned SDK: the two
private members of the OTLP/HTTP exporter its SpanExporter uses (the HTTP client
that sends bytes it encoded itself, and the shutdown flag), and the batch
processor carrying the already encoded spans it is given to the exporter. An
upgrade that renames or reshapes either fails here, by name, rather than as
spans that silently stop reaching Jaeger.

A real exporter sends to a real HTTP server on 127.0.0.1; nothing is mocked.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar, cast

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from fiboserver.tracing.exporting import EncodedSpan


class _Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    _Receiver.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1/traces", _Receiver.received
    finally:
        server.shutdown()
        server.server_close()


def test_the_exporters_client_sends_given_bytes_and_says_whether_they_arrived(
    receiver: tuple[str, list[tuple[str, bytes]]],
) -> None:
    url, received = receiver
    exporter = OTLPSpanExporter(endpoint=url)
    result = exporter._client.export(b"\x0a\x00 encoded elsewhere")
    assert result.success is True
    assert received == [("/v1/traces", b"\x0a\x00 encoded elsewhere")]
    exporter.shutdown()  # type: ignore[no-untyped-call]  # untyped in the SDK


def test_the_exporters_shutdown_flag_turns_true_on_shutdown() -> None:
    exporter = OTLPSpanExporter(endpoint="http://127.0.0.1:9/v1/traces")
    assert exporter._shutdown is False
    exporter.shutdown()  # type: ignore[no-untyped-call]  # untyped in the SDK
    assert exporter._shutdown is True


class _Kept:
    """An exporter that keeps what it is given."""

    def __init__(self) -> None:
        self.batches: list[list[object]] = []

    def export(self, batch: list[object]) -> SpanExportResult:
        self.batches.append(list(batch))
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def test_the_batch_processor_passes_an_encoded_span_to_the_exporter_as_it_is() -> None:
    # fiboserver.tracing.exporting gives on_end an encoded span (bytes) whose
    # `context` says sampled, and its exporter reads the same objects back.
    kept = _Kept()
    processor = BatchSpanProcessor(cast("SpanExporter", kept))
    encoded = EncodedSpan(b"\x0a\x00")
    processor.on_end(cast("ReadableSpan", encoded))
    assert processor.force_flush()
    processor.shutdown()  # type: ignore[no-untyped-call]  # untyped in the SDK
    assert kept.batches == [[encoded]]
    assert kept.batches[0][0] is encoded
