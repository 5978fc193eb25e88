"""the hot path: the paid rate limit counted in the database, in the hold's own call

Revision ID: 0018_hot_path
Revises: 0017_verify_runs
Create Date: 2026-12-07

`paid_rate_counters` is the paid rate limit (PAID_RATE_LIMIT), one row per user and window
length: fixed windows as Flask-Limiter's `fixed-window` counts them (a window starts at its first
hit and lasts its length; every request counts, those over the limit too). A row is updated in
place and none of its indexed columns changes, so the updates are HOT.

On PostgreSQL `creditapp_paid_hold` is a paid request's first call: the login session (revoked,
or its account disabled) when the web layer left that check to it, the rate limit, then 0016's
`creditapp_hold`, in one round trip. `creditapp_paid_admit` is its first two steps alone, for a
request refused before it reaches the hold. Both are new names: servers still on the previous
release go on calling `creditapp_hold` as before during a rolling deploy.
"""
import sqlalchemy as sa
from alembic import op

revision = "0018_hot_path"
down_revision = "0017_verify_runs"
branch_labels = None
depends_on = None

HOLD_ARGS = """p_wallet bigint, p_type text, p_amount bigint, p_ttl_seconds integer,
    p_client integer, p_key text, p_fingerprint text, p_ref text, p_replay boolean,
    p_user integer, p_key_id bigint, p_caps bigint[], p_feature text, p_alerts jsonb"""

FUNCTIONS = rf"""
-- The session check (p_sid: NULL when the web layer made it) and the paid rate limit of p_user,
-- p_windows being (amount, seconds) pairs flattened, counted in order up to the first one over
-- its amount (as Flask-Limiter does). outcome: admitted | revoked | disabled | rate_limited;
-- rate_window (1-based), rate_hits and rate_reset describe the window the answer's headers show
-- (the one over its amount, else the first). p_ref names the request: its repetition after a
-- lost connection is not counted twice.
CREATE FUNCTION creditapp_paid_admit(
    p_sid text, p_user integer, p_windows integer[], p_ref text,
    OUT outcome text, OUT rate_window integer, OUT rate_hits integer, OUT rate_reset timestamptz
) LANGUAGE plpgsql AS $$
DECLARE
    c record;
    now_ timestamptz;
BEGIN
    IF p_sid IS NOT NULL THEN
        IF EXISTS (SELECT 1 FROM revoked_sessions WHERE sid = p_sid) THEN
            outcome := 'revoked'; RETURN;
        END IF;
        IF EXISTS (SELECT 1 FROM users WHERE id = p_user AND disabled) THEN
            outcome := 'disabled'; RETURN;
        END IF;
    END IF;
    outcome := 'admitted';
    now_ := creditapp_now();
    FOR i IN 1..coalesce(cardinality(p_windows), 0) / 2 LOOP
        INSERT INTO paid_rate_counters AS rc (user_id, window_seconds, hits, window_ends_at, last_ref)
        VALUES (p_user, p_windows[2 * i], 1, now_ + make_interval(secs => p_windows[2 * i]), p_ref)
        ON CONFLICT ON CONSTRAINT pk_paid_rate_counters DO UPDATE SET
            hits = CASE WHEN rc.window_ends_at <= now_ THEN 1
                        WHEN rc.last_ref IS NOT DISTINCT FROM p_ref AND p_ref IS NOT NULL THEN rc.hits
                        ELSE rc.hits + 1 END,
            window_ends_at = CASE WHEN rc.window_ends_at <= now_ THEN EXCLUDED.window_ends_at
                                  ELSE rc.window_ends_at END,
            last_ref = p_ref
        RETURNING rc.hits, rc.window_ends_at INTO c;
        IF i = 1 OR c.hits > p_windows[2 * i - 1] THEN
            rate_window := i; rate_hits := c.hits; rate_reset := c.window_ends_at;
        END IF;
        IF c.hits > p_windows[2 * i - 1] THEN
            outcome := 'rate_limited'; RETURN;
        END IF;
    END LOOP;
END $$;

-- A paid request's first call: creditapp_paid_admit, then (admitted) creditapp_hold with the
-- same arguments as 0016's, whose outcome it answers. One round trip for all three.
CREATE FUNCTION creditapp_paid_hold(
    p_sid text, p_rate_user integer, p_windows integer[], {HOLD_ARGS},
    OUT outcome text, OUT hold_id bigint, OUT expires_at timestamptz, OUT available bigint,
    OUT generation_credits bigint, OUT ai_tokens bigint,
    OUT response_status integer, OUT response_body text,
    OUT cap_id bigint, OUT cap_limit bigint, OUT cap_spent bigint, OUT alerted boolean,
    OUT rate_window integer, OUT rate_hits integer, OUT rate_reset timestamptz
) LANGUAGE plpgsql AS $$
BEGIN
    alerted := false;
    SELECT a.outcome, a.rate_window, a.rate_hits, a.rate_reset INTO outcome, rate_window, rate_hits, rate_reset
    FROM creditapp_paid_admit(p_sid, p_rate_user, p_windows, p_ref) a;
    IF outcome <> 'admitted' THEN
        RETURN;
    END IF;
    SELECT h.outcome, h.hold_id, h.expires_at, h.available, h.generation_credits, h.ai_tokens,
           h.response_status, h.response_body, h.cap_id, h.cap_limit, h.cap_spent, h.alerted
    INTO outcome, hold_id, expires_at, available, generation_credits, ai_tokens,
         response_status, response_body, cap_id, cap_limit, cap_spent, alerted
    FROM creditapp_hold(p_wallet, p_type, p_amount, p_ttl_seconds, NULL, p_client, p_key, p_fingerprint, p_ref,
                        p_replay, p_user, p_key_id, p_caps, p_feature, p_alerts) h;
END $$;
"""

DROP = """
DROP FUNCTION IF EXISTS creditapp_paid_hold(text, integer, integer[], bigint, text, bigint, integer, integer, text,
    text, text, boolean, integer, bigint, bigint[], text, jsonb);
DROP FUNCTION IF EXISTS creditapp_paid_admit(text, integer, integer[], text);
"""


def upgrade():
    op.create_table(
        "paid_rate_counters",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("window_seconds", sa.Integer(), nullable=False),
        sa.Column("hits", sa.Integer(), nullable=False),
        sa.Column("window_ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_ref", sa.String(32), nullable=True),
        sa.PrimaryKeyConstraint("user_id", "window_seconds", name="pk_paid_rate_counters"),
        sa.CheckConstraint("hits > 0", name="ck_paid_rate_counters_hits_positive"),
        sa.CheckConstraint("window_seconds > 0", name="ck_paid_rate_counters_window_positive"),
    )
    if op.get_bind().dialect.name == "postgresql":
        # Room on each page for the new version of a row: an update stays on its page (HOT).
        op.execute("ALTER TABLE paid_rate_counters SET (fillfactor = 50)")
        op.execute(FUNCTIONS)


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute(DROP)
    op.drop_table("paid_rate_counters")
