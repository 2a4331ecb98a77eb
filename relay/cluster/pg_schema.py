"""The cluster store's PostgreSQL schema: one ordered list of migrations, applied at start-up.

Money rules in SQL (docs/architecture.md §3, docs/scaling.md): the ledger is append-only
(triggers refuse UPDATE, DELETE and TRUNCATE); an account's ``balance_micros`` and a key's
``spent_micros`` are maintained by the ledger's insert trigger in the same transaction as
the row, and a guard trigger refuses any other change to them, so a balance is always the
sum of its ledger rows. ``worst_micros`` is Σ worst case of the open holds: the headroom
rule ``balance + credit_limit − worst ≥ W`` is a conditional UPDATE inside ``relay_hold``,
so every hold, settle, credit and lease expiry of one account is serialised by its row lock
whichever instance runs it. Each money operation is one PL/pgSQL function: one round trip.

Migrations are never edited once released; a change is a new entry at the end.
"""

from __future__ import annotations

from typing import Any

from relay.cluster.pg_budgets import BUDGET_MIGRATIONS
from relay.cluster.pg_jobs_schema import JOB_MIGRATIONS
from relay.cluster.pg_records import RECORD_MIGRATIONS
from relay.cluster.pg_upstream_toggles import TOGGLE_MIGRATIONS

__all__ = ["MIGRATIONS", "migrate"]

_MONEY = """
CREATE TABLE accounts (
    id text PRIMARY KEY,
    mode text NOT NULL CHECK (mode IN ('prepaid', 'postpaid')),
    credit_limit_micros bigint NOT NULL DEFAULT 0 CHECK (credit_limit_micros >= 0),
    balance_micros bigint NOT NULL DEFAULT 0,
    worst_micros bigint NOT NULL DEFAULT 0 CHECK (worst_micros >= 0),
    held_micros bigint NOT NULL DEFAULT 0 CHECK (held_micros >= 0),
    CHECK (mode = 'postpaid' OR credit_limit_micros = 0)
);

CREATE TABLE api_keys (
    id text PRIMARY KEY,
    account_id text NOT NULL REFERENCES accounts (id),
    spend_cap_micros bigint NOT NULL DEFAULT 0 CHECK (spend_cap_micros >= 0),
    spent_micros bigint NOT NULL DEFAULT 0,
    worst_micros bigint NOT NULL DEFAULT 0 CHECK (worst_micros >= 0),
    held_micros bigint NOT NULL DEFAULT 0 CHECK (held_micros >= 0)
);

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
    created_at timestamptz NOT NULL DEFAULT now()
);
-- One credit/refund per (account, reference): a replayed top-up is a no-op.
CREATE UNIQUE INDEX ledger_credit_once ON ledger (account_id, reference)
    WHERE kind IN ('credit', 'refund');
-- One charge per reference: a settlement can never be written twice.
CREATE UNIQUE INDEX ledger_charge_once ON ledger (reference) WHERE kind = 'charge';
CREATE INDEX ledger_by_account ON ledger (account_id, id);

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
"""

