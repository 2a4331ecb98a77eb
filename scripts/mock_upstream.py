"""A fast OpenAI-compatible fake upstream for benchmarks and tests, on raw asyncio protocols.

Its speed bounds every benchmark that goes through it, so it skips any web framework: a
minimal HTTP/1.1 parser (Content-Length bodies, keep-alive) and responses built from
pre-encoded byte templates. Measured with wrk (2 threads, 32 connections, server pinned to one
core) it answers ~58k non-stream req/s against ~26k for a fixed-body aiohttp.web handler.

Routes: ``POST /v1/chat/completions`` (JSON or SSE when ``"stream": true``),
``POST /v1/embeddings``, ``GET /v1/models``, ``GET /healthz``, ``GET /_stats`` (requests per
bearer key, in-flight peak) and ``POST /_reset``.

Fault knobs, as request headers: ``x-mock-status: 429`` (with ``x-mock-retry-after: S``) answers
that status with an OpenAI error body; ``x-mock-die-after-chunks: N`` aborts the connection
after N stream chunks (after the headers for a non-stream call); ``x-mock-hang-ms: MS`` waits
before answering. The keys it counts are the fake keys tests and benchmarks send it.

Tests start it in-process: ``server = await start(port=0)``, ``server.port``, ``await
server.close()``. Benchmarks run it as a script: ``python scripts/mock_upstream.py --port N``.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import itertools
import signal
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, cast

import msgspec

__all__ = [
    "MockOptions",
    "MockStats",
    "MockUpstream",
    "build_app",
    "build_parser",
    "main",
    "start",
]

_MAX_HEAD_BYTES = 64 * 1024
_COMPLETION_TOKENS = 16
_CONTENT = b"This is a canned reply from the relay mock upstream, sixteen tokens or so."
_STREAM_WORD = b"tok "
_EMBEDDING = b"[0.0123,-0.0456,0.0789,-0.0147,0.0258,-0.0369,0.0471,-0.0582]"
_MODEL_IDS = ("bench-model", "mock-model", "gpt-4o-mini")

_NONSTREAM = (
    b'{"id":"%s","object":"chat.completion","created":%d,"model":%s,'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"' + _CONTENT + b'",'
    b'"refusal":null},"logprobs":null,"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d},'
    b'"system_fingerprint":"fp_mock"}'
)
_CHUNK_HEAD = b'data: {"id":"%s","object":"chat.completion.chunk","created":%d,"model":%s,'
_FIRST_DELTA = b'"choices":[{"index":0,"delta":{"role":"assistant","content":"%s"},'
_NEXT_DELTA = b'"choices":[{"index":0,"delta":{"content":"%s"},'
_DELTA_TAIL = b'"logprobs":null,"finish_reason":null}]}\n\n'
_FINISH = b'"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]}\n\n'
_USAGE = b'"choices":[],"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}}\n\n'
_DONE = b"data: [DONE]\n\n"
_INVALID_JSON = (
    b'{"error":{"message":"invalid JSON body","type":"invalid_request_error",'
    b'"param":null,"code":null}}'
)

_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"x-request-id: %s\r\ntransfer-encoding: chunked\r\n\r\n"
)


@dataclass(frozen=True, slots=True)
class MockOptions:
    """How the mock answers: delays are in milliseconds, ``stream_chunks`` content chunks."""

    latency_ms: float = 0.0
    stream_chunks: int = 20
    chunk_delay_ms: float = 0.0


@dataclass(slots=True)
class MockStats:
    """Per-process counters, read by routing tests through ``GET /_stats``."""

    requests: int = 0
    by_key: Counter[str] = field(default_factory=Counter)
    by_path: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    in_flight_peak: int = 0

    def as_json(self) -> bytes:
        return msgspec.json.encode(
            {
                "requests": self.requests,
                "by_key": dict(self.by_key),
                "by_path": dict(self.by_path),
                "in_flight": self.in_flight,
                "in_flight_peak": self.in_flight_peak,
            }
        )


class _StreamOptions(msgspec.Struct):
    include_usage: bool = False


class _ChatRequest(msgspec.Struct):
    model: str = "mock-model"
    stream: bool = False
    stream_options: _StreamOptions | None = None


class _EmbeddingRequest(msgspec.Struct):
    model: str = "mock-embedding"
    input: str | list[Any] = ""


_CHAT_DECODER = msgspec.json.Decoder(_ChatRequest)
_EMBEDDING_DECODER = msgspec.json.Decoder(_EmbeddingRequest)


@dataclass(slots=True)
class _Request:
    method: bytes
    path: bytes
    headers: dict[bytes, bytes]
    body: bytes
    keep_alive: bool


@dataclass(slots=True)
class _Deferred:
    """A reply written over time: ``parts[0]`` after ``delay_s``, then each part after
    ``part_delay_s``; ``abort_after`` parts written, the connection is reset."""

    delay_s: float
    parts: list[bytes]
    part_delay_s: float = 0.0
    abort_after: int | None = None


def _response(status: int, body: bytes, extra_headers: bytes = b"") -> bytes:
    phrase = _phrase(status)
    return b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s" % (
        status,
        phrase,
        len(body),
        extra_headers,
        body,
    )


def _phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Mock Status"


def _error_body(status: int) -> bytes:
    code = b"rate_limit_exceeded" if status == 429 else b"mock_error_%d" % status
    return (
        b'{"error":{"message":"mock upstream answered %d","type":"mock_error",'
        b'"param":null,"code":"%s"}}' % (status, code)
    )


def _http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _bearer_key(headers: dict[bytes, bytes]) -> str:
    value = headers.get(b"authorization", b"")
    if value[:7].lower() == b"bearer ":
        value = value[7:]
    return value.decode("latin-1") or "-"


class MockUpstream:
    """The fake upstream: answers parsed requests and owns the listening server."""

    def __init__(self, options: MockOptions | None = None) -> None:
        self.options = options or MockOptions()
        self.stats = MockStats()
        self._ids = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Transport] = set()
        self._models_body = _response(
            200,
            msgspec.json.encode(
                {
                    "object": "list",
                    "data": [
                        {"id": m, "object": "model", "created": 0, "owned_by": "mock"}
                        for m in _MODEL_IDS
                    ],
                }
            ),
        )

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("mock upstream is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        _require_loopback(host)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _MockProtocol(self), host, port, reuse_address=True, backlog=1024
        )

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        # Keep-alive client connections would otherwise hold wait_closed() open.
        for transport in list(self._connections):
            transport.close()
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> MockUpstream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def track(self, transport: asyncio.Transport, *, open_: bool) -> None:
        if open_:
            self._connections.add(transport)
        else:
            self._connections.discard(transport)

    def request_started(self, request: _Request) -> bool:
        """Count an API request; False (not counted) for the mock's own routes."""
        if not request.path.startswith(b"/v1/"):
            return False
        stats = self.stats
        stats.in_flight += 1
        if stats.in_flight > stats.in_flight_peak:
            stats.in_flight_peak = stats.in_flight
        stats.requests += 1
        stats.by_key[_bearer_key(request.headers)] += 1
        stats.by_path[request.path.decode("latin-1")] += 1
        return True

    def request_finished(self) -> None:
        self.stats.in_flight -= 1

    def respond(self, request: _Request) -> bytes | _Deferred:
        """Build the reply: bytes to write now, or a ``_Deferred`` to write over time."""
        route = (request.method, request.path)
        if route == (b"GET", b"/_stats"):
            return _response(200, self.stats.as_json())
        if route == (b"POST", b"/_reset"):
            self.stats = MockStats(in_flight=self.stats.in_flight)
            return _response(200, b'{"reset":true}')
        if route == (b"GET", b"/healthz"):
            return _response(200, b'{"ok":true}')
        reply = self._apply_faults(request.headers, self._respond_api(request))
        if reply.delay_s <= 0 and reply.part_delay_s <= 0 and reply.abort_after is None:
            return b"".join(reply.parts)
        return reply

    def _respond_api(self, request: _Request) -> _Deferred:
        route = (request.method, request.path)
        try:
            if route == (b"POST", b"/v1/chat/completions"):
                return self._chat(request.body)
            if route == (b"POST", b"/v1/embeddings"):
                return _Deferred(0.0, [self._embeddings(request.body)])
        except (msgspec.DecodeError, msgspec.ValidationError):
            return _Deferred(0.0, [_response(400, _INVALID_JSON)])
        if route == (b"GET", b"/v1/models"):
            return _Deferred(0.0, [self._models_body])
        return _Deferred(0.0, [_response(404, _error_body(404))])

    def _apply_faults(self, headers: dict[bytes, bytes], reply: _Deferred) -> _Deferred:
        status = headers.get(b"x-mock-status")
        if status is not None and int(status) != 200:
            retry_after = headers.get(b"x-mock-retry-after")
            extra = b"retry-after: %s\r\n" % retry_after if retry_after is not None else b""
            reply = _Deferred(0.0, [_response(int(status), _error_body(int(status)), extra)])
        reply.delay_s += (
            self.options.latency_ms + float(headers.get(b"x-mock-hang-ms", b"0"))
        ) / 1000
        die_after = headers.get(b"x-mock-die-after-chunks")
        if die_after is not None:
            if len(reply.parts) == 1:
                reply.parts = _split_head(reply.parts[0])
            reply.abort_after = 1 + int(die_after)
        return reply

    def _chat(self, body: bytes) -> _Deferred:
        request = _CHAT_DECODER.decode(body)
        completion_id = b"chatcmpl-mock%012d" % next(self._ids)
        model = msgspec.json.encode(request.model)
        prompt_tokens = max(1, len(body) // 4)
        created = int(time.time())
        if not request.stream:
            payload = _NONSTREAM % (
                completion_id,
                created,
                model,
                prompt_tokens,
                _COMPLETION_TOKENS,
                prompt_tokens + _COMPLETION_TOKENS,
            )
            return _Deferred(
                0.0, [_response(200, payload, b"x-request-id: %s\r\n" % completion_id)]
            )
        include_usage = request.stream_options is not None and request.stream_options.include_usage
        parts = self._stream_parts(completion_id, created, model, prompt_tokens, include_usage)
        return _Deferred(0.0, parts, self.options.chunk_delay_ms / 1000.0)

    def _stream_parts(
        self, completion_id: bytes, created: int, model: bytes, prompt_tokens: int, usage: bool
    ) -> list[bytes]:
        head = _CHUNK_HEAD % (completion_id, created, model)
        chunks = self.options.stream_chunks
        parts = [_SSE_HEAD % completion_id]
        for index in range(chunks):
            delta = _FIRST_DELTA if index == 0 else _NEXT_DELTA
            parts.append(_http_chunk(head + (delta % _STREAM_WORD) + _DELTA_TAIL))
        parts.append(_http_chunk(head + _FINISH))
        if usage:
            total = prompt_tokens + chunks
            parts.append(_http_chunk(head + _USAGE % (prompt_tokens, chunks, total)))
        parts.append(_http_chunk(_DONE) + b"0\r\n\r\n")
        return parts

    def _embeddings(self, body: bytes) -> bytes:
        request = _EMBEDDING_DECODER.decode(body)
        inputs = 1 if isinstance(request.input, str) else max(1, len(request.input))
        items = b",".join(
            b'{"object":"embedding","index":%d,"embedding":%s}' % (i, _EMBEDDING)
            for i in range(inputs)
        )
        tokens = max(1, len(body) // 4)
        payload = (
            b'{"object":"list","data":[%s],"model":%s,"usage":{"prompt_tokens":%d,"total_tokens":%d}}'
            % (
                items,
                msgspec.json.encode(request.model),
                tokens,
                tokens,
            )
        )
        return _response(200, payload)


def _split_head(response: bytes) -> list[bytes]:
    """Split a whole response into headers and body so a fault can cut between them."""
    head_end = response.index(b"\r\n\r\n") + 4
    body = response[head_end:]
    # A cut non-stream body is sent half-way so clients see a truncated payload.
    return [response[:head_end], body[: len(body) // 2], body[len(body) // 2 :]]


def _parse_head(head: bytes) -> tuple[bytes, bytes, bytes, dict[bytes, bytes]]:
    lines = head.split(b"\r\n")
    method, target, version = lines[0].split(b" ", 2)
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise ValueError("malformed header line")
        headers[name.strip().lower()] = value.strip()
    return method, target.split(b"?", 1)[0], version, headers


def _wants_keep_alive(version: bytes, headers: dict[bytes, bytes]) -> bool:
    connection = headers.get(b"connection", b"").lower()
    if version == b"HTTP/1.0":
        return connection == b"keep-alive"
    return connection != b"close"


class _MockProtocol(asyncio.Protocol):
    """One connection: requests are answered strictly in order (pipelined ones wait)."""

    def __init__(self, app: MockUpstream) -> None:
        self._app = app
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not an asyncio.Transport subclass, so cast, don't check.
        self._transport = cast(asyncio.Transport, transport)
        self._app.track(self._transport, open_=True)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._app.track(self._transport, open_=False)
        self._transport = None
        if self._task is not None:
            self._task.cancel()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._task is None:
            self._serve_buffered()

    def _serve_buffered(self) -> None:
        while self._transport is not None and self._task is None:
            try:
                request = self._take_request()
            except ValueError:
                self._transport.write(_response(400, _error_body(400), b"connection: close\r\n"))
                self._transport.close()
                return
            if request is None:
                return
            counted = self._app.request_started(request)
            try:
                reply = self._app.respond(request)
            except ValueError:  # a malformed fault header value
                reply = _response(400, _error_body(400))
            if isinstance(reply, bytes):
                if counted:
                    self._app.request_finished()
                self._transport.write(reply)
                if not request.keep_alive:
                    self._transport.close()
            else:
                self._task = asyncio.get_running_loop().create_task(
                    self._write_deferred(reply, request.keep_alive, counted)
                )

    def _take_request(self) -> _Request | None:
        head_end = self._buffer.find(b"\r\n\r\n")
        if head_end < 0:
            if len(self._buffer) > _MAX_HEAD_BYTES:
                raise ValueError("request head too large")
            return None
        method, path, version, headers = _parse_head(bytes(self._buffer[:head_end]))
        if b"chunked" in headers.get(b"transfer-encoding", b""):
            raise ValueError("chunked request bodies are not supported")
        length = int(headers.get(b"content-length", b"0"))
        body_start = head_end + 4
        if len(self._buffer) < body_start + length:
            return None
        body = bytes(self._buffer[body_start : body_start + length])
        del self._buffer[: body_start + length]
        return _Request(method, path, headers, body, _wants_keep_alive(version, headers))

    async def _write_deferred(self, reply: _Deferred, keep_alive: bool, counted: bool) -> None:
        try:
            if reply.delay_s > 0:
                await asyncio.sleep(reply.delay_s)
            for index, part in enumerate(reply.parts):
                if self._transport is None:
                    return
                if reply.abort_after is not None and index >= reply.abort_after:
                    self._transport.abort()
                    return
                if index > 0 and reply.part_delay_s > 0:
                    await asyncio.sleep(reply.part_delay_s)
                    if self._transport is None:
                        return
                self._transport.write(part)
            if not keep_alive and self._transport is not None:
                self._transport.close()
        finally:
            if counted:
                self._app.request_finished()
            self._task = None
        if self._transport is not None and self._buffer:
            self._serve_buffered()


def _require_loopback(host: str) -> None:
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"mock upstream only listens on loopback, not {host!r}")


def build_app(options: MockOptions | None = None) -> MockUpstream:
    """A mock that is not listening yet; ``await app.start(host, port)`` starts it."""
    return MockUpstream(options)


async def start(
    host: str = "127.0.0.1", port: int = 0, options: MockOptions | None = None
) -> MockUpstream:
    """Start a mock on ``host:port`` (0 picks a free port) in the running loop."""
    app = build_app(options)
    await app.start(host, port)
    return app


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1", help="loopback address only")
    parser.add_argument("--port", type=int, default=18800)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before answering")
    parser.add_argument("--stream-chunks", type=int, default=20, help="content chunks per stream")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0, help="delay between chunks")
    return parser


async def _serve(host: str, port: int, options: MockOptions) -> None:
    app = await start(host, port, options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await app.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _require_loopback(args.host)
    except ValueError as error:
        build_parser().error(str(error))
    options = MockOptions(args.latency_ms, args.stream_chunks, args.chunk_delay_ms)
    try:
        import uvloop
    except ImportError:  # uvloop is optional; the stdlib loop is only slower
        asyncio.run(_serve(args.host, args.port, options))
    else:
        uvloop.run(_serve(args.host, args.port, options))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
