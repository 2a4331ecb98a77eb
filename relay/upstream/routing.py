"""Model → ordered upstream routes, and the attempt loop that opens one of them.

For each route in fallback order: take the least-busy healthy key of its provider and
send. A 429 cools that key and tries another; a 401/403 takes the key out of rotation;
connect errors, 5xx and timeouts retry on another key with jittered exponential
backoff, up to the provider's ``max_attempts``; then the next route. All of this
happens before any byte reaches the client: once ``open_route`` returns (for a stream:
once the first chunk arrived), relay is committed to that upstream.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass

from relay.config import ModelConfig
from relay.errors import (
    NotFound,
    NoUpstreamAvailable,
    RelayError,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
)
from relay.money.pricing import ModelPrice
from relay.upstream.client import (
    UpstreamConnectFailed,
    UpstreamFailure,
    UpstreamResponse,
    UpstreamStreamBroken,
    UpstreamTimedOut,
)
from relay.upstream.keypool import UpstreamKey
from relay.upstream.providers import Provider

__all__ = ["Model", "OpenedRoute", "Route", "Router"]

BACKOFF_BASE_S = 0.2
BACKOFF_CAP_S = 4.0
# Statuses worth another try elsewhere; any other 4xx is the request's own fault.
_RETRYABLE_4XX = frozenset({408, 409, 425})


@dataclass(frozen=True, slots=True)
class Route:
    provider: Provider
    upstream_model: str

    @property
    def label(self) -> str:
        return f"{self.provider.name}:{self.upstream_model}"


class Model:
    """A public model name, its config and its routes in fallback order."""

    __slots__ = ("name", "config", "price", "routes")

    def __init__(self, config: ModelConfig, providers: dict[str, Provider]):
        self.name = config.name
        self.config = config
        self.price = ModelPrice.from_config(config)
        self.routes = [
            Route(providers[provider], upstream)
            for provider, _, upstream in (route.partition(":") for route in config.routes)
        ]

    @property
    def available(self) -> bool:
        return any(route.provider.enabled for route in self.routes)


class OpenedRoute:
    """An upstream that answered 2xx; the caller consumes it and must call ``close``."""

    __slots__ = ("response", "route", "key", "attempts", "first_chunk", "_chunks", "_closed")

    def __init__(
        self,
        response: UpstreamResponse,
        route: Route,
        key: UpstreamKey,
        attempts: int,
        first_chunk: bytes | None,
        chunks: AsyncIterator[bytes] | None,
    ):
        self.response = response
        self.route = route
        self.key = key
        self.attempts = attempts
        self.first_chunk = first_chunk
        self._chunks = chunks
        self._closed = False

    async def rest_of_stream(self) -> AsyncIterator[bytes]:
        """The chunks after ``first_chunk``."""
        if self._chunks is not None:
            async for chunk in self._chunks:
                yield chunk

    async def close(self) -> None:
        """Release the key and drop the connection; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        self.route.provider.pool.release(self.key)
        await self.response.aclose()


BodyForRoute = Callable[[Route], bytes]


@dataclass(frozen=True, slots=True)
class _Target:
    """Where one route's attempts go: the upstream URL, the client's path, extra headers."""

    url: str
    path: str
    headers: dict[str, str]


