"""Optional OpenTelemetry traces: one span per data-plane request with children for
admission, the upstream call and settlement; through the SDK's in-memory exporter and
through the real OTLP/HTTP exporter to a local collector. Without ``[telemetry]``,
OpenTelemetry is never imported."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from conftest import config_text, make_config
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from support_accounts import auth, chat_body, run_relay
from test_server import free_port

from relay.config import TelemetryConfig, parse_config
from relay.errors import ConfigError
from relay.metrics.otlp import OtlpTracer

PROMPT = "a confidential prompt about the merger"


def by_name(spans: tuple[ReadableSpan, ...], request_id: str) -> dict[str, ReadableSpan]:
    [root] = [s for s in spans if (s.attributes or {}).get("relay.request_id") == request_id]
    assert root.context is not None
    named = {"root": root}
    for span in spans:
        if span.parent is not None and span.parent.span_id == root.context.span_id:
            named[span.name] = span
    return named


def nested(child: ReadableSpan, parent: ReadableSpan) -> bool:
    assert child.start_time and child.end_time and parent.start_time and parent.end_time
    return parent.start_time <= child.start_time <= child.end_time <= parent.end_time


async def test_each_request_is_a_span_with_admission_upstream_and_settlement(
    tmp_path: Path, admin_token: str
) -> None:
    exporter = InMemorySpanExporter()
    tracer = OtlpTracer(TelemetryConfig(), exporter, processor=SimpleSpanProcessor)
    async with run_relay(make_config(tmp_path)) as relay:
        assert relay.state.tracer is None  # no [telemetry]: no tracer
        relay.state.tracer = tracer
        _, key = await relay.funded_key("acme")
        body = chat_body(messages=[{"role": "user", "content": PROMPT}])
        ok = await relay.client.post("/v1/chat/completions", json=body, headers=auth(key["secret"]))
        assert ok.status_code == 200
        streamed = await relay.client.post(
            "/v1/chat/completions", json={**body, "stream": True}, headers=auth(key["secret"])
        )
        assert streamed.status_code == 200
        missing = await relay.client.post(
            "/v1/chat/completions", json=chat_body("no-such-model"), headers=auth(key["secret"])
        )
        assert missing.status_code == 404
        usage = await relay.usage(ok.headers["x-relay-request-id"])
    spans = exporter.get_finished_spans()
    answer = by_name(spans, ok.headers["x-relay-request-id"])
    root = answer["root"]
    assert root.name == "relay chat" and root.kind.name == "SERVER"
    attributes = dict(root.attributes or {})
    assert attributes["gen_ai.request.model"] == "mock-gpt"
    assert attributes["relay.provider"] == "mock"
    assert attributes["http.response.status_code"] == 200
    assert attributes["relay.cost_micros"] == usage["cost_micros"] > 0
    assert attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"] > 0
    assert attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"] > 0
    assert set(answer) == {"root", "relay.admission", "relay.upstream", "relay.settlement"}
    for phase in ("relay.admission", "relay.upstream", "relay.settlement"):
        assert nested(answer[phase], root), phase
    assert answer["relay.admission"].end_time <= answer["relay.upstream"].start_time  # type: ignore[operator]
    assert answer["relay.upstream"].end_time <= answer["relay.settlement"].start_time  # type: ignore[operator]
    assert (answer["relay.settlement"].attributes or {})["relay.cost_micros"] == usage[
        "cost_micros"
    ]
    stream = by_name(spans, streamed.headers["x-relay-request-id"])
    assert (stream["root"].attributes or {})["relay.stream"] is True
    assert "relay.settlement" in stream and "relay.upstream" in stream
    refused = by_name(spans, missing.headers["x-relay-request-id"])
    assert (refused["root"].attributes or {})["http.response.status_code"] == 404
    assert set(refused) == {"root", "relay.admission"}  # never admitted, never upstream
    everything = repr([dict(s.attributes or {}) for s in spans])
    assert PROMPT not in everything and key["secret"] not in everything  # metadata only


class Collector:
    def __init__(self) -> None:
        self.bodies: list[tuple[str, bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append((request.content_type, await request.read()))
        return web.Response(status=200, body=b"", content_type="application/x-protobuf")


@pytest.fixture
async def collector() -> AsyncIterator[tuple[Collector, str]]:
    received = Collector()
    app = web.Application()
    app.router.add_post("/v1/traces", received.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield received, f"http://127.0.0.1:{port}/v1/traces"
    finally:
        await runner.cleanup()


async def test_spans_reach_a_local_collector_over_otlp_http(
    tmp_path: Path, admin_token: str, collector: tuple[Collector, str]
) -> None:
    received, url = collector
    extra = f'\n[telemetry]\notlp_endpoint = "{url}"\nservice_name = "relay-test"\n'
    async with run_relay(make_config(tmp_path, extra=extra)) as relay:
        assert relay.state.tracer is not None
        _, key = await relay.funded_key("acme")
        ok = await relay.client.post(
            "/v1/chat/completions", json=chat_body(), headers=auth(key["secret"])
        )
        assert ok.status_code == 200
    # Shutting down flushed the batch to the collector.
    assert received.bodies
    spans = []
    services = set()
    for content_type, body in received.bodies:
        assert content_type == "application/x-protobuf"
        export = ExportTraceServiceRequest.FromString(body)
        for resource_spans in export.resource_spans:
            for attribute in resource_spans.resource.attributes:
                if attribute.key == "service.name":
                    services.add(attribute.value.string_value)
            for scope in resource_spans.scope_spans:
                spans.extend(scope.spans)
    assert services == {"relay-test"}
    names = sorted(span.name for span in spans)
    assert names == ["relay chat", "relay.admission", "relay.settlement", "relay.upstream"]
    [root] = [span for span in spans if span.name == "relay chat"]
    attributes = {a.key: a.value for a in root.attributes}
    assert attributes["relay.request_id"].string_value == ok.headers["x-relay-request-id"]
    assert attributes["gen_ai.request.model"].string_value == "mock-gpt"
    assert attributes["relay.cost_micros"].int_value > 0
    assert all(span.trace_id == root.trace_id for span in spans)


def test_without_telemetry_opentelemetry_is_never_imported(tmp_path: Path) -> None:
    # A fresh interpreter importing only relay (the test helpers pull in libraries that
    # load OpenTelemetry themselves), through a whole start-up and shutdown.
    text = config_text(tmp_path / "relay.db")
    script = f"""
import asyncio, sys
from relay.app import create_app
from relay.config import parse_config
config = parse_config({text!r}, base_dir={str(tmp_path)!r})
app = create_app(config)
async def serve_nothing():
    async with app.router.lifespan_context(app):
        pass
asyncio.run(serve_nothing())
import relay.api.flow, relay.metrics.traces  # the request flow and its seam
loaded = sorted(name for name in sys.modules if name.startswith("opentelemetry"))
assert not loaded, loaded
print("clean")
"""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "clean"


def test_telemetry_config_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"telemetry: otlp_endpoint must be an http"):
        parse_config('[telemetry]\notlp_endpoint = "collector:4318"\n')
    config = parse_config('[telemetry]\notlp_endpoint = "http://127.0.0.1:4318/v1/traces"\n')
    assert config.telemetry.service_name == "relay"
