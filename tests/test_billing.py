"""System tests of the wallet, pricing and billing through the real HTTP app: top-ups,
one settlement per billed request whatever its ending, 402 refusals, the overdraw
invariant under a burst, dry runs, the cost metadata, and a restart.

Prices are chosen so the arithmetic is checkable by hand: ``pricey-gpt`` costs $10 per
million input tokens (10 micros a token) and $30 per million output tokens (30 micros).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import (
    FakeUpstream,
    SeenRequest,
    chat_answer,
    error_reply,
    json_reply,
    make_config,
    sse_event,
    sse_events,
)
from support_accounts import (
    Relay,
    TimedResponse,
    auth,
    burst,
    chat_body,
    run_relay,
    wait_until,
)

from relay.config import Config

EXTRA = """
[[models]]
name = "pricey-gpt"
routes = ["fake:gpt-4o-mini"]
input_usd_per_mtok = "10"
output_usd_per_mtok = "30"

[[providers]]
name = "burstmock"
kind = "mock"
mock_latency_ms = 20

[[models]]
name = "burst-gpt"
routes = ["burstmock:burst-gpt"]
input_usd_per_mtok = "1"
output_usd_per_mtok = "100"
max_output_tokens = 64
"""
FAKE_URL = "http://fake-upstream.invalid/v1"
NON_STREAM_COST = 10 * 10 + 5 * 30  # chat_answer's usage: 10 prompt, 5 completion tokens
STREAM_USAGE = (12, 7)
STREAM_COST = 12 * 10 + 7 * 30


def stream_chunk(content: str | None, **extra: Any) -> bytes:
    choices = [] if content is None else [{"index": 0, "delta": {"content": content}}]
    payload = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "model": "gpt-4o-mini"}
    return sse_event({**payload, "choices": choices, **extra})


async def full_stream() -> AsyncIterator[bytes]:
    prompt, completion = STREAM_USAGE
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": 19}
    for piece in ("Hel", "lo"):
        yield stream_chunk(piece)
    yield stream_chunk(None, usage=usage)
    yield sse_event("[DONE]")


async def slow_stream() -> AsyncIterator[bytes]:
    yield stream_chunk("first words of a long answer")
    for _ in range(100):  # cancelled by relay when the client leaves
        await asyncio.sleep(0.05)
        yield stream_chunk(" more")


def answer_by_prompt(seen: SeenRequest) -> httpx.Response:
    """The fake upstream's script, chosen by the (test-only) prompt text."""
    prompt = seen.body["messages"][0]["content"]
    if prompt == "fail":
        return error_reply(500)
    if seen.body.get("stream"):
        content = slow_stream() if prompt == "slow" else full_stream()
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=content)
    return json_reply(200, chat_answer())


def billing_config(tmp_path: Path) -> Config:
    return make_config(
        tmp_path, upstream_url=FAKE_URL, provider_extra="max_attempts = 2", extra=EXTRA
    )


@pytest.fixture
def fake() -> FakeUpstream:
    return FakeUpstream(answer_by_prompt)


@pytest.fixture
async def relay(tmp_path: Path, admin_token: str, fake: FakeUpstream) -> AsyncIterator[Relay]:
    async with run_relay(billing_config(tmp_path), client_factory=fake.factory()) as running:
        yield running


def pricey(prompt: str = "Hi", **extra: Any) -> dict[str, Any]:
    return {"model": "pricey-gpt", "messages": [{"role": "user", "content": prompt}], **extra}


async def charges_for(relay: Relay, request_id: str) -> list[dict[str, Any]]:
    return await relay.rows(
        "SELECT * FROM ledger WHERE kind = 'charge' AND request_id = ?", (request_id,)
    )


def last_data_event(body: bytes) -> dict[str, Any]:
    events = sse_events(body)
    assert events[-1] == "[DONE]", events
    event: dict[str, Any] = json.loads(events[-2])
    return event


# -------------------------------------------------------------------------------- top-ups


