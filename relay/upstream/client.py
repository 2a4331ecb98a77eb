"""The seam between relay and the network: send one request upstream, stream its answer.

Providers talk to upstreams only through ``UpstreamClient``. Production uses
``AiohttpUpstream`` (aiohttp's pooled connector: httpx's native pool collapses under
concurrency, encode/httpx#3215, and the httpx API over aiohttp measured at less than
half of plain aiohttp, see README "Performance"). Tests inject ``HttpxUpstream`` over
``httpx.MockTransport``, or run ``AiohttpUpstream`` against a local fake server.

Failures are reported as three exceptions the router understands:

    UpstreamFailure
    ├── UpstreamConnectFailed   nothing was sent, or the connection broke before headers
    ├── UpstreamTimedOut        no headers within first_byte, a stream went idle too long,
    │                           or a stream outlived its overall deadline (``stream_s``)
    ├── UpstreamStreamBroken    the connection ended in the middle of a body
    └── UpstreamTooLarge        a whole answer was larger than the caller's ``max_bytes``
                                (refused as it arrives, never buffered whole)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import httpx
from yarl import URL

from relay.upstream.deadline import Deadline

__all__ = [
    "AiohttpUpstream",
    "HttpxUpstream",
    "Timeouts",
    "UpstreamClient",
    "UpstreamConnectFailed",
    "UpstreamFailure",
    "UpstreamResponse",
    "UpstreamStreamBroken",
    "UpstreamTimedOut",
    "UpstreamTooLarge",
]


class UpstreamFailure(Exception):
    """The upstream could not be reached or broke off; never carries key or content."""


class UpstreamConnectFailed(UpstreamFailure):
    pass


class UpstreamTimedOut(UpstreamFailure):
    pass


class UpstreamStreamBroken(UpstreamFailure):
    pass


class UpstreamTooLarge(UpstreamFailure):
    pass


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect_s: float
    first_byte_s: float
    idle_s: float
    total_s: float
    # A whole stream, from its response headers to its last chunk (None: no bound).
    stream_s: float | None = None


def _too_large(max_bytes: int) -> UpstreamTooLarge:
    return UpstreamTooLarge(f"upstream answer is larger than {max_bytes} bytes")


def _declared_too_large(headers: Mapping[str, str], max_bytes: int | None) -> bool:
    declared = headers.get("content-length")
    return (
        max_bytes is not None
        and declared is not None
        and declared.isdigit()
        and (int(declared) > max_bytes)
    )


class _StreamClock:
    """The wait allowed for the next chunk: the idle timeout, or less near the deadline."""

    __slots__ = ("_deadline", "_idle_s")

    def __init__(self, timeouts: Timeouts):
        self._idle_s = timeouts.idle_s
        stream_s = timeouts.stream_s
        self._deadline = None if stream_s is None else time.monotonic() + stream_s

    def next_wait(self) -> float:
        if self._deadline is None:
            return self._idle_s
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise UpstreamTimedOut("upstream stream passed its overall deadline")
        return min(self._idle_s, left)

    def why(self) -> str:
        if self._deadline is not None and time.monotonic() >= self._deadline:
            return "upstream stream passed its overall deadline"
        return "upstream stream went idle"


class UpstreamResponse(Protocol):
    status: int
    headers: Mapping[str, str]

    async def read(self, max_bytes: int | None = None) -> bytes:
        """The whole body (non-stream answers, error bodies); ``UpstreamTooLarge`` past
        ``max_bytes``, detected from the declared length or as the bytes arrive."""
        ...

    def chunks(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive; each wait is bounded by the idle timeout."""
        ...

    async def aclose(self) -> None:
        """Drop the connection (cancels the upstream request if still running)."""
        ...


class UpstreamClient(Protocol):
    async def send(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None,
        timeouts: Timeouts,
    ) -> UpstreamResponse: ...

    async def aclose(self) -> None: ...


class _AiohttpResponse:
    """One answer; its waits (the headers' already done) share the request's ``Deadline``."""

    __slots__ = ("_response", "_timeouts", "_body_s", "_deadline", "status", "headers")

    def __init__(self, response: aiohttp.ClientResponse, timeouts: Timeouts, deadline: Deadline):
        self._response = response
        self._timeouts = timeouts
        # A whole answer read at once is bounded by the provider's timeout_s.
        self._body_s = timeouts.total_s
        self._deadline = deadline
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers

    async def read(self, max_bytes: int | None = None) -> bytes:
        deadline = self._deadline
        try:
            if _declared_too_large(self.headers, max_bytes):
                self._response.close()
                raise _too_large(max_bytes or 0)
            with deadline.bound(self._body_s):
                if max_bytes is None:
                    return await self._response.read()
                # Read here rather than in a coroutine of its own: one fewer per answer.
                parts: list[bytes] = []
                size = 0
                content = self._response.content
                while chunk := await content.readany():
                    size += len(chunk)
                    if size > max_bytes:
                        self._response.close()  # drop the rest unread: never buffered whole
                        raise _too_large(max_bytes)
                    parts.append(chunk)
                return b"".join(parts)
        except TimeoutError:
            self._response.close()
            raise UpstreamTimedOut("upstream went silent while sending its body") from None
        except aiohttp.ClientError as exc:
            raise UpstreamStreamBroken(f"upstream body broke off: {type(exc).__name__}") from None
        finally:
            deadline.close()

    async def chunks(self) -> AsyncIterator[bytes]:
        content = self._response.content
        clock = _StreamClock(self._timeouts)
        deadline = self._deadline
        try:
            while True:
                try:
                    with deadline.bound(clock.next_wait()):
                        chunk = await content.readany()
                except TimeoutError:
                    self._response.close()
                    raise UpstreamTimedOut(clock.why()) from None
                except UpstreamTimedOut:
                    self._response.close()
                    raise
                except aiohttp.ClientError as exc:
                    raise UpstreamStreamBroken(
                        f"upstream stream broke off: {type(exc).__name__}"
                    ) from None
                if not chunk:  # readany() gives b"" only at a clean end of the body
                    return
                yield chunk
        finally:
            deadline.close()

    async def aclose(self) -> None:
        self._deadline.close()
        # A body read to its end has already given its connection back to the pool
        # (``closed``); ``close`` would then only mark its content failed, through an
        # ``isfuture`` whose failed ``hasattr`` builds an AttributeError each request.
        if not self._response.closed:
            self._response.close()


