"""wallets own balances; caps, recurring grants, debt, frozen lots and usage

Revision ID: 0010_wallets
Revises: 0009_jobs
Create Date: 2026-12-03

The owner of balances becomes a **wallet**: a user's (its id is the user's id, so every row that
exists keeps its meaning) or a team's (its id is 2^31 + the team's id). The ledger's tables get
`wallet_id` where they had `user_id`; holds record who spends (`user_id`), with which API key and
for which feature. New: caps on what a key or a team member may spend per period, recurring
grants (a plan's allowance), debt (what a refund could not take back), frozen lots (a disputed
payment), the hourly usage rollup, teams, members and API keys.

SQLite copies the four ledger tables to change their foreign keys (env.py turns foreign keys
off for that); the copy drops the ledger's append-only triggers, which are made again.
"""
import importlib.util
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0010_wallets"
down_revision = "0009_jobs"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
CREDIT_TYPE_KNOWN = "credit_type IN ('generation_credits', 'ai_tokens')"
TEAM_WALLETS = 2**31
KINDS_BEFORE = "kind IN ('grant', 'hold', 'settle', 'release', 'expire', 'charge', 'refund', 'void')"
KINDS_AFTER = ("kind IN ('grant', 'hold', 'settle', 'release', 'expire', 'charge', 'refund', 'void', "
               "'take_back', 'debt', 'repay', 'freeze', 'unfreeze')")
SOURCES_BEFORE = "source IN ('signup', 'admin', 'migration', 'purchase', 'plan')"
SOURCES_AFTER = "source IN ('signup', 'admin', 'migration', 'purchase', 'plan', 'rollover')"
PERIOD_KNOWN = "period IN ('day', 'week', 'month', 'year', 'seconds')"
# Tables whose user_id becomes wallet_id, with the indexes named after the column.
LEDGER_TABLES = ("credit_accounts", "credit_holds", "ledger_entries", "credit_lots")
RENAMED_INDEXES = (
    ("credit_holds", "ix_credit_holds_user_id_idempotency_key", "ix_credit_holds_wallet_id_idempotency_key"),
    ("ledger_entries", "ix_ledger_entries_user_id_id", "ix_ledger_entries_wallet_id_id"),
    ("ledger_entries", "uq_ledger_entries_user_id_reference", "uq_ledger_entries_wallet_id_reference"),
)

