"""The dashboard's one table: what each `credits verify` found, kept so the page can say when
the ledger was last proved and whether it agreed."""
from datetime import datetime

from sqlalchemy import Boolean, CheckConstraint, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ..ledger.tables import Base, BigId, UTCDateTime

VIA = ("cli", "dashboard")


class VerifyRun(Base):
    __tablename__ = "verify_runs"
    __table_args__ = (
        CheckConstraint("discrepancies >= 0", name="discrepancies_not_negative"),
        CheckConstraint(f"via IN ({', '.join(repr(v) for v in VIA)})", name="via_known"),
        CheckConstraint("ok = (discrepancies = 0)", name="ok_means_none_found"),
        Index("ix_verify_runs_finished_at", "finished_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ok: Mapped[bool] = mapped_column(Boolean)
    discrepancies: Mapped[int] = mapped_column(Integer)
    # The first few discrepancies as `credits verify` prints them, one a line.
    details: Mapped[str] = mapped_column(Text, default="")
    via: Mapped[str] = mapped_column(String(16))  # who asked: the CLI or the dashboard's button
    actor_user_id: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the administrator who pressed it


VERIFY_RUNS = VerifyRun.__table__
