"""INSERT ... ON CONFLICT for the two databases the ledger runs on."""
from sqlalchemy.dialects import postgresql, sqlite


def insert_for(session, table):
    """The dialect's insert (with `on_conflict_do_*`) for the session's database."""
    return (postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert)(table)


def add_to(session, table, keys: dict, amounts: dict) -> None:
    """Add `amounts` to the row of `table` with `keys`, making it (with those amounts) if missing."""
    statement = insert_for(session, table).values(**keys, **amounts)
    session.execute(statement.on_conflict_do_update(
        index_elements=list(keys),
        set_={name: getattr(table.c, name) + getattr(statement.excluded, name) for name in amounts},
    ))
