"""``relay migrate --to postgresql://…`` against a real, throwaway PostgreSQL.

The embedded database is built by driving a real relay (accounts, keys, top-ups, chats
streamed and not, console users, admin actions, a revoked key), archiving its first
months with the real retention job, then serving again; a refund, an adjustment, an
unfinished video job, an undelivered alert and amounts beyond 2^53 micro-USD are added
the way the code paths that write them do (one row each). The copy must verify (counts,
every value, ledger sums and maintained balances, key spend, the audit chain), refuse a
non-empty target, refuse a database in use, and fail (committing nothing) when a row is
changed between copy and verification.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import config_text, make_config
from support_accounts import auth, chat_body, run_relay

import relay.cli
from relay.cli.migrate import run_migration
from relay.cluster.pg_copy import COPY_ORDER, MigrateError
from relay.cluster.pg_money import PgMoneyStore
from relay.cluster.pg_rollup import catch_up, rolled_through
from relay.cluster.pg_schema import migrate
from relay.identity.audit import AUDIT_COLUMNS, row_hash, verify_chain
from relay.identity.server_secret import ServerSecret, secret_path_for
from relay.storage.db import Database
from relay.storage.migrations import MIGRATIONS, apply_migrations
from relay.usage.retention import archive_dir_for, run_retention

asyncpg = pytest.importorskip("asyncpg")

DAY_MS = 86_400_000
BEYOND_FLOAT = 2**53 + 1  # the first integer a float64 cannot hold
HUGE = 2**62 - 1  # near bigint's top: still exact, and the account's sum still fits


@dataclass
class Embedded:
    database: Path
    config_file: Path
    acme: str
    whale: str
    acme_key: str


def _sqlite(database: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(database)) as conn:
        rows = conn.execute(sql, params).fetchall()
        conn.commit()
    return rows


async def _chats(relay: Any, secret: str, count: int) -> None:
    for n in range(count):
        body = chat_body(stream=n % 2 == 1)
        response = await relay.client.post("/v1/chat/completions", json=body, headers=auth(secret))
        assert response.status_code == 200, response.text


@pytest.fixture
async def embedded(tmp_path: Path, admin_token: str) -> Embedded:
    database = tmp_path / "relay.db"
    config_file = tmp_path / "relay.toml"
    config_file.write_text(config_text(database))
    async with run_relay(make_config(tmp_path)) as relay:
        acme = await relay.create_account("acme")
        assert (await relay.credit(acme["id"], "25", "topup-1")).status_code == 201
        key = await relay.create_key(acme["id"], "ci", spend_cap_usd="20")
        spare = await relay.create_key(acme["id"], "spare")
        await _chats(relay, key["secret"], 6)
        whale = await relay.create_account("whale", mode="postpaid", credit_limit_usd="100")
        big = await relay.credit(whale["id"], "9007199254.740993", "wire-1")  # BEYOND_FLOAT
        assert big.status_code == 201, big.text
        for body in (
            {"email": "ops@relay.test", "password": "correct horse 1", "operator": True},
            {
                "email": "m@acme.test",
                "password": "correct horse 2",
                "account": "acme",
                "role": "member",
            },
        ):
            assert (await relay.client.post("/admin/users", json=body)).status_code == 201
        revoked = await relay.client.post(f"/admin/keys/{spare['id']}/revoke")
        assert revoked.is_success, revoked.text
    # The first requests age past the 90 hot days: the real retention job archives them.
    db = await Database.open(database, flush_interval_s=0.001)
    try:
        report = await run_retention(db, archive_dir_for(database), now_ms=_now_ms() + 100 * DAY_MS)
        assert report.usage_rows_archived == 6 and report.usage_rows_deleted == 6
    finally:
        await db.close()
    assert _sqlite(database, "SELECT COUNT(*) FROM archives")[0][0] >= 1
    async with run_relay(make_config(tmp_path)) as relay:
        await _chats(relay, key["secret"], 4)
        patched = await relay.client.patch(f"/admin/accounts/{acme['id']}", json={"rpm": 600})
        assert patched.is_success, patched.text
    now = _now_ms()
    _sqlite(
        database,
        "INSERT INTO ledger (account_id, kind, amount_micros, reference, note, created_at_ms) "
        "VALUES (?, 'refund', 1234, 'refund-1', 'goodwill', ?), "
        "(?, 'adjustment', -17, 'adj-1', NULL, ?), (?, 'credit', ?, 'wire-2', NULL, ?)",
        (acme["id"], now, acme["id"], now, whale["id"], HUGE - BEYOND_FLOAT, now),
    )
    _sqlite(
        database,
        "INSERT INTO video_jobs (id, account_id, key_id, model, provider, upstream_model, "
        "upstream_id, seconds, estimate_micros, usd_per_second, created_at_ms, status, "
        "updated_at_ms) VALUES ('vid_1', ?, ?, 'mock-video', 'mock', 'v', 'up_1', '4', "
        "400000, '0.1', ?, 'in_progress', ?)",
        (acme["id"], key["id"], now, now),
    )
    _sqlite(
        database,
        "INSERT INTO alert_outbox (sink_index, sink_name, event, subject, payload, "
        "created_at_ms, next_attempt_at_ms) VALUES (0, 'ops', 'low_balance', 's', '{}', ?, ?)",
        (now, now),
    )
    return Embedded(database, config_file, acme["id"], whale["id"], key["id"])


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _audit_key(database: Path) -> bytes:
    secret = secret_path_for(database).read_text().strip()
    return ServerSecret(bytes.fromhex(secret)).subkey("audit")


async def _pg_count(dsn: str, table: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(f"SELECT COUNT(*) FROM {table}"))
    finally:
        await conn.close()


async def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    # The command runs its own event loop (asyncio.run): off this test's loop.
    status = await asyncio.to_thread(relay.cli.main, list(argv))
    out, err = capsys.readouterr()
    return status, out, err


async def test_a_driven_database_migrates_and_verifies(
    embedded: Embedded, pg_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = await _cli(
        capsys, "migrate", "-c", str(embedded.config_file), "--to", pg_database, "--json"
    )
    assert status == 0, err
    assert '"ok": true' in out and '"committed": true' in out
    assert '"audit_chain_ok": true' in out and '"unfinished_video_jobs": 1' in out
    conn = await asyncpg.connect(pg_database)
    try:
        for table in COPY_ORDER:
            embedded_rows = _sqlite(embedded.database, f"SELECT COUNT(*) FROM {table}")[0][0]
            assert await conn.fetchval(f"SELECT COUNT(*) FROM {table}") == embedded_rows, table
        # Money: every account's balance is its ledger sum on both engines, to the micro.
        sums = dict(
            _sqlite(
                embedded.database, "SELECT account_id, SUM(amount_micros) FROM ledger GROUP BY 1"
            )
        )
        balances = {
            r["id"]: r["balance_micros"]
            for r in await conn.fetch("SELECT id, balance_micros FROM accounts")
        }
        assert balances == sums
        assert balances[embedded.whale] == HUGE  # beyond 2^53, never rounded
        assert (
            await conn.fetchval("SELECT amount_micros FROM ledger WHERE reference = 'wire-1'")
            == BEYOND_FLOAT
        )
        spent = _sqlite(
            embedded.database,
            "SELECT -SUM(amount_micros) FROM ledger WHERE kind = 'charge' AND key_id = ?",
            (embedded.acme_key,),
        )[0][0]
        assert spent > 0
        assert (
            await conn.fetchval(
                "SELECT spent_micros FROM api_keys WHERE id = $1", embedded.acme_key
            )
            == spent
        )
        # The audit chain, byte for byte: the same verifier accepts PostgreSQL's rows.
        rows = [
            tuple(r) for r in await conn.fetch(f"SELECT {AUDIT_COLUMNS} FROM audit ORDER BY id")
        ]
        report = verify_chain(rows, _audit_key(embedded.database))
        # Retention archived the older rows; the hot chain continues from its first row.
        assert report.ok and report.rows >= 2 and (report.first_id or 0) > 1, report
        assert rows == _sqlite(embedded.database, f"SELECT {AUDIT_COLUMNS} FROM audit ORDER BY id")
        # Sequences continue past the copied ids; the cluster money store works on the copy.
        for table in ("ledger", "usage", "audit", "alert_outbox"):
            sequence = await conn.fetchval("SELECT pg_get_serial_sequence($1, 'id')", table)
            assert await conn.fetchval(f"SELECT last_value FROM {sequence}") == (
                await conn.fetchval(f"SELECT max(id) FROM {table}")
            ), table
        # The copied usage_daily counts the copied rows (and those retention archived): the
        # rollup's mark starts after them, and a rollup adds nothing.
        assert await rolled_through(conn) == await conn.fetchval("SELECT max(id) FROM usage")
        assert (await catch_up(conn)).rows == 0
        daily = "SELECT * FROM usage_daily ORDER BY 1, 2, 3"
        assert [tuple(r) for r in await conn.fetch(daily)] == _sqlite(embedded.database, daily)
        last_id = await conn.fetchval("SELECT max(id) FROM ledger")
        # The archive files are stored in PostgreSQL beside their records, byte for byte.
        folder = archive_dir_for(embedded.database)
        for (name,) in _sqlite(embedded.database, "SELECT name FROM archives"):
            chunks = await conn.fetch(
                "SELECT data FROM archive_chunks WHERE name = $1 ORDER BY seq", name
            )
            assert b"".join(bytes(r["data"]) for r in chunks) == (folder / name).read_bytes()
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(pg_database, min_size=1, max_size=2)
    try:
        money = PgMoneyStore(pool, "migrated")
        assert await money.credit(embedded.acme, 5, reference="after-migration")
        assert await pool.fetchval("SELECT max(id) FROM ledger") == last_id + 1
        assert (await money.snapshot(embedded.acme)).balance_micros == sums[embedded.acme] + 5
    finally:
        await pool.close()
    # A second run finds the target non-empty and changes nothing.
    before = await _pg_count(pg_database, "ledger")
    status, out, err = await _cli(
        capsys, "migrate", "-c", str(embedded.config_file), "--to", pg_database
    )
    assert status == 1 and "already holds relay rows" in err
    assert await _pg_count(pg_database, "ledger") == before


TAMPERS = {
    "usage cost": (
        "UPDATE usage SET cost_micros = cost_micros + 1 WHERE id = (SELECT max(id) FROM usage)",
        "usage: ",
    ),
    "audit detail": (
        "UPDATE audit SET detail = '{\"rpm\":6000}' WHERE id = (SELECT max(id) FROM audit)",
        "audit chain: embedded verifies",
    ),
    "extra charge": (
        "INSERT INTO ledger (account_id, kind, amount_micros, reference, "
        "created_at_ms) SELECT id, 'charge', -1, 'forged', 0 FROM accounts "
        "WHERE name = 'acme'",
        "PostgreSQL ledger sum",
    ),
    # The maintained sums are guarded by triggers: an intruder would first drop the guard.
    "key spend": (
        "ALTER TABLE api_keys DISABLE TRIGGER api_keys_spent_from_ledger; "
        "UPDATE api_keys SET spent_micros = spent_micros + 1 WHERE spent_micros > 0",
        "spent_micros",
    ),
    "balance": (
        "ALTER TABLE accounts DISABLE TRIGGER accounts_balance_from_ledger; "
        "UPDATE accounts SET balance_micros = balance_micros - 1 WHERE name = 'acme'",
        "PostgreSQL balance",
    ),
}


@pytest.mark.parametrize("tamper", sorted(TAMPERS))
async def test_a_row_changed_between_copy_and_verify_fails_and_commits_nothing(
    embedded: Embedded, pg_database: str, tamper: str
) -> None:
    sql, expected = TAMPERS[tamper]

    async def change_one_row(conn: Any) -> None:
        await conn.execute(sql)

    with pytest.raises(MigrateError) as failed:
        await run_migration(
            embedded.database,
            pg_database,
            secret_path_for(embedded.database),
            before_verify=change_one_row,
        )
    report = failed.value.report
    assert report is not None and not report.ok and not report.committed
    assert any(expected in problem for problem in report.problems), report.problems
    assert "NOT committed" in report.summary()
    assert await _pg_count(pg_database, "accounts") == 0  # rolled back


async def test_a_missing_or_changed_archive_file_fails_and_commits_nothing(
    embedded: Embedded, pg_database: str
) -> None:
    # In cluster mode the archive's bytes live in PostgreSQL; the file is their only copy.
    folder = archive_dir_for(embedded.database)
    names = [row[0] for row in _sqlite(embedded.database, "SELECT name FROM archives")]
    (folder / names[0]).unlink()
    if len(names) > 1:
        (folder / names[1]).write_bytes(b"not the archive")
    with pytest.raises(MigrateError) as failed:
        await run_migration(embedded.database, pg_database, secret_path_for(embedded.database))
    report = failed.value.report
    assert report is not None and not report.committed
    assert f"archive {names[0]}: no file" in report.summary()
    if len(names) > 1:
        assert f"archive {names[1]}: the file differs" in report.summary()
    assert await _pg_count(pg_database, "accounts") == 0  # rolled back


async def test_money_beyond_2_53_and_without_a_secret(
    tmp_path: Path, pg_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A hand-made database: exact amounts near bigint's top; no secret, no chain verdict."""
    database = tmp_path / "relay.db"
    with contextlib.closing(sqlite3.connect(database, isolation_level=None)) as conn:
        apply_migrations(conn, MIGRATIONS)
        conn.execute(
            "INSERT INTO accounts (id, name, mode, created_at_ms, updated_at_ms) "
            "VALUES ('a', 'a', 'prepaid', 0, 0)"
        )
        for n, amount in enumerate((BEYOND_FLOAT, HUGE - BEYOND_FLOAT - 1, 1)):
            conn.execute(
                "INSERT INTO ledger (account_id, kind, amount_micros, reference, "
                "created_at_ms) VALUES ('a', 'credit', ?, ?, ?)",
                (amount, f"r{n}", n),
            )
    (tmp_path / "bad.secret").write_text("not hex\n")
    argv = ["migrate", "-c", str(tmp_path / "none.toml"), "--from", str(database)]
    status, _, err = await _cli(
        capsys, *argv, "--secret", str(tmp_path / "bad.secret"), "--to", pg_database
    )
    assert status == 1 and "not a relay server secret" in err
    # --from without a config file; no server secret beside it (and no audit rows).
    argv = ["migrate", "-c", str(tmp_path / "none.toml"), "--from", str(database), "--json"]
    status, out, err = await _cli(capsys, *argv, "--to", pg_database)
    assert status == 0, err
    report = json.loads(out)
    assert report["ok"] and report["committed"] and report["audit_chain_ok"] is None
    assert report["ledger_total_micros"] == HUGE  # JSON integers: exact too
    # A database that does not exist is a one-line error, not a traceback.
    status, _, err = await _cli(capsys, *argv, "--to", pg_database + "_missing")
    assert status == 1 and err.startswith("relay: cannot connect") and "Traceback" not in err
    conn = await asyncpg.connect(pg_database)
    try:
        assert await conn.fetchval("SELECT balance_micros FROM accounts") == HUGE
        assert await conn.fetchval("SELECT created_at_ms FROM ledger WHERE reference = 'r2'") == 2
    finally:
        await conn.close()


