"""System tests of client keys through the real HTTP app: argon2 once then cached, the
401/403 refusals, scopes, rate and concurrency limits, ``/v1/key`` and ``/v1/balance``,
and that no key material reaches the logs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import ADMIN_TOKEN, make_config
from support_accounts import Relay, auth, burst, chat_body, forge_key, run_relay

from relay.identity.keys import generate_key

# A slow in-process provider for the concurrency burst, and a dear model whose worst case
# (no max_tokens) exceeds a small balance while a capped request still fits.
EXTRA = """
[[providers]]
name = "slowmock"
kind = "mock"
mock_latency_ms = 500

[[models]]
name = "slow-gpt"
routes = ["slowmock:slow-gpt"]
input_usd_per_mtok = "0.15"
output_usd_per_mtok = "0.60"

[[models]]
name = "pricey-mock"
routes = ["mock:pricey-mock"]
input_usd_per_mtok = "10"
output_usd_per_mtok = "30"
"""
MOCK_LATENCY_S = 0.5


@pytest.fixture
async def relay(tmp_path: Path, admin_token: str) -> AsyncIterator[Relay]:
    async with run_relay(make_config(tmp_path, extra=EXTRA)) as running:
        yield running


def error_of(response_json: dict[str, object]) -> dict[str, object]:
    error = response_json["error"]
    assert isinstance(error, dict)
    return error


# ------------------------------------------------------------------------- verification


async def test_a_key_is_verified_with_argon2_once_then_cached(relay: Relay) -> None:
    _, key = await relay.funded_key("acme")
    for _ in range(20):
        response = await relay.client.get("/v1/key", headers=auth(key["secret"]))
        assert response.status_code == 200, response.text
    assert relay.hasher.verify_calls == 1


async def test_concurrent_first_requests_of_a_key_share_one_verification(relay: Relay) -> None:
    _, key = await relay.funded_key("acme")
    results = await asyncio.gather(
        *(relay.client.get("/v1/key", headers=auth(key["secret"])) for _ in range(20))
    )
    assert [r.status_code for r in results] == [200] * 20
    assert relay.hasher.verify_calls == 1


async def test_bad_keys_are_401_with_distinct_messages_that_never_echo_the_key(
    relay: Relay,
) -> None:
    account, good = await relay.funded_key("acme")
    secret: str = good["secret"]
    key_id: str = good["id"]
    revoked = await relay.create_key(account["id"], name="old")
    assert (await relay.client.get("/v1/key", headers=auth(revoked["secret"]))).status_code == 200
    response = await relay.client.post(f"/admin/keys/{revoked['id']}/revoke")
    assert response.status_code == 200
    expired = await relay.create_key(account["id"], name="past", expires="2020-01-31")
    # Flip one character of the secret part, keeping the checksum: a typo.
    tail_index = len(f"rk_{key_id}_") + 5
    flipped = "A" if secret[tail_index] != "A" else "B"
    mistyped = secret[:tail_index] + flipped + secret[tail_index + 1 :]
    presented = {
        "malformed": "rk_tooshort",
        "bad checksum": mistyped,
        "unknown key": generate_key().secret,
        "wrong secret for a known id": forge_key(key_id, "x" * 43),
        "revoked": revoked["secret"],
        "expired": expired["secret"],
    }
    messages: dict[str, str] = {}
    for case, raw in presented.items():
        response = await relay.client.post(
            "/v1/chat/completions", json=chat_body(), headers=auth(raw)
        )
        assert response.status_code == 401, (case, response.text)
        error = error_of(response.json())
        assert error["code"] == "invalid_api_key", case
        message = str(error["message"])
        assert raw not in response.text and raw[-20:] not in message, case
        messages[case] = message
    distinct = {messages[c] for c in ("malformed", "bad checksum", "unknown key")}
    distinct |= {messages["revoked"], messages["expired"]}
    assert len(distinct) == 5, messages
    assert "revoked" in messages["revoked"]
    assert "expired" in messages["expired"]
    assert "checksum" in messages["bad checksum"]
    assert "malformed" in messages["malformed"].lower()
    ok = await relay.client.post("/v1/chat/completions", json=chat_body(), headers=auth(secret))
    assert ok.status_code == 200, ok.text
    # Once the real key is cached, a guessed secret for its id is refused without argon2.
    verified = relay.hasher.verify_calls
    guess = await relay.client.get("/v1/key", headers=auth(forge_key(key_id, "y" * 43)))
    assert guess.status_code == 401
    assert relay.hasher.verify_calls == verified


async def test_revoke_refuses_the_very_next_request(relay: Relay) -> None:
    _, key = await relay.funded_key("acme")
    headers = auth(key["secret"])
    first = await relay.client.post("/v1/chat/completions", json=chat_body(), headers=headers)
    assert first.status_code == 200, first.text
    assert (await relay.client.post(f"/admin/keys/{key['id']}/revoke")).status_code == 200
    after = await relay.client.post("/v1/chat/completions", json=chat_body(), headers=headers)
    assert after.status_code == 401
    assert error_of(after.json())["code"] == "invalid_api_key"
    assert (await relay.client.get("/v1/key", headers=headers)).status_code == 401


async def test_a_suspended_account_is_403_until_reactivated(relay: Relay) -> None:
    account, key = await relay.funded_key("acme")
    headers = auth(key["secret"])
    assert (await relay.client.get("/v1/key", headers=headers)).status_code == 200
    patch = await relay.client.patch(
        f"/admin/accounts/{account['id']}", json={"status": "suspended"}
    )
    assert patch.status_code == 200 and patch.json()["status"] == "suspended"
    refused = await relay.client.post("/v1/chat/completions", json=chat_body(), headers=headers)
    assert refused.status_code == 403
    assert error_of(refused.json())["code"] == "account_suspended"
    patch = await relay.client.patch(f"/admin/accounts/{account['id']}", json={"status": "active"})
    assert patch.status_code == 200
    again = await relay.client.post("/v1/chat/completions", json=chat_body(), headers=headers)
    assert again.status_code == 200, again.text


async def test_a_cached_key_still_reads_suspension_and_expiry_on_each_request(
    relay: Relay,
) -> None:
    # Once verified, a key takes the synchronous cached path: it must still see every change.
    _, key = await relay.funded_key("acme")
    headers = auth(key["secret"])
    assert (await relay.client.get("/v1/key", headers=headers)).status_code == 200
    path = f"/admin/keys/{key['id']}"
    assert (await relay.client.patch(path, json={"status": "suspended"})).status_code == 200
    refused = await relay.client.post("/v1/chat/completions", json=chat_body(), headers=headers)
    assert refused.status_code == 403
    assert error_of(refused.json())["code"] == "key_suspended"
    assert (await relay.client.patch(path, json={"status": "active"})).status_code == 200
    assert (await relay.client.get("/v1/key", headers=headers)).status_code == 200
    patch = await relay.client.patch(path, json={"expires": "2020-01-31"})
    assert patch.status_code == 200, patch.text
    expired = await relay.client.get("/v1/key", headers=headers)
    assert expired.status_code == 401 and "expired" in str(error_of(expired.json())["message"])
    assert relay.hasher.verify_calls == 1


# ------------------------------------------------------------------------------ scopes


async def test_a_model_outside_the_key_allowlist_is_403(relay: Relay) -> None:
    account, key = await relay.funded_key("acme", models=["mock-embedding"])
    refused = await relay.client.post(
        "/v1/chat/completions", json=chat_body(), headers=auth(key["secret"])
    )
    assert refused.status_code == 403
    assert error_of(refused.json())["code"] == "model_not_allowed"
    allowed = await relay.client.post(
        "/v1/embeddings",
        json={"model": "mock-embedding", "input": "hello"},
        headers=auth(key["secret"]),
    )
    assert allowed.status_code == 200, allowed.text
    assert relay.state.wallet.open_hold_count() == 0


async def test_an_endpoint_kind_outside_the_key_scope_is_403(relay: Relay) -> None:
    _, key = await relay.funded_key("acme", endpoints=["embeddings"])
    refused = await relay.client.post(
        "/v1/chat/completions", json=chat_body(), headers=auth(key["secret"])
    )
    assert refused.status_code == 403
    assert error_of(refused.json())["code"] == "endpoint_not_allowed"
    allowed = await relay.client.post(
        "/v1/embeddings",
        json={"model": "mock-embedding", "input": "hello"},
        headers=auth(key["secret"]),
    )
    assert allowed.status_code == 200, allowed.text


# ------------------------------------------------------------------------------ limits


async def test_the_rpm_bucket_answers_429_with_retry_after(relay: Relay) -> None:
    _, key = await relay.funded_key("acme", rpm=3)
    headers = auth(key["secret"])
    for _ in range(3):
        ok = await relay.client.post("/v1/chat/completions", json=chat_body(), headers=headers)
        assert ok.status_code == 200, ok.text
    limited = await relay.client.post("/v1/chat/completions", json=chat_body(), headers=headers)
    assert limited.status_code == 429
    assert error_of(limited.json())["code"] == "rate_limit_exceeded"
    retry_after = int(limited.headers["retry-after"])
    assert 1 <= retry_after <= 20  # 3 per minute: one request back every 20 s
    # A refused request consumed nothing: waiting time does not grow.
    again = await relay.client.post("/v1/chat/completions", json=chat_body(), headers=headers)
    assert again.status_code == 429
    assert int(again.headers["retry-after"]) <= retry_after


async def test_refused_requests_consume_no_rate_budget(relay: Relay) -> None:
    """400, 404, 403 and 402 answers leave all three requests of rpm=3 available."""
    account = await relay.create_account("acme")
    assert (await relay.credit(account["id"], "0.01", "seed")).status_code == 201
    key = await relay.create_key(account["id"], rpm=3, models=["mock-gpt", "pricey-mock"])
    headers = auth(key["secret"])
    refusals = [
        ({"model": "mock-gpt"}, 400),
        (chat_body("no-such-model"), 404),
        (chat_body("slow-gpt"), 403),
        # No max_tokens: the worst case of 4096 output tokens at $30/M exceeds $0.01.
        (chat_body("pricey-mock"), 402),
        (chat_body("pricey-mock"), 402),
    ]
    for body, status in refusals:
        response = await relay.client.post("/v1/chat/completions", json=body, headers=headers)
        assert response.status_code == status, (body, response.text)
    for _ in range(3):
        ok = await relay.client.post("/v1/chat/completions", json=chat_body(), headers=headers)
        assert ok.status_code == 200, ok.text
    limited = await relay.client.post("/v1/chat/completions", json=chat_body(), headers=headers)
    assert limited.status_code == 429


@pytest.mark.slow
async def test_concurrency_limit_admits_exactly_the_limit_and_refuses_the_rest_at_once(
    relay: Relay,
) -> None:
    _, key = await relay.funded_key("acme", concurrency=100)
    headers = auth(key["secret"])
    assert (await relay.client.get("/v1/key", headers=headers)).status_code == 200  # verified
    limiter, wallet = relay.state.gate.limiter, relay.state.wallet
    peaks = {"in_flight": 0, "holds": 0}
    running = True

    async def sample() -> None:
        while running:
            peaks["in_flight"] = max(peaks["in_flight"], limiter.in_flight(key["id"]))
            peaks["holds"] = max(peaks["holds"], wallet.open_hold_count())
            await asyncio.sleep(0)

    sampler = asyncio.create_task(sample())
    served_before = len(relay.served)
    try:
        requests = [("/v1/chat/completions", chat_body("slow-gpt"), headers)] * 300
        results = await burst(relay.base_url, requests)
    finally:
        running = False
        await sampler
    statuses = [r.status for r in results]
    assert statuses.count(200) == 100, statuses
    assert statuses.count(429) == 200, statuses
    assert peaks == {"in_flight": 100, "holds": 100}
    refused = [r for r in results if r.status == 429]
    assert all(r.json()["error"]["code"] == "rate_limit_exceeded" for r in refused)
    assert all("retry-after" in r.headers for r in refused)
    # Timed server-side: 300 connections on the test's one event loop blur client timings.
    served = relay.served[served_before:]
    refusal_times = [s.seconds for s in served if s.status == 429]
    answer_times = [s.seconds for s in served if s.status == 200]
    assert len(refusal_times) == 200 and len(answer_times) == 100
    assert max(refusal_times) < MOCK_LATENCY_S / 2, max(refusal_times)
    assert min(answer_times) >= MOCK_LATENCY_S
    assert limiter.in_flight(key["id"]) == 0
    assert wallet.open_hold_count() == 0


# ---------------------------------------------------------------- /v1/key and /v1/balance


async def test_v1_key_shows_limits_spend_and_remaining_cap(relay: Relay) -> None:
    account, key = await relay.funded_key(
        "acme",
        amount_usd="10",
        models=["mock-gpt"],
        rpm=7,
        tpm=100_000,
        concurrency=5,
        spend_cap_usd="2.5",
        expires="2030-01-31",
    )
    headers = auth(key["secret"])
    used = await relay.client.post("/v1/chat/completions", json=chat_body(), headers=headers)
    assert used.status_code == 200, used.text
    cost = int(used.headers["x-relay-cost-micros"])
    assert cost > 0
    view = (await relay.client.get("/v1/key", headers=headers)).json()
    assert view["id"] == key["id"] and view["account_id"] == account["id"]
    assert view["models"] == ["mock-gpt"]
    limits = view["limits"]
    assert (limits["rpm"], limits["tpm"], limits["concurrency"]) == (7, 100_000, 5)
    assert limits["spend_cap_micros"] == 2_500_000
    assert limits["expires_at_ms"] is not None
    assert view["spent_micros"] == cost
    assert view["remaining_micros"] == 2_500_000 - cost
    assert view["balance"]["balance_micros"] == 10_000_000 - cost
    assert key["secret"] not in str(view)


async def test_v1_balance_shows_the_wallet(relay: Relay) -> None:
    _, key = await relay.funded_key("acme", amount_usd="3")
    balance = (await relay.client.get("/v1/balance", headers=auth(key["secret"]))).json()
    wanted = {
        "balance_micros": 3_000_000,
        "held_micros": 0,
        "available_micros": 3_000_000,
        "credit_limit_micros": 0,
        "mode": "prepaid",
    }
    assert {name: balance[name] for name in wanted} == wanted
    postpaid = await relay.create_account("bigco", mode="postpaid", credit_limit_usd="5")
    post_key = await relay.create_key(postpaid["id"])
    view = (await relay.client.get("/v1/balance", headers=auth(post_key["secret"]))).json()
    assert view["mode"] == "postpaid"
    assert view["credit_limit_micros"] == 5_000_000
    assert view["balance_micros"] == 0 and view["available_micros"] == 5_000_000


# ------------------------------------------------------------------------------ privacy


async def test_no_key_material_reaches_the_logs(
    relay: Relay, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    account, key = await relay.funded_key("acme")
    secret: str = key["secret"]
    headers = auth(secret)
    assert (
        await relay.client.post("/v1/chat/completions", json=chat_body(), headers=headers)
    ).status_code == 200
    stream = await relay.client.post(
        "/v1/chat/completions", json=chat_body(stream=True), headers=headers
    )
    assert stream.status_code == 200
    assert (await relay.client.post(f"/admin/keys/{key['id']}/revoke")).status_code == 200
    assert (
        await relay.client.post("/v1/chat/completions", json=chat_body(), headers=headers)
    ).status_code == 401
    wrong_admin = await relay.client.get(
        "/admin/accounts", headers={"authorization": f"Bearer {ADMIN_TOKEN}-nope"}
    )
    assert wrong_admin.status_code == 401
    assert caplog.records, "the flow should log something at DEBUG"
    everything = caplog.text + "\n".join(record.getMessage() for record in caplog.records)
    secret_part = secret.split("_", 2)[2]
    for needle in (secret, secret_part, ADMIN_TOKEN):
        assert needle not in everything
