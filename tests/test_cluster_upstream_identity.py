"""Upstream toggles replayed by the key's identity (issue 18, part B), on the real engines.

A toggle's audit row names the key by a fingerprint (HMAC of its value under the server
secret) beside its position; every instance replays the row on the key with that
fingerprint. So a config whose ``api_keys`` were reordered keeps the disabled key disabled
on every instance, an instance started after the reorder replays it onto the same key,
and a key removed from the config takes its toggle with it. Rows written before the
fingerprint (position only) replay by position, as they always did.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import RelayServer, serve_relay
from support_cluster_records import cluster_config_text, verified

from relay.config import Config, load_config
from relay.identity.server_secret import ServerSecret, secret_path_for
from relay.upstream.fingerprint import KeyFingerprints
from relay.upstream.keypool import OPERATOR_DISABLED

asyncpg = pytest.importorskip("asyncpg")
pytest.importorskip("redis")

pytestmark = pytest.mark.usefixtures("admin_token")

_POOL = """
[[providers]]
name = "pool"
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
api_keys = __KEYS__
"""


class _ConfigFile:
    """The cluster's one config file, rewritten with another ``api_keys`` for ``pool``."""

    def __init__(self, tmp_path: Path, dsn: str, redis_port: int) -> None:
        self._text = cluster_config_text(tmp_path, dsn, redis_port, extra=_POOL)
        self.path = tmp_path / "relay.toml"

    def write(self, *keys: str) -> Config:
        listed = "[" + ", ".join(f'"{key}"' for key in keys) + "]"
        self.path.write_text(self._text.replace("__KEYS__", listed))
        return load_config(self.path)


def _disabled(relay: RelayServer) -> dict[str, str | None]:
    """The pool's keys in configured order: value -> why disabled (None: in rotation)."""
    return {key.secret: key.disabled_reason for key in relay.state.providers["pool"].pool.keys}


async def _eventually(check: Callable[[], bool], what: str) -> None:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < 3.0, f"{what} not seen within 3 s"
        await asyncio.sleep(0.01)


@asynccontextmanager
async def _two(config: Config, dsn: str) -> AsyncIterator[tuple[RelayServer, RelayServer, Any]]:
    async with serve_relay(config) as one, serve_relay(config) as two:
        conn = await asyncpg.connect(dsn)
        try:
            yield one, two, conn
        finally:
            await conn.close()


async def _toggle_details(conn: Any) -> list[str]:
    rows = await conn.fetch("SELECT detail FROM audit WHERE action LIKE 'upstream.%' ORDER BY id")
    return [str(row["detail"]) for row in rows]


async def test_a_reordered_config_keeps_the_disabled_key_disabled_everywhere(
    tmp_path: Path, pg_database: str, redis_server: Any
) -> None:
    file = _ConfigFile(tmp_path, pg_database, redis_server.port)
    config = file.write("sk-alpha", "sk-bravo", "sk-charlie")
    async with _two(config, pg_database) as (one, two, conn):
        disabled = await one.client.post("/admin/upstreams/pool/keys/2/disable")
        assert disabled.status_code == 200, disabled.text
        await _eventually(lambda: _disabled(two)["sk-bravo"] == OPERATOR_DISABLED, "the disable")
        # The row names the key by position and fingerprint, never by value.
        secret = ServerSecret.load_or_create(secret_path_for(config.database_path))
        fingerprint = KeyFingerprints(secret.subkey("upstream-key")).of("sk-bravo")
        (detail,) = await _toggle_details(conn)
        assert f'"fingerprint":"{fingerprint}"' in detail and '"position":2' in detail
        assert "sk-bravo" not in detail

        # Reordered and reloaded through one instance: the other reloads on the announcement.
        file.write("sk-bravo", "sk-charlie", "sk-alpha")
        assert (await one.client.post("/admin/reload")).status_code == 200
        await _eventually(
            lambda: list(_disabled(two)) == ["sk-bravo", "sk-charlie", "sk-alpha"], "the reload"
        )
        expected = {"sk-bravo": OPERATOR_DISABLED, "sk-charlie": None, "sk-alpha": None}
        assert _disabled(one) == expected and _disabled(two) == expected

        # Started after the reorder, an instance replays the row onto the same key (by
        # position it would have disabled sk-charlie, now #2).
        async with serve_relay(load_config(file.path)) as three:
            assert _disabled(three) == expected
            # A toggle made now, on the new #1, reaches every instance as well.
            assert (
                await three.client.post("/admin/upstreams/pool/keys/1/enable")
            ).status_code == 200
            await _eventually(
                lambda: _disabled(one)["sk-bravo"] is None and _disabled(two)["sk-bravo"] is None,
                "the enable",
            )
            await verified(one, two, three)

        # Disabled again, then removed from the config: its toggles apply to nothing.
        assert (await one.client.post("/admin/upstreams/pool/keys/1/disable")).status_code == 200
        file.write("sk-charlie", "sk-alpha")
        async with serve_relay(load_config(file.path)) as four:
            assert _disabled(four) == {"sk-charlie": None, "sk-alpha": None}


async def test_rows_without_a_fingerprint_still_replay_by_position(
    tmp_path: Path, pg_database: str, redis_server: Any
) -> None:
    file = _ConfigFile(tmp_path, pg_database, redis_server.port)
    config = file.write("sk-alpha", "sk-bravo", "sk-charlie")
    async with _two(config, pg_database) as (one, two, _):
        # A row as it was recorded before fingerprints: provider and position only.
        await one.state.store.record_action(
            actor="admin",
            action="upstream.disable",
            target="pool#3",
            detail={"provider": "pool", "position": 3},
        )
        runtime = one.state.cluster
        assert runtime is not None
        await runtime.publish("upstream")
        await _eventually(lambda: _disabled(two)["sk-charlie"] == OPERATOR_DISABLED, "the replay")
        assert _disabled(one)["sk-charlie"] == OPERATOR_DISABLED
        # Positions beyond the config apply to nothing; an instance started later replays
        # the old row by position too.
        await one.state.store.record_action(
            actor="admin",
            action="upstream.disable",
            target="pool#9",
            detail={"provider": "pool", "position": 9},
        )
        async with serve_relay(config) as three:
            assert _disabled(three) == {
                "sk-alpha": None,
                "sk-bravo": None,
                "sk-charlie": OPERATOR_DISABLED,
            }
            await verified(one, two, three)
