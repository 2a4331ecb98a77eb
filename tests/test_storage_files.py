"""relay's files are private: database, -wal, -shm, .secret and archives 0600, folders 0700."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import make_config
from support_accounts import auth, chat_body, run_relay

from relay.storage.db import Database
from relay.usage.queries import DAY_MS
from relay.usage.retention import archive_dir_for, run_retention


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The usual umask: anything created with default modes would be world-readable."""
    previous = os.umask(0o022)
    yield None
    os.umask(previous)


async def test_a_new_database_and_its_secret_are_owner_only(
    tmp_path: Path, admin_token: str, open_umask: None
) -> None:
    config = make_config(tmp_path / "data" / "nested")
    folder = config.database_path.parent
    async with run_relay(config) as relay:
        _, key = await relay.funded_key("acme")
        served = await relay.client.post(
            "/v1/chat/completions", json=chat_body(), headers=auth(key["secret"])
        )
        assert served.status_code == 200
        await relay.state.db.flush()
        files = sorted(folder.iterdir())
        names = {path.name for path in files}
        assert {"relay.db", "relay.db-wal", "relay.db-shm", "relay.db.secret"} <= names
        assert {path.name: mode(path) for path in files if path.is_file()} == {
            name: 0o600 for name in names if (folder / name).is_file()
        }
    assert mode(folder) == 0o700 and mode(folder.parent) == 0o700


async def test_loose_files_from_before_are_tightened(
    tmp_path: Path, admin_token: str, open_umask: None
) -> None:
    tmp_path.chmod(0o750)
    config = make_config(tmp_path)
    async with run_relay(config):
        pass
    database = config.database_path
    secret = database.with_name(database.name + ".secret")
    for path in (database, secret):
        path.chmod(0o644)
    async with run_relay(config) as relay:
        await relay.state.db.flush()
        assert mode(database) == 0o600 and mode(secret) == 0o600
        wal = database.with_name(database.name + "-wal")
        assert mode(wal) == 0o600
    assert mode(tmp_path) == 0o750  # a folder relay did not make is left as the operator set it


async def test_archives_are_owner_only(tmp_path: Path, open_umask: None) -> None:
    database = tmp_path / "relay.db"
    db = await Database.open(database, flush_interval_s=0.001)
    try:
        old_ms = int(time.time() * 1000) - 200 * DAY_MS
        await db.write(
            lambda conn: conn.execute(
                "INSERT INTO usage (ts_ms, request_id, account_id, endpoint, status) "
                "VALUES (?, 'req-old', 'acct_a', 'chat', 200)",
                (old_ms,),
            )
        )
        report = await run_retention(db, archive_dir_for(database), now_ms=int(time.time() * 1000))
    finally:
        await db.close()
    folder = archive_dir_for(database)
    assert report.archives_written, report
    assert mode(folder) == 0o700
    assert all(mode(path) == 0o600 for path in folder.iterdir())
