"""System tests of the admin API (docs/admin-api.md) through the real HTTP app: the
operator check, accounts, keys (the secret shown once), and one committed audit row for
every change.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ADMIN_TOKEN, make_config
from support_accounts import Relay, auth, run_relay

ACCOUNT_FIELDS = {
    "id",
    "name",
    "mode",
    "status",
    "credit_limit_micros",
    "rpm",
    "tpm",
    "concurrency",
    "price_multiplier",
    "created_at",
    "balance_micros",
    "held_micros",
    "available_micros",
    # Issue 16: the account's own budget, lifetime or per period.
    "budget_micros",
    "budget_period",
    "budget_spent_micros",
    "budget_remaining_micros",
    "budget_resets_at",
}
KEY_FIELDS = {
    "id",
    "account_id",
    "name",
    "masked",
    "models",
    "endpoints",
    "spend_cap_micros",
    "spent_micros",
    "rpm",
    "tpm",
    "concurrency",
    "expires_at",
    "status",
    "created_at",
    "last_used_at",
    # Issue 16: budgets that reset each day/week/month.
    "budget_period",
    "period_spent_micros",
    "budget_resets_at",
}


@pytest.fixture
async def relay(tmp_path: Path, admin_token: str) -> AsyncIterator[Relay]:
    async with run_relay(make_config(tmp_path)) as running:
        yield running


def error_code(body: dict[str, Any]) -> str:
    code: str = body["error"]["code"]
    return code


async def committed_audit(relay: Relay) -> list[dict[str, Any]]:
    """Audit rows readable now, WITHOUT flushing: changes are committed before the answer."""
    rows = await relay.state.db.fetchall("SELECT * FROM audit ORDER BY id")
    return [dict(row) for row in rows]


# ------------------------------------------------------------------------------ the operator


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer wrong-token"},
        {"authorization": f"Basic {ADMIN_TOKEN}"},
        {"authorization": "Bearer"},
    ],
    ids=["missing", "wrong", "not-bearer", "empty"],
)
async def test_admin_calls_without_the_right_token_are_401(
    relay: Relay, headers: dict[str, str]
) -> None:
    for method, path in (
        ("GET", "/admin/accounts"),
        ("POST", "/admin/accounts"),
        ("GET", "/admin/keys"),
    ):
        response = await relay.client.request(
            method, path, headers=headers or {"authorization": ""}, json={"name": "x"}
        )
        assert response.status_code == 401, (method, path, response.text)
        assert error_code(response.json()) == "invalid_api_key"
        assert ADMIN_TOKEN not in response.text
    assert relay.state.store.accounts == {}


async def test_a_client_key_is_not_an_admin_token(relay: Relay) -> None:
    _, key = await relay.funded_key("acme")
    response = await relay.client.get("/admin/accounts", headers=auth(key["secret"]))
    assert response.status_code == 401


async def test_admin_api_is_403_when_the_token_env_is_unset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RELAY_ADMIN_TOKEN", raising=False)
    async with run_relay(make_config(tmp_path)) as relay:
        for headers in ({}, {"authorization": f"Bearer {ADMIN_TOKEN}"}):
            response = await relay.client.get("/admin/accounts", headers=headers)
            assert response.status_code == 403
            assert error_code(response.json()) == "admin_disabled"
            assert "RELAY_ADMIN_TOKEN" in response.json()["error"]["message"]


# ---------------------------------------------------------------------------------- accounts


async def test_create_list_show_update_and_suspend_accounts(relay: Relay) -> None:
    created = await relay.create_account("acme", rpm=60, concurrency=10)
    assert set(created) == ACCOUNT_FIELDS
    assert created["name"] == "acme" and created["mode"] == "prepaid"
    assert created["status"] == "active" and created["credit_limit_micros"] == 0
    assert (created["rpm"], created["concurrency"]) == (60, 10)
    assert created["balance_micros"] == created["available_micros"] == 0
    postpaid = await relay.create_account("bigco", mode="postpaid", credit_limit_usd="12.5")
    assert postpaid["credit_limit_micros"] == 12_500_000
    assert postpaid["available_micros"] == 12_500_000

    listed = (await relay.client.get("/admin/accounts")).json()["data"]
    assert [a["name"] for a in listed] == ["acme", "bigco"]
    by_id = (await relay.client.get(f"/admin/accounts/{created['id']}")).json()
    by_name = (await relay.client.get("/admin/accounts/acme")).json()
    assert by_id == by_name == created
    missing = await relay.client.get("/admin/accounts/nobody")
    assert missing.status_code == 404

    patched = await relay.client.patch(
        f"/admin/accounts/{created['id']}", json={"name": "acme-2", "rpm": 120}
    )
    assert patched.status_code == 200, patched.text
    assert (patched.json()["name"], patched.json()["rpm"]) == ("acme-2", 120)
    assert (await relay.client.get("/admin/accounts/acme-2")).json()["id"] == created["id"]
    assert (await relay.client.get("/admin/accounts/acme")).status_code == 404

    suspended = await relay.client.patch("/admin/accounts/acme-2", json={"status": "suspended"})
    assert suspended.status_code == 200 and suspended.json()["status"] == "suspended"
    row = await relay.state.db.fetchone(
        "SELECT name, status, rpm FROM accounts WHERE id = ?", (created["id"],)
    )
    assert row is not None and tuple(row) == ("acme-2", "suspended", 120)


async def test_account_names_are_unique(relay: Relay) -> None:
    await relay.create_account("acme")
    other = await relay.create_account("other")
    duplicate = await relay.client.post("/admin/accounts", json={"name": "acme"})
    assert duplicate.status_code == 409
    assert error_code(duplicate.json()) == "conflict"
    rename = await relay.client.patch(f"/admin/accounts/{other['id']}", json={"name": "acme"})
    assert rename.status_code == 409
    assert len((await relay.client.get("/admin/accounts")).json()["data"]) == 2


async def test_invalid_account_bodies_are_400(relay: Relay) -> None:
    for body in (
        {},
        {"name": "x", "colour": "red"},
        {"name": "x", "credit_limit_usd": "5"},  # a prepaid account has no credit limit
        {"name": "x", "mode": "postpaid", "credit_limit_usd": "0.0000001"},
        {"name": "x", "rpm": -1},
    ):
        response = await relay.client.post("/admin/accounts", json=body)
        assert response.status_code == 400, (body, response.text)
    assert relay.state.store.accounts == {}


# -------------------------------------------------------------------------------------- keys


async def test_the_secret_is_shown_once_and_never_listed(relay: Relay) -> None:
    account = await relay.create_account("acme")
    created = await relay.create_key(
        account["id"], name="ci", models=["mock-gpt"], spend_cap_usd="5", rpm=10
    )
    secret: str = created.pop("secret")
    assert set(created) >= KEY_FIELDS
    assert secret.startswith(f"rk_{created['id']}_")
    assert created["masked"].startswith(f"rk_{created['id']}_")
    assert created["masked"].endswith(secret[-4:])
    assert created["spend_cap_micros"] == 5_000_000 and created["rpm"] == 10
    stored_hash = relay.state.store.key_hashes[created["id"]]

    views = [
        await relay.client.get("/admin/keys"),
        await relay.client.get(f"/admin/keys?account={account['id']}"),
        await relay.client.get("/admin/keys?account=acme"),
        await relay.client.get(f"/admin/keys/{created['id']}"),
    ]
    for view in views:
        assert view.status_code == 200, view.text
        assert secret not in view.text and secret[-20:] not in view.text
        assert stored_hash not in view.text and "$argon2" not in view.text
        assert "secret" not in json.dumps(view.json())
    assert [k["id"] for k in views[1].json()["data"]] == [created["id"]]
    shown = views[3].json()
    assert {name: shown[name] for name in KEY_FIELDS} == {
        name: created[name] for name in KEY_FIELDS
    }
    row = await relay.state.db.fetchone(
        "SELECT secret_hash FROM api_keys WHERE id = ?", (created["id"],)
    )
    assert row is not None and row[0] == stored_hash and secret not in row[0]


async def test_update_and_revoke_keys(relay: Relay) -> None:
    account = await relay.create_account("acme")
    key = await relay.create_key(account["id"])
    patched = await relay.client.patch(
        f"/admin/keys/{key['id']}",
        json={"name": "renamed", "rpm": 5, "endpoints": ["chat"], "expires": "2031-02-03"},
    )
    assert patched.status_code == 200, patched.text
    view = patched.json()
    assert (view["name"], view["rpm"], view["endpoints"]) == ("renamed", 5, ["chat"])
    assert view["expires_at"].startswith("2031-02-03T23:59:59")
    bad = await relay.client.patch(f"/admin/keys/{key['id']}", json={"endpoints": ["fax"]})
    assert bad.status_code == 400
    unknown_model = await relay.client.patch(f"/admin/keys/{key['id']}", json={"models": ["x"]})
    assert unknown_model.status_code == 400

    revoked = await relay.client.post(f"/admin/keys/{key['id']}/revoke")
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    final = await relay.client.patch(f"/admin/keys/{key['id']}", json={"status": "active"})
    assert final.status_code == 400
    assert (await relay.client.get(f"/admin/keys/{key['id']}")).json()["status"] == "revoked"
    assert (await relay.client.get("/admin/keys/nokey")).status_code == 404
    other = await relay.client.post("/admin/accounts/nobody/keys", json={"name": "x"})
    assert other.status_code == 404


# ------------------------------------------------------------------------------------- audit


async def test_every_admin_change_is_audited_and_committed_before_the_answer(
    relay: Relay,
) -> None:
    expected: list[tuple[str, str]] = []

    async def check(action: str, target: str) -> None:
        expected.append((action, target))
        rows = await committed_audit(relay)
        assert [(r["action"], r["target"]) for r in rows] == expected
        assert rows[-1]["actor"] == "admin-token"

    account = await relay.create_account("acme")
    await check("account.create", account["id"])
    patch = await relay.client.patch(f"/admin/accounts/{account['id']}", json={"rpm": 9})
    assert patch.status_code == 200
    await check("account.update", account["id"])
    patch = await relay.client.patch(
        f"/admin/accounts/{account['id']}", json={"status": "suspended"}
    )
    assert patch.status_code == 200
    await check("account.suspend", account["id"])
    patch = await relay.client.patch(f"/admin/accounts/{account['id']}", json={"status": "active"})
    assert patch.status_code == 200
    await check("account.activate", account["id"])
    assert (await relay.credit(account["id"], "7", "INV-1")).status_code == 201
    await check("wallet.credit", account["id"])
    key = await relay.create_key(account["id"])
    await check("key.create", key["id"])
    patch = await relay.client.patch(f"/admin/keys/{key['id']}", json={"rpm": 3})
    assert patch.status_code == 200
    await check("key.update", key["id"])
    assert (await relay.client.post(f"/admin/keys/{key['id']}/revoke")).status_code == 200
    await check("key.revoke", key["id"])

    # Reads and refused changes write nothing.
    await relay.client.get("/admin/accounts")
    await relay.client.get(f"/admin/keys/{key['id']}")
    await relay.client.post("/admin/accounts", json={"name": "acme"})
    assert (await relay.credit(account["id"], "7", "INV-1")).status_code == 200
    rows = await committed_audit(relay)
    assert len(rows) == len(expected)
    audit_text = json.dumps(rows)
    assert key["secret"] not in audit_text
    assert relay.state.store.key_hashes[key["id"]] not in audit_text
    assert ADMIN_TOKEN not in audit_text
