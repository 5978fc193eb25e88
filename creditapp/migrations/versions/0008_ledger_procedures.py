"""the hot ledger transactions as PostgreSQL functions

Revision ID: 0008_ledger_procedures
Revises: 0007_refunds_and_voids
Create Date: 2026-11-24

On PostgreSQL a paid request's two transactions (take a hold; close it) and the balance read are
each one call of a function below, run in autocommit: one round trip each instead of a dozen
statements with BEGIN and COMMIT. They do what creditapp/ledger/service.py does on SQLite, step
for step (the same behaviour suites run against both). PL/pgSQL runs each statement with a fresh
snapshot, so a step sees what an earlier step waited for and locked.

Time is `creditapp_now()`, read after the account's lock, like the service's clock.

Holds gain `request_ref`: a call retried after its connection was lost finds the hold the first
attempt took, instead of taking a second one.
"""
import sqlalchemy as sa
from alembic import op

revision = "0008_ledger_procedures"
down_revision = "0007_refunds_and_voids"
branch_labels = None
depends_on = None

FUNCTIONS = r"""
CREATE OR REPLACE FUNCTION creditapp_now() RETURNS timestamptz
LANGUAGE sql VOLATILE AS $$ SELECT clock_timestamp() $$;

-- Ledger rows for a list of changes (kind, lot, change of available, change of held), in order,
-- ending at the account's state after (p_available, p_held).
CREATE OR REPLACE FUNCTION creditapp_rows(
    p_user integer, p_type text, p_hold bigint, p_reason text, p_now timestamptz,
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
        INSERT INTO ledger_entries (user_id, credit_type, kind, amount, held_change, balance_after, held_after,
                                    hold_id, lot_id, reason, reference, created_at)
        VALUES (p_user, p_type, p_kinds[i], p_d_available[i], p_d_held[i], available, held,
                p_hold, p_lots[i], p_reason, NULL, p_now);
    END LOOP;
END $$;

-- Write off the free part of the account's lots that are past their expiry.
CREATE OR REPLACE FUNCTION creditapp_expire_lots(p_user integer, p_type text, p_now timestamptz)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    r record;
    kinds text[] := '{}'; lots bigint[] := '{}'; d_available bigint[] := '{}'; d_held bigint[] := '{}';
    total bigint := 0;
    after record;
BEGIN
    FOR r IN SELECT id, remaining - held AS free FROM credit_lots
             WHERE user_id = p_user AND credit_type = p_type AND remaining > held AND expires_at <= p_now
             ORDER BY id FOR UPDATE
    LOOP
        UPDATE credit_lots SET remaining = held WHERE id = r.id;
        kinds := kinds || 'expire'::text; lots := lots || r.id;
        d_available := d_available || -r.free; d_held := d_held || 0::bigint;
        total := total + r.free;
    END LOOP;
    IF total > 0 THEN
        UPDATE credit_accounts SET available = available - total
        WHERE user_id = p_user AND credit_type = p_type RETURNING available, held INTO after;
        PERFORM creditapp_rows(p_user, p_type, NULL, 'lot expired', p_now, kinds, lots, d_available, d_held,
                               after.available, after.held);
    END IF;
END $$;

-- End an open hold with p_status: its receipt is consumed for p_charge in spending order, the
-- rest goes back to its lots (and lapses at once where the lot has expired or was voided).
CREATE OR REPLACE FUNCTION creditapp_end_hold(
    p_hold bigint, p_user integer, p_type text, p_charge bigint, p_status text, p_now timestamptz,
    p_reason text
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    r record;
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
    FOR r IN SELECT hl.lot_id, hl.amount, l.expires_at, l.voided_at
             FROM credit_hold_lots hl JOIN credit_lots l ON l.id = hl.lot_id
             WHERE hl.hold_id = p_hold
             ORDER BY l.priority, l.expires_at IS NULL, l.expires_at, l.created_at, l.id
    LOOP
        take := least(left_to_charge, r.amount);
        left_to_charge := left_to_charge - take;
        back := r.amount - take;
        was_held := was_held + r.amount;
        gone := CASE WHEN r.voided_at IS NOT NULL THEN 'void'
                     WHEN r.expires_at IS NOT NULL AND r.expires_at <= p_now THEN 'expire' END;
        UPDATE credit_lots
        SET held = held - r.amount,
            remaining = remaining - take - CASE WHEN gone IS NULL THEN 0 ELSE back END
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
    WHERE id = p_hold AND status = 'open';
    -- Rows in the service's order: settled, given back, lapsed to expired lots, lapsed to voided.
    FOR i IN 1..cardinality(s_lots) LOOP
        kinds := kinds || 'settle'::text; lots := lots || s_lots[i];
        d_available := d_available || 0::bigint; d_held := d_held || -s_n[i];
    END LOOP;
    FOREACH gone IN ARRAY ARRAY['', 'expire', 'void'] LOOP
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
    WHERE user_id = p_user AND credit_type = p_type RETURNING available, held INTO after;
    PERFORM creditapp_rows(p_user, p_type, p_hold, p_reason, p_now, kinds, lots, d_available, d_held,
                           after.available, after.held);
END $$;

-- Give back the account's open holds past their expiry, but p_exclude (0 for none).
CREATE OR REPLACE FUNCTION creditapp_expire_holds(p_user integer, p_type text, p_now timestamptz, p_exclude bigint)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE r record;
BEGIN
    FOR r IN SELECT id FROM credit_holds
             WHERE user_id = p_user AND credit_type = p_type AND status = 'open' AND expires_at <= p_now
               AND id <> p_exclude
             ORDER BY id FOR UPDATE
    LOOP
        PERFORM creditapp_end_hold(r.id, p_user, p_type, 0, 'expired', p_now, NULL);
    END LOOP;
END $$;

-- What the user can spend at p_now: lots past their expiry count for nothing, written off or not.
CREATE OR REPLACE FUNCTION creditapp_spendable(
    p_user integer, p_now timestamptz, OUT generation_credits bigint, OUT ai_tokens bigint
) LANGUAGE plpgsql STABLE AS $$
DECLARE r record;
BEGIN
    FOR r IN SELECT a.credit_type, a.available FROM credit_accounts a WHERE a.user_id = p_user LOOP
        IF r.credit_type = 'generation_credits' THEN generation_credits := r.available;
        ELSE ai_tokens := r.available;
        END IF;
    END LOOP;
    FOR r IN SELECT l.credit_type, sum(l.remaining - l.held) AS due FROM credit_lots l
             WHERE l.user_id = p_user AND l.remaining > l.held AND l.expires_at <= p_now
             GROUP BY l.credit_type
    LOOP
        IF r.credit_type = 'generation_credits' THEN generation_credits := generation_credits - r.due;
        ELSE ai_tokens := ai_tokens - r.due;
        END IF;
    END LOOP;
END $$;

-- A paid request's first transaction: the session check, its Idempotency-Key (with p_replay:
-- replay the stored answer, refuse a key in use or reused, free a key whose hold has expired),
-- then the hold, claiming the key.
-- outcome: held | replay | revoked | unknown_user | insufficient | in_use | reused.
-- A key claimed by a concurrent request at the last step raises SQLSTATE CA409 (nothing is kept).
CREATE OR REPLACE FUNCTION creditapp_hold(
    p_user integer, p_type text, p_amount bigint, p_ttl_seconds integer, p_sid text,
    p_key text, p_fingerprint text, p_ref text, p_replay boolean,
    OUT outcome text, OUT hold_id bigint, OUT expires_at timestamptz, OUT available bigint,
    OUT generation_credits bigint, OUT ai_tokens bigint,
    OUT response_status integer, OUT response_body text
) LANGUAGE plpgsql AS $$
DECLARE
    k record;
    now_ timestamptz;
    taken record;
    r record;
    left_to_hold bigint := p_amount;
    take bigint;
    kinds text[] := '{}'; lots bigint[] := '{}'; d_available bigint[] := '{}'; d_held bigint[] := '{}';
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
                   h.request_ref AS hold_ref
            INTO k FROM idempotency_keys ik LEFT JOIN credit_holds h ON h.id = ik.hold_id
            WHERE ik.user_id = p_user AND ik.key = p_key;
            have_key := FOUND;
            EXIT WHEN NOT have_key OR attempt = 2 OR NOT (k.status = 'in_flight' AND k.hold_id IS NOT NULL);
            -- In flight: read it again under its account's lock, as it is now.
            PERFORM 1 FROM credit_accounts WHERE user_id = p_user AND credit_type = k.hold_type FOR UPDATE;
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
                    PERFORM creditapp_end_hold(k.hold_id, p_user, k.hold_type, 0, 'expired', now_, NULL);
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

    PERFORM 1 FROM credit_accounts WHERE user_id = p_user AND credit_type = p_type FOR UPDATE;
    IF NOT FOUND THEN
        outcome := 'unknown_user'; RETURN;
    END IF;
    -- The first attempt holds this lock until it commits: only now is it sure to be seen.
    EXIT fresh WHEN EXISTS (SELECT 1 FROM credit_holds h WHERE h.request_ref = p_ref);
    now_ := creditapp_now();  -- after the lock: what has expired is decided at this write
    PERFORM creditapp_expire_lots(p_user, p_type, now_);
    UPDATE credit_accounts a SET available = a.available - p_amount, held = a.held + p_amount
    WHERE a.user_id = p_user AND a.credit_type = p_type AND a.available >= p_amount
    RETURNING a.available, a.held INTO taken;
    IF NOT FOUND THEN
        -- Maybe expired holds are what is missing: give them back, and try once more.
        PERFORM creditapp_expire_holds(p_user, p_type, now_, 0);
        UPDATE credit_accounts a SET available = a.available - p_amount, held = a.held + p_amount
        WHERE a.user_id = p_user AND a.credit_type = p_type AND a.available >= p_amount
        RETURNING a.available, a.held INTO taken;
        IF NOT FOUND THEN
            outcome := 'insufficient';
            SELECT a.available INTO available FROM credit_accounts a
            WHERE a.user_id = p_user AND a.credit_type = p_type;
            RETURN;
        END IF;
    END IF;
    expires_at := now_ + make_interval(secs => p_ttl_seconds);
    INSERT INTO credit_holds (user_id, credit_type, amount, settled_amount, refunded_amount, status, created_at,
                              expires_at, idempotency_key, request_ref)
    VALUES (p_user, p_type, p_amount, 0, 0, 'open', now_, expires_at, p_key, p_ref)
    RETURNING id INTO hold_id;
    FOR r IN SELECT l.id, l.remaining - l.held AS free FROM credit_lots l
             WHERE l.user_id = p_user AND l.credit_type = p_type AND l.remaining > l.held AND l.voided_at IS NULL
               AND (l.expires_at IS NULL OR l.expires_at > now_)
             -- The spending order (lots that never expire last: NULLS LAST is the default for an
             -- ascending order here), read straight from ix_credit_lots_spending: no sort, and the
             -- loop stops at the first lots that cover the amount, however many the user has.
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
        RAISE EXCEPTION 'lots of user % % hold % fewer credits than the account', p_user, p_type, left_to_hold;
    END IF;
    PERFORM creditapp_rows(p_user, p_type, hold_id, NULL, now_, kinds, lots, d_available, d_held,
                           taken.available, taken.held);
    -- Swept after the hold's own rows, so that every row's *_after is the state it left.
    PERFORM creditapp_expire_holds(p_user, p_type, now_, hold_id);
    SELECT a.available INTO available FROM credit_accounts a WHERE a.user_id = p_user AND a.credit_type = p_type;
    SELECT s.generation_credits, s.ai_tokens INTO generation_credits, ai_tokens FROM creditapp_spendable(p_user, now_) s;
    IF p_key IS NOT NULL THEN
        -- A few dead keys per claim keep the table at its live size without a cron job.
        DELETE FROM idempotency_keys WHERE id IN (
            SELECT ik.id FROM idempotency_keys ik
            WHERE (ik.status = 'completed' AND ik.expires_at <= now_)
               OR (ik.status = 'in_flight' AND ik.expires_at <= now_ AND EXISTS (
                       SELECT 1 FROM credit_holds h WHERE h.id = ik.hold_id AND h.status <> 'open'))
            LIMIT 20);
        INSERT INTO idempotency_keys (user_id, key, fingerprint, status, hold_id, created_at, expires_at)
        VALUES (p_user, p_key, p_fingerprint, 'in_flight', hold_id, now_, expires_at)
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
    SELECT a.available INTO available FROM credit_accounts a WHERE a.user_id = p_user AND a.credit_type = p_type;
    SELECT s.generation_credits, s.ai_tokens INTO generation_credits, ai_tokens
    FROM creditapp_spendable(p_user, creditapp_now()) s;
END $$;

-- A paid request's second transaction: settle p_charge of the hold (storing the answer for its
-- key), or give it all back; from its expires_at on the hold cannot be settled. Safe to call
-- again: a hold already ended is left as it is. outcome: the hold's status after.
CREATE OR REPLACE FUNCTION creditapp_close(
    p_hold bigint, p_user integer, p_type text, p_charge bigint, p_response_status integer,
    p_response_body text, p_key_ttl_seconds integer, p_reason text, OUT outcome text
) LANGUAGE plpgsql AS $$
DECLARE
    st record;
    now_ timestamptz;
    answered boolean := false;
BEGIN
    PERFORM 1 FROM credit_accounts WHERE user_id = p_user AND credit_type = p_type FOR UPDATE;
    now_ := creditapp_now();
    SELECT h.status, h.expires_at, h.idempotency_key INTO st FROM credit_holds h WHERE h.id = p_hold FOR UPDATE;
    IF st.status <> 'open' THEN
        outcome := st.status;  -- ended elsewhere: a retry with its key, a sweep, or this call before
    ELSIF st.expires_at <= now_ THEN
        PERFORM creditapp_end_hold(p_hold, p_user, p_type, 0, 'expired', now_, NULL);
        outcome := 'expired';
    ELSE
        outcome := CASE WHEN p_charge > 0 THEN 'settled' ELSE 'released' END;
        PERFORM creditapp_end_hold(p_hold, p_user, p_type, p_charge, outcome, now_, p_reason);
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

-- The balance read: the session check, what can be spent now and the next credits to lapse, in
-- one snapshot. outcome: ok | revoked | unknown_user.
CREATE OR REPLACE FUNCTION creditapp_balance(
    p_user integer, p_sid text, p_expiring integer,
    OUT outcome text, OUT generation_credits bigint, OUT ai_tokens bigint, OUT expiring jsonb
) LANGUAGE plpgsql STABLE AS $$
DECLARE now_ timestamptz := creditapp_now();
BEGIN
    IF p_sid IS NOT NULL AND EXISTS (SELECT 1 FROM revoked_sessions WHERE sid = p_sid) THEN
        outcome := 'revoked'; RETURN;
    END IF;
    SELECT s.generation_credits, s.ai_tokens INTO generation_credits, ai_tokens FROM creditapp_spendable(p_user, now_) s;
    IF generation_credits IS NULL AND ai_tokens IS NULL THEN
        outcome := 'unknown_user'; RETURN;
    END IF;
    SELECT coalesce(jsonb_agg(jsonb_build_object('credit_type', e.credit_type, 'amount', e.amount,
                                                 'expires_at', e.expires_at) ORDER BY e.expires_at, e.id), '[]')
    INTO expiring
    FROM (SELECT l.id, l.credit_type, l.remaining - l.held AS amount, l.expires_at FROM credit_lots l
          WHERE l.user_id = p_user AND l.remaining > l.held AND l.voided_at IS NULL AND l.expires_at > now_
          ORDER BY l.expires_at, l.id LIMIT p_expiring) e;
    outcome := 'ok';
END $$;
"""

