"""PostgreSQL mirror of every stored table of the embedded schema (relay/storage/migrations.py).

``0005_records``, appended to ``relay.cluster.pg_schema.MIGRATIONS``: every embedded
table other than ``usage`` (``0004_usage``, written by the settler) and the identity
columns of accounts and keys (``0003_identity``), with the embedded column names, plus
the ledger's embedded time column.

Types: every SQLite ``INTEGER`` is ``bigint`` (SQLite's integers are 64-bit, so no value
that fits there overflows here; money stays exact), ``TEXT`` is ``text``; times stay the
embedded integer unix milliseconds (``*_ms``), so every query compares the same numbers
on both engines. 0/1 flags stay integers with the same CHECKs. ``AUTOINCREMENT`` ids are
``bigserial``: a migration copies the ids as they are and then moves each sequence past
the largest id.

The money tables (0001_money) differ from the embedded ones; the mapping:

- ``accounts``: the embedded columns are added by ``0003_identity`` (``name`` nullable,
  unique like the embedded one).
  ``balance_micros``, ``worst_micros`` and ``held_micros`` have no embedded column: the
  balance is the sum of the ledger rows (copied, summed by the ledger's trigger), and
  holds only exist in a running process.
- ``api_keys``: the embedded columns are added by ``0003_identity``. ``spent_micros`` is
  the key's charges, summed by the ledger's trigger exactly as
  ``relay.money.ledger.load_wallet`` sums them.
- ``ledger``: ``created_at_ms`` is added (the embedded time, what every query compares);
  ``created_at`` (timestamptz, from 0001_money) carries the same instant.
"""

from __future__ import annotations

__all__ = ["RECORD_MIGRATIONS"]

_NOW_MS = "(floor(extract(epoch FROM clock_timestamp()) * 1000))::bigint"

_MONEY_COLUMNS = f"""
ALTER TABLE ledger ADD COLUMN created_at_ms bigint NOT NULL DEFAULT {_NOW_MS};
CREATE INDEX ledger_key_id ON ledger (key_id);
CREATE INDEX ledger_charges_account_time ON ledger (account_id, created_at_ms)
    WHERE kind = 'charge';
"""

_AUDIT_AND_META = """
-- Hash-chained (relay.identity.audit): rows are copied byte for byte, ids included,
-- so the chain verifies here with the same verifier.
CREATE TABLE audit (
    id bigserial PRIMARY KEY,
    ts_ms bigint NOT NULL,
    actor text NOT NULL,
    action text NOT NULL,
    target text,
    detail text NOT NULL DEFAULT '{}',
    prev_hash text NOT NULL DEFAULT '',
    hash text NOT NULL DEFAULT ''
);
CREATE INDEX audit_ts ON audit (ts_ms);

CREATE TABLE meta (
    key text PRIMARY KEY,
    value text NOT NULL
);

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

CREATE TABLE usage_daily (
    account_id text NOT NULL,
    day bigint NOT NULL,
    model text NOT NULL,
    requests bigint NOT NULL,
    errors bigint NOT NULL,
    cost_micros bigint NOT NULL,
    prompt_tokens bigint NOT NULL,
    completion_tokens bigint NOT NULL,
    PRIMARY KEY (account_id, day, model)
);
"""

_CONSOLE = """
CREATE TABLE console_users (
    id text PRIMARY KEY,
    email text NOT NULL UNIQUE,
    display_name text NOT NULL,
    password_hash text NOT NULL,
    operator bigint NOT NULL DEFAULT 0 CHECK (operator IN (0, 1)),
    status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    session_version bigint NOT NULL DEFAULT 1,
    created_at_ms bigint NOT NULL,
    updated_at_ms bigint NOT NULL
);

CREATE TABLE console_memberships (
    account_id text NOT NULL REFERENCES accounts (id),
    user_id text NOT NULL REFERENCES console_users (id),
    role text NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    created_at_ms bigint NOT NULL,
    PRIMARY KEY (account_id, user_id)
);
CREATE INDEX console_memberships_user ON console_memberships (user_id);

CREATE TABLE console_sessions (
    id_hash text PRIMARY KEY,
    user_id text NOT NULL REFERENCES console_users (id),
    session_version bigint NOT NULL,
    created_at_ms bigint NOT NULL,
    expires_at_ms bigint NOT NULL
);
CREATE INDEX console_sessions_user ON console_sessions (user_id);

CREATE TABLE console_invites (
    id_hash text PRIMARY KEY,
    account_id text NOT NULL REFERENCES accounts (id),
    role text NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    created_by text NOT NULL REFERENCES console_users (id),
    created_at_ms bigint NOT NULL,
    expires_at_ms bigint NOT NULL,
    used_at_ms bigint,
    used_by text REFERENCES console_users (id)
);
CREATE INDEX console_invites_account ON console_invites (account_id, created_at_ms);

CREATE TABLE console_key_creators (
    key_id text PRIMARY KEY REFERENCES api_keys (id),
    user_id text NOT NULL REFERENCES console_users (id)
);
CREATE INDEX console_key_creators_user ON console_key_creators (user_id);

CREATE TABLE console_tickets (
    id bigserial PRIMARY KEY,
    account_id text NOT NULL REFERENCES accounts (id),
    opened_by text NOT NULL REFERENCES console_users (id),
    subject text NOT NULL,
    status text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'answered', 'closed')),
    request_id text,
    payment_reference text,
    created_at_ms bigint NOT NULL,
    updated_at_ms bigint NOT NULL
);
CREATE INDEX console_tickets_account ON console_tickets (account_id, id);
CREATE INDEX console_tickets_status ON console_tickets (status, id);

CREATE TABLE console_ticket_messages (
    id bigserial PRIMARY KEY,
    ticket_id bigint NOT NULL REFERENCES console_tickets (id),
    author_id text NOT NULL REFERENCES console_users (id),
    from_operator bigint NOT NULL DEFAULT 0,
    body text NOT NULL,
    created_at_ms bigint NOT NULL
);
CREATE INDEX console_ticket_messages_ticket ON console_ticket_messages (ticket_id, id);

CREATE TABLE console_password_resets (
    id_hash text PRIMARY KEY,
    user_id text NOT NULL REFERENCES console_users (id),
    created_at_ms bigint NOT NULL,
    expires_at_ms bigint NOT NULL,
    used_at_ms bigint
);
"""

