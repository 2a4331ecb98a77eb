"""Issue 13 items 6-7 and issue 14 item 5: the edges of a request in time and size.

A client leaving while relay waits for the upstream (non-stream, and a stream before its
first chunk) cancels the upstream call, releases the hold and leaves a 499 row; an
upstream answer over ``max_upstream_body_mb`` is a 502 read no further; a stream that
trickles past ``stream_timeout_s`` is cut; a request body trickled past
``body_read_timeout_s`` is a 408; a Stripe webhook without a plausible signature header
is refused before its body is read; deep JSON on the webhook is a 400.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import FakeUpstream, SeenRequest, chat_answer, json_reply, make_config, sse_event
from support_accounts import Relay, auth, forge_key, run_relay, wait_until
from support_payments import checkout_completed, payments_config, run_payments_relay

from relay.http.sse import EventStreamResponse
from relay.payments.webhook import SignatureError, check_signature_header

FAKE_URL = "http://fake-upstream.invalid/v1"
MESSAGES = [{"role": "user", "content": "Hi"}]
CHAT = {"model": "fake-gpt", "messages": MESSAGES}


class SlowUpstream:
    """Answers after ``delay_s``; records whether relay cancelled the call meanwhile."""

    def __init__(self) -> None:
        self.delay_s = 0.0
        self.cancelled = 0
        self.answer: Any = None

    async def handle(self, seen: SeenRequest) -> httpx.Response:
        try:
            await asyncio.sleep(self.delay_s)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.answer is not None:
            return self.answer()  # type: ignore[no-any-return]
        if seen.body.get("stream"):
            return stream_of(3, every_s=0.0)
        return json_reply(200, chat_answer())


def stream_of(chunks: int, every_s: float) -> httpx.Response:
    async def body() -> AsyncIterator[bytes]:
        base = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "model": "m"}
        for _ in range(chunks):
            yield sse_event({**base, "choices": [{"index": 0, "delta": {"content": "word "}}]})
            await asyncio.sleep(every_s)
        yield sse_event("[DONE]")

    return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body())


async def serve(
    tmp_path: Path, upstream: SlowUpstream, *, server_extra: str = "", provider_extra: str = ""
) -> Any:
    config = make_config(
        tmp_path,
        upstream_url=FAKE_URL,
        server_extra=server_extra,
        provider_extra=provider_extra,
    )
    return run_relay(config, client_factory=FakeUpstream(upstream.handle).factory())


async def held_and_slots(relay: Relay, account_id: str, key_id: str) -> tuple[int, int]:
    state = relay.state
    return state.wallet.snapshot(account_id).held_micros, state.gate.limiter.in_flight(key_id)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_client_leaving_while_relay_waits_is_499_and_releases_everything(
    tmp_path: Path, admin_token: str, stream: bool
) -> None:
    upstream = SlowUpstream()
    async with await serve(tmp_path, upstream) as relay:
        account, key = await relay.funded_key("acme", concurrency=1)
        upstream.delay_s = 5.0
        body = {**CHAT, "stream": stream}
        started = time.monotonic()
        async with httpx.AsyncClient(base_url=relay.base_url, timeout=0.3) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.post("/v1/chat/completions", json=body, headers=auth(key["secret"]))
        # Relay noticed at once (not when the upstream answered 5 s later) and cancelled it.
        await wait_until(lambda: upstream.cancelled == 1, timeout_s=3.0)
        assert time.monotonic() - started < 3.0
        assert await held_and_slots(relay, account["id"], key["id"]) == (0, 0)
        rows = await relay.rows("SELECT * FROM usage WHERE key_id = ?", (key["id"],))
        assert [(r["status"], r["error_code"], r["cost_micros"]) for r in rows] == [
            (499, "client_disconnected", 0)
        ]
        assert await relay.charges(account["id"]) == []
        # The slot came back: with concurrency 1 the next request goes through.
        upstream.delay_s = 0.0
        ok = await relay.client.post("/v1/chat/completions", json=CHAT, headers=auth(key["secret"]))
        assert ok.status_code == 200


@pytest.mark.parametrize("declared", [True, False])
async def test_an_upstream_answer_over_the_size_limit_is_502_and_not_billed(
    tmp_path: Path, admin_token: str, declared: bool
) -> None:
    upstream = SlowUpstream()
    big = json.dumps({"id": "x", "pad": "x" * (2 * 1024 * 1024)}).encode()

    def answer() -> httpx.Response:
        if declared:
            return json_reply(200, big)  # with a content-length

        async def body() -> AsyncIterator[bytes]:
            for start in range(0, len(big), 64 * 1024):
                yield big[start : start + 64 * 1024]

        return httpx.Response(200, headers={"content-type": "application/json"}, content=body())

    upstream.answer = answer
    async with await serve(tmp_path, upstream, server_extra="max_upstream_body_mb = 1") as relay:
        account, key = await relay.funded_key("acme")
        response = await relay.client.post(
            "/v1/chat/completions", json=CHAT, headers=auth(key["secret"])
        )
        assert response.status_code == 502, response.text
        assert "larger than relay accepts" in response.json()["error"]["message"]
        row = await relay.usage(response.headers["x-relay-request-id"])
        assert (row["status"], row["cost_micros"]) == (502, 0)
        assert await held_and_slots(relay, account["id"], key["id"]) == (0, 0)


async def test_a_stream_is_cut_at_its_overall_deadline(tmp_path: Path, admin_token: str) -> None:
    upstream = SlowUpstream()
    upstream.answer = lambda: stream_of(100, every_s=0.05)  # 5 s, never idle
    async with await serve(tmp_path, upstream, provider_extra="stream_timeout_s = 0.5") as relay:
        account, key = await relay.funded_key("acme")
        started = time.monotonic()
        response = await relay.client.post(
            "/v1/chat/completions", json={**CHAT, "stream": True}, headers=auth(key["secret"])
        )
        assert time.monotonic() - started < 3.0
        assert response.status_code == 200
        assert b"upstream_timeout" in response.content and response.content.endswith(
            b"data: [DONE]\n\n"
        )
        rows = await relay.rows("SELECT * FROM usage WHERE key_id = ?", (key["id"],))
        assert [(r["status"], r["error_code"]) for r in rows] == [(504, "upstream_timeout")]
        assert await held_and_slots(relay, account["id"], key["id"]) == (0, 0)


async def _raw_request(port: int, head: bytes, body_part: bytes, wait_s: float) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + body_part)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), wait_s)
    finally:
        writer.close()


async def test_a_trickled_request_body_is_cut_with_408(tmp_path: Path, admin_token: str) -> None:
    upstream = SlowUpstream()
    async with await serve(tmp_path, upstream, server_extra="body_read_timeout_s = 0.5") as relay:
        _, key = await relay.funded_key("acme")
        port = int(relay.base_url.rpartition(":")[2])
        head = (
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            + f"authorization: Bearer {key['secret']}\r\ncontent-length: 5000\r\n\r\n".encode()
        )
        started = time.monotonic()
        answer = await _raw_request(port, head, b'{"model": ', wait_s=5.0)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"request_timeout" in answer
        assert time.monotonic() - started < 3.0


def test_the_signature_header_is_judged_before_any_body() -> None:
    now = 1_700_000_000
    check_signature_header(f"t={now},v1=abc", now_s=now)
    for header in ("", "garbage", "t=abc,v1=x", f"t={now}", f"v1=x,t={now - 1000}"):
        with pytest.raises(SignatureError):
            check_signature_header(header, now_s=now)


async def test_a_webhook_without_a_signature_is_refused_before_its_body_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with run_payments_relay(payments_config(tmp_path), monkeypatch) as p:
        port = int(p.relay.base_url.rpartition(":")[2])
        head = (
            b"POST /webhooks/stripe HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 1000000\r\n\r\n"
        )
        started = time.monotonic()
        # Only a few bytes of a 1 MB body are ever sent: the refusal must not wait for it.
        answer = await _raw_request(port, head, b'{"id": ', wait_s=5.0)
        assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
        assert b"Stripe-Signature" in answer
        assert time.monotonic() - started < 1.0
        # An absurd amount in a correctly signed event is a 400, not a 500 or a credit.
        account = await p.relay.create_account("acme")
        event = checkout_completed("evt_big", "cs_big", account["id"], amount_minor=10**30)
        response = await p.deliver(event)
        assert response.status_code == 400, response.text
        assert p.relay.state.wallet.snapshot(account["id"]).balance_micros == 0


async def test_wrong_secrets_for_a_key_id_are_rate_limited_before_argon2(
    tmp_path: Path, admin_token: str
) -> None:
    upstream = SlowUpstream()
    async with await serve(
        tmp_path, upstream, server_extra="max_key_failures_per_minute = 3"
    ) as relay:
        _, key = await relay.funded_key("acme")
        calls = relay.hasher.verify_calls
        statuses = []
        for attempt in range(6):
            wrong = forge_key(key["id"], f"{attempt}" * 43)
            statuses.append((await relay.client.get("/v1/key", headers=auth(wrong))).status_code)
        assert statuses == [401, 401, 401, 429, 429, 429]
        assert relay.hasher.verify_calls == calls + 3  # argon2 ran only for the first three
        # Once verified, a key is checked by digest: wrong secrets cost no argon2 at all.
        other = await relay.create_key(key["account_id"], "other")
        assert (await relay.client.get("/v1/key", headers=auth(other["secret"]))).status_code == 200
        calls = relay.hasher.verify_calls
        wrong = forge_key(other["id"], "z" * 43)
        for _ in range(5):
            assert (await relay.client.get("/v1/key", headers=auth(wrong))).status_code == 401
        assert relay.hasher.verify_calls == calls


async def test_a_stream_response_calls_on_close_however_it_ends() -> None:
    # The stream's settlement lives in its body's ``finally``; ``on_close`` is the owner's
    # last resort (a body that never ran), so it must run on every way out: a normal end,
    # a client gone (the send fails) and a cancelled response.
    async def body() -> AsyncIterator[bytes]:
        yield b"data: x\n\n"
        yield b"data: y\n\n"

    async def forever() -> dict[str, Any]:
        await asyncio.sleep(10)
        return {"type": "http.disconnect"}

    async def sends(message: Any) -> None:
        return None

    async def fails(message: Any) -> None:
        raise ConnectionResetError("client gone")

    closed: list[bool] = []

    async def on_close() -> None:
        closed.append(True)

    await EventStreamResponse(body(), {}, on_close=on_close)({"type": "http"}, forever, sends)
    assert closed == [True]
    with pytest.raises(ConnectionResetError):
        await EventStreamResponse(body(), {}, on_close=on_close)({"type": "http"}, forever, fails)
    assert closed == [True, True]
    closed.clear()

    async def waits() -> AsyncIterator[bytes]:  # an upstream gone quiet after one event
        yield b"data: x\n\n"
        await asyncio.sleep(10)
        yield b"data: y\n\n"

    response = EventStreamResponse(waits(), {}, on_close=on_close)
    task = asyncio.create_task(response({"type": "http"}, forever, sends))
    await asyncio.sleep(0)  # the body runs inline in the task, up to its wait
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert closed == [True]
