"""Numbered schema migrations for relay's SQLite file, applied at start-up.

``MIGRATIONS`` is an ordered list of ``Migration(number, name, sql)``. ``apply_migrations``
runs every migration the database has not seen yet, each inside its own ``BEGIN IMMEDIATE``
transaction together with its row in ``schema_migrations``, so a crash mid-way leaves either
the whole migration or none of it. Applying twice is a no-op. A database that records a
migration number newer than this code knows is refused with ``MigrationError``: running old
code against a newer schema could silently corrupt money data.

Conventions of the schema: times are integer unix milliseconds (``*_ms``), money is integer
micro-USD (``*_micros``), multipliers are decimal strings. Never edit a released migration;
append a new one.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import NamedTuple

__all__ = [
    "MIGRATIONS",
    "Migration",
    "MigrationError",
    "applied_migrations",
    "apply_migrations",
    "split_statements",
]


class Migration(NamedTuple):
    number: int
    name: str
    sql: str


class MigrationError(RuntimeError):
    """The database's schema cannot be brought to what this code expects."""


_CORE_SCHEMA = """
CREATE TABLE accounts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    mode TEXT NOT NULL CHECK (mode IN ('prepaid', 'postpaid')),
    credit_limit_micros INTEGER NOT NULL DEFAULT 0 CHECK (credit_limit_micros >= 0),
    status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    price_multiplier TEXT NOT NULL DEFAULT '1',
    rpm INTEGER NOT NULL DEFAULT 0,
    tpm INTEGER NOT NULL DEFAULT 0,
    concurrency INTEGER NOT NULL DEFAULT 0,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts (id),
    label TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    last4 TEXT NOT NULL,
    models TEXT NOT NULL DEFAULT '[]',
    endpoints TEXT NOT NULL DEFAULT '[]',
    spend_cap_micros INTEGER NOT NULL DEFAULT 0,
    rpm INTEGER NOT NULL DEFAULT 0,
    tpm INTEGER NOT NULL DEFAULT 0,
    concurrency INTEGER NOT NULL DEFAULT 100,
    price_multiplier TEXT NOT NULL DEFAULT '1',
    expires_at_ms INTEGER,
    status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked', 'suspended')),
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    last_used_at_ms INTEGER
);
CREATE INDEX api_keys_account_id ON api_keys (account_id);

CREATE TABLE ledger (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id TEXT NOT NULL REFERENCES accounts (id),
    kind TEXT NOT NULL CHECK (kind IN ('credit', 'charge', 'adjustment', 'refund')),
    amount_micros INTEGER NOT NULL,
    reference TEXT NOT NULL,
    key_id TEXT,
    request_id TEXT,
    note TEXT,
    created_at_ms INTEGER NOT NULL
);
CREATE INDEX ledger_account_id ON ledger (account_id, id);
CREATE INDEX ledger_key_id ON ledger (key_id);
-- A retried top-up or refund with the same reference must not credit twice.
CREATE UNIQUE INDEX ledger_credit_reference ON ledger (account_id, reference)
    WHERE kind IN ('credit', 'refund');
-- One charge per request, whatever retries or restarts happen.
CREATE UNIQUE INDEX ledger_charge_reference ON ledger (reference) WHERE kind = 'charge';
CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
BEGIN
    SELECT RAISE(ABORT, 'ledger is append-only');
END;
CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
BEGIN
    SELECT RAISE(ABORT, 'ledger is append-only');
END;

CREATE TABLE usage (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL UNIQUE,
    ts_ms INTEGER NOT NULL,
    account_id TEXT,
    key_id TEXT,
    endpoint TEXT NOT NULL,
    model TEXT,
    provider TEXT,
    upstream_model TEXT,
    upstream_request_id TEXT,
    status INTEGER NOT NULL,
    error_code TEXT,
    stream INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cached_tokens INTEGER NOT NULL DEFAULT 0,
    cache_write_tokens INTEGER NOT NULL DEFAULT 0,
    units INTEGER NOT NULL DEFAULT 0,
    cost_micros INTEGER NOT NULL DEFAULT 0,
    usage_estimated INTEGER NOT NULL DEFAULT 0,
    latency_ms INTEGER,
    ttfb_ms INTEGER
);
CREATE INDEX usage_ts ON usage (ts_ms);
CREATE INDEX usage_account_ts ON usage (account_id, ts_ms);
CREATE INDEX usage_key_ts ON usage (key_id, ts_ms);
CREATE INDEX usage_model_ts ON usage (model, ts_ms);

CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT,
    detail TEXT NOT NULL DEFAULT '{}',
    prev_hash TEXT NOT NULL DEFAULT '',
    hash TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_ts ON audit (ts_ms);

CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

_ARCHIVES_SCHEMA = """
-- One row per archive file beside the database (relay.usage.retention). An archive holds the
-- rows of one table matching account_id IS account_id AND from_ms <= ts_ms < until_ms
-- AND id <= max_id; purged becomes 1 once those rows are deleted from the hot table,
-- so a crash between writing the file and deleting the rows is finished, not redone.
CREATE TABLE archives (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('usage', 'audit')),
    account_id TEXT,
    month TEXT NOT NULL,
    rows INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    from_ms INTEGER NOT NULL,
    until_ms INTEGER NOT NULL,
    max_id INTEGER NOT NULL,
    purged INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX archives_kind_account_month ON archives (kind, account_id, month);
