"""Period budgets' counters and the hold and settle functions that use them (PostgreSQL
only; entry 13 of ``relay.storage.schema_list``).

Embedded, the wallet keeps what each key and account spent in the current period in
memory (``relay.money.budget``). Here that spend must be cluster-wide, so it is a counter
row per (scope, owner, period start) in ``budget_spend``, read by ``relay_hold`` and
incremented by ``relay_settle`` in the transaction that writes the charge:

- **Which period.** The instance passes the start of the current day, week and month by
  its calendar and clock (``[budgets]``); the database picks the one the row's
  ``budget_period`` names (0 for a lifetime account budget). The hold remembers the starts
  it was checked against, and its charge counts there: a request that settles just after
  a boundary counts in the period it was admitted in (embedded: the period it settles in).
- **The first hold of a period** creates the counter from the ledger (the period's charges
  so far, e.g. after ``relay migrate`` or a budget set mid-period). It runs with the
  account's row locked by the same ``relay_hold``, and every settlement of the account
  locks that row before it writes a charge, so no charge can fall between the sum and the
  counter.
- **The rule** is the headroom rule again, now against the budget: a hold is placed only
  if ``cap − spent in period − Σ worst cases in flight ≥ W`` (the key's, and the
  account's budget beside its balance); in-flight worst cases count whatever period they
  were admitted in, which can only refuse earlier, never admit more. So a key with a $X
  monthly budget used through any number of instances never spends more than $X in a
  month, exactly as one embedded wallet.

The views' queries are in ``relay.cluster.pg_budgets``.
"""

from __future__ import annotations

__all__ = ["POSTGRESQL_PERIOD_BUDGETS"]