_HOLDS = """
-- A live instance renews its lease; holds die with it (relay_reap_expired).
CREATE TABLE instances (
    id text PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT now(),
    lease_s double precision NOT NULL CHECK (lease_s > 0),
    lease_expires_at timestamptz NOT NULL
);

-- No foreign keys: relay_hold has just updated (and locked) the account and key rows, and
-- a foreign key check would lock them once more on every hold.
CREATE TABLE holds (
    id bigserial PRIMARY KEY,
    instance_id text NOT NULL,
    account_id text NOT NULL,
    key_id text,
    request_id text,
    held_micros bigint NOT NULL CHECK (held_micros >= 0),
    worst_case_micros bigint NOT NULL CHECK (worst_case_micros >= held_micros),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX holds_by_instance ON holds (instance_id);

-- The requests of instances that died mid-flight: their holds were released uncharged.
CREATE TABLE abandoned_holds (
    hold_id bigint PRIMARY KEY,
    instance_id text NOT NULL,
    account_id text NOT NULL,
    key_id text,
    request_id text,
    held_micros bigint NOT NULL,
    worst_case_micros bigint NOT NULL,
    created_at timestamptz NOT NULL,
    abandoned_at timestamptz NOT NULL DEFAULT now()
);

-- The headroom rule, atomically (docs/architecture.md §3.4): the account's conditional
-- UPDATE admits W only if balance + credit_limit − worst ≥ W, the key's likewise against
-- its spend cap, both in this one transaction. The hold is the cheap estimate only when
-- both stay at least p_margin above the edge afterwards; the rule itself uses W alone.
CREATE FUNCTION relay_hold(
    p_instance text, p_account text, p_key text, p_request text,
    p_estimate bigint, p_worst bigint, p_margin bigint,
    OUT outcome text, OUT hold_id bigint, OUT held_micros bigint, OUT headroom_micros bigint
) LANGUAGE plpgsql AS $$
DECLARE
    v_account_held bigint;
    v_key_held bigint;
BEGIN
    hold_id := NULL;
    -- KEY SHARE: the reaper's FOR UPDATE waits for (or skips) an instance placing a hold.
    PERFORM 1 FROM instances WHERE id = p_instance AND lease_expires_at > now()
        FOR KEY SHARE;
    IF NOT FOUND THEN
        outcome := 'lease_lost';
        RETURN;
    END IF;
    UPDATE accounts AS a
       SET worst_micros = a.worst_micros + p_worst,
           held_micros = a.held_micros + CASE
               WHEN a.balance_micros + a.credit_limit_micros - a.worst_micros - p_worst
                    >= p_margin THEN p_estimate ELSE p_worst END
     WHERE a.id = p_account
       AND a.balance_micros + a.credit_limit_micros - a.worst_micros >= p_worst
    RETURNING CASE WHEN a.balance_micros + a.credit_limit_micros - a.worst_micros >= p_margin
                   THEN p_estimate ELSE p_worst END,
              a.balance_micros + a.credit_limit_micros - a.worst_micros
         INTO v_account_held, headroom_micros;
    IF NOT FOUND THEN
        SELECT a.balance_micros + a.credit_limit_micros - a.worst_micros INTO headroom_micros
          FROM accounts AS a WHERE a.id = p_account;
        outcome := CASE WHEN headroom_micros IS NULL THEN 'no_account' ELSE 'balance' END;
        RETURN;
    END IF;
    held_micros := v_account_held;
    IF p_key IS NOT NULL THEN
        UPDATE api_keys AS k
           SET worst_micros = k.worst_micros + p_worst,
               held_micros = k.held_micros + CASE
                   WHEN k.spend_cap_micros = 0
                     OR k.spend_cap_micros - k.spent_micros - k.worst_micros - p_worst
                        >= p_margin THEN v_account_held ELSE p_worst END
         WHERE k.id = p_key AND k.account_id = p_account
           AND (k.spend_cap_micros = 0
                OR k.spend_cap_micros - k.spent_micros - k.worst_micros >= p_worst)
        RETURNING CASE WHEN k.spend_cap_micros = 0
                         OR k.spend_cap_micros - k.spent_micros - k.worst_micros >= p_margin
                       THEN v_account_held ELSE p_worst END
             INTO v_key_held;
        IF NOT FOUND THEN
            -- Undo the account's part; the row is still locked by this transaction.
            UPDATE accounts AS a SET worst_micros = a.worst_micros - p_worst,
                                     held_micros = a.held_micros - v_account_held
             WHERE a.id = p_account;
            PERFORM 1 FROM api_keys AS k WHERE k.id = p_key AND k.account_id = p_account;
            outcome := CASE WHEN FOUND THEN 'key_cap' ELSE 'no_key' END;
            RETURN;
        END IF;
        IF v_key_held > v_account_held THEN
            -- The key is near its cap: the whole hold is the worst case, on both rows.
            UPDATE accounts AS a SET held_micros = a.held_micros + v_key_held - v_account_held
             WHERE a.id = p_account;
            held_micros := v_key_held;
        END IF;
    END IF;
    INSERT INTO holds (instance_id, account_id, key_id, request_id, held_micros,
                       worst_case_micros)
    VALUES (p_instance, p_account, p_key, p_request, held_micros, p_worst)
    RETURNING id INTO hold_id;
    outcome := 'ok';
END $$;

-- Close a hold exactly once: delete it, release its worst case, append the charge (never
-- above the worst case: a larger measured cost is charged at the worst case and noted).
-- 'closed' when the hold is gone (settled before, or released by lease expiry).
CREATE FUNCTION relay_settle(
    p_hold bigint, p_instance text, p_cost bigint, p_reference text, p_note text,
    OUT outcome text, OUT charged_micros bigint, OUT overrun boolean
) LANGUAGE plpgsql AS $$
DECLARE
    h holds%ROWTYPE;
    v_note text := p_note;
BEGIN
    charged_micros := 0;
    overrun := false;
    DELETE FROM holds WHERE id = p_hold AND instance_id = p_instance RETURNING * INTO h;
    IF NOT FOUND THEN
        outcome := 'closed';
        RETURN;
    END IF;
    UPDATE accounts SET worst_micros = worst_micros - h.worst_case_micros,
                        held_micros = held_micros - h.held_micros
     WHERE id = h.account_id;
    IF h.key_id IS NOT NULL THEN
        UPDATE api_keys SET worst_micros = worst_micros - h.worst_case_micros,
                            held_micros = held_micros - h.held_micros
         WHERE id = h.key_id;
    END IF;
    outcome := 'released';
    IF p_cost > 0 THEN
        overrun := p_cost > h.worst_case_micros;
        charged_micros := LEAST(p_cost, h.worst_case_micros);
        IF overrun THEN
            v_note := concat_ws('; ', v_note,
                'overrun: measured ' || p_cost || ' micros, charged the worst case');
        END IF;
        INSERT INTO ledger (account_id, kind, amount_micros, reference, key_id, request_id,
                            note)
        VALUES (h.account_id, 'charge', -charged_micros, p_reference, h.key_id, h.request_id,
                v_note)
        ON CONFLICT (reference) WHERE kind = 'charge' DO NOTHING;
        IF FOUND THEN
            outcome := 'settled';
        ELSE
            -- The reference was charged already: release the hold, never charge twice.
            outcome := 'duplicate_reference';
            charged_micros := 0;
        END IF;
    END IF;
END $$;

-- Release every hold of every instance whose lease ran out, recording each as abandoned.
-- SKIP LOCKED: an instance busy placing a hold is alive; the next sweep sees it again.
CREATE FUNCTION relay_reap_expired(OUT instances_reaped integer, OUT holds_released integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_instance text;
    h holds%ROWTYPE;
BEGIN
    instances_reaped := 0;
    holds_released := 0;
    FOR v_instance IN
        SELECT id FROM instances WHERE lease_expires_at <= now() FOR UPDATE SKIP LOCKED
    LOOP
        FOR h IN DELETE FROM holds WHERE instance_id = v_instance RETURNING * LOOP
            UPDATE accounts SET worst_micros = worst_micros - h.worst_case_micros,
                                held_micros = held_micros - h.held_micros
             WHERE id = h.account_id;
            IF h.key_id IS NOT NULL THEN
                UPDATE api_keys SET worst_micros = worst_micros - h.worst_case_micros,
                                    held_micros = held_micros - h.held_micros
                 WHERE id = h.key_id;
            END IF;
            INSERT INTO abandoned_holds (hold_id, instance_id, account_id, key_id, request_id,
                                         held_micros, worst_case_micros, created_at)
            VALUES (h.id, h.instance_id, h.account_id, h.key_id, h.request_id, h.held_micros,
                    h.worst_case_micros, h.created_at);
            holds_released := holds_released + 1;
        END LOOP;
        DELETE FROM instances WHERE id = v_instance;
        instances_reaped := instances_reaped + 1;
    END LOOP;
END $$;
"""