"""

_VIDEO_JOBS_SCHEMA = """
-- Async video generation jobs (relay.jobs.video). No prompt is stored. A job's id is its
-- usage row's request_id and its charge's reference, so it is settled at most once.
CREATE TABLE video_jobs (
    id TEXT PRIMARY KEY,
    account_id TEXT,
    key_id TEXT,
    model TEXT NOT NULL,
    provider TEXT NOT NULL,
    upstream_model TEXT NOT NULL,
    upstream_id TEXT NOT NULL,
    seconds TEXT NOT NULL,
    size TEXT,
    estimate_micros INTEGER NOT NULL,
    usd_per_second TEXT NOT NULL,
    price_multiplier TEXT NOT NULL DEFAULT '1',
    created_at_ms INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued', 'in_progress', 'completed', 'failed')),
    progress INTEGER NOT NULL DEFAULT 0,
    cost_micros INTEGER,
    error_code TEXT,
    updated_at_ms INTEGER NOT NULL,
    completed_at_ms INTEGER
);
CREATE INDEX video_jobs_status ON video_jobs (status);
CREATE INDEX video_jobs_account ON video_jobs (account_id, created_at_ms);
"""

_CONSOLE_SCHEMA = """
-- The web console (relay.console): users, memberships, sessions, invites, tickets.
CREATE TABLE console_users (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    operator INTEGER NOT NULL DEFAULT 0 CHECK (operator IN (0, 1)),
    status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    -- Bumped by a password change: sessions made under an older version are dead.
    session_version INTEGER NOT NULL DEFAULT 1,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);

CREATE TABLE console_memberships (
    account_id TEXT NOT NULL REFERENCES accounts (id),
    user_id TEXT NOT NULL REFERENCES console_users (id),
    role TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (account_id, user_id)
) WITHOUT ROWID;
CREATE INDEX console_memberships_user ON console_memberships (user_id);

-- id_hash is the SHA-256 of the random session id the signed cookie carries.
CREATE TABLE console_sessions (
    id_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES console_users (id),
    session_version INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX console_sessions_user ON console_sessions (user_id);

CREATE TABLE console_invites (
    id_hash TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts (id),
    role TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    created_by TEXT NOT NULL REFERENCES console_users (id),
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    used_at_ms INTEGER,
    used_by TEXT REFERENCES console_users (id)
) WITHOUT ROWID;
CREATE INDEX console_invites_account ON console_invites (account_id, created_at_ms);

-- Who made a key in the console: members may manage only their own keys.
CREATE TABLE console_key_creators (
    key_id TEXT PRIMARY KEY REFERENCES api_keys (id),
    user_id TEXT NOT NULL REFERENCES console_users (id)
) WITHOUT ROWID;
CREATE INDEX console_key_creators_user ON console_key_creators (user_id);

CREATE TABLE console_tickets (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id TEXT NOT NULL REFERENCES accounts (id),
    opened_by TEXT NOT NULL REFERENCES console_users (id),
    subject TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'answered', 'closed')),
    request_id TEXT,
    payment_reference TEXT,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
