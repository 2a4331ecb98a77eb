"""Migration 1, the core schema: accounts, keys, the ledger, usage rows, audit, meta.

SQLite's script is the embedded relay's first migration, byte for byte as released.

PostgreSQL's creates the same tables with the same column and index names, plus what
cluster mode needs to enforce the money rules in the database (docs/scaling.md §1.1):

- ``accounts.balance_micros`` and ``api_keys.spent_micros`` are the ledger's sums,
  maintained by the ledger's insert trigger in the row's transaction; a guard trigger
  refuses any other change (the embedded relay sums the same rows when it starts:
  ``relay.money.ledger.load_wallet``). ``worst_micros`` and ``held_micros`` are Σ of the
  open holds (``relay.storage.schema_holds``); embedded holds live in memory.
- The ledger is append-only by triggers (UPDATE, DELETE and TRUNCATE refused) and keeps a
  ``timestamptz created_at`` beside the embedded ``created_at_ms`` (what every query
  compares); the CHECKs on amounts and references are stricter than SQLite's.
- ``accounts.name`` may be NULL (the money store creates bare accounts) and is unique by
  the constraint ``accounts_name``, which ``relay.cluster.pg_identity`` recognises.
- ``usage_ts`` is a BRIN index, ``usage_ts_brin``: usage rows arrive in time order, so a
  few BRIN pages summarise months of rows for retention's and exports' time-range scans
  at a fraction of a B-tree's write cost (docs/scaling.md §5).

Types: every SQLite ``INTEGER`` is ``bigint`` (SQLite's integers are 64-bit, so whatever
fits there fits here; money stays exact), ``TEXT`` is ``text``; times stay integer unix
milliseconds (``*_ms``), so every query compares the same numbers on both engines.
``AUTOINCREMENT`` ids are ``bigserial``: ``relay migrate`` copies ids as they are and then
moves each sequence past the largest.
"""

from __future__ import annotations

__all__ = ["POSTGRESQL_CORE", "SQLITE_CORE"]

SQLITE_CORE = """
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

POSTGRESQL_CORE = """
CREATE TABLE accounts (
    id text PRIMARY KEY,
    name text CONSTRAINT accounts_name UNIQUE,
    mode text NOT NULL CHECK (mode IN ('prepaid', 'postpaid')),
    credit_limit_micros bigint NOT NULL DEFAULT 0 CHECK (credit_limit_micros >= 0),
    status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    price_multiplier text NOT NULL DEFAULT '1',
    rpm bigint NOT NULL DEFAULT 0,
    tpm bigint NOT NULL DEFAULT 0,
    concurrency bigint NOT NULL DEFAULT 0,
    created_at_ms bigint NOT NULL DEFAULT 0,
    updated_at_ms bigint NOT NULL DEFAULT 0,
    balance_micros bigint NOT NULL DEFAULT 0,
    worst_micros bigint NOT NULL DEFAULT 0 CHECK (worst_micros >= 0),
    held_micros bigint NOT NULL DEFAULT 0 CHECK (held_micros >= 0),
    CHECK (mode = 'postpaid' OR credit_limit_micros = 0)
);

CREATE TABLE api_keys (
    id text PRIMARY KEY,
    account_id text NOT NULL REFERENCES accounts (id),
    label text NOT NULL DEFAULT '',
    secret_hash text,
    last4 text NOT NULL DEFAULT '',
    models text NOT NULL DEFAULT '[]',
    endpoints text NOT NULL DEFAULT '[]',
    spend_cap_micros bigint NOT NULL DEFAULT 0 CHECK (spend_cap_micros >= 0),
    rpm bigint NOT NULL DEFAULT 0,
    tpm bigint NOT NULL DEFAULT 0,
    concurrency bigint NOT NULL DEFAULT 100,
    price_multiplier text NOT NULL DEFAULT '1',
    expires_at_ms bigint,
    status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked', 'suspended')),
    created_at_ms bigint NOT NULL DEFAULT 0,
    updated_at_ms bigint NOT NULL DEFAULT 0,
    last_used_at_ms bigint,
    spent_micros bigint NOT NULL DEFAULT 0,
    worst_micros bigint NOT NULL DEFAULT 0 CHECK (worst_micros >= 0),
    held_micros bigint NOT NULL DEFAULT 0 CHECK (held_micros >= 0)
);
CREATE INDEX api_keys_account_id ON api_keys (account_id);

