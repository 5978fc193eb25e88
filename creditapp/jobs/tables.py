"""The jobs table: the one source of truth for a job's state. The broker only carries job ids;
whatever it delivers, twice or late, the row decides what happens."""
from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from ..ledger.tables import CREDIT_TYPE_CHECK, Base, UTCDateTime

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled", "expired")
FINISHED = ("succeeded", "failed", "cancelled", "expired")
UNFINISHED = ("queued", "running")


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint("status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'expired')",
                        name="status_known"),
        CheckConstraint(CREDIT_TYPE_CHECK, name="credit_type_known"),
        CheckConstraint("attempts >= 0", name="attempts_not_negative"),
        # A caller's jobs, newest first.
        Index("ix_jobs_user_id_created_at", "user_id", "created_at", "id"),
        # What workers and the queue depth look at.
        Index("ix_jobs_unfinished", "status", "created_at",
              postgresql_where=text("status IN ('queued', 'running')"),
              sqlite_where=text("status IN ('queued', 'running')")),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))  # whose job it is (who may read it)
    wallet_id: Mapped[int] = mapped_column(BigInteger)  # what its hold is taken from
    feature: Mapped[str] = mapped_column(String(64))
    # Which registered work function runs it (creditapp.jobs.work), and with what arguments (JSON).
    work: Mapped[str] = mapped_column(String(255))
    params: Mapped[str] = mapped_column(Text)
    credit_type: Mapped[str] = mapped_column(String(32))
    amount: Mapped[int] = mapped_column(BigInteger)  # held at submit
    hold_id: Mapped[int] = mapped_column(ForeignKey("credit_holds.id"), unique=True)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # The attempt that runs it now: only that attempt may beat, finish or retry the job.
    lease: Mapped[str | None] = mapped_column(String(32), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)  # as X-Request-ID allows
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Once succeeded: the feature's answer ({result, charged, ...} with the balance after the charge).
    answer: Mapped[str | None] = mapped_column(Text, nullable=True)
    charged: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # Once failed, expired or cancelled, or between attempts: {"error", "message"}.
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


JOBS = Job.__table__
