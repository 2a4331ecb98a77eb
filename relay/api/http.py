"""HTTP plumbing shared by the data-plane handlers: bodies, JSON answers, errors."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from relay.errors import InvalidRequest, RelayError, RequestTooLarge, error_body
from relay.routing import UpstreamRejected
from relay.state import RelayState
from relay.wire import encode

__all__ = [
    "decode_or_400",
    "error_response",
    "json_response",
    "read_body",
    "relay_state",
    "unexpected_error_response",
]

log = logging.getLogger("relay.api")
T = TypeVar("T")
_AT_PATH = re.compile(r" - at `\$\.?([^`]*)`")


def relay_state(request: Request) -> RelayState:
    state: RelayState = request.state.relay
    return state


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge(f"Request body exceeds the limit of {limit} bytes")
    parts: list[bytes] = []
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise RequestTooLarge(f"Request body exceeds the limit of {limit} bytes")
        parts.append(part)
    return b"".join(parts)


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
    return result


def _field_message(message: str) -> str:
    # msgspec says "Object missing required field `model`" or "... - at `$.n`".
    return _AT_PATH.sub(r" (at `\1`)", message)


def json_response(
    body: bytes | dict[str, Any], status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    content = body if isinstance(body, bytes) else encode(body)
    return Response(content, status_code=status, headers=headers, media_type="application/json")


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