async def test_an_embedded_database_in_use_is_refused(
    tmp_path: Path, admin_token: str, pg_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file = tmp_path / "relay.toml"
    config_file.write_text(config_text(tmp_path / "relay.db"))
    async with run_relay(make_config(tmp_path)) as relay:
        await relay.create_account("acme")
        status, _, err = await _cli(capsys, "migrate", "-c", str(config_file), "--to", pg_database)
        assert status == 1 and "-wal exists" in err
    # Something answering on the config's listen address is a running relay too.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        text = config_text(tmp_path / "relay.db").replace("127.0.0.1:8787", f"127.0.0.1:{port}")
        config_file.write_text(text)
        status, _, err = await _cli(capsys, "migrate", "-c", str(config_file), "--to", pg_database)
        assert status == 1 and f"listening on 127.0.0.1:{port}" in err
    assert await _pg_count_or_none(pg_database) is None  # nothing touched the target


async def _pg_count_or_none(dsn: str) -> int | None:
    conn = await asyncpg.connect(dsn)
    try:
        exists = await conn.fetchval("SELECT to_regclass('accounts') IS NOT NULL")
        return int(await conn.fetchval("SELECT COUNT(*) FROM accounts")) if exists else None
    finally:
        await conn.close()


async def test_every_embedded_table_has_its_columns_in_postgresql(
    tmp_path: Path, pg_database: str
) -> None:
    with contextlib.closing(sqlite3.connect(tmp_path / "e.db", isolation_level=None)) as lite:
        apply_migrations(lite, MIGRATIONS)
        tables = {r[0] for r in lite.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        embedded = {t: [r[1] for r in lite.execute(f"PRAGMA table_info({t})")] for t in tables}
    assert tables - {"schema_migrations", "sqlite_sequence"} == set(COPY_ORDER)
    conn = await asyncpg.connect(pg_database)
    try:
        await migrate(conn)
        for table in COPY_ORDER:
            rows = await conn.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_name = $1",
                table,
            )
            columns = {r["column_name"] for r in rows}
            assert set(embedded[table]) <= columns, (table, set(embedded[table]) - columns)
            # Only the money tables carry more: the sums, holds and recent spend the cluster
            # store keeps, each named by its entry of the migration list.
            extra = columns - set(embedded[table])
            declared = {
                column.partition(".")[2]
                for migration in MIGRATIONS
                for column in migration.postgresql_only.columns
                if column.startswith(f"{table}.")
            }
            assert extra <= declared, (table, extra - declared)
    finally:
        await conn.close()


def _chained_audit_database(path: Path, key: bytes, rows: int) -> None:
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        apply_migrations(conn, MIGRATIONS)
        prev = ""
        for row_id in range(1, rows + 1):
            detail = json.dumps({"n": row_id}, separators=(",", ":"))
            digest = row_hash(
                key,
                row_id=row_id,
                ts_ms=row_id,
                actor="admin-token",
                action="account.update",
                target="a",
                detail=detail,
                prev_hash=prev,
            )
            conn.execute(
                "INSERT INTO audit (id, ts_ms, actor, action, target, detail, prev_hash, hash) "
                "VALUES (?, ?, 'admin-token', 'account.update', 'a', ?, ?, ?)",
                (row_id, row_id, detail, prev, digest),
            )
            prev = digest


async def test_an_unverifiable_audit_chain_is_not_migrated(
    tmp_path: Path, pg_database: str
) -> None:
    """Audit rows without the secret that keys them, or a chain already broken in SQLite:
    the copy would be identical, but nobody could tell it intact, so nothing commits."""
    secret = ServerSecret(bytes(range(32)))
    secret_file = tmp_path / "relay.db.secret"
    secret_file.write_text(bytes(range(32)).hex() + "\n")
    database = tmp_path / "relay.db"
    _chained_audit_database(database, secret.subkey("audit"), 4)
    with pytest.raises(MigrateError) as failed:
        await run_migration(database, pg_database, tmp_path / "elsewhere.secret")
    assert failed.value.report is not None
    assert failed.value.report.problems == [
        "audit chain not verified: the server secret was not found"
    ]
    _sqlite(database, "UPDATE audit SET detail = '{\"n\":0}' WHERE id = 3")
    with pytest.raises(MigrateError) as failed:
        await run_migration(database, pg_database, secret_file)
    assert failed.value.report is not None
    assert failed.value.report.problems == [
        "audit chain was already broken in the embedded database: broken at row 3 "
        "(its contents do not match its hash)"
    ]
    _sqlite(database, "UPDATE audit SET detail = '{\"n\":3}' WHERE id = 3")
    report = await run_migration(database, pg_database, secret_file)
    assert report.ok and report.audit_chain_ok and report.audit_rows == 4