# The 0008 functions, for wallets: every one takes the wallet where it took the user. New in them:
# caps counted by the hold and corrected by the end of a hold; frozen lots (not spendable, and
# what a hold gives back to one stays frozen in it); the usage rollup written by the end of a hold;
# the hold and the balance read answer `refill` when the wallet's recurring grants are due, so that
# the caller grants them (in Python, one implementation for both databases) and calls again.
FUNCTIONS = r"""
CREATE OR REPLACE FUNCTION creditapp_now() RETURNS timestamptz
LANGUAGE sql VOLATILE AS $$ SELECT clock_timestamp() $$;

-- The start of the period that holds p_now, of periods back to back from p_anchor (p_period NULL:
-- one period from the anchor on). Days and weeks are UTC days; a month keeps the anchor's day,
-- clamped to the month's last day. creditapp/ledger/periods.py computes the same in Python.
CREATE OR REPLACE FUNCTION creditapp_period_start(
    p_anchor timestamptz, p_period text, p_seconds integer, p_now timestamptz
) RETURNS timestamptz LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    step bigint;
    n bigint;
    a timestamp := p_anchor AT TIME ZONE 'UTC';
    t timestamp := p_now AT TIME ZONE 'UTC';
    months integer;
BEGIN
    IF p_period IS NULL OR p_now <= p_anchor THEN
        RETURN p_anchor;
    END IF;
    IF p_period IN ('seconds', 'day', 'week') THEN
        step := CASE p_period WHEN 'seconds' THEN p_seconds WHEN 'day' THEN 86400 ELSE 604800 END;
        n := floor(extract(epoch FROM (p_now - p_anchor)) / step);
        RETURN p_anchor + make_interval(secs => n * step);
    END IF;
    months := CASE p_period WHEN 'month' THEN 1 ELSE 12 END;
    n := ((extract(year FROM t) - extract(year FROM a)) * 12 + extract(month FROM t) - extract(month FROM a))::bigint
         / months;
    IF a + make_interval(months => (n * months)::integer) > t THEN
        n := n - 1;
    END IF;
    RETURN (a + make_interval(months => (n * months)::integer)) AT TIME ZONE 'UTC';
END $$;

-- Ledger rows for a list of changes (kind, lot, change of available, change of held), in order,
-- ending at the account's state after (p_available, p_held).
CREATE OR REPLACE FUNCTION creditapp_rows(
    p_wallet bigint, p_type text, p_hold bigint, p_reason text, p_now timestamptz,
    p_kinds text[], p_lots bigint[], p_d_available bigint[], p_d_held bigint[],
    p_available bigint, p_held bigint
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    n integer := coalesce(array_length(p_kinds, 1), 0);
    available bigint := p_available;
    held bigint := p_held;
BEGIN
    FOR i IN 1..n LOOP
        available := available - p_d_available[i];
        held := held - p_d_held[i];
    END LOOP;
    FOR i IN 1..n LOOP
        available := available + p_d_available[i];
        held := held + p_d_held[i];
        INSERT INTO ledger_entries (wallet_id, credit_type, kind, amount, held_change, debt_change, balance_after,
                                    held_after, hold_id, lot_id, reason, reference, created_at)
        VALUES (p_wallet, p_type, p_kinds[i], p_d_available[i], p_d_held[i], 0, available, held,
                p_hold, p_lots[i], p_reason, NULL, p_now);
    END LOOP;
END $$;

-- Write off the free part of the account's lots that are past their expiry (frozen ones wait:
-- their credits are not in the balance).
CREATE OR REPLACE FUNCTION creditapp_expire_lots(p_wallet bigint, p_type text, p_now timestamptz)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    r record;
    kinds text[] := '{}'; lots bigint[] := '{}'; d_available bigint[] := '{}'; d_held bigint[] := '{}';
    total bigint := 0;
    after record;
BEGIN
    FOR r IN SELECT id, remaining - held AS free FROM credit_lots
             WHERE wallet_id = p_wallet AND credit_type = p_type AND remaining > held AND expires_at <= p_now
               AND frozen_at IS NULL
             ORDER BY id FOR UPDATE
    LOOP
        UPDATE credit_lots SET remaining = held WHERE id = r.id;
        kinds := kinds || 'expire'::text; lots := lots || r.id;
        d_available := d_available || -r.free; d_held := d_held || 0::bigint;
        total := total + r.free;
    END LOOP;
    IF total > 0 THEN
        UPDATE credit_accounts SET available = available - total
        WHERE wallet_id = p_wallet AND credit_type = p_type RETURNING available, held INTO after;
        PERFORM creditapp_rows(p_wallet, p_type, NULL, 'lot expired', p_now, kinds, lots, d_available, d_held,
                               after.available, after.held);
    END IF;
END $$;

-- End an open hold with p_status: its receipt is consumed for p_charge in spending order, the
-- rest goes back to its lots (and lapses at once where the lot has expired or was voided, or
-- stays frozen in a frozen lot). The caps it counted against get back what it did not charge,
-- and the hour's usage counts it.
CREATE OR REPLACE FUNCTION creditapp_end_hold(
    p_hold bigint, p_wallet bigint, p_type text, p_charge bigint, p_status text, p_now timestamptz,
    p_reason text
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    r record;
    h record;
    left_to_charge bigint := p_charge;
    take bigint; back bigint; gone text;
    back_kind text := CASE WHEN p_status = 'expired' THEN 'expire' ELSE 'release' END;
    -- settled parts; parts given back (to a live lot, or lapsing to an expired or voided one)
    s_lots bigint[] := '{}'; s_n bigint[] := '{}';
    b_lots bigint[] := '{}'; b_n bigint[] := '{}'; b_gone text[] := '{}';
    kinds text[] := '{}'; lots bigint[] := '{}'; d_available bigint[] := '{}'; d_held bigint[] := '{}';
    returned bigint := 0;
    was_held bigint := 0;
    after record;
BEGIN
    FOR r IN SELECT hl.lot_id, hl.amount, l.expires_at, l.voided_at, l.frozen_at
             FROM credit_hold_lots hl JOIN credit_lots l ON l.id = hl.lot_id
             WHERE hl.hold_id = p_hold
             ORDER BY l.priority, l.expires_at IS NULL, l.expires_at, l.created_at, l.id
    LOOP
        take := least(left_to_charge, r.amount);
        left_to_charge := left_to_charge - take;
        back := r.amount - take;
        was_held := was_held + r.amount;
        gone := CASE WHEN r.voided_at IS NOT NULL THEN 'void'
                     WHEN r.expires_at IS NOT NULL AND r.expires_at <= p_now THEN 'expire'
                     WHEN r.frozen_at IS NOT NULL THEN 'freeze' END;
        UPDATE credit_lots
        SET held = held - r.amount,
            remaining = remaining - take - CASE WHEN gone IN ('void', 'expire') THEN back ELSE 0 END
        WHERE id = r.lot_id;
        IF take > 0 THEN
            UPDATE credit_hold_lots SET settled = take WHERE hold_id = p_hold AND lot_id = r.lot_id;
            s_lots := s_lots || r.lot_id; s_n := s_n || take;
        END IF;
        IF back > 0 THEN
            b_lots := b_lots || r.lot_id; b_n := b_n || back; b_gone := b_gone || coalesce(gone, '');
            IF gone IS NULL THEN
                returned := returned + back;
            END IF;
        END IF;
    END LOOP;
    IF left_to_charge > 0 THEN
        RAISE EXCEPTION 'hold % cannot settle %: its receipt holds % less', p_hold, p_charge, left_to_charge;
    END IF;
    UPDATE credit_holds SET status = p_status, settled_amount = p_charge, closed_at = p_now
    WHERE id = p_hold AND status = 'open' RETURNING amount, user_id, key_id, feature INTO h;
    -- Rows in the service's order: settled, given back, lapsed to expired lots, to voided, frozen.
    FOR i IN 1..cardinality(s_lots) LOOP
        kinds := kinds || 'settle'::text; lots := lots || s_lots[i];
        d_available := d_available || 0::bigint; d_held := d_held || -s_n[i];
    END LOOP;
    FOREACH gone IN ARRAY ARRAY['', 'expire', 'void', 'freeze'] LOOP
        FOR i IN 1..cardinality(b_lots) LOOP
            CONTINUE WHEN b_gone[i] <> gone;
            kinds := kinds || CASE WHEN gone = '' THEN back_kind ELSE gone END;
            lots := lots || b_lots[i];
            d_available := d_available || CASE WHEN gone = '' THEN b_n[i] ELSE 0 END;
            d_held := d_held || -b_n[i];
        END LOOP;
    END LOOP;
    -- Everything the hold set aside leaves `held`; what went back to live lots is available again.
    UPDATE credit_accounts SET available = available + returned, held = held - was_held
    WHERE wallet_id = p_wallet AND credit_type = p_type RETURNING available, held INTO after;
    PERFORM creditapp_rows(p_wallet, p_type, p_hold, p_reason, p_now, kinds, lots, d_available, d_held,
                           after.available, after.held);
    IF h.amount > p_charge THEN
        UPDATE credit_cap_spend s SET spent = s.spent - (h.amount - p_charge)
        FROM credit_hold_caps hc
        WHERE hc.hold_id = p_hold AND s.cap_id = hc.cap_id AND s.credit_type = p_type
          AND s.period_start = hc.period_start;
    END IF;
    INSERT INTO credit_usage AS u (hour, wallet_id, user_id, key_id, feature, credit_type, requests, failed, charged,
                                   refunded)
    VALUES (date_trunc('hour', p_now AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', p_wallet, coalesce(h.user_id, 0),
            coalesce(h.key_id, 0), coalesce(h.feature, ''), p_type, 1, CASE WHEN p_charge = 0 THEN 1 ELSE 0 END,
            p_charge, 0)
    ON CONFLICT ON CONSTRAINT pk_credit_usage DO UPDATE
    SET requests = u.requests + 1, failed = u.failed + EXCLUDED.failed, charged = u.charged + EXCLUDED.charged;
END $$;

-- Give back the account's open holds past their expiry, but p_exclude (0 for none).
CREATE OR REPLACE FUNCTION creditapp_expire_holds(p_wallet bigint, p_type text, p_now timestamptz, p_exclude bigint)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE r record;
BEGIN
    FOR r IN SELECT id FROM credit_holds
             WHERE wallet_id = p_wallet AND credit_type = p_type AND status = 'open' AND expires_at <= p_now
               AND id <> p_exclude
             ORDER BY id FOR UPDATE
    LOOP
        PERFORM creditapp_end_hold(r.id, p_wallet, p_type, 0, 'expired', p_now, NULL);
    END LOOP;
END $$;

-- What the wallet can spend at p_now: lots past their expiry count for nothing, written off or not.
CREATE OR REPLACE FUNCTION creditapp_spendable(
    p_wallet bigint, p_now timestamptz, OUT generation_credits bigint, OUT ai_tokens bigint
) LANGUAGE plpgsql STABLE AS $$
DECLARE r record;
BEGIN
    FOR r IN SELECT a.credit_type, a.available FROM credit_accounts a WHERE a.wallet_id = p_wallet LOOP
        IF r.credit_type = 'generation_credits' THEN generation_credits := r.available;
        ELSE ai_tokens := r.available;
        END IF;
    END LOOP;
    FOR r IN SELECT l.credit_type, sum(l.remaining - l.held) AS due FROM credit_lots l
             WHERE l.wallet_id = p_wallet AND l.remaining > l.held AND l.expires_at <= p_now AND l.frozen_at IS NULL
             GROUP BY l.credit_type
    LOOP
        IF r.credit_type = 'generation_credits' THEN generation_credits := generation_credits - r.due;
        ELSE ai_tokens := ai_tokens - r.due;
        END IF;
    END LOOP;
END $$;

-- A paid request's first transaction: the session check, its Idempotency-Key (with p_replay:
-- replay the stored answer, refuse a key in use or reused, free a key whose hold has expired),
-- the caps that apply (p_caps, checked before anything is written), then the hold, claiming the
-- key and counting the hold against the caps.
-- outcome: held | replay | revoked | unknown_wallet | refill | cap_closed | cap_expired |
-- feature_not_allowed | cap_exceeded | insufficient | in_use | reused.
-- A key claimed by a concurrent request at the last step raises SQLSTATE CA409 (nothing is kept).
CREATE OR REPLACE FUNCTION creditapp_hold(
    p_wallet bigint, p_type text, p_amount bigint, p_ttl_seconds integer, p_sid text,
    p_client integer, p_key text, p_fingerprint text, p_ref text, p_replay boolean,
    p_user integer, p_key_id bigint, p_caps bigint[], p_feature text,
    OUT outcome text, OUT hold_id bigint, OUT expires_at timestamptz, OUT available bigint,
    OUT generation_credits bigint, OUT ai_tokens bigint,
    OUT response_status integer, OUT response_body text,
    OUT cap_id bigint, OUT cap_limit bigint, OUT cap_spent bigint
) LANGUAGE plpgsql AS $$
DECLARE
    k record;
    c record;
    now_ timestamptz;
    taken record;
    r record;
    left_to_hold bigint := p_amount;
    take bigint;
    kinds text[] := '{}'; lots bigint[] := '{}'; d_available bigint[] := '{}'; d_held bigint[] := '{}';
    starts timestamptz[] := '{}';
    start_ timestamptz;
    caps bigint[] := coalesce(p_caps, '{}');
    new_key bigint;
    have_key boolean;
BEGIN
    IF p_sid IS NOT NULL AND EXISTS (SELECT 1 FROM revoked_sessions WHERE sid = p_sid) THEN
        outcome := 'revoked'; RETURN;
    END IF;
    <<fresh>>
    BEGIN
    -- p_ref names this call: a repetition of it (its connection was lost before the answer came)
    -- answers the hold the first attempt took, found here, under the key, or after the lock.
    EXIT fresh WHEN EXISTS (SELECT 1 FROM credit_holds h WHERE h.request_ref = p_ref);
    IF p_key IS NOT NULL AND p_replay THEN
        FOR attempt IN 1..2 LOOP
            SELECT ik.id, ik.fingerprint, ik.status, ik.response_status, ik.response_body, ik.expires_at,
                   ik.hold_id, h.status AS hold_status, h.expires_at AS hold_expires_at, h.credit_type AS hold_type,
                   h.wallet_id AS hold_wallet, h.request_ref AS hold_ref
            INTO k FROM idempotency_keys ik LEFT JOIN credit_holds h ON h.id = ik.hold_id
            WHERE ik.user_id = p_client AND ik.key = p_key;
            have_key := FOUND;
            EXIT WHEN NOT have_key OR attempt = 2 OR NOT (k.status = 'in_flight' AND k.hold_id IS NOT NULL);
            -- In flight: read it again under its account's lock, as it is now.
            PERFORM 1 FROM credit_accounts WHERE wallet_id = k.hold_wallet AND credit_type = k.hold_type FOR UPDATE;
        END LOOP;
        EXIT fresh WHEN have_key AND k.hold_ref = p_ref;
        IF have_key THEN
            now_ := creditapp_now();
            IF k.status = 'completed' AND k.expires_at <= now_ THEN
                DELETE FROM idempotency_keys WHERE id = k.id;
            ELSIF k.status = 'in_flight' AND k.hold_id IS NOT NULL
                  AND NOT (k.hold_status = 'open' AND k.hold_expires_at > now_) THEN
                -- Its request can no longer be charged: end its hold, then free the key.
                IF k.hold_status = 'open' THEN
                    PERFORM creditapp_end_hold(k.hold_id, k.hold_wallet, k.hold_type, 0, 'expired', now_, NULL);
                END IF;
                DELETE FROM idempotency_keys WHERE id = k.id;
            ELSIF k.fingerprint <> p_fingerprint THEN
                outcome := 'reused'; RETURN;
            ELSIF k.status = 'in_flight' THEN
                outcome := 'in_use'; RETURN;
            ELSE
                outcome := 'replay'; response_status := k.response_status; response_body := k.response_body;
                RETURN;
            END IF;
        END IF;
    END IF;

    PERFORM 1 FROM credit_accounts WHERE wallet_id = p_wallet AND credit_type = p_type FOR UPDATE;
    IF NOT FOUND THEN
        outcome := 'unknown_wallet'; RETURN;
    END IF;
    -- The first attempt holds this lock until it commits: only now is it sure to be seen.
    EXIT fresh WHEN EXISTS (SELECT 1 FROM credit_holds h WHERE h.request_ref = p_ref);
    now_ := creditapp_now();  -- after the lock: what has expired is decided at this write
    IF EXISTS (SELECT 1 FROM wallets w WHERE w.id = p_wallet AND w.refill_due_at <= now_) THEN
        outcome := 'refill'; RETURN;  -- a new period's grants come first; the caller grants them
    END IF;
    -- Every cap that applies, refused before anything is written. Every writer of a cap's spend
    -- holds the account's lock (this call does), so what is read here cannot change before the
    -- write below.
    FOR i IN 1..cardinality(caps) LOOP
        SELECT cc.id, cc.wallet_id, cc.period, cc.period_seconds, cc.anchor, cc.expires_at, cc.closed_at,
               cc.features, cl.amount AS cap_limit,
               (SELECT s.spent FROM credit_cap_spend s
                WHERE s.cap_id = cc.id AND s.credit_type = p_type
                  AND s.period_start = creditapp_period_start(cc.anchor, cc.period, cc.period_seconds, now_)) AS spent
        INTO c FROM credit_caps cc LEFT JOIN credit_cap_limits cl ON cl.cap_id = cc.id AND cl.credit_type = p_type
        WHERE cc.id = caps[i];
        cap_id := caps[i];
        IF NOT FOUND OR c.wallet_id <> p_wallet OR c.closed_at IS NOT NULL THEN
            outcome := 'cap_closed'; RETURN;
        END IF;
        IF c.expires_at IS NOT NULL AND c.expires_at <= now_ THEN
            outcome := 'cap_expired'; RETURN;
        END IF;
        IF c.features IS NOT NULL AND NOT (c.features::jsonb ? coalesce(p_feature, '')) THEN
            outcome := 'feature_not_allowed'; RETURN;
        END IF;
        IF c.cap_limit IS NOT NULL AND coalesce(c.spent, 0) + p_amount > c.cap_limit THEN
            outcome := 'cap_exceeded'; cap_limit := c.cap_limit; cap_spent := coalesce(c.spent, 0); RETURN;
        END IF;
        starts := starts || creditapp_period_start(c.anchor, c.period, c.period_seconds, now_);
    END LOOP;
    cap_id := NULL;
    PERFORM creditapp_expire_lots(p_wallet, p_type, now_);
    UPDATE credit_accounts a SET available = a.available - p_amount, held = a.held + p_amount
    WHERE a.wallet_id = p_wallet AND a.credit_type = p_type AND a.available >= p_amount
    RETURNING a.available, a.held INTO taken;
    IF NOT FOUND THEN
        -- Maybe expired holds are what is missing: give them back, and try once more.
        PERFORM creditapp_expire_holds(p_wallet, p_type, now_, 0);
        UPDATE credit_accounts a SET available = a.available - p_amount, held = a.held + p_amount
        WHERE a.wallet_id = p_wallet AND a.credit_type = p_type AND a.available >= p_amount
        RETURNING a.available, a.held INTO taken;
        IF NOT FOUND THEN
            outcome := 'insufficient';
            SELECT a.available INTO available FROM credit_accounts a
            WHERE a.wallet_id = p_wallet AND a.credit_type = p_type;
            RETURN;
        END IF;
    END IF;
    expires_at := now_ + make_interval(secs => p_ttl_seconds);
    INSERT INTO credit_holds (wallet_id, credit_type, amount, settled_amount, refunded_amount, status, created_at,
                              expires_at, idempotency_key, request_ref, user_id, key_id, feature)
    VALUES (p_wallet, p_type, p_amount, 0, 0, 'open', now_, expires_at, p_key, p_ref, p_user, p_key_id, p_feature)
    RETURNING id INTO hold_id;
    FOR r IN SELECT l.id, l.remaining - l.held AS free FROM credit_lots l
             WHERE l.wallet_id = p_wallet AND l.credit_type = p_type AND l.remaining > l.held AND l.voided_at IS NULL
               AND l.frozen_at IS NULL AND (l.expires_at IS NULL OR l.expires_at > now_)
             -- The spending order (lots that never expire last: NULLS LAST is the default for an
             -- ascending order here), read straight from ix_credit_lots_spending: no sort, and the
             -- loop stops at the first lots that cover the amount, however many the wallet has.
             -- No FOR UPDATE: every writer of an account's lots holds the account's row first
             -- (this call does), and locking the ten rows a loop fetches at a time cost a WAL
             -- record each.
             ORDER BY l.priority, l.expires_at, l.created_at, l.id
    LOOP
        take := least(left_to_hold, r.free);
        UPDATE credit_lots SET held = held + take WHERE id = r.id;
        INSERT INTO credit_hold_lots (hold_id, lot_id, amount, settled, refunded) VALUES (hold_id, r.id, take, 0, 0);
        kinds := kinds || 'hold'::text; lots := lots || r.id;
        d_available := d_available || -take; d_held := d_held || take;
        left_to_hold := left_to_hold - take;
        EXIT WHEN left_to_hold = 0;
    END LOOP;
    IF left_to_hold > 0 THEN
        -- The account said the credits were there and the lots disagree: never spend on that.
        RAISE EXCEPTION 'lots of wallet % % hold % fewer credits than the account', p_wallet, p_type, left_to_hold;
    END IF;
    PERFORM creditapp_rows(p_wallet, p_type, hold_id, NULL, now_, kinds, lots, d_available, d_held,
                           taken.available, taken.held);
    FOR i IN 1..cardinality(caps) LOOP
        INSERT INTO credit_hold_caps (hold_id, cap_id, period_start) VALUES (hold_id, caps[i], starts[i]);
        INSERT INTO credit_cap_spend AS s (cap_id, credit_type, period_start, spent)
        VALUES (caps[i], p_type, starts[i], p_amount)
        ON CONFLICT ON CONSTRAINT pk_credit_cap_spend DO UPDATE SET spent = s.spent + EXCLUDED.spent;
        UPDATE credit_caps SET last_used_at = now_
        WHERE id = caps[i] AND (last_used_at IS NULL OR last_used_at <= now_ - interval '60 seconds');
    END LOOP;
    -- Swept after the hold's own rows, so that every row's *_after is the state it left.
    PERFORM creditapp_expire_holds(p_wallet, p_type, now_, hold_id);
    SELECT a.available INTO available FROM credit_accounts a WHERE a.wallet_id = p_wallet AND a.credit_type = p_type;
    SELECT s.generation_credits, s.ai_tokens INTO generation_credits, ai_tokens
    FROM creditapp_spendable(p_wallet, now_) s;
    IF p_key IS NOT NULL THEN
        -- A few dead keys per claim keep the table at its live size without a cron job.
        DELETE FROM idempotency_keys WHERE id IN (
            SELECT ik.id FROM idempotency_keys ik
            WHERE (ik.status = 'completed' AND ik.expires_at <= now_)
               OR (ik.status = 'in_flight' AND ik.expires_at <= now_ AND EXISTS (
                       SELECT 1 FROM credit_holds h WHERE h.id = ik.hold_id AND h.status <> 'open'))
            LIMIT 20);
        INSERT INTO idempotency_keys (user_id, key, fingerprint, status, hold_id, created_at, expires_at)
        VALUES (p_client, p_key, p_fingerprint, 'in_flight', hold_id, now_, expires_at)
        ON CONFLICT (user_id, key) DO NOTHING RETURNING id INTO new_key;
        IF new_key IS NULL THEN
            RAISE EXCEPTION USING ERRCODE = 'CA409', MESSAGE = 'idempotency_key_in_use';
        END IF;
    END IF;
    outcome := 'held';
    RETURN;
    END;
    -- A repetition: the first attempt's hold.
    outcome := 'held';
    SELECT h.id, h.expires_at INTO hold_id, expires_at FROM credit_holds h WHERE h.request_ref = p_ref;
    SELECT a.available INTO available FROM credit_accounts a WHERE a.wallet_id = p_wallet AND a.credit_type = p_type;
    SELECT s.generation_credits, s.ai_tokens INTO generation_credits, ai_tokens
    FROM creditapp_spendable(p_wallet, creditapp_now()) s;
END $$;

-- A paid request's second transaction: settle p_charge of the hold (storing the answer for its
-- key), or give it all back; from its expires_at on the hold cannot be settled. Safe to call
-- again: a hold already ended is left as it is. outcome: the hold's status after.
CREATE OR REPLACE FUNCTION creditapp_close(
    p_hold bigint, p_wallet bigint, p_type text, p_charge bigint, p_response_status integer,
    p_response_body text, p_key_ttl_seconds integer, p_reason text, OUT outcome text
) LANGUAGE plpgsql AS $$
DECLARE
    st record;
    now_ timestamptz;
    answered boolean := false;
BEGIN
    PERFORM 1 FROM credit_accounts WHERE wallet_id = p_wallet AND credit_type = p_type FOR UPDATE;
    now_ := creditapp_now();
    SELECT h.status, h.expires_at, h.idempotency_key INTO st FROM credit_holds h WHERE h.id = p_hold FOR UPDATE;
    IF st.status <> 'open' THEN
        outcome := st.status;  -- ended elsewhere: a retry with its key, a sweep, or this call before
    ELSIF st.expires_at <= now_ THEN
        PERFORM creditapp_end_hold(p_hold, p_wallet, p_type, 0, 'expired', now_, NULL);
        outcome := 'expired';
    ELSE
        outcome := CASE WHEN p_charge > 0 THEN 'settled' ELSE 'released' END;
        PERFORM creditapp_end_hold(p_hold, p_wallet, p_type, p_charge, outcome, now_, p_reason);
        IF p_response_status IS NOT NULL AND st.idempotency_key IS NOT NULL THEN
            UPDATE idempotency_keys
            SET status = 'completed', response_status = p_response_status, response_body = p_response_body,
                expires_at = now_ + make_interval(secs => p_key_ttl_seconds)
            WHERE hold_id = p_hold AND status = 'in_flight';
            answered := true;
        END IF;
    END IF;
    IF NOT answered AND st.idempotency_key IS NOT NULL THEN
        DELETE FROM idempotency_keys WHERE hold_id = p_hold AND status = 'in_flight';
    END IF;
END $$;

-- The balance read: the session check, what can be spent now, the debt and the next credits to
-- lapse, in one snapshot. outcome: ok | revoked | unknown_wallet | refill.
CREATE OR REPLACE FUNCTION creditapp_balance(
    p_wallet bigint, p_sid text, p_expiring integer,
    OUT outcome text, OUT generation_credits bigint, OUT ai_tokens bigint, OUT expiring jsonb, OUT debt jsonb
) LANGUAGE plpgsql STABLE AS $$
DECLARE now_ timestamptz := creditapp_now();
BEGIN
    IF p_sid IS NOT NULL AND EXISTS (SELECT 1 FROM revoked_sessions WHERE sid = p_sid) THEN
        outcome := 'revoked'; RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM wallets w WHERE w.id = p_wallet AND w.refill_due_at <= now_) THEN
        outcome := 'refill'; RETURN;
    END IF;
    SELECT s.generation_credits, s.ai_tokens INTO generation_credits, ai_tokens
    FROM creditapp_spendable(p_wallet, now_) s;
    IF generation_credits IS NULL AND ai_tokens IS NULL THEN
        outcome := 'unknown_wallet'; RETURN;
    END IF;
    SELECT coalesce(jsonb_object_agg(a.credit_type, a.debt), '{}') INTO debt
    FROM credit_accounts a WHERE a.wallet_id = p_wallet;
    SELECT coalesce(jsonb_agg(jsonb_build_object('credit_type', e.credit_type, 'amount', e.amount,
                                                 'expires_at', e.expires_at) ORDER BY e.expires_at, e.id), '[]')
    INTO expiring
    FROM (SELECT l.id, l.credit_type, l.remaining - l.held AS amount, l.expires_at FROM credit_lots l
          WHERE l.wallet_id = p_wallet AND l.remaining > l.held AND l.voided_at IS NULL AND l.frozen_at IS NULL
            AND l.expires_at > now_
          ORDER BY l.expires_at, l.id LIMIT p_expiring) e;
    outcome := 'ok';
END $$;
"""