async def test_a_credit_is_idempotent_on_its_reference(relay: Relay) -> None:
    account = await relay.create_account("acme")
    first = await relay.credit(account["id"], "10", "INV-1")
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["credited"] is True
    assert body["entry"]["amount_micros"] == 10_000_000
    assert body["wallet"]["balance_micros"] == 10_000_000
    # Committed before the answer: readable without waiting for the writer.
    rows = await relay.state.db.fetchall(
        "SELECT kind, amount_micros, reference FROM ledger WHERE account_id = ?", (account["id"],)
    )
    assert [tuple(r) for r in rows] == [("credit", 10_000_000, "INV-1")]

    again = await relay.credit(account["id"], "10", "INV-1")
    assert again.status_code == 200, again.text
    assert again.json()["credited"] is False
    assert again.json()["wallet"]["balance_micros"] == 10_000_000
    other = await relay.credit(account["id"], "2.5", "INV-2")
    assert other.status_code == 201
    for amount in ("0", "-1", "abc", "0.0000001"):
        assert (await relay.credit(account["id"], amount, f"bad-{amount}")).status_code == 400
    wallet = (await relay.client.get(f"/admin/accounts/{account['id']}/wallet")).json()
    assert wallet["balance_micros"] == 12_500_000 == await relay.ledger_sum(account["id"])
    assert wallet["balance_usd"] == "12.5"
    ledger = (await relay.client.get(f"/admin/accounts/{account['id']}/ledger")).json()["data"]
    assert [row["reference"] for row in ledger] == ["INV-2", "INV-1"]


# ----------------------------------------------------------------- one settlement per ending


async def test_a_non_stream_answer_is_charged_once_and_reports_its_cost(
    relay: Relay, fake: FakeUpstream
) -> None:
    account, key = await relay.funded_key("acme", amount_usd="1")
    response = await relay.client.post(
        "/v1/chat/completions", json=pricey(), headers=auth(key["secret"])
    )
    assert response.status_code == 200, response.text
    request_id = response.headers["x-relay-request-id"]
    metadata = response.json()["metadata"]
    assert metadata["request_id"] == request_id
    assert metadata["cost_micros"] == NON_STREAM_COST
    assert int(response.headers["x-relay-cost-micros"]) == NON_STREAM_COST
    assert metadata["cost_usd"] == "0.00025"
    assert metadata["provider"] == "fake" and metadata["executed_model"] == "gpt-4o-mini"
    charges = await charges_for(relay, request_id)
    assert [row["amount_micros"] for row in charges] == [-NON_STREAM_COST]
    assert charges[0]["key_id"] == key["id"] and charges[0]["reference"] == request_id
    assert (await relay.usage(request_id))["cost_micros"] == NON_STREAM_COST
    assert relay.state.wallet.open_hold_count() == 0
    assert await relay.ledger_sum(account["id"]) == 1_000_000 - NON_STREAM_COST


