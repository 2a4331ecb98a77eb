"""Throttle wrong admin-token attempts per client IP, on every route that takes one.

The admin token is accepted by the admin API and, as the operator's smoke-test
credential, on the data plane; both compare it in constant time. A client presenting
a credential that is not a relay key (``rk_...``), not the admin token and not the
metrics token (``[metrics] token_env``, which a scraper sends every few seconds) is
guessing it: after ``max_failures`` such guesses in ``window_s`` its IP gets 429 (with
``retry-after``) for any non-key credential, the right token included, until the oldest
guess ages out. Requests with a relay key never pay for this beyond a prefix check.

The IP is ``relay.http.client_ip``'s (``[server] trusted_proxies`` decide whether
``X-Forwarded-For`` counts). With no admin token configured there is nothing to guess
and the middleware passes everything through.

Embedded, the guesses are counted in this process; in cluster mode in the cluster's Redis
(``relay.cluster.redis_failures``), so N instances behind a load balancer allow the same
``max_failures`` as one. If Redis does not answer, a non-key credential gets 503 (fail
closed: an uncounted guess is an unlimited one); relay keys are never affected.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from relay.cluster.redis_failures import RedisFailures
from relay.cluster.runtime import ClusterRuntime
from relay.errors import RateLimited, StorageUnavailable
from relay.http.client_ip import client_ip
from relay.http.failures import Failures, LocalFailures
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


def _known_token(state: RelayState, token: str) -> bool:
    """The admin token, or the metrics token (a scraper is not guessing)."""
    return state.auth.is_admin_token(token) or state.config.metrics.is_token(token)


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
        self._max_failures = max_failures
        self._window_s = window_s
        self._local = LocalFailures(max_failures, window_s, max_entries, clock)
        # The cluster's counts, made on the first request that needs them (the runtime
        # opens in the lifespan, after this middleware was built).
        self._shared: tuple[ClusterRuntime, Failures] | None = None

    def _failures(self, state: RelayState) -> Failures:
        cluster = state.cluster
        if cluster is None:
            return self._local
        if self._shared is None or self._shared[0] is not cluster:
            failures = RedisFailures(
                cluster.redis, "admin-token", limit=self._max_failures, window_s=self._window_s
            )
            self._shared = (cluster, failures)
        return self._shared[1]

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not a coroutine: a request without an admin token (every API call) gets the app's
        # own, so that no frame of this middleware sits in the request's await chain,
        # stepped on every resume of the task (twice per streamed chunk).
        if scope["type"] != "http":
            return self.app(scope, receive, send)
        token = _non_key_credential(scope["headers"])
        state: RelayState | None = scope.get("state", {}).get("relay")
        if token is None or state is None or not state.auth.admin_enabled:
            return self.app(scope, receive, send)
        return self._throttled(scope, receive, send, token, state)

    async def _throttled(
        self, scope: Scope, receive: Receive, send: Send, token: str, state: RelayState
    ) -> None:
        ip = client_ip(scope, state.config.server.trusted_proxies)
        failures = self._failures(state)
        try:
            if _known_token(state, token):
                wait_s = await failures.retry_after(ip)
            else:  # counted in the same step as the check (relay.http.failures)
                wait_s = (await failures.take(ip)).wait_s
        except StorageUnavailable as exc:
            await error_response(exc)(scope, receive, send)
            return
        if wait_s > 0:
            refused = RateLimited(
                "Too many wrong admin tokens from this address; try again later",
                retry_after_s=wait_s,
            )
            await error_response(refused)(scope, receive, send)
            return
        await self.app(scope, receive, send)