DROP = """
DROP FUNCTION IF EXISTS creditapp_balance(bigint, text, integer);
DROP FUNCTION IF EXISTS creditapp_close(bigint, bigint, text, bigint, integer, text, integer, text);
DROP FUNCTION IF EXISTS creditapp_hold(bigint, text, bigint, integer, text, integer, text, text, text, boolean,
                                       integer, bigint, bigint[], text);
DROP FUNCTION IF EXISTS creditapp_spendable(bigint, timestamptz);
DROP FUNCTION IF EXISTS creditapp_expire_holds(bigint, text, timestamptz, bigint);
DROP FUNCTION IF EXISTS creditapp_end_hold(bigint, bigint, text, bigint, text, timestamptz, text);
DROP FUNCTION IF EXISTS creditapp_expire_lots(bigint, text, timestamptz);
DROP FUNCTION IF EXISTS creditapp_rows(bigint, text, bigint, text, timestamptz, text[], bigint[], bigint[], bigint[],
                                       bigint, bigint);
DROP FUNCTION IF EXISTS creditapp_period_start(timestamptz, text, integer, timestamptz);
DROP FUNCTION IF EXISTS creditapp_now();
"""


def upgrade():
    sqlite = op.get_bind().dialect.name == "sqlite"
    if not sqlite:
        op.execute(_revision_0008().DROP)
    op.create_table(
        "teams",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_teams")),
    )
    op.create_table(
        "wallets",
        sa.Column("id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("team_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("refill_due_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            f"(kind = 'user' AND user_id IS NOT NULL AND team_id IS NULL AND id = user_id) OR "
            f"(kind = 'team' AND team_id IS NOT NULL AND user_id IS NULL AND id = {TEAM_WALLETS} + team_id)",
            name=op.f("ck_wallets_owner_matches_kind")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_wallets_user_id_users")),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], name=op.f("fk_wallets_team_id_teams")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_wallets")),
        sa.UniqueConstraint("user_id", name=op.f("uq_wallets_user_id")),
        sa.UniqueConstraint("team_id", name=op.f("uq_wallets_team_id")),
    )
    op.execute("INSERT INTO wallets (id, kind, user_id, team_id, created_at) "
               "SELECT id, 'user', id, NULL, created_at FROM users")
    if sqlite:
        _new_columns_sqlite()
        for table in LEDGER_TABLES:
            _copy_sqlite(table, TO_WALLETS + _checks_sqlite(table, after=True))
        _append_only_triggers()
    else:
        for table in LEDGER_TABLES:
            _to_wallets(table)
        _new_columns_postgresql()
    op.add_column("credit_holds", sa.Column("user_id", sa.Integer(), nullable=True))
    op.add_column("credit_holds", sa.Column("key_id", sa.BigInteger(), nullable=True))
    op.add_column("credit_holds", sa.Column("feature", sa.String(64), nullable=True))
    op.execute("UPDATE credit_holds SET user_id = wallet_id")
    op.add_column("jobs", sa.Column("wallet_id", sa.BigInteger(), nullable=True))
    op.execute("UPDATE jobs SET wallet_id = user_id")
    op.create_index("ix_credit_lots_reference", "credit_lots", ["reference"],
                    postgresql_where=sa.text("reference IS NOT NULL"), sqlite_where=sa.text("reference IS NOT NULL"))
    _caps_and_grants()
    _access()
    if not sqlite:
        op.execute(FUNCTIONS)