async def test_account_and_key_price_multipliers_apply_to_the_charge(relay: Relay) -> None:
    account, key = await relay.funded_key("discounted", amount_usd="1", price_multiplier="0.5")
    updated = await relay.client.patch(
        f"/admin/accounts/{account['id']}", json={"price_multiplier": "0.8"}
    )
    assert updated.status_code == 200, updated.text
    response = await relay.client.post(
        "/v1/chat/completions", json=pricey(), headers=auth(key["secret"])
    )
    assert response.status_code == 200, response.text
    # 0.5 x 0.8 of the list cost, rounded up once to a whole micro-USD.
    expected = -(-NON_STREAM_COST * 4 // 10)
    assert response.json()["metadata"]["cost_micros"] == expected
    charges = await charges_for(relay, response.headers["x-relay-request-id"])
    assert [row["amount_micros"] for row in charges] == [-expected]
    bad = await relay.client.post(
        f"/admin/accounts/{account['id']}/keys", json={"name": "x", "price_multiplier": "-1"}
    )
    assert bad.status_code == 400


async def test_a_stream_is_charged_once_and_its_last_event_carries_the_cost(
    relay: Relay,
) -> None:
    account, key = await relay.funded_key("acme", amount_usd="1")
    response = await relay.client.post(
        "/v1/chat/completions", json=pricey(stream=True), headers=auth(key["secret"])
    )
    assert response.status_code == 200, response.text
    request_id = response.headers["x-relay-request-id"]
    last = last_data_event(response.content)
    assert last["metadata"]["request_id"] == request_id
    assert last["metadata"]["cost_micros"] == STREAM_COST
    assert last["usage"]["completion_tokens"] == STREAM_USAGE[1]
    assert relay.state.wallet.open_hold_count() == 0  # settled before the last event
    charges = await charges_for(relay, request_id)
    assert [row["amount_micros"] for row in charges] == [-STREAM_COST]
    assert charges[0]["note"] is None  # measured, not estimated
    usage = await relay.usage(request_id)
    assert (usage["stream"], usage["usage_estimated"], usage["status"]) == (1, 0, 200)
    assert await relay.ledger_sum(account["id"]) == 1_000_000 - STREAM_COST


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
async def test_an_upstream_failure_is_502_and_charges_nothing(
    relay: Relay, fake: FakeUpstream, stream: bool
) -> None:
    account, key = await relay.funded_key("acme", amount_usd="1")
    response = await relay.client.post(
        "/v1/chat/completions", json=pricey("fail", stream=stream), headers=auth(key["secret"])
    )
    assert response.status_code == 502, response.text
    assert response.json()["error"]["code"] == "upstream_error"
    assert len(fake.seen) == 2  # max_attempts = 2, both answered 500
    request_id = response.headers["x-relay-request-id"]
    assert await charges_for(relay, request_id) == []
    usage = await relay.usage(request_id)
    assert (usage["status"], usage["cost_micros"]) == (502, 0)
    assert relay.state.wallet.open_hold_count() == 0
    assert relay.state.wallet.snapshot(account["id"]).held_micros == 0
    assert await relay.ledger_sum(account["id"]) == 1_000_000


async def test_a_client_leaving_mid_stream_is_billed_once_as_estimated(relay: Relay) -> None:
    account, key = await relay.funded_key("acme", amount_usd="1")
    async with httpx.AsyncClient(base_url=relay.base_url, timeout=10.0) as client:
        async with client.stream(
            "POST",
            "/v1/chat/completions",
            json=pricey("slow", stream=True),
            headers=auth(key["secret"]),
        ) as response:
            assert response.status_code == 200
            request_id = response.headers["x-relay-request-id"]
            async for chunk in response.aiter_raw():
                assert b"first words" in chunk
                break  # leave with the upstream still streaming
    await wait_until(lambda: relay.state.wallet.open_hold_count() == 0)
    charges = await charges_for(relay, request_id)
    assert len(charges) == 1, charges
    assert charges[0]["amount_micros"] < 0
    assert "estimated" in (charges[0]["note"] or "")
    usage = await relay.usage(request_id)
    assert usage["usage_estimated"] == 1
    assert usage["status"] == 499 and usage["error_code"] == "client_disconnected"
    assert usage["cost_micros"] == -charges[0]["amount_micros"]
    balance = relay.state.wallet.snapshot(account["id"])
    assert balance.held_micros == 0
    assert balance.balance_micros == await relay.ledger_sum(account["id"])


async def test_the_balance_is_the_sum_of_the_ledger_after_a_mix_of_requests(
    relay: Relay,
) -> None:
    account, key = await relay.funded_key("acme", amount_usd="1")
    headers = auth(key["secret"])
    bodies = [
        pricey(),
        pricey(stream=True),
        pricey("fail"),
        chat_body("fake-gpt"),
        chat_body("mock-gpt", stream=True),
        {"model": "mock-embedding", "input": "hello"},
        pricey("Hi", max_tokens=0),  # 400: nothing billed
    ]
    request_ids = []
    for body in bodies:
        path = "/v1/embeddings" if body["model"] == "mock-embedding" else "/v1/chat/completions"
        response = await relay.client.post(path, json=body, headers=headers)
        assert response.status_code in (200, 400, 502), response.text
        if response.status_code == 200:
            request_ids.append(response.headers["x-relay-request-id"])
    await wait_until(lambda: relay.state.wallet.open_hold_count() == 0)
    charges = await relay.charges(account["id"])
    assert sorted(row["request_id"] for row in charges) == sorted(request_ids)
    ledger_sum = await relay.ledger_sum(account["id"])
    balance = (await relay.client.get("/v1/balance", headers=headers)).json()
    assert balance["balance_micros"] == ledger_sum
    assert balance["held_micros"] == 0 and balance["available_micros"] == ledger_sum
    spent = (await relay.client.get("/v1/key", headers=headers)).json()["spent_micros"]
    assert spent == 1_000_000 - ledger_sum


# ---------------------------------------------------------------------------- 402 refusals


async def test_a_request_the_balance_cannot_cover_is_402(relay: Relay, fake: FakeUpstream) -> None:
    account, key = await relay.funded_key("acme", amount_usd="0.001")
    # No max_tokens: 4096 output tokens at 30 micros each exceed the $0.001 balance.
    refused = await relay.client.post(
        "/v1/chat/completions", json=pricey(), headers=auth(key["secret"])
    )
    assert refused.status_code == 402, refused.text
    error = refused.json()["error"]
    assert error["code"] == "insufficient_quota" and error["type"] == "insufficient_quota"
    assert "balance" in error["message"]
    assert fake.seen == []
    # The refusal is in the account's logs, with no charge.
    logged = await relay.usage(refused.headers["x-relay-request-id"])
    assert (logged["status"], logged["error_code"]) == (402, "insufficient_quota")
    assert logged["account_id"] == account["id"] and logged["cost_micros"] == 0
    statuses = []
    for _ in range(10):  # small requests fit until the balance runs out
        response = await relay.client.post(
            "/v1/chat/completions", json=pricey(max_tokens=5), headers=auth(key["secret"])
        )
        statuses.append(response.status_code)
        if response.status_code != 200:
            assert "balance" in response.json()["error"]["message"]
    assert 200 in statuses and set(statuses) == {200, 402}, statuses
    assert statuses.index(402) == statuses.count(200)  # once refused, always refused
    snapshot = relay.state.wallet.snapshot(account["id"])
    assert snapshot.balance_micros >= 0 and snapshot.held_micros == 0
    assert snapshot.balance_micros == await relay.ledger_sum(account["id"])


async def test_an_exhausted_key_spend_cap_is_402_naming_the_cap(relay: Relay) -> None:
    account, key = await relay.funded_key("acme", amount_usd="10", spend_cap_usd="0.001")
    headers = auth(key["secret"])
    statuses = []
    for _ in range(10):
        response = await relay.client.post(
            "/v1/chat/completions", json=pricey(max_tokens=5), headers=headers
        )
        statuses.append(response.status_code)
        if response.status_code != 200:
            error = response.json()["error"]
            assert error["code"] == "insufficient_quota"
            assert "key spend cap" in error["message"]
    assert 200 in statuses and set(statuses) == {200, 402}, statuses
    view = (await relay.client.get("/v1/key", headers=headers)).json()
    assert 0 < view["spent_micros"] <= 1_000
    assert view["remaining_micros"] == 1_000 - view["spent_micros"]
    # The account itself still has money: only the key is capped.
    assert view["balance"]["balance_micros"] == 10_000_000 - view["spent_micros"]


@pytest.mark.slow
async def test_a_burst_never_overdraws_and_refuses_only_with_402(relay: Relay) -> None:
    """Bursts of 200 concurrent streams until the $0.05 is spent: never below zero."""
    account, key = await relay.funded_key("acme", amount_usd="0.05", concurrency=1000)
    headers = auth(key["secret"])
    body = chat_body("burst-gpt", stream=True, max_tokens=40)
    results: list[TimedResponse] = []
    for _ in range(10):  # each burst admits what the worst cases allow; repeat to exhaust
        wave = await burst(relay.base_url, [("/v1/chat/completions", body, headers)] * 200)
        await wait_until(lambda: relay.state.wallet.open_hold_count() == 0)
        results += wave
        if all(r.status == 402 for r in wave):
            break
    statuses = [r.status for r in results]
    assert {s for s in statuses if s != 200} == {402}, statuses
    assert 10 <= statuses.count(200) <= 40, statuses
    assert all(r.status == 402 for r in results[-200:]), "the balance was never exhausted"
    for result in results:
        if result.status == 200:
            assert sse_events(result.body)[-1] == "[DONE]"
            assert "error" not in last_data_event(result.body)
        else:
            assert result.json()["error"]["code"] == "insufficient_quota"
    charges = await relay.charges(account["id"])
    assert len(charges) == statuses.count(200)
    assert sum(-row["amount_micros"] for row in charges) <= 50_000
    assert all(row["note"] is None for row in charges)  # measured usage, no overrun
    snapshot = relay.state.wallet.snapshot(account["id"])
    assert snapshot.balance_micros >= 0 and snapshot.held_micros == 0
    assert snapshot.balance_micros == await relay.ledger_sum(account["id"])
    assert relay.state.wallet.open_hold_count() == 0


# ----------------------------------------------------------------------------------- dry run


async def test_dry_run_prices_without_hold_upstream_or_charge(
    relay: Relay, fake: FakeUpstream
) -> None:
    account, key = await relay.funded_key("acme", amount_usd="1")
    ledger_before = await relay.ledger(account["id"])
    response = await relay.client.post(
        "/v1/chat/completions?dryRun=true",
        json=pricey(max_tokens=100),
        headers=auth(key["secret"]),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["dry_run"] is True
    estimate = body["estimate"]
    assert {"model", "hold_micros", "estimated_cost_micros", "available_micros"} <= set(estimate)
    assert estimate["model"] == "pricey-gpt"
    assert estimate["available_micros"] == 1_000_000
    assert 0 < estimate["estimated_cost_micros"] <= estimate["hold_micros"]
    assert estimate["hold_micros"] >= 100 * 30  # strict near $1: the worst case is held
    assert fake.seen == []
    assert relay.state.wallet.open_hold_count() == 0
    assert relay.state.wallet.snapshot(account["id"]).held_micros == 0
    assert await relay.ledger(account["id"]) == ledger_before


# ----------------------------------------------------------------------------------- restart


async def test_after_a_restart_balances_equal_the_ledger_and_keys_still_work(
    tmp_path: Path, admin_token: str, fake: FakeUpstream
) -> None:
    config = billing_config(tmp_path)
    async with run_relay(config, client_factory=fake.factory()) as relay:
        account, key = await relay.funded_key("acme", amount_usd="1")
        headers = auth(key["secret"])
        for body in (pricey(), pricey(stream=True), pricey("fail")):
            await relay.client.post("/v1/chat/completions", json=body, headers=headers)
        before = relay.state.wallet.snapshot(account["id"])
        spent_before = relay.state.wallet.key_snapshot(key["id"]).spent_micros
    assert before.balance_micros == 1_000_000 - NON_STREAM_COST - STREAM_COST
    async with run_relay(config, client_factory=fake.factory()) as relay:
        after = relay.state.wallet.snapshot(account["id"])
        assert after.balance_micros == before.balance_micros
        assert after.balance_micros == await relay.ledger_sum(account["id"])
        assert relay.state.wallet.key_snapshot(key["id"]).spent_micros == spent_before
        again = await relay.client.post("/v1/chat/completions", json=pricey(), headers=headers)
        assert again.status_code == 200, again.text
        view = (await relay.client.get("/v1/key", headers=headers)).json()
        assert view["spent_micros"] == spent_before + NON_STREAM_COST
        assert (await relay.credit(account["id"], "1", "seed-acme")).json()["credited"] is False
