"""`credits verify`, run and remembered: the CLI and the dashboard's button both come here, so
the page shows the last result whoever ran it."""
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select

from ..ledger import credit_service
from ..ledger.audit import Discrepancy
from ..ledger.clock import utcnow
from ..ledger.transactions import atomic
from .tables import VERIFY_RUNS

KEPT_DETAILS = 20  # lines of discrepancies stored with a run: enough to start looking


@dataclass(frozen=True)
class VerifyRun:
    id: int
    started_at: datetime
    finished_at: datetime
    ok: bool
    discrepancies: int
    details: str
    via: str
    actor_user_id: int | None


def run(via: str, actor_user_id: int | None = None) -> tuple[VerifyRun, list[Discrepancy]]:
    """Verify the ledger, store the outcome as a new row, and return it with what was found.

    The verification reads in its own transaction and the record is written in another: a
    record that failed to write must not make the audit itself fail, and the audit must not
    hold a write lock while it reads the whole ledger."""
    started = utcnow()
    problems = credit_service.verify()
    values = {
        "started_at": started, "finished_at": utcnow(), "ok": not problems, "discrepancies": len(problems),
        "details": "\n".join(str(problem) for problem in problems[:KEPT_DETAILS]), "via": via,
        "actor_user_id": actor_user_id,
    }
    with atomic() as session:
        run_id = session.execute(insert(VERIFY_RUNS).values(**values).returning(VERIFY_RUNS.c.id)).scalar_one()
    return VerifyRun(id=run_id, **values), problems


def last() -> VerifyRun | None:
    """The latest run, or None before the first."""
    with atomic(write=False) as session:
        row = session.execute(
            select(VERIFY_RUNS).order_by(VERIFY_RUNS.c.finished_at.desc(), VERIFY_RUNS.c.id.desc()).limit(1)
        ).mappings().first()
    return VerifyRun(**row) if row is not None else None
