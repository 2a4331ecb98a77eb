"""Recent spend per account and per key, for the hold's threshold (PostgreSQL only; entry 17
of ``relay.storage.schema_list``).

Embedded, the wallet holds the cheap estimate only while the headroom left after the worst
case stays at least T = max(fast_path_margin, spend of the last one to two
``spend_window_s``) (``relay.money.wallet.Wallet.plan_hold``); the spend is two window
buckets in memory (``relay.money.exposure.RecentSpend``). Across instances the buckets are
three columns of the account's and the key's rows:

- **Written by the settlement.** ``relay_settle`` adds the charge to the current bucket,
  rolling the buckets by window index, in the UPDATE that releases the hold's worst case:
  no extra statement, and exact whichever instance settles, since the row lock serialises
  them.
- **Read by the hold.** ``relay_hold`` compares against the threshold inside its
  conditional UPDATE … RETURNING: no extra round trip. The hold only reads the buckets, so a
  window that passed with no settlement reads as 0 without a write.
- **Which window.** The instance passes the index, ``wall clock // spend_window``, as it
  passes the budget periods' starts. An instance whose clock lags behind the stored index
  counts into the newest bucket and reads both: never less than the spend, so the threshold
  can only be higher, which changes what is held, never what is admitted.

The worst case still decides admission (``balance + credit_limit − Σ worst ≥ W``): only
what is held and reported as available depends on the threshold.
"""

from __future__ import annotations

__all__ = ["POSTGRESQL_RECENT_SPEND"]

