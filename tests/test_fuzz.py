"""Issue 14 item 7: hostile and absurd input against a real relay, checked after each example.

Three hypothesis suites drive one served relay each (the real app under hypercorn on
127.0.0.1, upstreams faked with ``httpx.MockTransport``, Stripe webhooks signed with the
test secret): request bodies a hostile client could send, usage values a broken upstream
could report, and webhook payloads. After every example:

- no answer is a 500 (nor any status outside the documented set);
- every account's in-memory balance equals the sum of its ledger rows;
- nothing is held and no concurrency slot is taken once the requests are answered;
- no account is below ``-credit_limit``.

The examples are derandomized (``derandomize=True``: the same examples on every run,
so a failure reproduces as is) and bounded (``MAX_EXAMPLES`` each, ``deadline=None``).
The relay runs on its own event loop in a thread, so hypothesis drives it from plain
synchronous tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from conftest import FakeUpstream, SeenRequest, chat_answer, config_text, json_reply, sse_event
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support_accounts import Relay, auth, run_relay
from support_payments import PAYMENTS_SECTION, SECRET_KEY, WEBHOOK_SECRET, FakeStripe
from support_payments import signed_event as sign_event

from relay.config import parse_config

T = TypeVar("T")
MAX_EXAMPLES = 30
FAKE_URL = "http://fake-upstream.invalid/v1"
EXTRA = """
[[models]]
name = "mock-image"
kind = "image"
routes = ["mock:mock-image"]
image_prices = { "1024x1024" = "0.04" }
"""
# Every status relay documents for these routes; a 500 is never among them.
DOCUMENTED = {200, 400, 401, 402, 403, 404, 408, 413, 429, 502, 503, 504}
FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class LoopThread:
    """An event loop in a thread: hypothesis' synchronous examples run coroutines on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Awaitable[T], timeout_s: float = 60.0) -> T:
        async def wrapped() -> T:
            return await coro

        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop).result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@dataclass
class UpstreamScript:
    """What the fake upstream answers next: a usage object, or a raw body."""

    usage: Any = None
    raw: bytes | None = None

    def answer(self, seen: SeenRequest) -> httpx.Response:
        if self.raw is not None:
            if seen.body.get("stream"):
                return _raw_stream(self.raw)
            return json_reply(200, self.raw)
        usage = self.usage if self.usage is not None else {"prompt_tokens": 3}
        if seen.url.endswith("/embeddings"):
            body = {"object": "list", "data": [{"embedding": [0.5]}], "usage": usage}
            return json_reply(200, json.dumps(body).encode())
        if seen.body.get("stream"):
            return _stream(usage)
        answer = json.loads(chat_answer())
        answer["usage"] = usage
        return json_reply(200, json.dumps(answer).encode())


def _raw_stream(raw: bytes) -> httpx.Response:
    async def body() -> AsyncIterator[bytes]:
        yield raw

    return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body())


def _stream(usage: Any) -> httpx.Response:
    async def body() -> AsyncIterator[bytes]:
        base = {"id": "c", "object": "chat.completion.chunk", "model": "m"}
        yield sse_event({**base, "choices": [{"index": 0, "delta": {"content": "Hi"}}]})
        yield sse_event({**base, "choices": [], "usage": usage})
        yield sse_event("[DONE]")

    return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body())


@dataclass
class Harness:
    loop: LoopThread
    relay: Relay
    script: UpstreamScript
    accounts: dict[str, int] = field(default_factory=dict)  # id → credit limit (micros)
    keys: dict[str, str] = field(default_factory=dict)  # id → secret
    _references: Iterator[int] = field(default_factory=itertools.count)

    def run(self, coro: Awaitable[T]) -> T:
        return self.loop.run(coro)

    async def add_account(self, name: str, usd: str, **fields: Any) -> tuple[str, str]:
        account = await self.relay.create_account(name, **fields)
        await self.top_up(account["id"], usd)
        key = await self.relay.create_key(account["id"], concurrency=2)
        self.accounts[account["id"]] = int(account.get("credit_limit_micros", 0))
        self.keys[key["id"]] = key["secret"]
        return account["id"], key["secret"]

    async def top_up(self, account_id: str, usd: str) -> None:
        response = await self.relay.credit(account_id, usd, f"fuzz-{next(self._references)}")
        assert response.status_code == 201, response.text

    async def keep_funded(self) -> None:
        """Now and then money runs out; top up so later examples reach the upstream."""
        for account_id in self.accounts:
            if self.relay.state.wallet.snapshot(account_id).balance_micros < 20_000:
                await self.top_up(account_id, "0.05")

    async def check_invariants(self) -> None:
        state = self.relay.state
        assert state.wallet.open_hold_count() == 0
        for key_id in self.keys:
            assert state.gate.limiter.in_flight(key_id) == 0, key_id
        for account_id, credit_limit in self.accounts.items():
            view = state.wallet.snapshot(account_id)
            assert view.held_micros == 0
            assert view.balance_micros == await self.relay.ledger_sum(account_id)
            assert view.balance_micros >= -credit_limit