# The identity columns of accounts and keys (relay.cluster.pg_identity), named exactly as in
# the embedded schema (relay.storage.migrations) so that a copier can target them as is.
_IDENTITY = """
ALTER TABLE accounts
    ADD COLUMN name text,
    ADD COLUMN status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    ADD COLUMN price_multiplier text NOT NULL DEFAULT '1',
    ADD COLUMN rpm bigint NOT NULL DEFAULT 0,
    ADD COLUMN tpm bigint NOT NULL DEFAULT 0,
    ADD COLUMN concurrency bigint NOT NULL DEFAULT 0,
    ADD COLUMN created_at_ms bigint NOT NULL DEFAULT 0,
    ADD COLUMN updated_at_ms bigint NOT NULL DEFAULT 0,
    ADD COLUMN budget_micros bigint NOT NULL DEFAULT 0,
    ADD COLUMN budget_period text
        CHECK (budget_period IS NULL OR budget_period IN ('day', 'week', 'month'));
CREATE UNIQUE INDEX accounts_name ON accounts (name);

ALTER TABLE api_keys
    ADD COLUMN label text NOT NULL DEFAULT '',
    ADD COLUMN secret_hash text,
    ADD COLUMN last4 text NOT NULL DEFAULT '',
    ADD COLUMN models text NOT NULL DEFAULT '[]',
    ADD COLUMN endpoints text NOT NULL DEFAULT '[]',
    ADD COLUMN rpm bigint NOT NULL DEFAULT 0,
    ADD COLUMN tpm bigint NOT NULL DEFAULT 0,
    ADD COLUMN concurrency bigint NOT NULL DEFAULT 100,
    ADD COLUMN price_multiplier text NOT NULL DEFAULT '1',
    ADD COLUMN expires_at_ms bigint,
    ADD COLUMN status text NOT NULL DEFAULT 'active'
        CHECK (status IN ('active', 'revoked', 'suspended')),
    ADD COLUMN created_at_ms bigint NOT NULL DEFAULT 0,
    ADD COLUMN updated_at_ms bigint NOT NULL DEFAULT 0,
    ADD COLUMN last_used_at_ms bigint,
    ADD COLUMN budget_period text
        CHECK (budget_period IS NULL OR budget_period IN ('day', 'week', 'month'));
CREATE INDEX api_keys_account_id ON api_keys (account_id);
"""

