"""An account name must resolve to its own account: never another's id or name."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import make_config
from support_accounts import Relay, run_relay


@pytest.fixture
async def relay(tmp_path: Path, admin_token: str) -> AsyncIterator[Relay]:
    async with run_relay(make_config(tmp_path)) as served:
        yield served


async def test_renaming_to_another_accounts_id_or_name_is_refused(relay: Relay) -> None:
    victim = await relay.create_account("victim")
    other = await relay.create_account("other")
    as_id = await relay.client.patch(f"/admin/accounts/{other['id']}", json={"name": victim["id"]})
    assert as_id.status_code == 409, as_id.text
    as_name = await relay.client.patch(f"/admin/accounts/{other['id']}", json={"name": "victim"})
    assert as_name.status_code == 409, as_name.text
    shaped = await relay.client.patch(f"/admin/accounts/{other['id']}", json={"name": "acct_x"})
    assert shaped.status_code == 400 and shaped.json()["error"]["param"] == "name"
    # Nothing changed: the victim's id and name still lead to the victim, other is intact.
    shown = await relay.client.get(f"/admin/accounts/{victim['id']}")
    assert shown.json()["name"] == "victim"
    assert (await relay.client.get("/admin/accounts/other")).json()["id"] == other["id"]
    # Renaming an account to a free name, or to its own name, still works.
    renamed = await relay.client.patch(f"/admin/accounts/{other['id']}", json={"name": "other-2"})
    assert renamed.status_code == 200 and renamed.json()["name"] == "other-2"
    same = await relay.client.patch(f"/admin/accounts/{other['id']}", json={"name": "other-2"})
    assert same.status_code == 200


async def test_creating_an_account_named_like_an_id_is_refused(relay: Relay) -> None:
    victim = await relay.create_account("victim")
    response = await relay.client.post("/admin/accounts", json={"name": victim["id"]})
    assert response.status_code == 409, response.text
    assert len((await relay.client.get("/admin/accounts")).json()["data"]) == 1