_PAYMENTS = """
CREATE TABLE payments (
    id text PRIMARY KEY,
    account_id text NOT NULL REFERENCES accounts (id),
    provider text NOT NULL CHECK (provider IN ('stripe', 'manual')),
    provider_payment_id text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('topup', 'auto_topup', 'manual')),
    amount_micros bigint NOT NULL CHECK (amount_micros >= 0),
    currency text NOT NULL,
    amount_minor bigint NOT NULL CHECK (amount_minor >= 0),
    status text NOT NULL CHECK (status IN ('pending', 'paid', 'failed')),
    created_at_ms bigint NOT NULL,
    updated_at_ms bigint NOT NULL,
    receipt_number text UNIQUE,
    failure_reason text
);
CREATE UNIQUE INDEX payments_provider_payment
    ON payments (provider, provider_payment_id, account_id);
CREATE INDEX payments_account ON payments (account_id, created_at_ms);
CREATE INDEX payments_pending_kind ON payments (kind, status, account_id);

CREATE TABLE payment_events (
    event_id text PRIMARY KEY,
    provider text NOT NULL,
    type text NOT NULL,
    outcome text NOT NULL,
    received_at_ms bigint NOT NULL
);

CREATE TABLE receipts (
    number text PRIMARY KEY,
    year bigint NOT NULL,
    seq bigint NOT NULL,
    payment_id text NOT NULL UNIQUE REFERENCES payments (id),
    account_id text NOT NULL REFERENCES accounts (id),
    buyer_name text NOT NULL,
    provider text NOT NULL,
    payment_reference text NOT NULL,
    amount_micros bigint NOT NULL,
    currency text NOT NULL,
    amount_minor bigint NOT NULL,
    seller_name text NOT NULL,
    seller_address text NOT NULL,
    seller_tax_id text,
    issued_at_ms bigint NOT NULL,
    UNIQUE (year, seq)
);
CREATE INDEX receipts_account ON receipts (account_id, issued_at_ms);

CREATE TABLE payment_customers (
    account_id text PRIMARY KEY REFERENCES accounts (id),
    provider text NOT NULL,
    customer_id text NOT NULL,
    payment_method_id text,
    updated_at_ms bigint NOT NULL
);

CREATE TABLE auto_topups (
    account_id text PRIMARY KEY REFERENCES accounts (id),
    enabled bigint NOT NULL CHECK (enabled IN (0, 1)),
    trigger_micros bigint NOT NULL CHECK (trigger_micros >= 0),
    amount_micros bigint NOT NULL CHECK (amount_micros > 0),
    monthly_cap_micros bigint NOT NULL CHECK (monthly_cap_micros >= 0),
    consecutive_failures bigint NOT NULL DEFAULT 0,
    updated_at_ms bigint NOT NULL
);

CREATE TABLE notices (
    id bigserial PRIMARY KEY,
    account_id text NOT NULL REFERENCES accounts (id),
    kind text NOT NULL,
    message text NOT NULL,
    created_at_ms bigint NOT NULL,
    dismissed_at_ms bigint
);
CREATE INDEX notices_account ON notices (account_id, id);

CREATE TABLE deletion_requests (
    account_id text PRIMARY KEY REFERENCES accounts (id),
    requested_at_ms bigint NOT NULL,
    requested_by text NOT NULL,
    erase_after_ms bigint NOT NULL,
    erased_at_ms bigint,
    pseudonym text
);
CREATE INDEX deletion_requests_due ON deletion_requests (erased_at_ms, erase_after_ms);
"""

# The index plan of the hot usage table (0004_usage, written by the settler): retention
# archives and deletes rows past 90 days, so an index plan rather than partitions keeps
# them hot (docs/scaling.md §5 says why): the embedded indexes, and BRIN instead of a
# B-tree on ts_ms for retention's and exports' time-range scans (rows arrive in time order).
_USAGE_INDEXES = """
DROP INDEX usage_ts;
CREATE INDEX usage_ts_brin ON usage USING brin (ts_ms);
CREATE INDEX usage_account_id ON usage (account_id, id);
CREATE INDEX usage_key_id ON usage (key_id, id);
CREATE INDEX usage_account_model_id ON usage (account_id, model, id);
CREATE INDEX usage_account_errors ON usage (account_id, id) WHERE status >= 400;
CREATE INDEX usage_key_errors ON usage (key_id, id) WHERE status >= 400;
CREATE INDEX usage_account_model_errors ON usage (account_id, model, id) WHERE status >= 400;
"""

# Receipts and monthly statements (relay.payments.billing_mail), as embedded migration 9.
_BILLING_MAIL = """
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

RECORD_MIGRATIONS: list[tuple[str, str]] = [
    (
        "0005_records",
        _MONEY_COLUMNS + _AUDIT_AND_META + _CONSOLE + _PAYMENTS + _BILLING_MAIL + _USAGE_INDEXES,
    ),
]
