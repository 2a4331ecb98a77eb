"""Migrations 2, 3, 7, 9 and 10: archives, video jobs, the alert outbox, billing mail, and
the usage indexes no reader needs.

SQLite's scripts are the embedded relay's, byte for byte as released; PostgreSQL's create
(or drop) the same tables, columns and indexes.
"""

from __future__ import annotations

__all__ = [
    "POSTGRESQL_ALERTS",
    "POSTGRESQL_ARCHIVES",
    "POSTGRESQL_BILLING_MAIL",
    "POSTGRESQL_LEANER_USAGE_INDEXES",
    "POSTGRESQL_VIDEO_JOBS",
    "SQLITE_ALERTS",
    "SQLITE_ARCHIVES",
    "SQLITE_BILLING_MAIL",
    "SQLITE_LEANER_USAGE_INDEXES",
    "SQLITE_VIDEO_JOBS",
]

SQLITE_ARCHIVES = """
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

POSTGRESQL_ARCHIVES = """
CREATE TABLE archives (
    name text PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('usage', 'audit')),
    account_id text,
    month text NOT NULL,
    rows bigint NOT NULL,
    bytes bigint NOT NULL,
    sha256 text NOT NULL,
    created_at_ms bigint NOT NULL,
    from_ms bigint NOT NULL,
    until_ms bigint NOT NULL,
    max_id bigint NOT NULL,
    purged bigint NOT NULL DEFAULT 0
);
CREATE INDEX archives_kind_account_month ON archives (kind, account_id, month);
"""

SQLITE_VIDEO_JOBS = """
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

POSTGRESQL_VIDEO_JOBS = """
CREATE TABLE video_jobs (
    id text PRIMARY KEY,
    account_id text,
    key_id text,
    model text NOT NULL,
    provider text NOT NULL,
    upstream_model text NOT NULL,
    upstream_id text NOT NULL,
    seconds text NOT NULL,
    size text,
    estimate_micros bigint NOT NULL,
    usd_per_second text NOT NULL,
    price_multiplier text NOT NULL DEFAULT '1',
    created_at_ms bigint NOT NULL,
    status text NOT NULL CHECK (status IN ('queued', 'in_progress', 'completed', 'failed')),
    progress bigint NOT NULL DEFAULT 0,
    cost_micros bigint,
    error_code text,
    updated_at_ms bigint NOT NULL,
    completed_at_ms bigint
);
CREATE INDEX video_jobs_status ON video_jobs (status);
CREATE INDEX video_jobs_account ON video_jobs (account_id, created_at_ms);
"""

# Operator alerts (relay.alerts.outbox): one row per alert and sink, kept with its outcome.
SQLITE_ALERTS = """
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

POSTGRESQL_ALERTS = """
CREATE TABLE alert_outbox (
    id bigserial PRIMARY KEY,
    sink_index bigint NOT NULL,
    sink_name text NOT NULL,
    event text NOT NULL,
    subject text NOT NULL,
    payload text NOT NULL,
    created_at_ms bigint NOT NULL,
    attempts bigint NOT NULL DEFAULT 0,
    next_attempt_at_ms bigint NOT NULL,
    delivered_at_ms bigint,
    failed_at_ms bigint,
    last_error text
);
CREATE INDEX alert_outbox_due ON alert_outbox (delivered_at_ms, failed_at_ms, next_attempt_at_ms);
"""

# Receipts and monthly statements mailed to account owners (relay.payments.billing_mail):
# one row per (kind, account, ref), so a month's statement is mailed once per account.
SQLITE_BILLING_MAIL = """
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

POSTGRESQL_BILLING_MAIL = """
CREATE TABLE billing_mail (
    id bigserial PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('receipt', 'statement')),
    account_id text NOT NULL REFERENCES accounts (id),
    ref text NOT NULL,
    status text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'sent', 'skipped', 'failed')),
    created_at_ms bigint NOT NULL,
    attempts bigint NOT NULL DEFAULT 0,
    next_attempt_at_ms bigint NOT NULL,
    done_at_ms bigint,
    last_error text,
    UNIQUE (kind, account_id, ref)
);
CREATE INDEX billing_mail_due ON billing_mail (status, next_attempt_at_ms);
"""

# Every index on ``usage`` is paid by every request (the writer's per-row insert cost),
# so only those a reader needs stay. A key's summary searches ``usage_key_id`` (a key's
# rows in the 90-day hot table) and a model's across all accounts searches ``usage_ts``
# (the time range), as the EXPLAIN tests in tests/test_usage_queries.py check.
SQLITE_LEANER_USAGE_INDEXES = """
DROP INDEX IF EXISTS usage_key_ts;
DROP INDEX IF EXISTS usage_model_ts;
"""

POSTGRESQL_LEANER_USAGE_INDEXES = """
DROP INDEX usage_key_ts;
DROP INDEX usage_model_ts;
"""