CREATE TABLE ledger (
    id bigserial PRIMARY KEY,
    account_id text NOT NULL REFERENCES accounts (id),
    kind text NOT NULL CHECK (kind IN ('credit', 'charge', 'adjustment', 'refund')),
    amount_micros bigint NOT NULL CHECK (
        CASE kind WHEN 'charge' THEN amount_micros < 0
                  WHEN 'adjustment' THEN amount_micros <> 0
                  ELSE amount_micros > 0 END
    ),
    reference text NOT NULL CHECK (reference <> ''),
    key_id text,
    request_id text,
    note text,
    created_at timestamptz NOT NULL DEFAULT now(),
    created_at_ms bigint NOT NULL
        DEFAULT (floor(extract(epoch FROM clock_timestamp()) * 1000))::bigint
);
CREATE INDEX ledger_account_id ON ledger (account_id, id);
CREATE INDEX ledger_key_id ON ledger (key_id);
-- One credit/refund per (account, reference): a replayed top-up is a no-op.
CREATE UNIQUE INDEX ledger_credit_reference ON ledger (account_id, reference)
    WHERE kind IN ('credit', 'refund');
-- One charge per reference: a settlement can never be written twice.
CREATE UNIQUE INDEX ledger_charge_reference ON ledger (reference) WHERE kind = 'charge';

CREATE FUNCTION relay_ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only: % refused', TG_OP;
END $$;
CREATE TRIGGER ledger_no_update_or_delete BEFORE UPDATE OR DELETE ON ledger
    FOR EACH ROW EXECUTE FUNCTION relay_ledger_append_only();
CREATE TRIGGER ledger_no_truncate BEFORE TRUNCATE ON ledger
    FOR EACH STATEMENT EXECUTE FUNCTION relay_ledger_append_only();

CREATE FUNCTION relay_ledger_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE accounts SET balance_micros = balance_micros + NEW.amount_micros
     WHERE id = NEW.account_id;
    IF NEW.kind = 'charge' AND NEW.key_id IS NOT NULL THEN
        UPDATE api_keys SET spent_micros = spent_micros - NEW.amount_micros
         WHERE id = NEW.key_id;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER ledger_apply AFTER INSERT ON ledger
    FOR EACH ROW EXECUTE FUNCTION relay_ledger_apply();

-- balance_micros / spent_micros change only from relay_ledger_apply (trigger depth 2).
CREATE FUNCTION relay_ledger_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF pg_trigger_depth() < 2 THEN
        RAISE EXCEPTION '% is the sum of ledger rows: append a ledger row instead', TG_ARGV[0];
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER accounts_balance_from_ledger BEFORE UPDATE OF balance_micros ON accounts
    FOR EACH ROW WHEN (NEW.balance_micros IS DISTINCT FROM OLD.balance_micros)
    EXECUTE FUNCTION relay_ledger_only('balance_micros');
CREATE TRIGGER accounts_balance_starts_at_zero BEFORE INSERT ON accounts
    FOR EACH ROW WHEN (NEW.balance_micros <> 0 OR NEW.worst_micros <> 0)
    EXECUTE FUNCTION relay_ledger_only('balance_micros');
CREATE TRIGGER api_keys_spent_from_ledger BEFORE UPDATE OF spent_micros ON api_keys
    FOR EACH ROW WHEN (NEW.spent_micros IS DISTINCT FROM OLD.spent_micros)
    EXECUTE FUNCTION relay_ledger_only('spent_micros');
CREATE TRIGGER api_keys_spent_starts_at_zero BEFORE INSERT ON api_keys
    FOR EACH ROW WHEN (NEW.spent_micros <> 0 OR NEW.worst_micros <> 0)
    EXECUTE FUNCTION relay_ledger_only('spent_micros');

-- Usage rows: the settler writes them in the transaction of its batch's settlements.
CREATE TABLE usage (
    id bigserial PRIMARY KEY,
    request_id text NOT NULL UNIQUE,
    ts_ms bigint NOT NULL,
    account_id text,
    key_id text,
    endpoint text NOT NULL,
    model text,
    provider text,
    upstream_model text,
    upstream_request_id text,
    status integer NOT NULL,
    error_code text,
    stream integer NOT NULL DEFAULT 0,
    prompt_tokens bigint NOT NULL DEFAULT 0,
    completion_tokens bigint NOT NULL DEFAULT 0,
    cached_tokens bigint NOT NULL DEFAULT 0,
    cache_write_tokens bigint NOT NULL DEFAULT 0,
    units bigint NOT NULL DEFAULT 0,
    cost_micros bigint NOT NULL DEFAULT 0,
    usage_estimated integer NOT NULL DEFAULT 0,
    latency_ms bigint,
    ttfb_ms bigint
);
CREATE INDEX usage_ts_brin ON usage USING brin (ts_ms);
CREATE INDEX usage_account_ts ON usage (account_id, ts_ms);
CREATE INDEX usage_key_ts ON usage (key_id, ts_ms);
CREATE INDEX usage_model_ts ON usage (model, ts_ms);

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
"""