@contextlib.contextmanager
def served(tmp_path: Path) -> Iterator[Harness]:
    """One relay for a whole suite: accounts (prepaid and postpaid), keys, payments on."""
    loop = LoopThread()
    script = UpstreamScript()
    upstream = FakeUpstream(script.answer)
    text = config_text(tmp_path / "relay.db", upstream_url=FAKE_URL, extra=EXTRA)
    config = parse_config(text + PAYMENTS_SECTION, base_dir=str(tmp_path))
    stack = contextlib.AsyncExitStack()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RELAY_ADMIN_TOKEN", "test-admin-token")
        env.setenv("STRIPE_SECRET_KEY", SECRET_KEY)
        env.setenv("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET)
        relay = loop.run(
            stack.enter_async_context(
                run_relay(
                    config,
                    client_factory=upstream.factory(),
                    token="test-admin-token",
                    stripe_transport=FakeStripe().transport(),
                )
            )
        )
        harness = Harness(loop, relay, script)
        try:
            loop.run(harness.add_account("prepaid", "0.05"))
            loop.run(
                harness.add_account("postpaid", "0.01", mode="postpaid", credit_limit_usd="0.02")
            )
            yield harness
        finally:
            loop.run(stack.aclose())
            loop.close()


# ----------------------------------------------------------------- strategies

HUGE = st.integers(min_value=-(2**70), max_value=2**70)
NUMBERS = st.one_of(
    st.none(), HUGE, st.integers(0, 200), st.floats(allow_nan=False), st.text(max_size=5)
)
JUNK = st.recursive(
    st.one_of(st.none(), st.booleans(), HUGE, st.text(max_size=8)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "tool"]), "content": JUNK}
)
CHAT_BODY = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["fake-gpt", "mock-gpt", "nope", ""]) | JUNK,
        "messages": st.lists(MESSAGE, max_size=3) | JUNK,
    },
    optional={
        "max_tokens": NUMBERS,
        "max_completion_tokens": NUMBERS,
        "n": NUMBERS,
        "stream": st.booleans() | JUNK,
        "stream_options": st.fixed_dictionaries({"include_usage": JUNK}),
        "temperature": NUMBERS,
    },
)
EMBEDDING_BODY = st.fixed_dictionaries(
    {"model": st.sampled_from(["fake-embedding", "mock-embedding"]) | JUNK, "input": JUNK}
)
MESSAGES_BODY = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["fake-gpt", "mock-gpt"]) | JUNK,
        "max_tokens": NUMBERS,
        "messages": st.lists(MESSAGE, max_size=3) | JUNK,
    },
    optional={"stream": st.booleans() | JUNK, "system": JUNK},
)
IMAGES_BODY = st.fixed_dictionaries(
    {"model": st.just("mock-image") | JUNK, "prompt": JUNK},
    optional={"n": NUMBERS, "size": st.sampled_from(["1024x1024", "1x1"]) | JUNK},
)
REQUEST = st.one_of(
    st.tuples(st.just("/v1/chat/completions"), CHAT_BODY),
    st.tuples(st.just("/v1/embeddings"), EMBEDDING_BODY),
    st.tuples(st.just("/v1/messages"), MESSAGES_BODY),
    st.tuples(st.just("/v1/images/generations"), IMAGES_BODY),
)
RAW_BODY = st.one_of(
    st.binary(max_size=64),
    st.integers(1, 50_000).map(lambda depth: b"[" * depth + b"]" * depth),
    st.integers(1, 50_000).map(lambda depth: b'{"model":"fake-gpt","messages":' + b"[" * depth),
)
DRY_RUN = st.sampled_from(["", "?dryRun=true", "?dryRun=false"])

TOKENS = st.one_of(
    st.integers(0, 5_000),
    HUGE,
    st.floats(allow_nan=False, allow_infinity=False),
    st.none(),
    st.text(max_size=4),
    st.booleans(),
)
USAGE = st.one_of(
    st.fixed_dictionaries(
        {"prompt_tokens": TOKENS, "completion_tokens": TOKENS},
        optional={
            "total_tokens": TOKENS,
            "prompt_tokens_details": st.fixed_dictionaries(
                {"cached_tokens": TOKENS}, optional={"cache_write_tokens": TOKENS}
            ),
        },
    ),
    JUNK,
)
UPSTREAM_RAW = st.one_of(st.none(), st.binary(max_size=32), st.just(b"{}"), st.just(b"[]"))
USAGE_CASE = st.tuples(
    st.sampled_from(["chat", "chat-stream", "embeddings", "messages", "messages-stream"]),
    USAGE,
    UPSTREAM_RAW,
    st.sampled_from([0, 1]),  # which account's key
    st.integers(1, 4_096) | st.none(),  # max_tokens
)

