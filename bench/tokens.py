"""Access tokens made in advance, signed with the servers' JWT_SECRET_KEY.

Each token carries a `sid` (session id) claim as /api/auth/login's do, so the servers check it
against the revoked sessions on every request, exactly as they do for a real client.
"""
import uuid
from datetime import timedelta
from functools import lru_cache
from pathlib import Path

from flask_jwt_extended import create_access_token

TOKEN_LIFETIME_S = 86400


@lru_cache(maxsize=None)
def _token_app(secret: str):
    # The real app factory, so the tokens carry exactly what the servers expect. Its database
    # is never touched.
    from creditapp.settings import DevelopmentConfig
    from creditapp import create_app

    return create_app(DevelopmentConfig, {
        "SQLALCHEMY_DATABASE_URI": "sqlite://",
        "JWT_SECRET_KEY": secret,
        "JWT_ACCESS_TOKEN_EXPIRES": timedelta(seconds=TOKEN_LIFETIME_S),
    })


def write_tokens(secret: str, user_ids: list[int], path: Path) -> Path:
    """One access token per user id, one a line, for bench/load.lua."""
    with _token_app(secret).app_context():
        tokens = [
            create_access_token(identity=str(user_id), additional_claims={"sid": uuid.uuid4().hex})
            for user_id in user_ids
        ]
    path.write_text("\n".join(tokens) + "\n")
    return path