# Usage rows, one per request, columns named exactly as the embedded ``usage`` table
# (relay.storage.migrations) so ``relay migrate`` copies rows as they are. Written by the
# settler in the same transaction as the settlements of its batch (relay.cluster.settler).
_USAGE = """
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
CREATE INDEX usage_ts ON usage (ts_ms);
CREATE INDEX usage_account_ts ON usage (account_id, ts_ms);
CREATE INDEX usage_key_ts ON usage (key_id, ts_ms);
CREATE INDEX usage_model_ts ON usage (model, ts_ms);
"""

# (name, SQL): applied in order, each once, in one transaction under an advisory lock.
MIGRATIONS: list[tuple[str, str]] = [
    ("0001_money", _MONEY),
    ("0002_holds_and_leases", _HOLDS),
    ("0003_identity", _IDENTITY),
    ("0004_usage", _USAGE),
    # Every other embedded table (relay.cluster.pg_records); usage is 0004 above.
    *RECORD_MIGRATIONS,
    # The job runner's: cluster-owned video holds, archive files (relay.cluster.pg_jobs_schema).
    *JOB_MIGRATIONS,
    # Period budgets: counters per period, read by relay_hold (relay.cluster.pg_budgets).
    *BUDGET_MIGRATIONS,
    # The upstream toggles' rows of the audit chain (relay.cluster.pg_upstream_toggles).
    *TOGGLE_MIGRATIONS,
]

# Any constant shared by every instance: the advisory lock that serialises migrations.
_MIGRATION_LOCK = 0x72656C6179  # "relay"


async def migrate(conn: Any) -> list[str]:
    """Apply the migrations this database lacks; returns their names. Instances starting at
    once take turns on an advisory lock, so each migration runs exactly once."""
    applied: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS relay_migrations ("
            " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row["name"] for row in await conn.fetch("SELECT name FROM relay_migrations")}
        for name, sql in MIGRATIONS:
            if name in done:
                continue
            await conn.execute(sql)
            await conn.execute("INSERT INTO relay_migrations (name) VALUES ($1)", name)
            applied.append(name)
    return applied