# SQLite: what changes in the tables' own CREATE statements, applied to a copy of each (the
# documented way to change a table's foreign keys). Each old text must be there.
TO_WALLETS = [("user_id", "wallet_id"), ("wallet_id INTEGER", "wallet_id BIGINT"),
              ("_wallet_id_users", "_wallet_id_wallets"), ("REFERENCES users (id)", "REFERENCES wallets (id)")]
TO_USERS = [("wallet_id", "user_id"), ("user_id BIGINT", "user_id INTEGER"),
            ("_user_id_wallets", "_user_id_users"), ("REFERENCES wallets (id)", "REFERENCES users (id)")]
# The CHECKs 0010 changes: (table, name, before, after).
CHECKS = [
    ("ledger_entries", "kind_known", KINDS_BEFORE, KINDS_AFTER),
    ("ledger_entries", "changes_something", "amount <> 0 OR held_change <> 0",
     "amount <> 0 OR held_change <> 0 OR debt_change <> 0"),
    ("credit_lots", "source_known", SOURCES_BEFORE, SOURCES_AFTER),
]


def _checks_sqlite(table: str, *, after: bool) -> list[tuple[str, str]]:
    return [(f"CHECK ({before if after else later})", f"CHECK ({later if after else before})")
            for name, before, later in ((c[1], c[2], c[3]) for c in CHECKS if c[0] == table)]


