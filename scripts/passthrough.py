"""The bare ceiling for scripts/bench: relay's server and client stack with no features.

hypercorn + Starlette serve ``POST /v1/chat/completions`` and forward it through one pooled
aiohttp ``ClientSession`` on uvloop, as relay does, with no auth, routing, pricing or
accounting. Non-stream answers are read whole and returned; SSE answers are passed through
chunk by chunk. What relay measures above this is the cost of its own features.

    python scripts/passthrough.py --port 18801 --upstream http://127.0.0.1:18800/v1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
from hypercorn.asyncio import serve
from hypercorn.config import Config
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

__all__ = ["build_app", "build_parser", "main"]

_FORWARDED_HEADERS = ("authorization", "content-type")
_MAX_CONNECTIONS = 1024


def build_app(upstream: str) -> Starlette:
    """The pass-through app; the aiohttp session lives in the lifespan state."""
    chat_url = upstream.rstrip("/") + "/chat/completions"

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        connector = aiohttp.TCPConnector(limit=_MAX_CONNECTIONS)
        async with aiohttp.ClientSession(connector=connector) as session:
            yield {"session": session}

    async def chat_completions(request: Request) -> Response:
        session: aiohttp.ClientSession = request.state.session
        body = await request.body()
        headers = {
            name: request.headers[name] for name in _FORWARDED_HEADERS if name in request.headers
        }
        upstream_response = await session.post(chat_url, data=body, headers=headers)
        content_type = upstream_response.headers.get("content-type", "application/json")
        if not content_type.startswith("text/event-stream"):
            async with upstream_response:
                payload = await upstream_response.read()
            return Response(payload, upstream_response.status, media_type=content_type)
        return StreamingResponse(
            _relay_chunks(upstream_response),
            upstream_response.status,
            media_type=content_type,
        )

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True})

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


async def _relay_chunks(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    async with response:
        while chunk := await response.content.readany():
            yield chunk


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="bare hypercorn+Starlette+aiohttp pass-through")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18801)
    parser.add_argument("--upstream", default="http://127.0.0.1:18800/v1", help="base URL")
    return parser


async def _serve(host: str, port: int, upstream: str) -> None:
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await serve(build_app(upstream), config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import uvloop

    uvloop.run(_serve(args.host, args.port, args.upstream))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
