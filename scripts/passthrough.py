"""The bare ceiling for scripts/bench: relay's server stack with no features, per upstream client.

hypercorn + Starlette on uvloop serve ``POST /v1/chat/completions`` and forward it through one
pooled upstream client, with no auth, routing, pricing or accounting. Non-stream answers are
read whole and returned; SSE answers are passed through chunk by chunk. What relay measures
above this is the cost of its own features.

``--client`` picks the upstream client, so the transport decision behind relay/upstream.py
can be measured on the same stack:

- ``aiohttp``: one ``aiohttp.ClientSession`` (what relay runs in production);
- ``httpx-aiohttp``: ``httpx.AsyncClient`` over ``httpx_aiohttp.AiohttpTransport``;
- ``httpx``: ``httpx.AsyncClient`` on httpx's own connection pool.

Each is used the way relay's seam uses it: headers first, then the body read whole or raw
chunks passed on, and every pool is sized so it never queues at the benchmark's concurrency.

    python scripts/passthrough.py --port 18801 --upstream http://127.0.0.1:18800/v1 \
        --client aiohttp
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Protocol

import aiohttp
import httpx
from hypercorn.asyncio import serve
from hypercorn.config import Config
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

__all__ = ["CLIENTS", "UpstreamAnswer", "UpstreamPoster", "build_app", "build_parser", "main"]

_FORWARDED_HEADERS = ("authorization", "content-type")
# Far above the benchmark's 32 connections: no client may be measured waiting for its pool.
_MAX_CONNECTIONS = 1024


class UpstreamAnswer(Protocol):
    status: int
    content_type: str

    async def read(self) -> bytes:
        """The whole body; the connection goes back to the pool."""
        ...

    def chunks(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive; the connection goes back to the pool at the end."""
        ...


class UpstreamPoster(Protocol):
    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> UpstreamAnswer: ...

    async def aclose(self) -> None: ...


class _AiohttpAnswer:
    def __init__(self, response: aiohttp.ClientResponse):
        self._response = response
        self.status = response.status
        self.content_type = response.headers.get("content-type", "application/json")

    async def read(self) -> bytes:
        async with self._response:
            return await self._response.read()

    async def chunks(self) -> AsyncIterator[bytes]:
        async with self._response:
            while chunk := await self._response.content.readany():
                yield chunk


class _AiohttpPoster:
    def __init__(self) -> None:
        connector = aiohttp.TCPConnector(limit=_MAX_CONNECTIONS)
        self._session = aiohttp.ClientSession(connector=connector)

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> UpstreamAnswer:
        response = await self._session.post(url, data=body, headers=dict(headers))
        return _AiohttpAnswer(response)

    async def aclose(self) -> None:
        await self._session.close()


class _HttpxAnswer:
    def __init__(self, response: httpx.Response):
        self._response = response
        self.status = response.status_code
        self.content_type = response.headers.get("content-type", "application/json")

    async def read(self) -> bytes:
        try:
            return await self._response.aread()
        finally:
            await self._response.aclose()

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.aiter_raw():
                yield chunk
        finally:
            await self._response.aclose()


class _HttpxPoster:
    """``httpx.AsyncClient``; ``transport`` None means httpx's native (httpcore) pool."""

    def __init__(self, transport: httpx.AsyncBaseTransport | None) -> None:
        limits = httpx.Limits(
            max_connections=_MAX_CONNECTIONS, max_keepalive_connections=_MAX_CONNECTIONS
        )
        self._client = httpx.AsyncClient(
            transport=transport, limits=limits, timeout=httpx.Timeout(30.0)
        )

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> UpstreamAnswer:
        request = self._client.build_request("POST", url, content=body, headers=dict(headers))
        response = await self._client.send(request, stream=True)
        return _HttpxAnswer(response)

    async def aclose(self) -> None:
        await self._client.aclose()


def _httpx_over_aiohttp() -> UpstreamPoster:
    # Imported here: the other clients must run where httpx-aiohttp is not installed.
    from httpx_aiohttp import AiohttpTransport

    # The same pool width as the plain aiohttp client, so only the API layer differs.
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=_MAX_CONNECTIONS))
    return _HttpxPoster(AiohttpTransport(client=session))


CLIENTS: dict[str, Callable[[], UpstreamPoster]] = {
    "aiohttp": _AiohttpPoster,
    "httpx-aiohttp": _httpx_over_aiohttp,
    "httpx": lambda: _HttpxPoster(None),
}


def build_app(upstream: str, client: str = "aiohttp") -> Starlette:
    """The pass-through app; the upstream client lives in the lifespan state."""
    chat_url = upstream.rstrip("/") + "/chat/completions"
    make_poster = CLIENTS[client]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        poster = make_poster()
        try:
            yield {"poster": poster}
        finally:
            await poster.aclose()

    async def chat_completions(request: Request) -> Response:
        poster: UpstreamPoster = request.state.poster
        body = await request.body()
        headers = {
            name: request.headers[name] for name in _FORWARDED_HEADERS if name in request.headers
        }
        answer = await poster.post(chat_url, body, headers)
        if not answer.content_type.startswith("text/event-stream"):
            return Response(await answer.read(), answer.status, media_type=answer.content_type)
        return StreamingResponse(answer.chunks(), answer.status, media_type=answer.content_type)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True})

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="bare hypercorn+Starlette pass-through")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18801)
    parser.add_argument("--upstream", default="http://127.0.0.1:18800/v1", help="base URL")
    parser.add_argument("--client", choices=sorted(CLIENTS), default="aiohttp")
    parser.add_argument(
        "--server",
        choices=("hypercorn", "uvicorn"),
        default="hypercorn",
        help='the ASGI server (uvicorn: the ceiling for relay\'s http_server = "uvicorn")',
    )
    return parser


async def _serve(host: str, port: int, upstream: str, client: str) -> None:
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    app = build_app(upstream, client)
    await serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]


def _serve_uvicorn(host: str, port: int, upstream: str, client: str) -> None:
    import uvicorn

    app = build_app(upstream, client)
    uvicorn.run(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        ws="none",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.server == "uvicorn":
        _serve_uvicorn(args.host, args.port, args.upstream, args.client)
        return 0
    import uvloop

    uvloop.run(_serve(args.host, args.port, args.upstream, args.client))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
