"""Cluster mode's instances, holds and their functions (PostgreSQL only; entry 11 of
``relay.storage.schema_list``).

Money rules in SQL (docs/architecture.md §3, docs/scaling.md §1.1): ``worst_micros`` is Σ
worst case of the open holds: the headroom rule ``balance + credit_limit − worst ≥ W`` is a
conditional UPDATE inside ``relay_hold``, so every hold, settle, credit and lease expiry of
one account is serialised by its row lock whichever instance runs it. Each money operation
is one PL/pgSQL function: one round trip. The embedded relay keeps its holds in memory
(``relay.money.wallet``), so SQLite has nothing here.
"""

from __future__ import annotations

__all__ = ["POSTGRESQL_HOLDS"]

POSTGRESQL_HOLDS = """
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