WEBHOOK_TYPES = [
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "customer.created",
]
AMOUNT = st.one_of(st.integers(-(2**80), 2**80), st.integers(0, 10_000), NUMBERS)
WEBHOOK_CASE = st.tuples(
    st.sampled_from(WEBHOOK_TYPES),
    st.fixed_dictionaries(
        {"id": st.text(min_size=1, max_size=12) | JUNK},
        optional={
            "amount_total": AMOUNT,
            "amount": AMOUNT,
            "amount_received": AMOUNT,
            "currency": st.sampled_from(["usd", "eur", ""]) | JUNK,
            "payment_status": st.sampled_from(["paid", "unpaid"]) | JUNK,
            "metadata": st.dictionaries(st.text(max_size=20), st.text(max_size=20)) | JUNK,
            "customer": JUNK,
        },
    ),
    st.booleans(),  # correctly signed
    st.booleans(),  # aimed at a real account
)


# ----------------------------------------------------------------- suites


def _assert_documented(response: httpx.Response) -> None:
    assert response.status_code in DOCUMENTED, (response.status_code, response.text[:300])


def test_fuzz_request_bodies(tmp_path: Path) -> None:
    with served(tmp_path) as h:
        secrets = list(h.keys.values())

        async def send(path: str, body: Any, raw: bytes | None, query: str, which: int) -> None:
            await h.keep_funded()
            h.script.usage, h.script.raw = None, None
            headers = {**auth(secrets[which]), "content-type": "application/json"}
            content = raw if raw is not None else json.dumps(body).encode()
            response = await h.relay.client.post(path + query, content=content, headers=headers)
            _assert_documented(response)
            await h.check_invariants()

        @FUZZ_SETTINGS
        @given(
            request=REQUEST,
            raw=st.none() | RAW_BODY,
            query=DRY_RUN,
            which=st.sampled_from([0, 1]),
        )
        def example(request: tuple[str, Any], raw: bytes | None, query: str, which: int) -> None:
            path, body = request
            h.run(send(path, body, raw, query, which))

        example()


def test_fuzz_upstream_usage(tmp_path: Path) -> None:
    with served(tmp_path) as h:
        secrets = list(h.keys.values())
        paths = {
            "chat": ("/v1/chat/completions", {}),
            "chat-stream": ("/v1/chat/completions", {"stream": True}),
            "embeddings": ("/v1/embeddings", {}),
            "messages": ("/v1/messages", {}),
            "messages-stream": ("/v1/messages", {"stream": True}),
        }

        async def send(case: tuple[str, Any, bytes | None, int, int | None]) -> None:
            kind, usage, raw, which, max_tokens = case
            await h.keep_funded()
            h.script.usage, h.script.raw = usage, raw
            path, extra = paths[kind]
            if kind == "embeddings":
                body: dict[str, Any] = {"model": "fake-embedding", "input": "hello"}
            else:
                messages = [{"role": "user", "content": "hello"}]
                body = {"model": "fake-gpt", "messages": messages, **extra}
                body["max_tokens"] = max_tokens or 64
            response = await h.relay.client.post(path, json=body, headers=auth(secrets[which]))
            _assert_documented(response)
            await h.check_invariants()

        @FUZZ_SETTINGS
        @given(case=USAGE_CASE)
        def example(case: tuple[str, Any, bytes | None, int, int | None]) -> None:
            h.run(send(case))

        example()


def test_fuzz_webhook_payloads(tmp_path: Path) -> None:
    with served(tmp_path) as h:
        account_ids = list(h.accounts)
        events = itertools.count()

        async def send(case: tuple[str, dict[str, Any], bool, bool]) -> None:
            type_, fields, signed, real = case
            obj: dict[str, Any] = {"object": "checkout.session", **fields}
            if real:
                obj["client_reference_id"] = account_ids[0]
                obj["metadata"] = {"relay_account_id": account_ids[0]}
            event = {"id": f"evt_fuzz_{next(events)}", "type": type_, "data": {"object": obj}}
            payload, headers = sign_event(event, secret=WEBHOOK_SECRET if signed else "wrong")
            response = await h.relay.client.post(
                "/webhooks/stripe", content=payload, headers=headers
            )
            _assert_documented(response)
            if not signed:
                assert response.status_code == 400
            await h.check_invariants()

        @FUZZ_SETTINGS
        @given(case=WEBHOOK_CASE)
        def example(case: tuple[str, dict[str, Any], bool, bool]) -> None:
            h.run(send(case))

        example()
