"""Upstream key enable/disable in cluster mode (issue 18, part A), on the real engines.

Two (then three) instances in this process on one config: a toggle made through one is
applied by every other within 1 s (announced on the invalidation bus, replayed from its
audit row in PostgreSQL's chain), by an instance started afterwards, and by one that
missed the announcement (the heartbeat's version check). A toggle whose audit row cannot
be written changes nothing anywhere.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import RelayServer, serve_relay
from support_cluster_records import cluster_config, two_instances, verified

from relay.storage.schema_lookups import POSTGRESQL_UPSTREAM_TOGGLES
from relay.upstream.keypool import OPERATOR_ACTIONS, OPERATOR_DISABLED

pytest.importorskip("asyncpg")
pytest.importorskip("redis")

TOGGLE = "/admin/upstreams/mock/keys/1/{}"


def _reason(relay: RelayServer) -> str | None:
    return relay.state.providers["mock"].pool.keys[0].disabled_reason


async def _within_a_second(check: Callable[[], bool], what: str) -> None:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < 1.0, f"{what} not seen within 1 s"
        await asyncio.sleep(0.01)


async def _toggle(relay: RelayServer, action: str) -> dict[str, Any]:
    response = await relay.client.post(TOGGLE.format(action))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _audited(conn: Any) -> list[str]:
    rows = await conn.fetch("SELECT action FROM audit WHERE action LIKE 'upstream.%' ORDER BY id")
    return [str(row["action"]) for row in rows]


async def test_a_toggle_through_one_instance_reaches_every_other(
    tmp_path: Path, pg_database: str, redis_server: Any, admin_token: str
) -> None:
    async with two_instances(tmp_path, pg_database, redis_server) as (one, two, conn):
        assert _reason(one) is None and _reason(two) is None
        disabled = await _toggle(one, "disable")
        assert disabled["disabled"] == OPERATOR_DISABLED
        await _within_a_second(lambda: _reason(two) == OPERATOR_DISABLED, "the disable")
        listing = (await two.client.get("/admin/upstreams")).json()["data"]
        mock = next(k for k in listing if k["provider"] == "mock" and k["position"] == 1)
        assert mock["disabled"] == OPERATOR_DISABLED
        await verified(one, two)

        # An upstream rejection on one instance only, then an enable through the other:
        # the enable clears it on both.
        one.state.providers["mock"].pool.keys[0].disabled_reason = "upstream answered 401"
        assert (await _toggle(two, "enable"))["disabled"] is None
        await _within_a_second(lambda: _reason(one) is None, "the enable")
        await verified(one, two)

        # An instance started later replays the toggles: the key is disabled there too.
        await _toggle(two, "disable")
        await _within_a_second(lambda: _reason(one) == OPERATOR_DISABLED, "the second disable")
        config = cluster_config(tmp_path, pg_database, redis_server.port)
        async with serve_relay(config) as three:
            assert _reason(three) == OPERATOR_DISABLED
            await _toggle(three, "enable")
            await _within_a_second(
                lambda: _reason(one) is None and _reason(two) is None, "the third's enable"
            )
            await verified(one, two, three)
        assert await _audited(conn) == [
            "upstream.disable",
            "upstream.enable",
            "upstream.disable",
            "upstream.enable",
        ]


async def test_an_instance_that_missed_the_announcement_catches_up_from_its_heartbeat(
    tmp_path: Path, pg_database: str, redis_server: Any, admin_token: str
) -> None:
    async with two_instances(tmp_path, pg_database, redis_server) as (one, two, _):
        runtime = two.state.cluster
        assert runtime is not None and runtime.bus is not None
        await runtime.bus.stop()  # deaf to pub/sub: only the version check is left
        await _toggle(one, "disable")
        # The heartbeat (every second at most) finds the version gap and reloads everything.
        started = time.monotonic()
        while _reason(two) != OPERATOR_DISABLED:
            assert time.monotonic() - started < 3.0, "the version check did not catch up"
            await asyncio.sleep(0.02)


async def test_a_toggle_whose_audit_row_fails_changes_nothing_anywhere(
    tmp_path: Path,
    pg_database: str,
    redis_server: Any,
    admin_token: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with two_instances(tmp_path, pg_database, redis_server) as (one, two, conn):
        store = one.state.store

        async def failing(**kwargs: Any) -> None:
            raise RuntimeError("injected: the audit row cannot be written")

        monkeypatch.setattr(store, "record_action", failing)
        response = await one.client.post(TOGGLE.format("disable"))
        assert response.status_code == 500
        monkeypatch.undo()
        await asyncio.sleep(0.2)  # time for an announcement, had there been one
        assert _reason(one) is None and _reason(two) is None
        assert await _audited(conn) == []
        # Working again: the next toggle reaches both.
        await _toggle(one, "disable")
        await _within_a_second(lambda: _reason(two) == OPERATOR_DISABLED, "the disable")
        await verified(one, two)


def test_the_toggles_index_names_every_operator_action() -> None:
    # The migration's text is fixed once released; the actions it indexes must stay these.
    for action in OPERATOR_ACTIONS:
        assert f"'{action}'" in POSTGRESQL_UPSTREAM_TOGGLES
    assert POSTGRESQL_UPSTREAM_TOGGLES.count("'upstream.") == len(OPERATOR_ACTIONS)
