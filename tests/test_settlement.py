"""Issue 14 item 1 and 2: settlement is structural, and numbers are bounded at the edges.

Every billable handler (chat, stream, embeddings, messages, images, videos) is made to
raise after admission, at each step that can (opening the route, pricing inside the
settlement, the wallet refusing the settlement, storing a video job), and after each
the hold and the concurrency slot must be back, with the balance still the ledger sum.
Then the upstream misbehaves: negative or absurd usage, more than the worst case,
malformed JSON.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import FakeUpstream, SeenRequest, chat_answer, json_reply, make_config, sse_event
from support_accounts import Relay, auth, run_relay

import relay.api.flow
import relay.api.images
from relay.config import Config
from relay.jobs.video_store import EmbeddedVideoStore

FAKE_URL = "http://fake-upstream.invalid/v1"
EXTRA = """
[[models]]
name = "mock-image"
kind = "image"
routes = ["mock:mock-image"]
image_prices = { "1024x1024" = "0.04" }

[[models]]
name = "mock-video"
kind = "video"
routes = ["mock:mock-video"]
usd_per_video_second = "0.10"

[[models]]
name = "pricey-gpt"
routes = ["fake:gpt-4o-mini"]
input_usd_per_mtok = "10"
output_usd_per_mtok = "30"
"""


def chat_stream(usage: dict[str, Any] | None = None) -> httpx.Response:
    async def body() -> AsyncIterator[bytes]:
        base = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "model": "gpt-4o-mini"}
        yield sse_event({**base, "choices": [{"index": 0, "delta": {"content": "Hello"}}]})
        usage_chunk = usage or {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
        yield sse_event({**base, "choices": [], "usage": usage_chunk})
        yield sse_event("[DONE]")

    return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body())


@dataclass
class Script:
    """What the fake upstream answers; tests change it between requests."""

    usage: dict[str, Any] | None = None
    raw: bytes | None = None

    def answer(self, seen: SeenRequest) -> httpx.Response:
        if self.raw is not None:
            return json_reply(200, self.raw)
        if seen.url.endswith("/embeddings"):
            usage = self.usage or {"prompt_tokens": 3, "total_tokens": 3}
            body = {"object": "list", "data": [{"embedding": [0.1, 0.2]}], "usage": usage}
            return json_reply(200, json.dumps(body).encode())
        if seen.body.get("stream"):
            return chat_stream(self.usage)
        answer = json.loads(chat_answer())
        if self.usage is not None:
            answer["usage"] = self.usage
        return json_reply(200, json.dumps(answer).encode())


@dataclass
class Setup:
    relay: Relay
    script: Script
    account_id: str
    key_id: str
    secret: str

    async def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return await self.relay.client.post(path, json=body, headers=auth(self.secret))

    async def assert_all_returned(self) -> None:
        """The invariant after any request, however it ended."""
        state = self.relay.state
        view = state.wallet.snapshot(self.account_id)
        assert view.held_micros == 0
        assert state.wallet.open_hold_count() == 0
        assert state.gate.limiter.in_flight(self.key_id) == 0
        assert view.balance_micros == await self.relay.ledger_sum(self.account_id)
        assert view.balance_micros >= 0


def settlement_config(tmp_path: Path, server_extra: str = "") -> Config:
    return make_config(tmp_path, upstream_url=FAKE_URL, extra=EXTRA, server_extra=server_extra)


@pytest.fixture
async def setup(tmp_path: Path, admin_token: str) -> AsyncIterator[Setup]:
    script = Script()
    upstream = FakeUpstream(script.answer)
    async with run_relay(settlement_config(tmp_path), client_factory=upstream.factory()) as relay:
        account, key = await relay.funded_key("acme", amount_usd="10", concurrency=1)
        yield Setup(relay, script, account["id"], key["id"], key["secret"])


MESSAGES = [{"role": "user", "content": "Hi"}]
REQUESTS: dict[str, tuple[str, dict[str, Any]]] = {
    "chat": ("/v1/chat/completions", {"model": "fake-gpt", "messages": MESSAGES}),
    "chat-stream": (
        "/v1/chat/completions",
        {"model": "fake-gpt", "messages": MESSAGES, "stream": True},
    ),
    "embeddings": ("/v1/embeddings", {"model": "fake-embedding", "input": "Hi"}),
    "messages": ("/v1/messages", {"model": "fake-gpt", "max_tokens": 50, "messages": MESSAGES}),
    "messages-stream": (
        "/v1/messages",
        {"model": "fake-gpt", "max_tokens": 50, "messages": MESSAGES, "stream": True},
    ),
    "images": ("/v1/images/generations", {"model": "mock-image", "prompt": "a cat"}),
    "videos": ("/v1/videos", {"model": "mock-video", "prompt": "a cat", "seconds": "4"}),
}
TOKEN_PRICED = ("chat", "chat-stream", "embeddings", "messages", "messages-stream")


class Boom(RuntimeError):
    pass


def boom(*args: Any, **kwargs: Any) -> Any:
    raise Boom("injected fault")


async def send_expecting_failure(setup: Setup, kind: str) -> None:
    """Send one request whose handler raises after admission: no 2xx without its end."""
    path, body = REQUESTS[kind]
    try:
        response = await setup.post(path, body)
    except httpx.HTTPError:
        return  # a stream cut after its head: the client sees the connection end
    if kind.endswith("stream") and response.status_code == 200:
        # The head went out before the fault: the stream must not end as a success.
        assert b"[DONE]" not in response.content and b"message_stop" not in response.content
        return
    assert response.status_code == 500, response.text


async def assert_a_request_succeeds(setup: Setup, kind: str) -> None:
    """With concurrency 1, a success after a fault proves the slot came back."""
    path, body = REQUESTS[kind]
    response = await setup.post(path, body)
    assert response.status_code == 200, response.text
    if kind == "videos":  # the job keeps its hold until it finishes; drop it for the check
        poller = setup.relay.state.videos
        assert poller is not None
        job = await poller.find(response.json()["id"])
        assert job is not None
        assert isinstance(poller.store, EmbeddedVideoStore)
        poller.store.release_hold(job)


@pytest.mark.parametrize("kind", list(REQUESTS))
async def test_a_route_that_raises_after_admission_returns_hold_and_slot(
    setup: Setup, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(setup.relay.state.router, "open_route", boom)
        await send_expecting_failure(setup, kind)
    await setup.assert_all_returned()
    await assert_a_request_succeeds(setup, kind)
    await setup.assert_all_returned()


@pytest.mark.parametrize("kind", [*TOKEN_PRICED, "images"])
async def test_pricing_that_raises_inside_the_settlement_returns_hold_and_slot(
    setup: Setup, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patch:
        if kind == "images":
            patch.setattr(relay.api.images, "image_cost_micros", boom)
        else:
            patch.setattr(relay.api.flow, "token_cost_micros", boom)
        await send_expecting_failure(setup, kind)
    await setup.assert_all_returned()
    assert await setup.relay.charges(setup.account_id) == []
    await assert_a_request_succeeds(setup, kind)
    await setup.assert_all_returned()


@pytest.mark.parametrize("kind", [*TOKEN_PRICED, "images"])
async def test_a_wallet_that_refuses_the_settlement_returns_hold_and_slot(
    setup: Setup, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The ticket must not count as finished before the wallet accepted: its release
    # then still frees the hold (Ticket.settle used to mark itself finished first).
    with monkeypatch.context() as patch:
        patch.setattr(setup.relay.state.wallet, "settle", boom)
        await send_expecting_failure(setup, kind)
    await setup.assert_all_returned()
    await assert_a_request_succeeds(setup, kind)


async def test_a_video_job_that_cannot_be_stored_returns_hold_and_slot(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    poller = setup.relay.state.videos
    assert poller is not None
    with monkeypatch.context() as patch:
        patch.setattr(poller.store, "add", boom)
        await send_expecting_failure(setup, "videos")
    await setup.assert_all_returned()
    assert poller.running == 0


# ----------------------------------------------------------------- bounded numbers


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": -1_000_000_000, "completion_tokens": 5},
        {"prompt_tokens": 1e20, "completion_tokens": 5},
        {"prompt_tokens": 10, "completion_tokens": 10**15},
        {"prompt_tokens": 10, "completion_tokens": "5"},
        {"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": -3}},
    ],
)
@pytest.mark.parametrize("kind", ["chat", "embeddings"])
async def test_out_of_range_upstream_usage_is_502_billed_at_most_the_worst_case(
    setup: Setup, kind: str, usage: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    setup.script.usage = usage
    path, body = REQUESTS[kind]
    response = await setup.post(path, body)
    assert response.status_code == 502, response.text
    assert response.json()["error"]["code"] == "upstream_error"
    request_id = response.headers["x-relay-request-id"]
    row = await setup.relay.usage(request_id)
    assert row["status"] == 502 and row["error_code"] == "upstream_usage_invalid"
    assert row["usage_estimated"] and row["prompt_tokens"] >= 0
    # Billed relay's own estimate, never above the request's worst case (a few cents).
    assert 0 <= int(response.headers["x-relay-cost-micros"]) == row["cost_micros"] < 10_000
    assert "reported usage out of bounds" in caplog.text
    await setup.assert_all_returned()


async def test_out_of_range_usage_in_a_stream_is_recorded_and_not_billed(setup: Setup) -> None:
    setup.script.usage = {"prompt_tokens": -5, "completion_tokens": 2}
    path, body = REQUESTS["chat-stream"]
    response = await setup.post(path, body)
    assert response.status_code == 200  # the head went out before the usage arrived
    rows = await setup.relay.rows(
        "SELECT * FROM usage WHERE account_id = ? ORDER BY ts_ms", (setup.account_id,)
    )
    assert rows[-1]["error_code"] == "upstream_usage_invalid" and rows[-1]["usage_estimated"]
    assert rows[-1]["prompt_tokens"] >= 0 and rows[-1]["cost_micros"] < 10_000
    await setup.assert_all_returned()


async def test_an_overrun_is_billed_at_the_worst_case_and_logged(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    # The case: 1,000,000 tokens reported for max_tokens 100 charged $10 to a $1
    # account. Now it is billed the request's worst case and the overrun is logged.
    setup.script.usage = {"prompt_tokens": 10, "completion_tokens": 1_000_000}
    body = {"model": "pricey-gpt", "messages": MESSAGES, "max_tokens": 100}
    response = await setup.post("/v1/chat/completions", body)
    assert response.status_code == 200
    charged = int(response.headers["x-relay-cost-micros"])
    # Worst case: the estimated prompt at 10 µ$/token plus 100 output tokens at 30 µ$.
    assert 100 * 30 < charged < 100 * 30 + 1_000
    [charge] = await setup.relay.charges(setup.account_id)
    assert -charge["amount_micros"] == charged and "overrun" in charge["note"]
    assert "overrun on request" in caplog.text
    await setup.assert_all_returned()


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b'{"id": 5}', b""])
@pytest.mark.parametrize("kind", ["chat", "embeddings", "messages"])
async def test_a_malformed_upstream_answer_is_502_and_charges_nothing(
    setup: Setup, kind: str, raw: bytes
) -> None:
    setup.script.raw = raw
    path, body = REQUESTS[kind]
    response = await setup.post(path, body)
    assert response.status_code == 502, response.text
    assert response.json()["error"]["type"] != "server_error"
    row = await setup.relay.usage(response.headers["x-relay-request-id"])
    assert row["status"] == 502 and row["cost_micros"] == 0
    assert await setup.relay.charges(setup.account_id) == []
    await setup.assert_all_returned()


@pytest.mark.parametrize(
    "field, value",
    [("max_tokens", 2**63), ("max_tokens", -1), ("n", 10**6), ("max_completion_tokens", 1e30)],
)
async def test_absurd_request_numbers_are_400(setup: Setup, field: str, value: Any) -> None:
    body = {"model": "fake-gpt", "messages": MESSAGES, field: value}
    response = await setup.post("/v1/chat/completions", body)
    assert response.status_code == 400, response.text
    await setup.assert_all_returned()


@pytest.mark.parametrize("seconds", ["0.0000001", "4.5", 6, "1e3", True, -4, "04x", 10**30])
async def test_video_seconds_must_be_whole_and_allowed(setup: Setup, seconds: Any) -> None:
    body = {"model": "mock-video", "prompt": "x", "seconds": seconds}
    response = await setup.post("/v1/videos", body)
    assert response.status_code == 400, response.text
    assert "seconds" in response.json()["error"]["message"]
    await setup.assert_all_returned()


async def test_fractional_video_seconds_cannot_overdraw_a_small_account(setup: Setup) -> None:
    # The case: five "0.0000001"-second jobs took a $0.01 account to -$1.99.
    account, key = await setup.relay.funded_key("tiny", amount_usd="0.01", spend_cap_usd="0.05")
    for _ in range(5):
        body = {"model": "mock-video", "prompt": "x", "seconds": "0.0000001"}
        response = await setup.relay.client.post(
            "/v1/videos", json=body, headers=auth(key["secret"])
        )
        assert response.status_code == 400
    assert setup.relay.state.wallet.snapshot(account["id"]).balance_micros == 10_000


async def test_deeply_nested_json_is_400_on_data_plane_and_admin(setup: Setup) -> None:
    nested = b"[" * 100_000 + b"]" * 100_000
    deep = b'{"model": "fake-gpt", "messages": [{"role": "user", "content": ' + nested + b"}]}"
    headers = {**auth(setup.secret), "content-type": "application/json"}
    response = await setup.relay.client.post("/v1/chat/completions", content=deep, headers=headers)
    assert response.status_code == 400 and "nested too deeply" in response.text
    admin = await setup.relay.client.post("/admin/accounts", content=b"[" * 5_000 + b"]" * 5_000)
    assert admin.status_code == 400
    await setup.assert_all_returned()
