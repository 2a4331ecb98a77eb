"""Tests for upstream.routing: attempt loop over keys, backoff, fallback and stream commitment."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
from conftest import (
    FakeUpstream,
    SeenRequest,
    chat_answer,
    error_reply,
    json_reply,
    sse_event,
    stream_reply,
)

from relay.config import parse_config
from relay.errors import (
    NotFound,
    NoUpstreamAvailable,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
)
from relay.upstream.client import UpstreamStreamBroken
from relay.upstream.providers import Provider, build_provider
from relay.upstream.routing import Model, OpenedRoute, Route, Router

CONFIG = """
[[providers]]
name = "primary"
kind = "openai"
base_url = "http://primary.test/v1"
api_keys = ["key-a", "key-b"]
first_byte_timeout_s = 0.05
idle_timeout_s = 0.05
{primary_extra}

[[providers]]
name = "backup"
kind = "openai"
base_url = "http://backup.test/v1"
api_keys = ["key-c"]

[[providers]]
name = "keyless"
kind = "openai"
base_url = "http://keyless.test/v1"
api_keys = ["env:RELAY_TEST_UNSET_KEY"]

[[models]]
name = "gpt"
routes = ["primary:up-1", "backup:up-2"]

[[models]]
name = "solo"
routes = ["primary:up-1"]

[[models]]
name = "unkeyed"
routes = ["keyless:up-3"]

