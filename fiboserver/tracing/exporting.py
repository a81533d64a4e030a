"""The exporter of one worker: TracerProvider, BatchSpanProcessor, OTLP over HTTP.

Started in each worker after the fork (gunicorn's post_worker_init hook): the
batch processor's thread must belong to the process that ends the spans, and a
master that started one before forking would hand each worker a copy of a
thread that does not exist there. Shut down as the worker exits after a
graceful stop (worker_exit hook), which exports every span still queued: the
requests served during the drain included. Importing this module starts nothing;
the master imports it early when exporting so that forked workers share it.
Spans ended after the shutdown are dropped, which is why it runs when no
request is left.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import cast

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult
from opentelemetry.trace import SpanContext, TraceFlags

from fiboserver.tracing import otlp
from fiboserver.tracing.recorder import RecordedSpan, Recorder
from fiboserver.tracing.requests import ACTIVE
from fiboserver.tracing.settings import TracingSettings

# service.name when neither OTEL_SERVICE_NAME nor OTEL_RESOURCE_ATTRIBUTES names one.
DEFAULT_SERVICE_NAME = "fiboserver"
# The instrumentation scope of every span.
SCOPE = "fiboserver"


def _resource() -> Resource:
    """OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES (read by Resource.create),
    else service.name fiboserver; always the service's version and this pid."""
    resource = Resource.create()
    own: dict[str, str | int] = {"process.pid": os.getpid()}
    with_default_name = str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service")
    if with_default_name:
        own[SERVICE_NAME] = DEFAULT_SERVICE_NAME
    with contextlib.suppress(PackageNotFoundError):  # a tree that was not installed
        own["service.version"] = version("fiboserver")
    return resource.merge(Resource(own))


class EncodedSpan(bytes):
    """A sampled span as fiboserver.tracing.otlp encoded it when it ended, in the
    request thread: what the batch processor queues instead of the span's
    objects, which are then freed while still in the CPU's caches and leave the
    batch thread only joining bytes (docs/tracing.md, "Cost"). The processor
    reads nothing of what it queues but `context.trace_flags.sampled`
    (tests/test_otel_contract.py); only sampled spans are encoded."""

    __slots__ = ()
    context = SpanContext(1, 1, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))


class SpanExporter(OTLPSpanExporter):
    """The SDK's OTLP/HTTP exporter (endpoint, headers, timeout, compression and
    retries from the standard variables) sending the spans fiboserver.tracing.otlp
    encoded as they ended instead of what the SDK's encoder makes.
    The SDK has no hook for the encoding: this uses its HTTP client (`_client`)
    and shutdown flag, pinned in requirements.lock, checked by name in
    tests/test_otel_contract.py and exercised against a real Jaeger by
    tests/test_tracing_jaeger.py."""

    def __init__(self, resource: Resource, scope: str) -> None:
        super().__init__()
        self._envelope = otlp.envelope(resource.attributes, scope, resource.schema_url)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            return super().export(spans)  # refuses, saying so
        data = self._envelope.request(cast("Sequence[EncodedSpan]", spans))
        sent = self._client.export(data).success
        return SpanExportResult.SUCCESS if sent else SpanExportResult.FAILURE


def start(settings: TracingSettings) -> None:
    """Provider, exporter and the batch thread, in this (worker) process; the
    request path finds the recorder, the exit hook the shutdown, in ACTIVE."""
    if not settings.exporting or ACTIVE.recorder is not None:
        return
    # The exporter reads the endpoint, headers, timeout and compression from the
    # environment itself; the provider the sampler; the processor OTEL_BSP_*.
    # The worker_exit hook shuts the provider down, which also drops the atexit
    # shutdown the provider registers: that one is for an exit without the hook.
    provider = TracerProvider(resource=_resource())
    processor = BatchSpanProcessor(SpanExporter(provider.resource, SCOPE))
    provider.add_span_processor(processor)

    def ended(span: RecordedSpan) -> None:
        # A span the sampler did not sample ends too, and is not exported.
        if span.sampled:
            processor.on_end(cast("ReadableSpan", EncodedSpan(otlp.encode_span(span))))

    ACTIVE.exporting(Recorder(provider.sampler, provider.id_generator, ended), provider.shutdown)