def _copy_sqlite(table: str, replacements: list[tuple[str, str]]) -> None:
    """Make `table` anew from its own CREATE statement with `replacements`, copy its rows, and make
    its indexes again (with the same replacements). Foreign keys are off (env.py)."""
    bind = op.get_bind()
    create = bind.execute(sa.text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :t"),
                          {"t": table}).scalar_one()
    indexes = bind.execute(sa.text("SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = :t "
                                   "AND sql IS NOT NULL"), {"t": table}).scalars().all()
    old_columns = [row[1] for row in bind.execute(sa.text(f"PRAGMA table_info({table})"))]

    def changed(sql: str) -> str:
        for old, new in replacements:
            sql = sql.replace(old, new)
        return sql

    checked = create
    for old, new in replacements:
        if old not in checked:
            raise RuntimeError(f"{table}: expected {old!r} in its definition, which is {create}")
        checked = checked.replace(old, new)
    body = create.split("(", 1)[1]
    op.execute(f'CREATE TABLE "_new_{table}" (' + changed(body))
    new_columns = [changed(column) for column in old_columns]
    op.execute(f'INSERT INTO "_new_{table}" ({", ".join(new_columns)}) SELECT {", ".join(old_columns)} FROM {table}')
    op.execute(f"DROP TABLE {table}")
    op.execute(f'ALTER TABLE "_new_{table}" RENAME TO {table}')
    for index in indexes:
        op.execute(changed(index))


