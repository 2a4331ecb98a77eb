"""HTTP plumbing shared by the data-plane handlers: bodies, JSON answers, errors."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Message, Receive

from relay.errors import (
    InvalidRequest,
    RelayError,
    RequestTimeout,
    RequestTooLarge,
    UpstreamRejected,
    error_body,
)
from relay.http.grace import REQUEST_TASK
from relay.upstream.deadline import Deadline

__all__ = [
    "JSONAnswer",
    "decode_or_400",
    "error_response",
    "json_response",
    "read_body",
    "unexpected_error_response",
]

log = logging.getLogger("relay.api")
_encoder = msgspec.json.Encoder()
T = TypeVar("T")
_AT_PATH = re.compile(r" - at `\$\.?([^`]*)`")
# How much of a refused over-size body relay still reads so the client sees its 413.
DRAIN_MAX_BYTES = 1024 * 1024
DRAIN_MAX_S = 1.0
# Without a relay state (a bare app in tests) a body still gets a deadline.
DEFAULT_BODY_READ_TIMEOUT_S = 30.0


def _body_deadline_s(request: Request) -> float:
    relay = request.scope.get("state", {}).get("relay")
    if relay is None:
        return DEFAULT_BODY_READ_TIMEOUT_S
    deadline: float = relay.config.server.body_read_timeout_s
    return deadline


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit``.

    The whole body must arrive within ``[server] body_read_timeout_s`` (408 otherwise):
    a client trickling bytes must not hold memory and a worker indefinitely.

    Read from ``receive`` itself rather than through ``request.stream()``: that async
    generator (registered with the loop's asyncgen hooks, ended by a StopAsyncIteration)
    cost every request more than the usual one-message body needs. The body is then left
    where Starlette keeps the one it read (``_body``), so a later ``request.body()``,
    ``stream()`` or ``form()`` returns it instead of waiting for a body already consumed.
    """
    cached: bytes | None = getattr(request, "_body", None)
    if cached is not None:
        if len(cached) > limit:
            raise RequestTooLarge(f"Request body exceeds the limit of {limit} bytes")
        return cached
    receive = request.receive
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        if int(declared) <= limit + DRAIN_MAX_BYTES:
            await _drain(receive)
        raise RequestTooLarge(f"Request body exceeds the limit of {limit} bytes")
    # Lighter than asyncio.timeout on every request's path; the task as the layers above
    # found it (the handler reads its body inline in the request's task).
    deadline = Deadline(request.scope.get(REQUEST_TASK))
    try:
        with deadline.bound(_body_deadline_s(request)):
            message = await receive()
            body = _part(message)
            if message.get("more_body", False):
                body = await _receive_rest(receive, body, limit)
            elif len(body) > limit:
                raise RequestTooLarge(f"Request body exceeds the limit of {limit} bytes")
    except TimeoutError:
        raise RequestTimeout("The request body did not arrive in time") from None
    finally:
        deadline.close()
    request._body = body
    return body


def _part(message: Message) -> bytes:
    """A body message's bytes; a client that left is Starlette's ``ClientDisconnect``."""
    if message["type"] == "http.disconnect":
        raise ClientDisconnect()
    part: bytes = message.get("body", b"")
    return part


async def _receive_rest(receive: Receive, body: bytes, limit: int) -> bytes:
    """A body in several messages (the usual one is whole in the first, read inline)."""
    parts = [body]
    size = len(body)
    while True:
        if size > limit:
            await _drain(receive)
            raise RequestTooLarge(f"Request body exceeds the limit of {limit} bytes")
        message = await receive()
        part = _part(message)
        size += len(part)
        parts.append(part)
        if not message.get("more_body", False):
            break
    if size > limit:
        raise RequestTooLarge(f"Request body exceeds the limit of {limit} bytes")
    return b"".join(parts)


async def _drain(receive: Receive) -> None:
    """Read and drop a little more of a refused body, within bounds.

    Closing a connection with unread request bytes makes the kernel send a reset, which
    discards the 413 from the client's receive buffer before it can read it (the
    client sees "connection reset" instead). A slightly over-size body is therefore
    read to its end, like nginx's lingering close; a huge one is cut off.
    """
    drained = 0
    with contextlib.suppress(TimeoutError, ClientDisconnect):
        async with asyncio.timeout(DRAIN_MAX_S):
            while True:
                message = await receive()
                drained += len(_part(message))
                if drained > DRAIN_MAX_BYTES or not message.get("more_body", False):
                    return


def decode_or_400(decode: Callable[[bytes], T], body: bytes) -> T:
    """Decode with a prepared msgspec decoder; any problem is a 400 naming the field."""
    if not body:
        raise InvalidRequest("Request body is empty; expected a JSON object")
    try:
        result: T = decode(body)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"Invalid request: {_field_message(str(exc))}") from None
    except msgspec.DecodeError:
        raise InvalidRequest("Request body is not valid JSON") from None
    except RecursionError:
        # msgspec gives up at the interpreter's recursion limit (about 1,000 levels):
        # that is relay's JSON depth limit, and a client's error, not relay's 500.
        raise InvalidRequest("Request body is nested too deeply") from None
    return result


def _field_message(message: str) -> str:
    # msgspec says "Object missing required field `model`" or "... - at `$.n`".
    return _AT_PATH.sub(r" (at `\1`)", message)


def json_response(
    body: bytes | dict[str, Any], status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    content = body if isinstance(body, bytes) else _encoder.encode(body)
    return Response(content, status_code=status, headers=headers, media_type="application/json")


_JSON_TYPE = (b"content-type", b"application/json")


class JSONAnswer(Response):
    """A JSON answer whose ASGI header list the caller built (``Exchange.raw_headers``).

    The answer of every billed request: Starlette's ``init_headers`` would lower-case and
    encode a header mapping built for it, then search it for a length and a type it never
    holds. Sent by ``Response.__call__`` as any other (``CancelOnDisconnect`` relies on
    that), with the same headers in the same order as ``json_response`` gives.
    """

    media_type = "application/json"

    def __init__(self, body: bytes, raw_headers: list[tuple[bytes, bytes]]) -> None:
        self.status_code = 200
        self.background = None
        self.body = body
        raw_headers.append((b"content-length", str(len(body)).encode()))
        raw_headers.append(_JSON_TYPE)
        self.raw_headers = raw_headers


def error_response(exc: RelayError, headers: Mapping[str, str] | None = None) -> Response:
    merged = {**exc.headers(), **(headers or {})}
    if isinstance(exc, UpstreamRejected):
        return Response(
            exc.upstream_body or exc.body(),
            status_code=exc.status,
            headers=merged,
            media_type=exc.content_type if exc.upstream_body else "application/json",
        )
    return Response(
        exc.body(), status_code=exc.status, headers=merged, media_type="application/json"
    )


def unexpected_error_response(exc: BaseException) -> Response:
    # The type only: an exception's text or traceback could carry request content.
    log.error("internal error: %s", type(exc).__name__)
    body = error_body("Internal server error", "server_error", "internal_error")
    return Response(body, status_code=500, media_type="application/json")
