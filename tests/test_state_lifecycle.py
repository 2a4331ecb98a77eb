"""Opening and closing the app's state (relay.state_lifecycle): a failure at any step
closes what was already open, exactly once, and the error still reaches the caller.

Cluster mode's runtime is a fake here (the wiring is what is under test, not PostgreSQL):
``ClusterRuntime.open`` hands back an object that counts its closes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import make_config

import relay.state_lifecycle
from relay.config import Config
from relay.state_lifecycle import close_state, open_state
from relay.storage.db import Database
from relay.upstream.providers import default_client_factory

CLUSTER = """
[storage]
url = "postgresql://relay@127.0.0.1:1/relay"

[cluster]
redis_url = "redis://127.0.0.1:1/0"
"""


class Boom(Exception):
    pass


class FakeStore:
    def use_periods(self, calendar: Callable[[], Any], clock_ms: Callable[[], int]) -> None:
        pass


class FakeCluster:
    def __init__(self) -> None:
        self.store = FakeStore()
        self.closes = 0

    async def close(self) -> None:
        self.closes += 1


def spy_on_database_closes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The path of every database closed from now on in the test, once per close."""
    closed: list[Path] = []
    original = Database.close

    async def close(db: Database) -> None:
        closed.append(db.path)
        await original(db)

    monkeypatch.setattr(Database, "close", close)
    return closed


@pytest.fixture
def closed_databases(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    return spy_on_database_closes(monkeypatch)


@pytest.fixture
def fake_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeCluster:
    cluster = FakeCluster()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    # The scratch file's folder in tmp_path: a start-up that fails does not remove it.
    monkeypatch.setattr(relay.state_lifecycle.tempfile, "mkdtemp", lambda prefix: str(scratch))

    async def open_cluster(config: Config) -> FakeCluster:
        return cluster

    monkeypatch.setattr(relay.state_lifecycle.ClusterRuntime, "open", open_cluster)
    return cluster


def fail_loading_the_wallet(monkeypatch: pytest.MonkeyPatch) -> None:
    async def load_wallet(db: Database, wallet: Any) -> None:
        raise Boom("the ledger could not be read")

    monkeypatch.setattr(relay.state_lifecycle, "load_wallet", load_wallet)


async def open_relay_state(config: Config) -> Any:
    return await open_state(config, default_client_factory, None, lambda: False, lambda: 0)


async def test_a_failed_load_closes_the_database_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, closed_databases: list[Path]
) -> None:
    fail_loading_the_wallet(monkeypatch)
    with pytest.raises(Boom):
        await open_relay_state(make_config(tmp_path))
    assert closed_databases == [tmp_path / "relay.db"]


async def test_cluster_mode_a_failed_load_closes_the_database_then_the_runtime(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    closed_databases: list[Path],
    fake_cluster: FakeCluster,
) -> None:
    fail_loading_the_wallet(monkeypatch)
    config = make_config(tmp_path, extra=CLUSTER)
    assert config.cluster_mode
    with pytest.raises(Boom):
        await open_relay_state(config)
    assert len(closed_databases) == 1
    assert closed_databases[0].name == "scratch.db"  # never the configured database
    assert fake_cluster.closes == 1


async def test_cluster_mode_a_database_that_does_not_open_closes_the_runtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_cluster: FakeCluster
) -> None:
    async def open_database(path: Path, **options: Any) -> Database:
        raise Boom("no room for the scratch file")

    monkeypatch.setattr(relay.state_lifecycle.Database, "open", open_database)
    with pytest.raises(Boom):
        await open_relay_state(make_config(tmp_path, extra=CLUSTER))
    assert fake_cluster.closes == 1


async def test_close_state_closes_the_database_when_a_provider_fails_to_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, closed_databases: list[Path]
) -> None:
    state = await open_relay_state(make_config(tmp_path))
    provider = next(iter(state.providers.values()))

    async def aclose() -> None:
        raise Boom("the upstream client would not close")

    monkeypatch.setattr(provider, "aclose", aclose)
    with pytest.raises(Boom):
        await close_state(state)
    assert closed_databases == [tmp_path / "relay.db"]


async def test_close_state_closes_the_database_once(
    tmp_path: Path, closed_databases: list[Path]
) -> None:
    state = await open_relay_state(make_config(tmp_path))
    await close_state(state)
    assert closed_databases == [tmp_path / "relay.db"]