def _to_wallets(table: str) -> None:
    """PostgreSQL: user_id becomes wallet_id, a BIGINT that points at wallets."""
    op.drop_constraint(f"fk_{table}_user_id_users", table, type_="foreignkey")
    op.alter_column(table, "user_id", new_column_name="wallet_id", type_=sa.BigInteger(),
                    existing_type=sa.Integer(), existing_nullable=False)
    op.create_foreign_key(f"fk_{table}_wallet_id_wallets", table, "wallets", ["wallet_id"], ["id"])
    for index_table, old, new in RENAMED_INDEXES:
        if index_table == table:
            op.execute(f"ALTER INDEX {old} RENAME TO {new}")


def _append_only_triggers() -> None:
    for event in ("UPDATE", "DELETE"):
        op.execute(
            f"CREATE TRIGGER ledger_entries_no_{event.lower()} BEFORE {event} ON ledger_entries "
            "BEGIN SELECT RAISE(ABORT, 'ledger_entries is append-only'); END"
        )


def _new_columns_sqlite() -> None:
    # Plain ALTERs, before the copies: the CHECKs the copies get name debt_change.
    op.execute("ALTER TABLE credit_accounts ADD COLUMN debt BIGINT NOT NULL DEFAULT 0 "
               "CONSTRAINT ck_credit_accounts_debt_not_negative CHECK (debt >= 0)")
    op.execute("ALTER TABLE credit_accounts ADD COLUMN alert_threshold BIGINT")
    op.execute("ALTER TABLE credit_accounts ADD COLUMN alert_below BOOLEAN NOT NULL DEFAULT 0")
    op.execute("ALTER TABLE ledger_entries ADD COLUMN debt_change BIGINT NOT NULL DEFAULT 0")
    op.execute("ALTER TABLE credit_lots ADD COLUMN frozen_at DATETIME")