class Router:
    def __init__(
        self,
        models: dict[str, Model],
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
        backoff_base_s: float = BACKOFF_BASE_S,
    ):
        self.models = models
        self._sleep = sleep
        self._jitter = jitter
        self._backoff_base_s = backoff_base_s

    def model(self, name: str) -> Model:
        model = self.models.get(name)
        if model is None:
            raise NotFound(f"The model {name!r} does not exist", code="model_not_found")
        return model

    async def open_route(
        self,
        model: Model,
        path: str,
        body_for: BodyForRoute,
        *,
        stream: bool,
        client_headers: Mapping[str, str] | None = None,
    ) -> OpenedRoute:
        """``path`` names the client's dialect; each provider maps it to its own endpoint
        and forwards what it needs of ``client_headers`` (e.g. ``anthropic-version``)."""
        failure: RelayError | None = None
        for route in model.routes:
            if not route.provider.enabled:
                failure = failure or NoUpstreamAvailable(route.provider.why_disabled())
                continue
            target = _Target(
                route.provider.url(path),
                path,
                route.provider.forwarded_headers(client_headers or {}),
            )
            opened, failure = await self._try_route(route, target, body_for(route), stream, failure)
            if opened is not None:
                return opened
        raise failure or NoUpstreamAvailable(f"no upstream is available for {model.name!r}")

    async def _try_route(
        self, route: Route, target: _Target, body: bytes, stream: bool, failure: RelayError | None
    ) -> tuple[OpenedRoute | None, RelayError | None]:
        provider = route.provider
        tried: set[int] = set()
        for attempt in range(1, provider.config.max_attempts + 1):
            key = provider.pool.acquire(tried) or provider.pool.acquire()
            if key is None:
                return None, _pool_exhausted(provider)
            tried.add(key.index)
            # The key is held until an OpenedRoute owns it; any other way out (a failure,
            # an upstream 4xx, or the client leaving while we wait) must release it.
            try:
                opened, failure, retry_now = await self._attempt(
                    route, target, body, key, attempt, stream
                )
            except BaseException:
                provider.pool.release(key)
                raise
            if opened is not None:
                return opened, None
            provider.pool.release(key)
            if not retry_now:
                await self._backoff(attempt, provider.config.max_attempts)
        return None, failure

    async def _attempt(
        self,
        route: Route,
        target: _Target,
        body: bytes,
        key: UpstreamKey,
        attempt: int,
        stream: bool,
    ) -> tuple[OpenedRoute | None, RelayError | None, bool]:
        """One try on one key: the opened route, or why not and whether to retry at once."""
        provider = route.provider
        headers = {**provider.headers(key), **target.headers}
        try:
            response = await provider.client.send(
                "POST", target.url, headers=headers, body=body, timeouts=provider.timeouts
            )
        except UpstreamFailure as exc:
            return None, _failure_from(exc, provider.name), False
        # From here on the response reads in the client's dialect, whatever the upstream's.
        response = provider.adapt_response(target.path, response)
        return await self._judge(response, route, key, attempt, stream)

    async def _judge(
        self, response: UpstreamResponse, route: Route, key: UpstreamKey, attempt: int, stream: bool
    ) -> tuple[OpenedRoute | None, RelayError | None, bool]:
        """Accept a 2xx, or say why not and whether to retry without waiting."""
        provider = route.provider
        status = response.status
        if 200 <= status < 300:
            if not stream:
                return OpenedRoute(response, route, key, attempt, None, None), None, False
            return await self._await_first_chunk(response, route, key, attempt)
        body = await _read_quietly(response)
        if status == 429:
            provider.pool.cool_down(key, response.headers.get("retry-after"))
            return None, _pool_exhausted(provider), True
        if status in (401, 403):
            provider.pool.disable(key, status)
            return None, NoUpstreamAvailable(f"provider {provider.name!r} rejected its key"), True
        # A 3xx too: relay does not follow redirects (a moved base_url is a config error),
        # and passing one on as an answer would bill a redirect page as a completion.
        if status >= 500 or status < 400 or status in _RETRYABLE_4XX:
            message = f"provider {provider.name!r} answered HTTP {status}"
            return None, UpstreamError(message), False
        content_type = response.headers.get("content-type", "application/json")
        raise UpstreamRejected(status, _redact_keys(body, provider), content_type)

    async def _await_first_chunk(
        self, response: UpstreamResponse, route: Route, key: UpstreamKey, attempt: int
    ) -> tuple[OpenedRoute | None, RelayError | None, bool]:
        chunks = aiter(response.chunks())
        try:
            first = await anext(chunks, b"")
        except UpstreamFailure as exc:
            await response.aclose()
            return None, _failure_from(exc, route.provider.name), False
        except BaseException:
            await response.aclose()
            raise
        return OpenedRoute(response, route, key, attempt, first, chunks), None, False

    async def _backoff(self, attempt: int, max_attempts: int) -> None:
        if attempt >= max_attempts:
            return
        delay = self._backoff_base_s * (2 ** (attempt - 1)) * (0.5 + self._jitter())
        await self._sleep(min(BACKOFF_CAP_S, delay))


def _failure_from(exc: UpstreamFailure, provider: str) -> RelayError:
    if isinstance(exc, UpstreamTimedOut):
        return UpstreamTimeout(f"provider {provider!r} timed out")
    if isinstance(exc, UpstreamConnectFailed | UpstreamStreamBroken):
        return UpstreamError(f"provider {provider!r} could not be reached")
    return UpstreamError(f"provider {provider!r} failed")


def _redact_keys(body: bytes, provider: Provider) -> bytes:
    """An upstream's error may quote the key it was sent: never pass a pool key on."""
    for key in provider.pool.keys:
        secret = key.secret.encode()
        if secret and secret in body:
            body = body.replace(secret, b"[redacted]")
    return body


def _pool_exhausted(provider: Provider) -> NoUpstreamAvailable:
    wait = provider.pool.seconds_until_ready()
    if wait is None:  # no key cools down: every one was rejected (401/403)
        return NoUpstreamAvailable(provider.why_disabled())
    error = NoUpstreamAvailable(f"every key of provider {provider.name!r} is rate-limited")
    if wait is not None:
        error.retry_after_s = wait
    return error


async def _read_quietly(response: UpstreamResponse) -> bytes:
    try:
        return await response.read()
    except UpstreamFailure:
        return b""
    finally:
        await response.aclose()
