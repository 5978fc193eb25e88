"""low-balance alerts decided by the writes, and lots' expiring notices

Revision ID: 0016_alerts
Revises: 0015_webhooks
Create Date: 2026-12-07

A `balance.low` event is decided in the transaction that moves a balance (creditapp/ledger/
alerts.py), with its state on the account row (`alert_threshold`, `alert_below`, there since
0010). On PostgreSQL the hold and the close of a paid request are one function call each, so they
decide it themselves: `creditapp_low_balance` writes the event into the outbox (`webhook_events`,
0015) inside the same call, and both functions answer `alerted` so that the caller can start a
dispatch after it. They take the default thresholds as `p_alerts` (the app's setting, not a table:
the setting stays the one source of truth). `creditapp_hold` and `creditapp_close` are 0010's
but for that.

`credit_lots.expiring_notice_at` is when its `lot.expiring` event was written (once per lot);
the partial index finds the lots still to tell about without reading the ones told.
"""
import importlib.util
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0016_alerts"
down_revision = "0015_webhooks"
branch_labels = None
depends_on = None

NOT_NOTICED = sa.text("expires_at IS NOT NULL AND expiring_notice_at IS NULL")
OLD_HOLD = ("creditapp_hold(bigint, text, bigint, integer, text, integer, text, text, text, boolean, integer, bigint, "
            "bigint[], text)")
OLD_CLOSE = "creditapp_close(bigint, bigint, text, bigint, integer, text, integer, text)"
NEW_HOLD = ("creditapp_hold(bigint, text, bigint, integer, text, integer, text, text, text, boolean, integer, bigint, "
            "bigint[], text, jsonb)")
NEW_CLOSE = "creditapp_close(bigint, bigint, text, bigint, integer, text, integer, text, jsonb)"

