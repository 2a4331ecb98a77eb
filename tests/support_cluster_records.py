"""Cluster instances in this process for the account records and upstream toggle tests.

``cluster_config`` is the shipped example config (its offline ``mock`` models) on the
throwaway PostgreSQL and Redis of tests/support_cluster.py, its database path (so its
server secret, the audit key) the embedded config's; ``two_instances`` serves two relays
on it, each its own pool, lease and Redis client.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import RelayServer, serve_relay

from relay.config import Config, parse_config

asyncpg = pytest.importorskip("asyncpg")
ROOT = Path(__file__).resolve().parents[1]


def _config_text(tmp_path: Path) -> str:
    text = (ROOT / "config.example.toml").read_text()
    return text.replace('database = "relay.db"', f'database = "{tmp_path / "relay.db"}"', 1)


def embedded_config(tmp_path: Path) -> Config:
    return parse_config(_config_text(tmp_path), base_dir=str(tmp_path))


def cluster_config_text(tmp_path: Path, dsn: str, redis_port: int, extra: str = "") -> str:
    """The embedded config's text on PostgreSQL and Redis (``extra`` appended)."""
    db = 1 + secrets.randbelow(15)
    return (
        _config_text(tmp_path)
        + extra
        + (
            f'\n[storage]\nurl = "{dsn}"\n'
            f'[cluster]\nredis_url = "redis://127.0.0.1:{redis_port}/{db}"\nlease_s = 3\n'
        )
    )


def cluster_config(tmp_path: Path, dsn: str, redis_port: int) -> Config:
    """The embedded config on PostgreSQL and Redis: the same secret file (audit key)."""
    text = cluster_config_text(tmp_path, dsn, redis_port)
    return parse_config(text, base_dir=str(tmp_path))


@contextlib.asynccontextmanager
async def two_instances(
    tmp_path: Path, pg_database: str, redis_server: Any
) -> AsyncIterator[tuple[RelayServer, RelayServer, Any]]:
    config = cluster_config(tmp_path, pg_database, redis_server.port)
    async with serve_relay(config) as one, serve_relay(config) as two:
        conn = await asyncpg.connect(pg_database)
        try:
            yield one, two, conn
        finally:
            await conn.close()


async def verified(*relays: RelayServer) -> None:
    """The audit chain verifies through every instance's route."""
    for relay in relays:
        response = await relay.client.get("/admin/audit/verify")
        assert response.status_code == 200, response.text
        assert response.json()["ok"], response.text
