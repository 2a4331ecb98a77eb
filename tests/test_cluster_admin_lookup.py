"""Cluster mode: an account or key created through one instance is found by the admin API of
another before the creation's announcement arrives there (it reads PostgreSQL on a miss)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_cluster_payments import two_instances

pytest.importorskip("asyncpg")


async def test_an_admin_write_through_another_instance_finds_what_was_just_created(
    tmp_path: Path, pg_database: str, redis_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with two_instances(tmp_path, pg_database, redis_server, monkeypatch) as (one, two, _):
        late = two.relay.state.store

        async def announcement_not_here_yet(_target: str = "") -> None:
            return None

        # Instance two hears of nothing: only its own reads of PostgreSQL can find the rows.
        monkeypatch.setattr(late, "reload_account", announcement_not_here_yet)
        monkeypatch.setattr(late, "reload_key", announcement_not_here_yet)
        monkeypatch.setattr(late, "reload_all", announcement_not_here_yet)
        first, second = one.relay.client, two.relay.client

        created = await first.post("/admin/accounts", json={"name": "fresh"})
        assert created.status_code == 201, created.text
        account_id = created.json()["id"]
        assert account_id not in late.accounts
        shown = await second.get(f"/admin/accounts/{account_id}")
        assert shown.status_code == 200, shown.text
        assert shown.json()["name"] == "fresh"

        by_name = await first.post("/admin/accounts", json={"name": "fresh-2"})
        assert by_name.status_code == 201, by_name.text
        credit = {"amount_usd": "3", "reference": "first-top-up"}
        credited = await second.post("/admin/accounts/fresh-2/credits", json=credit)
        assert credited.status_code == 201, credited.text
        assert credited.json()["wallet"]["balance_micros"] == 3_000_000

        key = await first.post(f"/admin/accounts/{account_id}/keys", json={"name": "k"})
        assert key.status_code == 201, key.text
        key_id = key.json()["id"]
        assert key_id not in late.keys
        revoked = await second.post(f"/admin/keys/{key_id}/revoke")
        assert revoked.status_code == 200, revoked.text
        assert revoked.json()["status"] == "revoked"

        # What exists nowhere is still a 404, after one read of PostgreSQL.
        missing = await second.get("/admin/accounts/acct_nowhere")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "account_not_found"
        missing_key = await second.post("/admin/keys/key_nowhere/revoke")
        assert missing_key.status_code == 404
        assert missing_key.json()["error"]["code"] == "key_not_found"