[[models]]
name = "unkeyed-then-backup"
routes = ["keyless:up-3", "backup:up-2"]
"""


@dataclass
class Setup:
    router: Router
    fake: FakeUpstream
    providers: dict[str, Provider]
    sleeps: list[float] = field(default_factory=list)

    async def open(self, model: str, *, stream: bool = False) -> OpenedRoute:
        def body_for(route: Route) -> bytes:
            payload = {"model": route.upstream_model, "messages": [], "stream": stream}
            return json.dumps(payload).encode()

        return await self.router.open_route(
            self.router.model(model), "/chat/completions", body_for, stream=stream
        )

    def in_flight(self) -> list[int]:
        return [key.in_flight for p in self.providers.values() for key in p.pool.keys]

    async def aclose(self) -> None:
        for provider in self.providers.values():
            await provider.aclose()


@pytest.fixture
async def setup(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Setup]:
    """A router over fake upstreams; the test sets ``setup.fake.handler``."""
    monkeypatch.delenv("RELAY_TEST_UNSET_KEY", raising=False)
    primary_extra = getattr(request, "param", "")
    config = parse_config(CONFIG.format(primary_extra=primary_extra))
    fake = FakeUpstream(lambda seen: json_reply(200, chat_answer()))
    providers = {p.name: build_provider(p, lambda _: fake.client()) for p in config.providers}
    models = {m.name: Model(m, providers) for m in config.models}
    sleeps: list[float] = []

    async def record_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    router = Router(models, sleep=record_sleep, jitter=lambda: 0.5)
    result = Setup(router, fake, providers, sleeps)
    yield result
    await result.aclose()


def by_key(replies: dict[str, httpx.Response | None]) -> FakeUpstream.handler:  # type: ignore[valid-type]
    """Answer per upstream key; ``None`` means the normal 200 answer."""

    def handle(seen: SeenRequest) -> httpx.Response:
        reply = replies.get(seen.key)
        return reply if reply is not None else json_reply(200, chat_answer(seen.body["model"]))

    return handle


CHUNK = sse_event({"id": "c1", "choices": [{"index": 0, "delta": {"content": "hi"}}]})


async def test_unknown_model_is_404_model_not_found(setup: Setup) -> None:
    with pytest.raises(NotFound) as info:
        setup.router.model("nope")
    assert info.value.code == "model_not_found"


async def test_success_opens_the_first_route_with_the_least_busy_key(setup: Setup) -> None:
    opened = await setup.open("gpt")
    assert opened.route.label == "primary:up-1"
    assert opened.attempts == 1
    assert setup.fake.seen[0].url == "http://primary.test/v1/chat/completions"
    assert setup.fake.seen[0].body["model"] == "up-1"
    assert setup.in_flight() == [1, 0, 0]
    second = await setup.open("gpt")
    assert second.key.index == 2
    await opened.close()
    await opened.close()  # idempotent
    await second.close()
    assert setup.in_flight() == [0, 0, 0]


async def test_429_cools_the_key_and_retries_at_once_on_another(setup: Setup) -> None:
    setup.fake.handler = by_key({"key-a": error_reply(429, {"retry-after": "30"})})
    opened = await setup.open("gpt")
    assert setup.fake.keys == ["key-a", "key-b"]
    assert opened.key.index == 2 and opened.route.label == "primary:up-1"
    assert setup.sleeps == []
    await opened.close()
    assert setup.providers["primary"].pool.health()[0]["cooling_down_s"] == pytest.approx(30, 0.1)
    again = await setup.open("gpt")  # the cooling key is not tried again
    assert setup.fake.keys == ["key-a", "key-b", "key-b"]
    await again.close()
    assert setup.in_flight() == [0, 0, 0]


@pytest.mark.parametrize("status", [401, 403])
async def test_a_rejected_key_is_taken_out_of_rotation(setup: Setup, status: int) -> None:
    setup.fake.handler = by_key({"key-a": error_reply(status)})
    opened = await setup.open("gpt")
    assert setup.fake.keys == ["key-a", "key-b"]
    await opened.close()
    assert setup.providers["primary"].pool.keys[0].disabled_reason is not None
    for _ in range(3):
        await (await setup.open("gpt")).close()
    assert setup.fake.keys[2:] == ["key-b"] * 3
    assert setup.sleeps == []


async def test_when_every_key_is_rejected_the_provider_is_skipped(setup: Setup) -> None:
    setup.fake.handler = by_key({"key-a": error_reply(401), "key-b": error_reply(403)})
    with pytest.raises(NoUpstreamAvailable) as info:
        await setup.open("solo")
    assert "rejected" in info.value.message and info.value.retry_after_s is None
    assert not setup.router.model("solo").available
    opened = await setup.open("gpt")  # straight to the backup, no more upstream calls
    assert opened.route.label == "backup:up-2"
    assert setup.fake.keys == ["key-a", "key-b", "key-c"]
    await opened.close()


async def test_5xx_backs_off_retries_on_other_keys_then_falls_back(setup: Setup) -> None:
    def handle(seen: SeenRequest) -> httpx.Response:
        if seen.key == "key-c":
            return json_reply(200, chat_answer(seen.body["model"]))
        return error_reply(503)

    setup.fake.handler = handle
    opened = await setup.open("gpt")
    # max_attempts = 3 on primary (two keys, so one is tried twice), then the backup route.
    assert setup.fake.keys == ["key-a", "key-b", "key-a", "key-c"]
    assert [seen.body["model"] for seen in setup.fake.seen] == ["up-1"] * 3 + ["up-2"]
    assert setup.sleeps == pytest.approx([0.2, 0.4])  # base * 2**(n-1) * (0.5 + jitter)
    assert opened.route.label == "backup:up-2"
    await opened.close()
    assert setup.in_flight() == [0, 0, 0]


async def test_5xx_on_every_attempt_without_fallback_is_502(setup: Setup) -> None:
    setup.fake.handler = lambda seen: error_reply(500)
    with pytest.raises(UpstreamError) as info:
        await setup.open("solo")
    assert info.value.status == 502 and info.value.code == "upstream_error"
    assert len(setup.fake.seen) == 3
    assert setup.in_flight() == [0, 0, 0]


async def test_a_redirect_is_an_upstream_error_not_an_answer(setup: Setup) -> None:
    setup.fake.handler = lambda seen: httpx.Response(302, headers={"location": "http://x/"})
    with pytest.raises(UpstreamError) as info:
        await setup.open("solo")
    assert "302" in info.value.message
    assert setup.in_flight() == [0, 0, 0]


@pytest.mark.parametrize("setup", ["max_attempts = 1"], indirect=True)
async def test_max_attempts_bounds_the_tries_per_route(setup: Setup) -> None:
    setup.fake.handler = lambda seen: error_reply(502)
    with pytest.raises(UpstreamError):
        await setup.open("solo")
    assert len(setup.fake.seen) == 1
    assert setup.sleeps == []


@pytest.mark.parametrize("status", [400, 404, 422])
async def test_a_4xx_is_passed_back_as_is_without_retry(setup: Setup, status: int) -> None:
    body = b'{"error": {"message": "bad", "type": "invalid_request_error"}}'
    setup.fake.handler = lambda seen: json_reply(status, body)
    with pytest.raises(UpstreamRejected) as info:
        await setup.open("gpt")
    assert info.value.status == status
    assert info.value.upstream_body == body
    assert info.value.content_type == "application/json"
    assert len(setup.fake.seen) == 1
    assert setup.in_flight() == [0, 0, 0]


async def test_a_timeout_everywhere_is_504(setup: Setup) -> None:
    async def hang(seen: SeenRequest) -> httpx.Response:
        await asyncio.sleep(5)
        raise AssertionError("not reached")

    setup.fake.handler = hang
    with pytest.raises(UpstreamTimeout) as info:
        await setup.open("solo")
    assert info.value.status == 504 and info.value.code == "upstream_timeout"
    assert len(setup.fake.seen) == 3
    assert setup.in_flight() == [0, 0, 0]


async def test_a_connect_error_is_retried_then_502(setup: Setup) -> None:
    def refuse(seen: SeenRequest) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    setup.fake.handler = refuse
    with pytest.raises(UpstreamError) as info:
        await setup.open("solo")
    assert info.value.code == "upstream_error"
    assert len(setup.fake.seen) == 3
    assert len(setup.sleeps) == 2


async def test_all_keys_cooling_is_503_with_retry_after(setup: Setup) -> None:
    setup.fake.handler = by_key(
        {
            "key-a": error_reply(429, {"retry-after": "30"}),
            "key-b": error_reply(429, {"retry-after": "20"}),
        }
    )
    with pytest.raises(NoUpstreamAvailable) as info:
        await setup.open("solo")
    error = info.value
    assert error.status == 503 and error.code == "no_upstream_available"
    assert error.retry_after_s == pytest.approx(20, abs=0.5)
    assert error.headers()["retry-after"] in ("20", "21")
    assert setup.fake.keys == ["key-a", "key-b"]
    # While they cool, relay answers at once without calling the upstream.
    with pytest.raises(NoUpstreamAvailable):
        await setup.open("solo")
    assert len(setup.fake.seen) == 2


async def test_a_provider_without_keys_is_503_naming_the_env_var(setup: Setup) -> None:
    assert not setup.router.model("unkeyed").available
    with pytest.raises(NoUpstreamAvailable) as info:
        await setup.open("unkeyed")
    assert "RELAY_TEST_UNSET_KEY" in info.value.message
    assert setup.fake.seen == []


async def test_a_provider_without_keys_is_skipped_for_the_next_route(setup: Setup) -> None:
    opened = await setup.open("unkeyed-then-backup")
    assert opened.route.label == "backup:up-2"
    await opened.close()


async def test_a_stream_failing_before_its_first_chunk_falls_back(setup: Setup) -> None:
    def handle(seen: SeenRequest) -> httpx.Response:
        if seen.key == "key-c":
            return stream_reply([CHUNK, b"data: [DONE]\n\n"])
        return stream_reply([CHUNK], fail_after=0)

    setup.fake.handler = handle
    opened = await setup.open("gpt", stream=True)
    assert opened.route.label == "backup:up-2"
    assert opened.first_chunk == CHUNK
    rest = [chunk async for chunk in opened.rest_of_stream()]
    assert rest == [b"data: [DONE]\n\n"]
    assert setup.fake.keys == ["key-a", "key-b", "key-a", "key-c"]
    await opened.close()
    assert setup.in_flight() == [0, 0, 0]


async def test_a_stream_idle_before_its_first_chunk_falls_back(setup: Setup) -> None:
    async def silent() -> AsyncIterator[bytes]:
        await asyncio.sleep(5)
        yield CHUNK

    def handle(seen: SeenRequest) -> httpx.Response:
        if seen.key == "key-c":
            return stream_reply([CHUNK])
        return httpx.Response(200, content=silent())

    setup.fake.handler = handle
    opened = await setup.open("gpt", stream=True)
    assert opened.route.label == "backup:up-2"
    await opened.close()


async def test_a_stream_failing_after_its_first_byte_is_never_retried(setup: Setup) -> None:
    setup.fake.handler = lambda seen: stream_reply([CHUNK, CHUNK], fail_after=1)
    opened = await setup.open("gpt", stream=True)
    assert opened.first_chunk == CHUNK
    with pytest.raises(UpstreamStreamBroken):
        async for _ in opened.rest_of_stream():
            pass
    await opened.close()
    assert len(setup.fake.seen) == 1
    assert setup.in_flight() == [0, 0, 0]


async def test_cancelling_while_waiting_for_the_upstream_releases_the_key(setup: Setup) -> None:
    reached = asyncio.Event()

    async def hang(seen: SeenRequest) -> httpx.Response:
        reached.set()
        await asyncio.sleep(5)
        raise AssertionError("not reached")

    setup.fake.handler = hang
    for stream in (False, True):
        reached.clear()
        task = asyncio.create_task(setup.open("gpt", stream=stream))
        await reached.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert setup.in_flight() == [0, 0, 0]


async def test_cancelling_while_waiting_for_the_first_chunk_releases_the_key(
    setup: Setup,
) -> None:
    reached = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        reached.set()
        await asyncio.sleep(0.04)  # below the idle timeout: the test cancels first
        yield CHUNK

    setup.fake.handler = lambda seen: httpx.Response(200, content=slow_body())
    task = asyncio.create_task(setup.open("gpt", stream=True))
    await reached.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert setup.in_flight() == [0, 0, 0]
