"""Refuse HTTP/1 requests whose body length is ambiguous (request smuggling).

A request carrying both ``Content-Length`` and ``Transfer-Encoding`` (or two different
``Content-Length`` values) can be framed one way by a proxy in front of relay and another
way by relay's server: the bytes one reads as body the other reads as the next request.
RFC 9112 §6.1 lets a server refuse such a message and requires closing the connection
after it. uvicorn's parser already answers 400 and closes; hypercorn's (h11) lets
``Transfer-Encoding`` win and keeps the connection open, so the smuggled request would
be served. This middleware answers 400 with ``Connection: close`` before the app reads a
byte of the body, under either server.
"""

from __future__ import annotations

from collections.abc import Awaitable

from starlette.types import ASGIApp, Receive, Scope, Send

from relay.errors import InvalidRequest
from relay.http.responses import error_response

__all__ = ["RefuseAmbiguousFraming"]

_HTTP1 = ("1.0", "1.1")


def _ambiguous(headers: list[tuple[bytes, bytes]]) -> bool:
    lengths: set[bytes] = set()
    chunked = False
    for name, value in headers:
        if name == b"content-length":
            lengths.add(value.strip())
        elif name == b"transfer-encoding":
            chunked = True
    return len(lengths) > 1 or (chunked and bool(lengths))


class RefuseAmbiguousFraming:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not a coroutine: it hands back the app's own (or the refusal), so that no frame
        # of its own sits in the request's await chain, stepped on every resume of the
        # task (twice per streamed chunk).
        if (
            scope["type"] == "http"
            and scope.get("http_version") in _HTTP1
            and _ambiguous(scope["headers"])
        ):
            error = InvalidRequest(
                "A request must not carry both Content-Length and Transfer-Encoding"
            )
            return error_response(error, {"connection": "close"})(scope, receive, send)
        return self.app(scope, receive, send)