FUNCTIONS = r"""
-- Decide an account's low-balance alert after its balance changed, as of p_now (creditapp/ledger/
-- alerts.py does the same elsewhere): below its threshold (its own, else p_alerts' default for
-- its credit type) with no alert sent since it was last at or above it, write a balance.low event
-- into the outbox and mark it sent; at or above it (or with no threshold), re-arm. p_spendable is
-- what the account can spend when the caller knows it (else: available, less lots past their
-- expiry). True when it wrote an event. The caller holds the account's lock.
CREATE FUNCTION creditapp_low_balance(
    p_wallet bigint, p_type text, p_now timestamptz, p_alerts jsonb, p_spendable bigint
) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    a record;
    threshold bigint;
    spendable bigint := p_spendable;
BEGIN
    SELECT ca.available, ca.alert_threshold, ca.alert_below INTO a FROM credit_accounts ca
    WHERE ca.wallet_id = p_wallet AND ca.credit_type = p_type;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    threshold := coalesce(a.alert_threshold, (p_alerts ->> p_type)::bigint);
    IF threshold IS NULL THEN
        IF a.alert_below THEN
            UPDATE credit_accounts SET alert_below = false WHERE wallet_id = p_wallet AND credit_type = p_type;
        END IF;
        RETURN false;
    END IF;
    IF spendable IS NULL THEN
        spendable := a.available - coalesce((
            SELECT sum(l.remaining - l.held) FROM credit_lots l
            WHERE l.wallet_id = p_wallet AND l.credit_type = p_type AND l.remaining > l.held
              AND l.expires_at <= p_now AND l.frozen_at IS NULL), 0);
    END IF;
    IF (spendable < threshold) = a.alert_below THEN
        RETURN false;
    END IF;
    UPDATE credit_accounts SET alert_below = (spendable < threshold) WHERE wallet_id = p_wallet AND credit_type = p_type;
    IF spendable >= threshold THEN
        RETURN false;
    END IF;
    INSERT INTO webhook_events (type, payload, created_at)
    VALUES ('balance.low', jsonb_build_object(
        'wallet_id', p_wallet,
        'user_id', CASE WHEN p_wallet < 2147483648 THEN p_wallet END,
        'team_id', CASE WHEN p_wallet >= 2147483648 THEN p_wallet - 2147483648 END,
        'credit_type', p_type, 'threshold', threshold, 'balance', spendable)::text, p_now);
    RETURN true;
END $$;

-- A paid request's first transaction: the session check, its Idempotency-Key (with p_replay:
-- replay the stored answer, refuse a key in use or reused, free a key whose hold has expired),
-- the caps that apply (p_caps, checked before anything is written), then the hold, claiming the
-- key and counting the hold against the caps.
-- outcome: held | replay | revoked | unknown_wallet | refill | cap_closed | cap_expired |
-- feature_not_allowed | cap_exceeded | insufficient | in_use | reused.
-- A key claimed by a concurrent request at the last step raises SQLSTATE CA409 (nothing is kept).
-- New in 0016: the accounts it moved decide their low-balance alert at the end (alerted: it wrote
-- a balance.low event), with p_alerts the default thresholds ({"credit_type": n}, or NULL).
CREATE FUNCTION creditapp_hold(
    p_wallet bigint, p_type text, p_amount bigint, p_ttl_seconds integer, p_sid text,
    p_client integer, p_key text, p_fingerprint text, p_ref text, p_replay boolean,
    p_user integer, p_key_id bigint, p_caps bigint[], p_feature text, p_alerts jsonb DEFAULT NULL,
    OUT outcome text, OUT hold_id bigint, OUT expires_at timestamptz, OUT available bigint,
    OUT generation_credits bigint, OUT ai_tokens bigint,
    OUT response_status integer, OUT response_body text,
    OUT cap_id bigint, OUT cap_limit bigint, OUT cap_spent bigint, OUT alerted boolean
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
    moved boolean := false;  -- this call changed (p_wallet, p_type)'s balance before it refused
BEGIN
    alerted := false;
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
                    IF k.hold_wallet = p_wallet AND k.hold_type = p_type THEN
                        moved := true;  -- decided with the rest of this call's changes, below
                    ELSE
                        alerted := creditapp_low_balance(k.hold_wallet, k.hold_type, now_, p_alerts, NULL);
                    END IF;
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
    <<decided>>
    BEGIN
    -- The first attempt holds this lock until it commits: only now is it sure to be seen.
    EXIT fresh WHEN EXISTS (SELECT 1 FROM credit_holds h WHERE h.request_ref = p_ref);
    now_ := creditapp_now();  -- after the lock: what has expired is decided at this write
    IF EXISTS (SELECT 1 FROM wallets w WHERE w.id = p_wallet AND w.refill_due_at <= now_) THEN
        outcome := 'refill'; EXIT decided;  -- a new period's grants come first; the caller grants them
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
            outcome := 'cap_closed'; EXIT decided;
        END IF;
        IF c.expires_at IS NOT NULL AND c.expires_at <= now_ THEN
            outcome := 'cap_expired'; EXIT decided;
        END IF;
        IF c.features IS NOT NULL AND NOT (c.features::jsonb ? coalesce(p_feature, '')) THEN
            outcome := 'feature_not_allowed'; EXIT decided;
        END IF;
        IF c.cap_limit IS NOT NULL AND coalesce(c.spent, 0) + p_amount > c.cap_limit THEN
            outcome := 'cap_exceeded'; cap_limit := c.cap_limit; cap_spent := coalesce(c.spent, 0); EXIT decided;
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
            moved := true;  -- the expiries just done commit with the refusal
            EXIT decided;
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
    -- Lots due at now_ were written off above: what it can spend is what the balance read shows.
    IF creditapp_low_balance(p_wallet, p_type, now_, p_alerts,
                             CASE p_type WHEN 'generation_credits' THEN generation_credits ELSE ai_tokens END) THEN
        alerted := true;
    END IF;
    RETURN;
    END decided;
    -- A refusal: what the expiries on the way changed commits with it.
    IF moved THEN
        IF creditapp_low_balance(p_wallet, p_type, now_, p_alerts, NULL) THEN
            alerted := true;
        END IF;
    END IF;
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
-- New in 0016: a close that ended the hold decides the account's low-balance alert (alerted: it
-- wrote a balance.low event), with p_alerts the default thresholds.
CREATE FUNCTION creditapp_close(
    p_hold bigint, p_wallet bigint, p_type text, p_charge bigint, p_response_status integer,
    p_response_body text, p_key_ttl_seconds integer, p_reason text, p_alerts jsonb DEFAULT NULL,
    OUT outcome text, OUT alerted boolean
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
    alerted := false;
    IF st.status = 'open' THEN  -- this call ended the hold
        alerted := creditapp_low_balance(p_wallet, p_type, now_, p_alerts, NULL);
    END IF;
END $$;
"""

DROP = f"""
DROP FUNCTION IF EXISTS {NEW_CLOSE};
DROP FUNCTION IF EXISTS {NEW_HOLD};
DROP FUNCTION IF EXISTS creditapp_low_balance(bigint, text, timestamptz, jsonb, bigint);
"""


def upgrade():
    op.add_column("credit_lots", sa.Column("expiring_notice_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_credit_lots_expiring_notice", "credit_lots", ["expires_at"],
                    postgresql_where=NOT_NOTICED, sqlite_where=NOT_NOTICED)
    if op.get_bind().dialect.name == "postgresql":
        # New arguments and answers: the old functions go, rather than stay beside the new ones.
        # p_alerts has a default, so that servers still running the code before 0016 (a rolling
        # deploy: `db upgrade`, then the restart) go on holding and closing with their own call
        # (their wallets' own thresholds only) instead of failing every paid request.
        op.execute(f"DROP FUNCTION {OLD_CLOSE}; DROP FUNCTION {OLD_HOLD};")
        op.execute(FUNCTIONS)


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute(DROP)
        op.execute(_revision_0010().FUNCTIONS)
    op.drop_index("ix_credit_lots_expiring_notice", table_name="credit_lots")
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE credit_lots DROP COLUMN expiring_notice_at")
    else:
        op.drop_column("credit_lots", "expiring_notice_at")


def _revision_0010():
    """The functions 0016 replaces, as 0010 made them (for the way back)."""
    path = Path(__file__).with_name("0010_wallets.py")
    spec = importlib.util.spec_from_file_location("creditapp_migration_0010", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