CREATE INDEX console_tickets_account ON console_tickets (account_id, id);
CREATE INDEX console_tickets_status ON console_tickets (status, id);

CREATE TABLE console_ticket_messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ticket_id INTEGER NOT NULL REFERENCES console_tickets (id),
    author_id TEXT NOT NULL REFERENCES console_users (id),
    from_operator INTEGER NOT NULL DEFAULT 0,
    body TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE INDEX console_ticket_messages_ticket ON console_ticket_messages (ticket_id, id);

-- Request logs page newest first by id (keyset), per account, key, model, or errors only.
CREATE INDEX usage_account_id ON usage (account_id, id);
CREATE INDEX usage_key_id ON usage (key_id, id);
CREATE INDEX usage_account_model_id ON usage (account_id, model, id);
CREATE INDEX usage_account_errors ON usage (account_id, id) WHERE status >= 400;
CREATE INDEX usage_key_errors ON usage (key_id, id) WHERE status >= 400;
CREATE INDEX usage_account_model_errors ON usage (account_id, model, id) WHERE status >= 400;

-- Spend per account, UTC day (unix ms / 86400000) and model, so the overview's 30-day
-- charts read a few hundred rows, not every usage row. No trigger keeps it: the writer
-- runs relay.usage.rollup.add_to_daily_rollup next to each usage insert, in the same
-- transaction (that module says why). Deleting usage rows (archiving) leaves the totals
-- alone. (A comment only: editing it changes no schema.)
CREATE TABLE usage_daily (
    account_id TEXT NOT NULL,
    day INTEGER NOT NULL,
    model TEXT NOT NULL,
    requests INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    cost_micros INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    PRIMARY KEY (account_id, day, model)
) WITHOUT ROWID;
INSERT INTO usage_daily
SELECT COALESCE(account_id, ''), ts_ms / 86400000, COALESCE(model, ''), COUNT(*),
       SUM(status >= 400), SUM(cost_micros), SUM(prompt_tokens), SUM(completion_tokens)
FROM usage GROUP BY 1, 2, 3;
"""

_PAYMENTS_SCHEMA = """
-- Payments (relay.payments): one row per top-up attempt, card or manual. A credited
-- payment's ledger reference is its provider_payment_id (a Stripe Checkout Session or
-- PaymentIntent id, or the manual reference), so the ledger's unique index guards it too.
CREATE TABLE payments (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts (id),
    provider TEXT NOT NULL CHECK (provider IN ('stripe', 'manual')),
    provider_payment_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('topup', 'auto_topup', 'manual')),
    amount_micros INTEGER NOT NULL CHECK (amount_micros >= 0),
    currency TEXT NOT NULL,
    amount_minor INTEGER NOT NULL CHECK (amount_minor >= 0),
    status TEXT NOT NULL CHECK (status IN ('pending', 'paid', 'failed')),
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    receipt_number TEXT UNIQUE,
    failure_reason TEXT
);
CREATE UNIQUE INDEX payments_provider_payment
    ON payments (provider, provider_payment_id, account_id);
CREATE INDEX payments_account ON payments (account_id, created_at_ms);
CREATE INDEX payments_pending_kind ON payments (kind, status, account_id);

-- Webhook events already handled: a replayed delivery is answered without effect.
CREATE TABLE payment_events (
    event_id TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    type TEXT NOT NULL,
    outcome TEXT NOT NULL,
    received_at_ms INTEGER NOT NULL
) WITHOUT ROWID;

-- Numbered receipts R-YYYY-NNNNNN, one per credited payment, numbered in the credit's
-- transaction. Seller details are copied at issue time; buyer_name is erased on deletion.
CREATE TABLE receipts (
    number TEXT PRIMARY KEY,
    year INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    payment_id TEXT NOT NULL UNIQUE REFERENCES payments (id),
    account_id TEXT NOT NULL REFERENCES accounts (id),
    buyer_name TEXT NOT NULL,
    provider TEXT NOT NULL,
    payment_reference TEXT NOT NULL,
    amount_micros INTEGER NOT NULL,
    currency TEXT NOT NULL,
    amount_minor INTEGER NOT NULL,
    seller_name TEXT NOT NULL,
    seller_address TEXT NOT NULL,
    seller_tax_id TEXT,
    issued_at_ms INTEGER NOT NULL,
    UNIQUE (year, seq)
);
CREATE INDEX receipts_account ON receipts (account_id, issued_at_ms);

