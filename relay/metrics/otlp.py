"""OpenTelemetry traces of data-plane requests, exported over OTLP/HTTP (the ``otel`` extra).

Imported only when ``[telemetry] otlp_endpoint`` is set: a relay without it never loads
OpenTelemetry. Each finished request becomes one ``SERVER`` span named after its endpoint
with children for admission (auth, limits, the wallet hold), the upstream call (through the
answer or the end of the stream) and settlement (charge and usage row), built after the
fact from the phase times the flow noted, so no span is open while the request runs.
Attributes are metadata only (route, model, provider, status, cost in micro-dollars,
tokens): never a prompt, never a key. The SDK's batch processor exports from its own
thread; the event loop never waits for the collector. The provider is this app's own,
not the process-wide global (tests run many apps).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from relay.config import TelemetryConfig
from relay.metrics.traces import PhaseTimes
from relay.usage.log import UsageRecord

__all__ = ["OtlpTracer", "otlp_exporter"]


def _headers(config: TelemetryConfig) -> dict[str, str]:
    raw = os.environ.get(config.headers_env, "") if config.headers_env else ""
    pairs = (item.partition("=") for item in raw.split(",") if "=" in item)
    return {name.strip(): value.strip() for name, _, value in pairs}


def otlp_exporter(config: TelemetryConfig) -> SpanExporter:
    assert config.otlp_endpoint is not None
    return OTLPSpanExporter(endpoint=config.otlp_endpoint, headers=_headers(config), timeout=10)


def _attributes(record: UsageRecord) -> dict[str, AttributeValue]:
    values: dict[str, AttributeValue | None] = {
        "relay.request_id": record.request_id,
        "relay.endpoint": record.endpoint,
        "http.route": f"/v1/{record.endpoint}",
        "http.response.status_code": record.status,
        "relay.error_code": record.error_code,
        "gen_ai.request.model": record.model,
        "relay.provider": record.provider,
        "gen_ai.response.model": record.upstream_model,
        "relay.stream": record.stream,
        "relay.cost_micros": record.cost_micros,
        "gen_ai.usage.input_tokens": record.prompt_tokens,
        "gen_ai.usage.output_tokens": record.completion_tokens,
        "relay.account_id": record.account_id,
        "relay.key_id": record.key_id,
    }
    return {name: value for name, value in values.items() if value is not None}


class OtlpTracer:
    """``RequestTracer`` over an OpenTelemetry SDK provider of this app's own."""

    def __init__(
        self,
        config: TelemetryConfig,
        exporter: SpanExporter,
        *,
        processor: Callable[[SpanExporter], SpanProcessor] = BatchSpanProcessor,
    ) -> None:
        self._provider = TracerProvider(
            resource=Resource.create({"service.name": config.service_name})
        )
        self._provider.add_span_processor(processor(exporter))
        self._tracer = self._provider.get_tracer("relay")

    def trace(self, record: UsageRecord, times: PhaseTimes) -> None:
        wall_now = time.time_ns()

        def ns(moment: float) -> int:
            return wall_now - int((times.ended - moment) * 1e9)

        tracer = self._tracer
        root = tracer.start_span(
            f"relay {record.endpoint}",
            kind=SpanKind.SERVER,
            start_time=ns(times.started),
            attributes=_attributes(record),
        )
        if record.status >= 500:
            root.set_status(Status(StatusCode.ERROR, record.error_code or str(record.status)))
        inside = trace.set_span_in_context(root)
        admitted = times.admitted or times.ended  # refused before admission: all of it
        phases: list[tuple[str, float, float, dict[str, AttributeValue]]] = [
            ("relay.admission", times.started, admitted, {"relay.admitted": bool(times.admitted)})
        ]
        if times.admitted and record.provider is not None:
            upstream: dict[str, AttributeValue] = {"relay.provider": record.provider}
            if record.upstream_model is not None:
                upstream["gen_ai.response.model"] = record.upstream_model
            if record.ttfb_ms is not None:
                upstream["relay.ttfb_ms"] = record.ttfb_ms
            phases.append(
                ("relay.upstream", times.admitted, times.settling or times.ended, upstream)
            )
        if times.settling:
            settled: dict[str, AttributeValue] = {"relay.cost_micros": record.cost_micros}
            phases.append(("relay.settlement", times.settling, times.ended, settled))
        for name, start, end, attributes in phases:
            child = tracer.start_span(
                name, context=inside, start_time=ns(start), attributes=attributes
            )
            child.end(end_time=ns(end))
        root.end(end_time=ns(times.ended))

    def flush(self) -> bool:
        return self._provider.force_flush()

    async def aclose(self) -> None:
        """Export what is buffered and stop (in a thread: the export may wait on the network)."""
        await asyncio.to_thread(self._provider.shutdown)
