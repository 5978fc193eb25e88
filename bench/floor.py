"""The floor: what a naive hand-written hold-based guard costs per paid request.

A minimal Flask app, not part of the product, that every paid scenario is compared with in the
same run, under the same gunicorn settings, on the same database server and database:
- verify the same JWT (PyJWT, HS256, the servers' JWT_SECRET_KEY; no revocation check),
- a reserve transaction: one conditional decrement and one hold row,
- the stub AI at its configured latency,
- a capture transaction: settle the hold and take the held credit,
with raw SQL through SQLAlchemy's pool (with creditapp's pool settings), as a hand-written Flask
view would. It keeps no ledger,
no idempotency, no limits, metrics or logs, so it works on tables of its own (floor_accounts,
floor_holds) and `credits verify` of the real ledger is untouched.

Run it with `gunicorn -c gunicorn.conf.py 'bench.floor:create_app()'` (bench/servers.py does).
"""
import os
import time
import uuid

import jwt
from flask import Flask, jsonify, request
from sqlalchemy import create_engine, text

from creditapp.settings import Config
from creditapp.ledger.transactions import configure_engine

TABLES = (
    "CREATE TABLE IF NOT EXISTS floor_accounts (user_id INTEGER PRIMARY KEY, available BIGINT NOT NULL, "
    "held BIGINT NOT NULL, CHECK (available >= 0))",
    "CREATE TABLE IF NOT EXISTS floor_holds (id {id} PRIMARY KEY, user_id INTEGER NOT NULL, "
    "amount BIGINT NOT NULL, status VARCHAR(16) NOT NULL, created_at TIMESTAMP NOT NULL)",
)
RESERVE = text(
    "UPDATE floor_accounts SET available = available - :amount, held = held + :amount "
    "WHERE user_id = :user AND available >= :amount RETURNING available"
)
INSERT_HOLD = text(
    "INSERT INTO floor_holds (user_id, amount, status, created_at) "
    "VALUES (:user, :amount, 'open', CURRENT_TIMESTAMP) RETURNING id"
)
SETTLE_HOLD = text("UPDATE floor_holds SET status = 'settled' WHERE id = :hold AND status = 'open'")
TAKE_HELD = text("UPDATE floor_accounts SET held = held - :amount WHERE user_id = :user")


def create_tables(engine) -> None:
    id_type = "INTEGER" if engine.dialect.name == "sqlite" else "BIGSERIAL"
    with engine.begin() as conn:
        for statement in TABLES:
            conn.exec_driver_sql(statement.format(id=id_type))


def seed(engine, user_ids: list[int], balance: int) -> None:
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO floor_accounts (user_id, available, held) VALUES (:u, :b, 0)"),
                     [{"u": user_id, "b": balance} for user_id in user_ids])


def create_app() -> Flask:
    app = Flask(__name__)
    url = os.environ["DATABASE_URL"]
    options = {} if url.startswith("sqlite") else Config.SQLALCHEMY_ENGINE_OPTIONS
    engine = create_engine(url, **options)
    # The same SQLite set-up as creditapp (WAL, busy timeout, BEGIN IMMEDIATE for writers):
    # without it four workers fail with "database is locked" instead of measuring anything.
    configure_engine(engine, 30000)
    writer = engine.execution_options(creditapp_write=True)
    secret = os.environ["JWT_SECRET_KEY"]
    latency = int(os.environ.get("AI_STUB_LATENCY_MS") or 0) / 1000

    @app.post("/api/generate")
    def generate():
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        try:
            user_id = int(jwt.decode(token, secret, algorithms=["HS256"])["sub"])
        except (jwt.PyJWTError, KeyError, ValueError):
            return jsonify(error="invalid_token"), 401
        prompt = (request.get_json(silent=True) or {}).get("prompt")
        if not isinstance(prompt, str) or not prompt:
            return jsonify(error="validation_error"), 422
        with writer.begin() as conn:
            row = conn.execute(RESERVE, {"user": user_id, "amount": 1}).first()
            if row is None:
                return jsonify(error="insufficient_credits"), 403
            hold_id = conn.execute(INSERT_HOLD, {"user": user_id, "amount": 1}).scalar_one()
        if latency:
            time.sleep(latency)
        result = {"feature": "basic_generation", "image_url": f"https://images.stub.invalid/{uuid.uuid4().hex}.png"}
        with writer.begin() as conn:
            conn.execute(SETTLE_HOLD, {"hold": hold_id})
            conn.execute(TAKE_HELD, {"user": user_id, "amount": 1})
        return jsonify(result=result, charged={"credit_type": "generation_credits", "amount": 1},
                       balance={"generation_credits": row.available})

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok")

    return app

