"""Throttle wrong admin-token attempts per client IP, on every route that takes one.

The admin token is accepted by the admin API and, as the operator's smoke-test
credential, on the data plane; both compare it in constant time. A client presenting
a credential that is not a relay key (``rk_...``) and not the admin token is guessing
it: after ``max_failures`` such guesses in ``window_s`` its IP gets 429 (with
``retry-after``) for any non-key credential, the right token included, until the oldest
guess ages out. Requests with a relay key never pay for this beyond a prefix check.

The IP is ``relay.http.client_ip``'s (``[server] trusted_proxies`` decide whether
``X-Forwarded-For`` counts). With no admin token configured there is nothing to guess
and the middleware passes everything through.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from relay.errors import RateLimited
from relay.http.client_ip import client_ip
from relay.http.failures import FailureWindow
from relay.http.responses import error_response
from relay.identity.keys import KEY_PREFIX
from relay.state import RelayState

__all__ = ["AdminTokenThrottle"]

MAX_FAILURES = 10
WINDOW_S = 900.0
_CREDENTIAL_HEADERS = (b"authorization", b"x-api-key")


def _non_key_credential(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The bearer token or x-api-key when it is not a relay key, else None."""
    for name, value in headers:
        if name not in _CREDENTIAL_HEADERS:
            continue
        text = value.decode("latin-1").strip()
        if name == b"authorization":
            scheme, _, text = text.partition(" ")
            if scheme.lower() != "bearer":
                continue
            text = text.strip()
        if text and not text.startswith(KEY_PREFIX):
            return text
    return None


class AdminTokenThrottle:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_failures: int = MAX_FAILURES,
        window_s: float = WINDOW_S,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self._failures = FailureWindow(max_failures, window_s, max_entries)
        self._clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = _non_key_credential(scope["headers"])
        state: RelayState | None = scope.get("state", {}).get("relay")
        if token is None or state is None or not state.auth.admin_enabled:
            await self.app(scope, receive, send)
            return
        ip = client_ip(scope, state.config.server.trusted_proxies)
        now = self._clock()
        wait_s = self._failures.retry_after(ip, now)
        if wait_s > 0:
            refused = RateLimited(
                "Too many wrong admin tokens from this address; try again later",
                retry_after_s=wait_s,
            )
            await error_response(refused)(scope, receive, send)
            return
        if not state.auth.is_admin_token(token):
            self._failures.add(ip, now)
        await self.app(scope, receive, send)