-- The provider's customer and saved card per account (what auto top-up charges).
CREATE TABLE payment_customers (
    account_id TEXT PRIMARY KEY REFERENCES accounts (id),
    provider TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    payment_method_id TEXT,
    updated_at_ms INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE auto_topups (
    account_id TEXT PRIMARY KEY REFERENCES accounts (id),
    enabled INTEGER NOT NULL CHECK (enabled IN (0, 1)),
    trigger_micros INTEGER NOT NULL CHECK (trigger_micros >= 0),
    amount_micros INTEGER NOT NULL CHECK (amount_micros > 0),
    monthly_cap_micros INTEGER NOT NULL CHECK (monthly_cap_micros >= 0),
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    updated_at_ms INTEGER NOT NULL
) WITHOUT ROWID;

-- Banners for the console (e.g. a failed auto top-up) until someone dismisses them.
CREATE TABLE notices (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id TEXT NOT NULL REFERENCES accounts (id),
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    dismissed_at_ms INTEGER
);
CREATE INDEX notices_account ON notices (account_id, id);

-- Account deletion: suspended at request time, personal data erased after erase_after_ms.
CREATE TABLE deletion_requests (
    account_id TEXT PRIMARY KEY REFERENCES accounts (id),
    requested_at_ms INTEGER NOT NULL,
    requested_by TEXT NOT NULL,
    erase_after_ms INTEGER NOT NULL,
    erased_at_ms INTEGER,
    pseudonym TEXT
) WITHOUT ROWID;
CREATE INDEX deletion_requests_due ON deletion_requests (erased_at_ms, erase_after_ms);
"""

# Budgets that reset on calendar boundaries (relay.money.budget): with a budget_period a
# key's spend_cap_micros applies per period; an account may have a budget of its own.
_BUDGETS_SCHEMA = """
ALTER TABLE api_keys ADD COLUMN budget_period TEXT
    CHECK (budget_period IS NULL OR budget_period IN ('day', 'week', 'month'));
ALTER TABLE accounts ADD COLUMN budget_micros INTEGER NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN budget_period TEXT
    CHECK (budget_period IS NULL OR budget_period IN ('day', 'week', 'month'));
CREATE INDEX ledger_charges_account_time ON ledger (account_id, created_at_ms)
    WHERE kind = 'charge';
"""

# Operator alerts (relay.alerts.outbox): one row per alert and sink, kept with its outcome.
_ALERTS_SCHEMA = """
CREATE TABLE alert_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sink_index INTEGER NOT NULL,
    sink_name TEXT NOT NULL,
    event TEXT NOT NULL,
    subject TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at_ms INTEGER NOT NULL,
    delivered_at_ms INTEGER,
    failed_at_ms INTEGER,
    last_error TEXT
);
CREATE INDEX alert_outbox_due ON alert_outbox (delivered_at_ms, failed_at_ms, next_attempt_at_ms);
"""

# Password reset links emailed to console users (relay.console.password_resets).
_PASSWORD_RESETS_SCHEMA = """
CREATE TABLE console_password_resets (
    id_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES console_users (id),
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    used_at_ms INTEGER
) WITHOUT ROWID;
"""

# Receipts and monthly statements mailed to account owners (relay.payments.billing_mail):
# one row per (kind, account, ref), so a month's statement is mailed once per account.
_BILLING_MAIL_SCHEMA = """
CREATE TABLE billing_mail (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('receipt', 'statement')),
    account_id TEXT NOT NULL REFERENCES accounts (id),
    -- The receipt number, or the statement's month (YYYY-MM).
    ref TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'sent', 'skipped', 'failed')),
    created_at_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at_ms INTEGER NOT NULL,
    done_at_ms INTEGER,
    last_error TEXT,
    UNIQUE (kind, account_id, ref)
);
CREATE INDEX billing_mail_due ON billing_mail (status, next_attempt_at_ms);
"""

# Every index on ``usage`` is paid by every request (the writer's per-row insert cost),
# so only those a reader needs stay. A key's summary searches ``usage_key_id`` (a key's
# rows in the 90-day hot table) and a model's across all accounts searches ``usage_ts``
# (the time range), as the EXPLAIN tests in tests/test_usage_queries.py check.
_LEANER_USAGE_INDEXES = """
DROP INDEX IF EXISTS usage_key_ts;
DROP INDEX IF EXISTS usage_model_ts;
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "core schema", _CORE_SCHEMA),
    Migration(2, "usage and audit archives", _ARCHIVES_SCHEMA),
    Migration(3, "video jobs", _VIDEO_JOBS_SCHEMA),
    Migration(4, "console users, sessions, tickets; usage rollup", _CONSOLE_SCHEMA),
    Migration(5, "payments, receipts, auto top-up, notices, deletion requests", _PAYMENTS_SCHEMA),
    Migration(6, "budget periods on keys, budgets on accounts", _BUDGETS_SCHEMA),
    Migration(7, "alert outbox", _ALERTS_SCHEMA),
    Migration(8, "console password reset links", _PASSWORD_RESETS_SCHEMA),
    Migration(9, "billing mail: receipts and monthly statements", _BILLING_MAIL_SCHEMA),
    Migration(10, "drop usage indexes no reader needs", _LEANER_USAGE_INDEXES),
)