POSTGRESQL_RECENT_SPEND = """
ALTER TABLE accounts
    ADD COLUMN recent_window bigint NOT NULL DEFAULT 0,
    ADD COLUMN recent_current_micros bigint NOT NULL DEFAULT 0
        CHECK (recent_current_micros >= 0),
    ADD COLUMN recent_previous_micros bigint NOT NULL DEFAULT 0
        CHECK (recent_previous_micros >= 0);
ALTER TABLE api_keys
    ADD COLUMN recent_window bigint NOT NULL DEFAULT 0,
    ADD COLUMN recent_current_micros bigint NOT NULL DEFAULT 0
        CHECK (recent_current_micros >= 0),
    ADD COLUMN recent_previous_micros bigint NOT NULL DEFAULT 0
        CHECK (recent_previous_micros >= 0);

-- Spend of the last one to two windows as seen from window p_now (RecentSpend.total).
CREATE FUNCTION relay_recent_spend(p_now bigint, p_at bigint, p_current bigint,
                                   p_previous bigint)
RETURNS bigint LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_now <= p_at THEN p_current + p_previous
                WHEN p_now = p_at + 1 THEN p_current ELSE 0 END
$$;

-- The previous bucket once rolled to window p_now (RecentSpend._roll).
CREATE FUNCTION relay_recent_previous(p_now bigint, p_at bigint, p_current bigint,
                                      p_previous bigint)
RETURNS bigint LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_now <= p_at THEN p_previous
                WHEN p_now = p_at + 1 THEN p_current ELSE 0 END
$$;

DROP FUNCTION relay_hold(text, text, text, text, bigint, bigint, bigint, bigint, bigint, bigint);

-- relay_hold of entry 13 with the threshold max(p_margin, recent spend) in place of
-- p_margin, for the account and for a capped key.
CREATE FUNCTION relay_hold(
    p_instance text, p_account text, p_key text, p_request text,
    p_estimate bigint, p_worst bigint, p_margin bigint,
    p_day bigint, p_week bigint, p_month bigint, p_window bigint,
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
                    >= GREATEST(p_margin, relay_recent_spend(p_window, a.recent_window,
                                a.recent_current_micros, a.recent_previous_micros))
               THEN p_estimate ELSE p_worst END
     WHERE a.id = p_account
       AND a.balance_micros + a.credit_limit_micros - a.worst_micros >= p_worst
    RETURNING CASE WHEN a.balance_micros + a.credit_limit_micros - a.worst_micros
                        >= GREATEST(p_margin, relay_recent_spend(p_window, a.recent_window,
                                    a.recent_current_micros, a.recent_previous_micros))
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
        -- First as entry 11 did (a key without a budget period: one UPDATE, no extra
        -- read); only a key that has one is read again and checked against its period.
        LOOP
            UPDATE api_keys AS k
               SET worst_micros = k.worst_micros + p_worst,
                   held_micros = k.held_micros + CASE
                       WHEN k.spend_cap_micros = 0
                         OR k.spend_cap_micros - COALESCE(v_key_spent, k.spent_micros)
                            - k.worst_micros - p_worst
                            >= GREATEST(p_margin, relay_recent_spend(p_window,
                               k.recent_window, k.recent_current_micros,
                               k.recent_previous_micros))
                       THEN v_account_held ELSE p_worst END
             WHERE k.id = p_key AND k.account_id = p_account
               AND (v_key_start IS NOT NULL OR k.budget_period IS NULL
                    OR k.spend_cap_micros = 0)
               AND (k.spend_cap_micros = 0
                    OR k.spend_cap_micros - COALESCE(v_key_spent, k.spent_micros)
                       - k.worst_micros >= p_worst)
            RETURNING CASE WHEN k.spend_cap_micros = 0
                             OR k.spend_cap_micros - COALESCE(v_key_spent, k.spent_micros)
                                - k.worst_micros
                                >= GREATEST(p_margin, relay_recent_spend(p_window,
                                   k.recent_window, k.recent_current_micros,
                                   k.recent_previous_micros))
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

DROP FUNCTION relay_settle(bigint, text, bigint, text, text);

-- relay_settle of entry 13, the charge first: the UPDATE that releases the hold's worst
-- case on the account (and the key) also adds what was charged to the recent spend of
-- window p_window. Rows are locked account first, then key, on every path (the ledger's
-- trigger moves the balance, then the key's spend), as settle_many's ordering expects.
CREATE FUNCTION relay_settle(
    p_hold bigint, p_instance text, p_cost bigint, p_reference text, p_note text,
    p_window bigint,
    OUT outcome text, OUT charged_micros bigint, OUT overrun boolean
) LANGUAGE plpgsql AS $$
DECLARE
    h holds%ROWTYPE;
    v_note text := p_note;
    v_charge bigint;
BEGIN
    charged_micros := 0;
    overrun := false;
    DELETE FROM holds WHERE id = p_hold AND instance_id = p_instance RETURNING * INTO h;
    IF NOT FOUND THEN
        outcome := 'closed';
        RETURN;
    END IF;
    outcome := 'released';
    IF p_cost > 0 THEN
        overrun := p_cost > h.worst_case_micros;
        v_charge := LEAST(p_cost, h.worst_case_micros);
        IF overrun THEN
            v_note := concat_ws('; ', v_note,
                'overrun: measured ' || p_cost || ' micros, charged the worst case');
        END IF;
        INSERT INTO ledger (account_id, kind, amount_micros, reference, key_id, request_id,
                            note)
        VALUES (h.account_id, 'charge', -v_charge, p_reference, h.key_id, h.request_id,
                v_note)
        ON CONFLICT (reference) WHERE kind = 'charge' DO NOTHING;
        IF FOUND THEN
            outcome := 'settled';
            charged_micros := v_charge;
            IF h.account_period_ms IS NOT NULL THEN
                UPDATE budget_spend SET spent_micros = spent_micros + v_charge
                 WHERE scope = 'account' AND owner_id = h.account_id
                   AND period_start_ms = h.account_period_ms;
            END IF;
            IF h.key_period_ms IS NOT NULL THEN
                UPDATE budget_spend SET spent_micros = spent_micros + v_charge
                 WHERE scope = 'key' AND owner_id = h.key_id
                   AND period_start_ms = h.key_period_ms;
            END IF;
        ELSE
            -- The reference was charged already: release the hold, never charge twice.
            outcome := 'duplicate_reference';
        END IF;
    END IF;
    UPDATE accounts AS a
       SET worst_micros = a.worst_micros - h.worst_case_micros,
           held_micros = a.held_micros - h.held_micros,
           recent_previous_micros = relay_recent_previous(p_window, a.recent_window,
               a.recent_current_micros, a.recent_previous_micros),
           recent_current_micros = CASE WHEN p_window <= a.recent_window
               THEN a.recent_current_micros + charged_micros ELSE charged_micros END,
           recent_window = GREATEST(a.recent_window, p_window)
     WHERE a.id = h.account_id;
    IF h.key_id IS NOT NULL THEN
        UPDATE api_keys AS k
           SET worst_micros = k.worst_micros - h.worst_case_micros,
               held_micros = k.held_micros - h.held_micros,
               recent_previous_micros = relay_recent_previous(p_window, k.recent_window,
                   k.recent_current_micros, k.recent_previous_micros),
               recent_current_micros = CASE WHEN p_window <= k.recent_window
                   THEN k.recent_current_micros + charged_micros ELSE charged_micros END,
               recent_window = GREATEST(k.recent_window, p_window)
         WHERE k.id = h.key_id;
    END IF;
END $$;
"""
