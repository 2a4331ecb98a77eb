"""The lifespan (relay.lifespan): when a start-up step fails, what was already started is
stopped in reverse and the database is closed exactly once, and the failure still reaches
the server; a clean shutdown closes it once too."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_config
from test_state_lifecycle import Boom, spy_on_database_closes

import relay.lifespan
from relay.lifespan import LifespanSeams, relay_lifespan
from relay.upstream.providers import default_client_factory

SEAMS = LifespanSeams(
    client_factory=default_client_factory,
    hasher=None,
    stopping=lambda: False,
    stripe_transport=None,
    wall_clock_ms=lambda: 1_700_000_000_000,
)


@pytest.fixture
def database_closes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    return spy_on_database_closes(monkeypatch)


async def test_a_failing_start_up_step_closes_the_database_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_closes: list[Path]
) -> None:
    stopped: list[str] = []
    stop_watcher = relay.lifespan.AlertWatcher.aclose

    async def watcher_aclose(watcher: relay.lifespan.AlertWatcher) -> None:
        stopped.append("alert watcher")
        await stop_watcher(watcher)

    def refuse_to_start(checker: relay.lifespan.HealthChecker) -> None:
        raise Boom("the health checker could not start")

    monkeypatch.setattr(relay.lifespan.AlertWatcher, "aclose", watcher_aclose)
    monkeypatch.setattr(relay.lifespan.HealthChecker, "start", refuse_to_start)
    with pytest.raises(Boom):
        async with relay_lifespan(make_config(tmp_path), SEAMS):
            pytest.fail("the lifespan must not yield after a failed start-up")
    assert stopped == ["alert watcher"]  # started before the failure: stopped
    assert database_closes == [tmp_path / "relay.db"]


async def test_a_clean_shutdown_closes_the_database_once(
    tmp_path: Path, database_closes: list[Path]
) -> None:
    async with relay_lifespan(make_config(tmp_path), SEAMS) as lifespan_state:
        assert lifespan_state["relay"].db.path == tmp_path / "relay.db"
        assert database_closes == []
    assert database_closes == [tmp_path / "relay.db"]