# Parsed upstream URLs kept per session: a provider sends to a few fixed paths, and
# aiohttp would otherwise parse the same text into a ``URL`` for every request. Bounded,
# since some paths hold an id (a video job's status).
_MAX_PARSED_URLS = 64


class AiohttpUpstream:
    """One pooled aiohttp session per provider (its own connection limit and timeouts)."""

    def __init__(self, *, max_connections: int = 512, connect_timeout_s: float = 10.0):
        connector = aiohttp.TCPConnector(
            limit=max_connections, ttl_dns_cache=300, enable_cleanup_closed=True
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, connect=connect_timeout_s),
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
        )
        self._urls: dict[str, URL] = {}

    def _url(self, text: str) -> URL:
        url = self._urls.get(text)
        if url is None:
            url = URL(text)
            if len(self._urls) < _MAX_PARSED_URLS:
                self._urls[text] = url
        return url

    async def send(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None,
        timeouts: Timeouts,
    ) -> UpstreamResponse:
        # One timer for the headers, then the body or each chunk (relay.upstream.deadline).
        deadline = Deadline()
        try:
            with deadline.bound(timeouts.first_byte_s):
                # ``headers`` as given: aiohttp copies them into a CIMultiDict of its own.
                response = await self._session.request(
                    method, self._url(url), headers=headers, data=body, allow_redirects=False
                )
        except TimeoutError:
            deadline.close()
            raise UpstreamTimedOut("no response headers within the first-byte timeout") from None
        except (aiohttp.ClientError, OSError) as exc:
            deadline.close()
            # All of ClientError: a malformed answer (ClientResponseError) is as much the
            # upstream's failure as a refused connection, and must be retried elsewhere
            # rather than escape as relay's own 500.
            raise UpstreamConnectFailed(f"cannot reach upstream: {type(exc).__name__}") from None
        except BaseException:
            deadline.close()
            raise
        return _AiohttpResponse(response, timeouts, deadline)

    async def aclose(self) -> None:
        await self._session.close()


class _HttpxResponse:
    __slots__ = ("_response", "_timeouts", "_body_s", "status", "headers")

    def __init__(self, response: httpx.Response, timeouts: Timeouts):
        self._response = response
        self._timeouts = timeouts
        # A whole answer read at once is bounded by the provider's timeout_s.
        self._body_s = timeouts.total_s
        self.status = response.status_code
        self.headers: Mapping[str, str] = response.headers

    async def read(self, max_bytes: int | None = None) -> bytes:
        if _declared_too_large(self.headers, max_bytes):
            await self._response.aclose()
            raise _too_large(max_bytes or 0)
        try:
            async with asyncio.timeout(self._body_s):
                if max_bytes is None:
                    return await self._response.aread()
                return await self._read_bounded(max_bytes)
        except TimeoutError:
            await self._response.aclose()
            raise UpstreamTimedOut("upstream went silent while sending its body") from None
        except httpx.HTTPError as exc:
            raise UpstreamStreamBroken(f"upstream body broke off: {type(exc).__name__}") from None
        finally:
            await self._response.aclose()

    async def _read_bounded(self, max_bytes: int) -> bytes:
        parts: list[bytes] = []
        size = 0
        async for chunk in self._response.aiter_bytes():
            size += len(chunk)
            if size > max_bytes:
                raise _too_large(max_bytes)  # read()'s finally drops the rest
            parts.append(chunk)
        return b"".join(parts)

    async def chunks(self) -> AsyncIterator[bytes]:
        iterator = self._response.aiter_raw()
        clock = _StreamClock(self._timeouts)
        while True:
            try:
                async with asyncio.timeout(clock.next_wait()):
                    chunk = await anext(iterator, b"")
            except TimeoutError:
                await self._response.aclose()
                raise UpstreamTimedOut(clock.why()) from None
            except UpstreamTimedOut:
                await self._response.aclose()
                raise
            except httpx.HTTPError as exc:
                raise UpstreamStreamBroken(
                    f"upstream stream broke off: {type(exc).__name__}"
                ) from None
            if not chunk:
                return
            yield chunk

    async def aclose(self) -> None:
        await self._response.aclose()


class HttpxUpstream:
    """The httpx API over any transport: ``httpx.MockTransport`` in tests."""

    def __init__(self, client: httpx.AsyncClient):
        self._client = client

    async def send(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None,
        timeouts: Timeouts,
    ) -> UpstreamResponse:
        request = self._client.build_request(method, url, headers=dict(headers), content=body)
        try:
            async with asyncio.timeout(timeouts.first_byte_s):
                response = await self._client.send(request, stream=True)
        except TimeoutError:
            raise UpstreamTimedOut("no response headers within the first-byte timeout") from None
        except httpx.TimeoutException:
            raise UpstreamTimedOut("no response headers within the first-byte timeout") from None
        except httpx.TransportError as exc:
            raise UpstreamConnectFailed(f"cannot reach upstream: {type(exc).__name__}") from None
        return _HttpxResponse(response, timeouts)

    async def aclose(self) -> None:
        await self._client.aclose()
