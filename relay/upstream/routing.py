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
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from relay.config import ModelConfig, parse_route
from relay.errors import (
    NotFound,
    NoUpstreamAvailable,
    RateLimited,
    RelayError,
    UpstreamError,
    UpstreamOverloaded,
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
from relay.upstream.redact import RedactingResponse

__all__ = ["Model", "OpenedRoute", "Route", "Router"]

BACKOFF_BASE_S = 0.2
BACKOFF_CAP_S = 4.0
# Statuses worth another try elsewhere; any other 4xx is the request's own fault.
_RETRYABLE_4XX = frozenset({408, 409, 425})
_CHARS_PER_TOKEN = 4  # a rough size → tokens estimate, only for per-key TPM quotas
# Anthropic's "overloaded": retried like a 5xx, reported as such if nothing else answers.
_OVERLOADED = 529


@dataclass(frozen=True, slots=True)
class Route:
    provider: Provider
    upstream_model: str

    @property
    def label(self) -> str:
        return f"{self.provider.name}:{self.upstream_model}"


class Model:
    """A public model name, its config and its routes in fallback order."""

    __slots__ = ("name", "config", "price", "routes", "weights")

    def __init__(self, config: ModelConfig, providers: dict[str, Provider]):
        self.name = config.name
        self.config = config
        self.price = ModelPrice.from_config(config)
        specs = [parse_route(route) for route in config.routes]
        self.routes = [Route(providers[spec.provider], spec.upstream_model) for spec in specs]
        # None: plain fallback order. Else each route's weight (an unweighted one counts 1).
        self.weights: list[int] | None = None
        if any(spec.weight is not None for spec in specs):
            self.weights = [1 if spec.weight is None else spec.weight for spec in specs]

    @property
    def available(self) -> bool:
        return any(route.provider.enabled for route in self.routes)

    def route_order(self, draw: Callable[[], float]) -> list[Route]:
        """The routes to try, in order: with weights, the first is drawn among the enabled
        routes by weight (``draw()`` in [0, 1)); the rest follow in config order."""
        weights = self.weights
        if weights is None:
            return self.routes
        candidates = [
            (route, weight)
            for route, weight in zip(self.routes, weights, strict=True)
            if weight > 0 and route.provider.enabled
        ]
        total = sum(weight for _, weight in candidates)
        if total == 0:
            return self.routes
        point = draw() * total
        first = candidates[-1][0]
        for route, weight in candidates:
            if point < weight:
                first = route
                break
            point -= weight
        return [first, *(route for route in self.routes if route is not first)]


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

    def rest_of_stream(self) -> AsyncIterator[bytes]:
        """The chunks after ``first_chunk``: the response's own iterator, not a generator
        around it, which would cost every chunk one more generator step (and every stream
        the loop's async-generator hooks)."""
        return self._chunks if self._chunks is not None else _no_chunks()

    def close(self) -> Coroutine[Any, Any, None]:
        """Release the key and drop the connection; safe to call more than once.

        Await what it returns: the response's own ``aclose``, handed back rather than
        awaited in a coroutine of this one's.
        """
        if self._closed:
            return _closed_already()
        self._closed = True
        self.route.provider.pool.release(self.key)
        return self.response.aclose()


async def _closed_already() -> None:
    return


async def _no_chunks() -> AsyncIterator[bytes]:
    return
    yield  # an async generator that yields nothing


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
        content_type: str | None = None,
    ) -> OpenedRoute:
        """``path`` names the client's dialect; each provider maps it to its own endpoint
        and forwards what it needs of ``client_headers`` (e.g. ``anthropic-version``).
        A route whose provider does not serve ``path`` is skipped (400 if none does);
        ``content_type`` replaces JSON's for bodies that are not (multipart forms)."""
        failure: RelayError | None = None
        for route in model.route_order(self._jitter):
            if not route.provider.serves(path):
                failure = failure or route.provider.unsupported(f"POST /v1{path}")
                continue
            if not route.provider.enabled:
                failure = failure or NoUpstreamAvailable(route.provider.why_disabled())
                continue
            headers = route.provider.forwarded_headers(client_headers or {})
            if content_type is not None:
                headers["content-type"] = content_type
            target = _Target(route.provider.url(path), path, headers)
            opened, failure = await self._try_route(route, target, body_for(route), stream, failure)
            if opened is not None:
                return opened
        raise failure or NoUpstreamAvailable(f"no upstream is available for {model.name!r}")

    async def _try_route(
        self, route: Route, target: _Target, body: bytes, stream: bool, failure: RelayError | None
    ) -> tuple[OpenedRoute | None, RelayError | None]:
        provider = route.provider
        tried: set[int] = set()
        # For keys with a TPM quota: the prompt's size is all that is known before sending.
        tokens = len(body) // _CHARS_PER_TOKEN
        for attempt in range(1, provider.config.max_attempts + 1):
            key = provider.pool.acquire(tried, tokens) or provider.pool.acquire(tokens=tokens)
            if key is None:
                return None, _pool_exhausted(provider, tokens)
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
        response = provider.adapt_response(target.path, response, body)
        if not stream and 200 <= response.status < 300:  # the usual answer: no coroutine
            return _opened(response, route, key, attempt), None, False
        return await self._judge(response, route, key, attempt, stream)

    async def _judge(
        self, response: UpstreamResponse, route: Route, key: UpstreamKey, attempt: int, stream: bool
    ) -> tuple[OpenedRoute | None, RelayError | None, bool]:
        """Accept a 2xx, or say why not and whether to retry without waiting."""
        provider = route.provider
        status = response.status
        if 200 <= status < 300:
            if not stream:
                return _opened(response, route, key, attempt), None, False
            response = RedactingResponse(response, provider.pool.redactor)
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
        if status == _OVERLOADED:
            message = f"provider {provider.name!r} is overloaded"
            return None, UpstreamOverloaded(message).with_retry_after(1), False
        if status >= 500 or status < 400 or status in _RETRYABLE_4XX:
            message = f"provider {provider.name!r} answered HTTP {status}"
            return None, UpstreamError(message), False
        content_type = response.headers.get("content-type", "application/json")
        raise UpstreamRejected(status, provider.pool.redactor.redact(body), content_type)

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


def _opened(
    response: UpstreamResponse, route: Route, key: UpstreamKey, attempt: int
) -> OpenedRoute:
    """A 2xx whole answer, read redacted."""
    redacted = RedactingResponse(response, route.provider.pool.redactor)
    return OpenedRoute(redacted, route, key, attempt, None, None)


def _failure_from(exc: UpstreamFailure, provider: str) -> RelayError:
    if isinstance(exc, UpstreamTimedOut):
        return UpstreamTimeout(f"provider {provider!r} timed out")
    if isinstance(exc, UpstreamConnectFailed | UpstreamStreamBroken):
        return UpstreamError(f"provider {provider!r} could not be reached")
    return UpstreamError(f"provider {provider!r} failed")


def _pool_exhausted(provider: Provider, tokens: int = 0) -> RelayError:
    """Every key cooling down after the upstream's 429 is the client's 429 too, with the
    time until the first key is back (the SDKs then raise ``RateLimitError`` and wait)."""
    wait = provider.pool.seconds_until_ready(tokens)
    if wait is None:  # no key cools down: every one was rejected (401/403)
        return NoUpstreamAvailable(provider.why_disabled())
    return RateLimited(
        f"every key of provider {provider.name!r} is rate-limited upstream", retry_after_s=wait
    )


async def _read_quietly(response: UpstreamResponse) -> bytes:
    try:
        return await response.read()
    except UpstreamFailure:
        return b""
    finally:
        await response.aclose()