POSTGRESQL_PERIOD_BUDGETS = """
CREATE TABLE budget_spend (
    scope text NOT NULL CHECK (scope IN ('account', 'key')),
    owner_id text NOT NULL,
    period_start_ms bigint NOT NULL,
    spent_micros bigint NOT NULL CHECK (spent_micros >= 0),
    PRIMARY KEY (scope, owner_id, period_start_ms)
);
ALTER TABLE holds ADD COLUMN account_period_ms bigint, ADD COLUMN key_period_ms bigint;
CREATE INDEX ledger_charges_key_time ON ledger (key_id, created_at_ms) WHERE kind = 'charge';

-- The counter of one period, created from the ledger's charges the first time it is read.
-- The caller holds the account's row lock (see the module doc of relay.cluster.pg_budgets).
CREATE FUNCTION relay_period_spent(p_scope text, p_owner text, p_start bigint)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_spent bigint;
BEGIN
    SELECT spent_micros INTO v_spent FROM budget_spend
     WHERE scope = p_scope AND owner_id = p_owner AND period_start_ms = p_start;
    IF FOUND THEN
        RETURN v_spent;
    END IF;
    IF p_scope = 'account' THEN
        SELECT COALESCE(-SUM(amount_micros), 0) INTO v_spent FROM ledger
         WHERE account_id = p_owner AND kind = 'charge' AND created_at_ms >= p_start;
    ELSE
        SELECT COALESCE(-SUM(amount_micros), 0) INTO v_spent FROM ledger
         WHERE key_id = p_owner AND kind = 'charge' AND created_at_ms >= p_start;
    END IF;
    INSERT INTO budget_spend (scope, owner_id, period_start_ms, spent_micros)
    VALUES (p_scope, p_owner, p_start, v_spent);
    RETURN v_spent;
END $$;

CREATE FUNCTION relay_period_start(p_period text, p_day bigint, p_week bigint, p_month bigint)
RETURNS bigint LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE p_period WHEN 'day' THEN p_day WHEN 'week' THEN p_week
                         WHEN 'month' THEN p_month ELSE 0 END
$$;

DROP FUNCTION relay_hold(text, text, text, text, bigint, bigint, bigint);

-- relay_hold of 0001 with the budgets: the account's budget beside its balance, and a
-- key's cap against its period's spend when it has a budget_period (else its lifetime).
CREATE FUNCTION relay_hold(
    p_instance text, p_account text, p_key text, p_request text,
    p_estimate bigint, p_worst bigint, p_margin bigint,
    p_day bigint, p_week bigint, p_month bigint,
    OUT outcome text, OUT hold_id bigint, OUT held_micros bigint, OUT headroom_micros bigint,
    OUT period text
) LANGUAGE plpgsql AS $$
DECLARE
    v_account_held bigint;
    v_budget_left bigint;
    v_key_held bigint;
    v_budget bigint;
    v_budget_period text;
    v_account_worst bigint;
    v_account_start bigint;
    v_key_cap bigint;
    v_key_period text;
    v_key_start bigint;
    v_key_spent bigint;
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
              a.balance_micros + a.credit_limit_micros - a.worst_micros,
              a.budget_micros, a.budget_period, a.worst_micros
         INTO v_account_held, headroom_micros, v_budget, v_budget_period, v_account_worst;
    IF NOT FOUND THEN
        SELECT a.balance_micros + a.credit_limit_micros - a.worst_micros INTO headroom_micros
          FROM accounts AS a WHERE a.id = p_account;
        outcome := CASE WHEN headroom_micros IS NULL THEN 'no_account' ELSE 'balance' END;
        RETURN;
    END IF;
    held_micros := v_account_held;
    -- The account's row is locked from here on: the budget counters are consistent.
    IF v_budget > 0 THEN
        v_account_start := relay_period_start(v_budget_period, p_day, p_week, p_month);
        -- What the budget leaves before this hold (v_account_worst includes it).
        v_budget_left := v_budget - relay_period_spent('account', p_account, v_account_start)
                         - (v_account_worst - p_worst);
        IF v_budget_left < p_worst THEN
            UPDATE accounts AS a SET worst_micros = a.worst_micros - p_worst,
                                     held_micros = a.held_micros - v_account_held
             WHERE a.id = p_account;
            outcome := 'account_budget';
            headroom_micros := v_budget_left;
            period := v_budget_period;
            RETURN;
        END IF;
    END IF;
    IF p_key IS NOT NULL THEN
        -- First as 0001 did (a key without a budget period: one UPDATE, no extra read);
        -- only a key that has one is read again and checked against its period's spend.
        LOOP
            UPDATE api_keys AS k
               SET worst_micros = k.worst_micros + p_worst,
                   held_micros = k.held_micros + CASE
                       WHEN k.spend_cap_micros = 0
                         OR k.spend_cap_micros - COALESCE(v_key_spent, k.spent_micros)
                            - k.worst_micros - p_worst >= p_margin
                       THEN v_account_held ELSE p_worst END
             WHERE k.id = p_key AND k.account_id = p_account
               AND (v_key_start IS NOT NULL OR k.budget_period IS NULL
                    OR k.spend_cap_micros = 0)
               AND (k.spend_cap_micros = 0
                    OR k.spend_cap_micros - COALESCE(v_key_spent, k.spent_micros)
                       - k.worst_micros >= p_worst)
            RETURNING CASE WHEN k.spend_cap_micros = 0
                             OR k.spend_cap_micros - COALESCE(v_key_spent, k.spent_micros)
                                - k.worst_micros >= p_margin
                           THEN v_account_held ELSE p_worst END
                 INTO v_key_held;
            EXIT WHEN FOUND OR v_key_start IS NOT NULL;
            SELECT k.spend_cap_micros, k.budget_period INTO v_key_cap, v_key_period
              FROM api_keys AS k WHERE k.id = p_key AND k.account_id = p_account;
            EXIT WHEN COALESCE(v_key_cap, 0) = 0 OR v_key_period IS NULL;  -- refused
            v_key_start := relay_period_start(v_key_period, p_day, p_week, p_month);
            v_key_spent := relay_period_spent('key', p_key, v_key_start);
        END LOOP;
        IF v_key_held IS NULL THEN
            -- Undo the account's part; the row is still locked by this transaction.
            UPDATE accounts AS a SET worst_micros = a.worst_micros - p_worst,
                                     held_micros = a.held_micros - v_account_held
             WHERE a.id = p_account;
            outcome := CASE WHEN v_key_cap IS NOT NULL THEN 'key_cap' ELSE 'no_key' END;
            SELECT k.spend_cap_micros - COALESCE(v_key_spent, k.spent_micros) - k.worst_micros
              INTO headroom_micros FROM api_keys AS k WHERE k.id = p_key;
            period := CASE WHEN v_key_start IS NOT NULL THEN v_key_period END;
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
                       worst_case_micros, account_period_ms, key_period_ms)
    VALUES (p_instance, p_account, p_key, p_request, held_micros, p_worst,
            v_account_start, v_key_start)
    RETURNING id INTO hold_id;
    outcome := 'ok';
END $$;

-- relay_settle of 0001, and the charge added to the period counters its hold was checked
-- against (same transaction as the ledger row).
CREATE OR REPLACE FUNCTION relay_settle(
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
            IF h.account_period_ms IS NOT NULL THEN
                UPDATE budget_spend SET spent_micros = spent_micros + charged_micros
                 WHERE scope = 'account' AND owner_id = h.account_id
                   AND period_start_ms = h.account_period_ms;
            END IF;
            IF h.key_period_ms IS NOT NULL THEN
                UPDATE budget_spend SET spent_micros = spent_micros + charged_micros
                 WHERE scope = 'key' AND owner_id = h.key_id
                   AND period_start_ms = h.key_period_ms;
            END IF;
        ELSE
            -- The reference was charged already: release the hold, never charge twice.
            outcome := 'duplicate_reference';
            charged_micros := 0;
        END IF;
    END IF;
END $$;
"""