def _new_columns_postgresql() -> None:
    zero = sa.text("0")
    op.add_column("credit_accounts", sa.Column("debt", sa.BigInteger(), nullable=False, server_default=zero))
    op.create_check_constraint(op.f("ck_credit_accounts_debt_not_negative"), "credit_accounts", "debt >= 0")
    op.add_column("credit_accounts", sa.Column("alert_threshold", sa.BigInteger(), nullable=True))
    op.add_column("credit_accounts", sa.Column("alert_below", sa.Boolean(), nullable=False,
                                               server_default=sa.false()))
    op.add_column("ledger_entries", sa.Column("debt_change", sa.BigInteger(), nullable=False, server_default=zero))
    op.add_column("credit_lots", sa.Column("frozen_at", sa.DateTime(timezone=True), nullable=True))
    _checks_postgresql(after=True)


def _checks_postgresql(*, after: bool) -> None:
    for table, name, before, later in CHECKS:
        op.drop_constraint(op.f(f"ck_{table}_{name}"), table, type_="check")
        op.create_check_constraint(op.f(f"ck_{table}_{name}"), table, later if after else before)


def _caps_and_grants() -> None:
    op.create_table(
        "credit_caps",
        sa.Column("id", BigId, nullable=False),
        sa.Column("wallet_id", sa.BigInteger(), nullable=False),
        sa.Column("period", sa.String(8), nullable=True),
        sa.Column("period_seconds", sa.Integer(), nullable=True),
        sa.Column("anchor", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("features", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(f"period IS NULL OR {PERIOD_KNOWN}", name=op.f("ck_credit_caps_period_known")),
        sa.CheckConstraint("(period = 'seconds') = (period_seconds IS NOT NULL)",
                           name=op.f("ck_credit_caps_seconds_with_period")),
        sa.CheckConstraint("period_seconds IS NULL OR period_seconds >= 1",
                           name=op.f("ck_credit_caps_period_seconds_positive")),
        sa.ForeignKeyConstraint(["wallet_id"], ["wallets.id"], name=op.f("fk_credit_caps_wallet_id_wallets")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_caps")),
    )
    op.create_table(
        "credit_cap_limits",
        sa.Column("cap_id", BigId, nullable=False),
        sa.Column("credit_type", sa.String(32), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("amount >= 0", name=op.f("ck_credit_cap_limits_amount_not_negative")),
        sa.CheckConstraint(CREDIT_TYPE_KNOWN, name=op.f("ck_credit_cap_limits_credit_type_known")),
        sa.ForeignKeyConstraint(["cap_id"], ["credit_caps.id"], name=op.f("fk_credit_cap_limits_cap_id_credit_caps")),
        sa.PrimaryKeyConstraint("cap_id", "credit_type", name=op.f("pk_credit_cap_limits")),
    )
    op.create_table(
        "credit_cap_spend",
        sa.Column("cap_id", BigId, nullable=False),
        sa.Column("credit_type", sa.String(32), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("spent", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("spent >= 0", name=op.f("ck_credit_cap_spend_spent_not_negative")),
        sa.CheckConstraint(CREDIT_TYPE_KNOWN, name=op.f("ck_credit_cap_spend_credit_type_known")),
        sa.ForeignKeyConstraint(["cap_id"], ["credit_caps.id"], name=op.f("fk_credit_cap_spend_cap_id_credit_caps")),
        sa.PrimaryKeyConstraint("cap_id", "credit_type", "period_start", name=op.f("pk_credit_cap_spend")),
    )
    op.create_table(
        "credit_hold_caps",
        sa.Column("hold_id", BigId, nullable=False),
        sa.Column("cap_id", BigId, nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["hold_id"], ["credit_holds.id"], name=op.f("fk_credit_hold_caps_hold_id_credit_holds")),
        sa.ForeignKeyConstraint(["cap_id"], ["credit_caps.id"], name=op.f("fk_credit_hold_caps_cap_id_credit_caps")),
        sa.PrimaryKeyConstraint("hold_id", "cap_id", name=op.f("pk_credit_hold_caps")),
    )
    op.create_table(
        "credit_recurring_grants",
        sa.Column("id", BigId, nullable=False),
        sa.Column("wallet_id", sa.BigInteger(), nullable=True),
        sa.Column("credit_type", sa.String(32), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("rollover_max", sa.BigInteger(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("period", sa.String(8), nullable=False),
        sa.Column("period_seconds", sa.Integer(), nullable=True),
        sa.Column("anchor", sa.DateTime(timezone=True), nullable=True),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("explicit", sa.Boolean(), nullable=False),
        sa.Column("reference", sa.String(128), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("period_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(CREDIT_TYPE_KNOWN, name=op.f("ck_credit_recurring_grants_credit_type_known")),
        sa.CheckConstraint("amount >= 0", name=op.f("ck_credit_recurring_grants_amount_not_negative")),
        sa.CheckConstraint("rollover_max >= 0", name=op.f("ck_credit_recurring_grants_rollover_max_not_negative")),
        sa.CheckConstraint("priority >= 0 AND priority <= 100", name=op.f("ck_credit_recurring_grants_priority_in_range")),
        sa.CheckConstraint(PERIOD_KNOWN, name=op.f("ck_credit_recurring_grants_period_known")),
        sa.CheckConstraint("(period = 'seconds') = (period_seconds IS NOT NULL)",
                           name=op.f("ck_credit_recurring_grants_seconds_with_period")),
        sa.ForeignKeyConstraint(["wallet_id"], ["wallets.id"], name=op.f("fk_credit_recurring_grants_wallet_id_wallets")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_recurring_grants")),
    )
    op.create_index("ix_credit_recurring_grants_wallet_id", "credit_recurring_grants", ["wallet_id"])
    op.create_table(
        "credit_usage",
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("wallet_id", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("key_id", sa.BigInteger(), nullable=False),
        sa.Column("feature", sa.String(64), nullable=False),
        sa.Column("credit_type", sa.String(32), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("failed", sa.BigInteger(), nullable=False),
        sa.Column("charged", sa.BigInteger(), nullable=False),
        sa.Column("refunded", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(CREDIT_TYPE_KNOWN, name=op.f("ck_credit_usage_credit_type_known")),
        sa.PrimaryKeyConstraint("hour", "wallet_id", "user_id", "key_id", "feature", "credit_type",
                                name=op.f("pk_credit_usage")),
    )
    op.create_index("ix_credit_usage_hour", "credit_usage", ["hour"])
    op.create_index("ix_credit_usage_wallet_id_hour", "credit_usage", ["wallet_id", "hour"])


def _access() -> None:
    op.create_table(
        "team_members",
        sa.Column("team_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(8), nullable=False),
        sa.Column("cap_id", BigId, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("role IN ('owner', 'admin', 'member')", name=op.f("ck_team_members_role_known")),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], name=op.f("fk_team_members_team_id_teams")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_team_members_user_id_users")),
        sa.ForeignKeyConstraint(["cap_id"], ["credit_caps.id"], name=op.f("fk_team_members_cap_id_credit_caps")),
        sa.PrimaryKeyConstraint("team_id", "user_id", name=op.f("pk_team_members")),
    )
    op.create_index("ix_team_members_user_id", "team_members", ["user_id"])
    op.create_table(
        "api_keys",
        sa.Column("id", BigId, nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("team_id", sa.Integer(), nullable=True),
        sa.Column("wallet_id", sa.BigInteger(), nullable=False),
        sa.Column("cap_id", BigId, nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("budget_period", sa.String(8), nullable=True),
        sa.Column("features", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_api_keys_user_id_users")),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"], name=op.f("fk_api_keys_team_id_teams")),
        sa.ForeignKeyConstraint(["cap_id"], ["credit_caps.id"], name=op.f("fk_api_keys_cap_id_credit_caps")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("secret_hash", name=op.f("uq_api_keys_secret_hash")),
    )
    op.create_index("ix_api_keys_user_id", "api_keys", ["user_id"])
    op.create_index("ix_api_keys_team_id", "api_keys", ["team_id"])


def downgrade():
    bind = op.get_bind()
    sqlite = bind.dialect.name == "sqlite"
    for what, query in (
        ("team wallet(s)", "SELECT count(*) FROM wallets WHERE kind = 'team'"),
        ("ledger row(s) of take-backs, debt or frozen credits",
         "SELECT count(*) FROM ledger_entries WHERE kind IN ('take_back', 'debt', 'repay', 'freeze', 'unfreeze')"),
        ("rollover lot(s)", "SELECT count(*) FROM credit_lots WHERE source = 'rollover'"),
    ):
        found = bind.execute(sa.text(query)).scalar_one()
        if found:
            raise RuntimeError(f"{found} {what}, which the schema before 0010 cannot hold; the ledger is "
                               "append-only, so this cannot be undone.")
    if not sqlite:
        op.execute(DROP)
    for table in ("api_keys", "team_members", "credit_usage", "credit_recurring_grants", "credit_hold_caps",
                  "credit_cap_spend", "credit_cap_limits", "credit_caps"):
        op.drop_table(table)
    op.drop_index("ix_credit_lots_reference", table_name="credit_lots")
    added = (("credit_lots", "frozen_at"), ("ledger_entries", "debt_change"), ("credit_accounts", "alert_below"),
             ("credit_accounts", "alert_threshold"), ("credit_accounts", "debt"))
    for table, column in (("jobs", "wallet_id"), ("credit_holds", "feature"), ("credit_holds", "key_id"),
                          ("credit_holds", "user_id")):
        _drop_column(table, column, sqlite)
    if sqlite:
        for table in LEDGER_TABLES:
            _copy_sqlite(table, TO_USERS + _checks_sqlite(table, after=False))
        _append_only_triggers()
        for table, column in added:
            _drop_column(table, column, sqlite)
    else:
        _checks_postgresql(after=False)
        op.drop_constraint(op.f("ck_credit_accounts_debt_not_negative"), "credit_accounts", type_="check")
        for table, column in added:
            _drop_column(table, column, sqlite)
        for table in LEDGER_TABLES:
            op.drop_constraint(f"fk_{table}_wallet_id_wallets", table, type_="foreignkey")
            op.alter_column(table, "wallet_id", new_column_name="user_id", type_=sa.Integer(),
                            existing_type=sa.BigInteger(), existing_nullable=False)
            op.create_foreign_key(f"fk_{table}_user_id_users", table, "users", ["user_id"], ["id"])
        for _table, old, new in RENAMED_INDEXES:
            op.execute(f"ALTER INDEX {new} RENAME TO {old}")
    op.drop_table("wallets")
    op.drop_table("teams")
    if not sqlite:
        op.execute(_revision_0008().FUNCTIONS)


def _drop_column(table: str, column: str, sqlite: bool) -> None:
    if sqlite:
        # In place (a copy would meet the foreign keys that point at the table).
        op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    else:
        op.drop_column(table, column)


def _revision_0008():
    """The functions 0010 replaces, as 0008 made them (for the way back)."""
    path = Path(__file__).with_name("0008_ledger_procedures.py")
    spec = importlib.util.spec_from_file_location("creditapp_migration_0008", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
