"""Migrations 5 and 6: payments, receipts, auto top-up, notices, deletion requests; budget
periods on keys and budgets on accounts.

SQLite's scripts are the embedded relay's, byte for byte as released; PostgreSQL's create
the same tables, columns and indexes (``WITHOUT ROWID`` is SQLite's storage choice only).
"""

from __future__ import annotations

__all__ = ["POSTGRESQL_BUDGETS", "POSTGRESQL_PAYMENTS", "SQLITE_BUDGETS", "SQLITE_PAYMENTS"]

SQLITE_PAYMENTS = """
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

POSTGRESQL_PAYMENTS = """
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

# Budgets that reset on calendar boundaries (relay.money.budget): with a budget_period a
# key's spend_cap_micros applies per period; an account may have a budget of its own.
SQLITE_BUDGETS = """
ALTER TABLE api_keys ADD COLUMN budget_period TEXT
    CHECK (budget_period IS NULL OR budget_period IN ('day', 'week', 'month'));
ALTER TABLE accounts ADD COLUMN budget_micros INTEGER NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN budget_period TEXT
    CHECK (budget_period IS NULL OR budget_period IN ('day', 'week', 'month'));
CREATE INDEX ledger_charges_account_time ON ledger (account_id, created_at_ms)
    WHERE kind = 'charge';
"""

POSTGRESQL_BUDGETS = """
ALTER TABLE api_keys ADD COLUMN budget_period text
    CHECK (budget_period IS NULL OR budget_period IN ('day', 'week', 'month'));
ALTER TABLE accounts
    ADD COLUMN budget_micros bigint NOT NULL DEFAULT 0,
    ADD COLUMN budget_period text
        CHECK (budget_period IS NULL OR budget_period IN ('day', 'week', 'month'));
CREATE INDEX ledger_charges_account_time ON ledger (account_id, created_at_ms)
    WHERE kind = 'charge';
"""
