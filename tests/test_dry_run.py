"""``?dryRun=`` is parsed strictly: an unknown value is a 400, never a billed call."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import make_config
from support_accounts import Relay, auth, chat_body, run_relay


@pytest.fixture
async def relay(tmp_path: Path, admin_token: str) -> AsyncIterator[Relay]:
    async with run_relay(make_config(tmp_path)) as served:
        yield served


@pytest.mark.parametrize(
    "query",
    ["?dryRun=maybe", "?dryRun=", "?dryRun=yes", "?dryRun=true&dryRun=false", "?dryRun=2"],
)
async def test_an_unknown_dry_run_value_is_400_and_bills_nothing(relay: Relay, query: str) -> None:
    account, key = await relay.funded_key("acme", amount_usd="1")
    ledger_before = await relay.ledger(account["id"])
    for path, body in (
        ("/v1/chat/completions", chat_body()),
        ("/v1/embeddings", {"model": "mock-embedding", "input": "hello"}),
    ):
        response = await relay.client.post(path + query, json=body, headers=auth(key["secret"]))
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == "dryRun"
    assert await relay.ledger(account["id"]) == ledger_before
    assert relay.state.wallet.open_hold_count() == 0
    rows = await relay.rows("SELECT status, cost_micros FROM usage")
    assert rows and all(row["status"] == 400 and row["cost_micros"] == 0 for row in rows)


@pytest.mark.parametrize(
    ("query", "dry"),
    [("?dryRun=TRUE", True), ("?dryRun=1", True), ("?dryRun=false", False), ("?dryRun=0", False)],
)
async def test_true_false_1_and_0_are_understood(relay: Relay, query: str, dry: bool) -> None:
    account, key = await relay.funded_key("acme", amount_usd="1")
    response = await relay.client.post(
        "/v1/chat/completions" + query, json=chat_body(), headers=auth(key["secret"])
    )
    assert response.status_code == 200, response.text
    assert ("dry_run" in response.json()) is dry
    charges = await relay.charges(account["id"])
    assert len(charges) == (0 if dry else 1)