DROP = """
DROP FUNCTION IF EXISTS creditapp_balance(integer, text, integer);
DROP FUNCTION IF EXISTS creditapp_close(bigint, integer, text, bigint, integer, text, integer, text);
DROP FUNCTION IF EXISTS creditapp_hold(integer, text, bigint, integer, text, text, text, text, boolean);
DROP FUNCTION IF EXISTS creditapp_spendable(integer, timestamptz);
DROP FUNCTION IF EXISTS creditapp_expire_holds(integer, text, timestamptz, bigint);
DROP FUNCTION IF EXISTS creditapp_end_hold(bigint, integer, text, bigint, text, timestamptz, text);
DROP FUNCTION IF EXISTS creditapp_expire_lots(integer, text, timestamptz);
DROP FUNCTION IF EXISTS creditapp_rows(integer, text, bigint, text, timestamptz, text[], bigint[], bigint[], bigint[], bigint, bigint);
DROP FUNCTION IF EXISTS creditapp_now();
"""


def upgrade():
    op.add_column("credit_holds", sa.Column("request_ref", sa.String(32), nullable=True))
    op.create_index("uq_credit_holds_request_ref", "credit_holds", ["request_ref"], unique=True,
                    postgresql_where=sa.text("request_ref IS NOT NULL"),
                    sqlite_where=sa.text("request_ref IS NOT NULL"))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(FUNCTIONS)


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute(DROP)
    op.drop_index("uq_credit_holds_request_ref", "credit_holds")
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE credit_holds DROP COLUMN request_ref")
    else:
        op.drop_column("credit_holds", "request_ref")