_CREATE_TRACKING_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    number INTEGER PRIMARY KEY,
    name TEXT,
    applied_at_ms INTEGER
)
"""


def split_statements(script: str) -> list[str]:
    """Split an SQL script into single statements (trigger bodies stay whole).

    ``executescript`` would commit any open transaction first, so migrations run their
    statements one by one inside a transaction we control instead.
    """
    statements: list[str] = []
    current = ""
    for piece in script.split(";"):
        current += piece + ";"
        if sqlite3.complete_statement(current):
            if _has_code(current):
                statements.append(current.strip())
            current = ""
    if _has_code(current.removesuffix(";")):
        raise MigrationError(f"incomplete SQL statement in migration: {current.strip()[:60]!r}")
    return statements


def _has_code(sql: str) -> bool:
    code_lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return bool("".join(code_lines).strip(" \t\n;"))


def applied_migrations(conn: sqlite3.Connection) -> list[int]:
    """Numbers of the migrations recorded in ``conn``'s database, ascending."""
    rows = conn.execute("SELECT number FROM schema_migrations ORDER BY number").fetchall()
    return [int(row[0]) for row in rows]


def apply_migrations(
    conn: sqlite3.Connection,
    migrations: Sequence[Migration] = MIGRATIONS,
    *,
    now_ms: int | None = None,
) -> list[int]:
    """Apply the migrations ``conn`` has not seen yet; return the numbers applied.

    ``conn`` must be in autocommit mode (``isolation_level=None``) with no open
    transaction. Raises ``MigrationError`` if the database is newer than ``migrations``.
    """
    _check_numbering(migrations)
    conn.execute(_CREATE_TRACKING_TABLE)
    known = max((m.number for m in migrations), default=0)
    done = set(applied_migrations(conn))
    newest = max(done, default=0)
    if newest > known:
        raise MigrationError(
            f"database schema is at migration {newest}, but this relay only knows up to "
            f"{known}: upgrade relay or restore a matching database"
        )
    applied: list[int] = []
    for migration in migrations:
        if migration.number not in done:
            _apply_one(conn, migration, now_ms)
            applied.append(migration.number)
    return applied


def _check_numbering(migrations: Sequence[Migration]) -> None:
    numbers = [m.number for m in migrations]
    if numbers != list(range(1, len(numbers) + 1)):
        raise MigrationError(f"migrations must be numbered 1, 2, 3, ... in order; got {numbers}")


def _apply_one(conn: sqlite3.Connection, migration: Migration, now_ms: int | None) -> None:
    applied_at_ms = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in split_statements(migration.sql):
            conn.execute(statement)
        conn.execute(
            "INSERT INTO schema_migrations (number, name, applied_at_ms) VALUES (?, ?, ?)",
            (migration.number, migration.name, applied_at_ms),
        )
        conn.execute("COMMIT")
    except BaseException as exc:
        # Leave the database exactly as it was before this migration started.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise MigrationError(
                f"migration {migration.number} ({migration.name}) failed: {exc}"
            ) from exc
        raise
