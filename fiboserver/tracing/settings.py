"""What the standard OTEL_* environment variables ask of this process.

Tracing has no YAML key: it is configured the way every OpenTelemetry SDK is.
This module reads only the variables that decide *whether* spans are exported;
the SDK and the exporter read the rest themselves (service name, resource
attributes, sampler, headers, timeouts, batch sizes).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# The one protocol this service exports with (opentelemetry-exporter-otlp-proto-http).
HTTP_PROTOBUF = "http/protobuf"


@dataclass(frozen=True)
class TracingSettings:
    """`endpoint`: where spans go (None: nothing is exported, nothing connects).
    `why_not`: when `endpoint` is None, which variable said so."""

    endpoint: str | None
    why_not: str = ""

    @property
    def exporting(self) -> bool:
        return self.endpoint is not None


def _env(env: Mapping[str, str], name: str) -> str:
    return env.get(name, "").strip()


def settings_from_env(env: Mapping[str, str]) -> TracingSettings:
    """Export only with an OTLP endpoint, the SDK enabled, and OTLP over HTTP."""
    if _env(env, "OTEL_SDK_DISABLED").lower() == "true":
        return TracingSettings(None, "OTEL_SDK_DISABLED=true")
    # The traces-specific variable wins over the general one, as in every SDK.
    endpoint = _env(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or _env(
        env, "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if not endpoint:
        return TracingSettings(None, "no OTEL_EXPORTER_OTLP_ENDPOINT")
    exporter = _env(env, "OTEL_TRACES_EXPORTER").lower() or "otlp"
    if exporter != "otlp":
        # `none` is the standard way to say "no exporter"; anything else (console,
        # zipkin) is not installed in this image, and failing quietly is worse.
        return TracingSettings(None, f"OTEL_TRACES_EXPORTER={exporter} (only otlp is built in)")
    protocol = _env(env, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or _env(
        env, "OTEL_EXPORTER_OTLP_PROTOCOL"
    )
    if protocol and protocol != HTTP_PROTOBUF:
        # A gRPC endpoint (usually :4317) would answer HTTP posts with errors.
        return TracingSettings(None, f"OTLP protocol {protocol} (only {HTTP_PROTOBUF} is built in)")
    return TracingSettings(endpoint)
