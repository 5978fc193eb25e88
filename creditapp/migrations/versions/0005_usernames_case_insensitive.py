"""usernames are unique whatever their case

Revision ID: 0005_usernames_case_insensitive
Revises: 0004_hold_idempotency_key
Create Date: 2026-11-24

`Case`, `case` and `CASE` are one name; each user keeps the spelling they chose. A database whose
existing names already collide is not changed: the upgrade stops and lists them, to be renamed
first.
"""
import sqlalchemy as sa
from alembic import op

revision = "0005_usernames_case_insensitive"
down_revision = "0004_hold_idempotency_key"
branch_labels = None
depends_on = None


def upgrade():
    collisions = op.get_bind().execute(sa.text(
        "SELECT id, username FROM users WHERE lower(username) IN ("
        "  SELECT lower(username) FROM users GROUP BY lower(username) HAVING count(*) > 1"
        ") ORDER BY lower(username), id"
    )).all()
    if collisions:
        names = ", ".join(f"{name!r} (id {user_id})" for user_id, name in collisions)
        raise RuntimeError(
            "usernames must become unique whatever their case, but these differ only by case: "
            f"{names}. Rename all but one of each group (UPDATE users SET username = ... WHERE id = ...) "
            "and run `flask db upgrade` again."
        )
    op.create_index("uq_users_username_lower", "users", [sa.text("lower(username)")], unique=True)


def downgrade():
    op.drop_index("uq_users_username_lower", table_name="users")
