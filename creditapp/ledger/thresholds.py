"""The thresholds of low-balance alerts: the configured defaults, and a wallet's own (see alerts.py
for how an alert is decided)."""
from collections.abc import Callable

from sqlalchemy import select, update

from . import alerts
from .clock import utcnow
from .core import credit_type_of, unknown
from .statements import ACCOUNTS
from .transactions import atomic, retry_conflicts
from .types import CreditType


class Thresholds:
    def configure_alerts(self, defaults: dict, *, emit: Callable[..., None] | None = None,
                         emitted: Callable[[], None] | None = None) -> None:
        """Default thresholds per credit type (LOW_BALANCE_THRESHOLDS); `emit(session, type, data,
        at=)` writes an event in the caller's transaction, `emitted()` runs after a database
        function committed one. Raises ValueError for an unknown credit type or a bad threshold."""
        alerts.settings.configure(defaults, emit, emitted)

    def alert_thresholds(self, wallet_id: int) -> dict[str, dict]:
        """Per credit type: the threshold in force (None: no alert), whether it is the default,
        and whether an alert was sent since the balance was last at or above it."""
        with atomic(write=False) as session:
            return self._thresholds(session, wallet_id)

    @retry_conflicts
    def set_alert_thresholds(self, wallet_id: int, changes: dict) -> dict[str, dict]:
        """Set the wallet's own thresholds, `{credit_type: threshold}` (None: back to the default),
        in one transaction, and answer them as `alert_thresholds` does. A balance at or above its
        new threshold re-arms the alert; one below it is told at its next change (setting a
        threshold moves no balance)."""
        changes = {credit_type_of(name): None if value is None else alerts.checked_threshold(value)
                   for name, value in changes.items()}
        with atomic() as session:
            self._enter(session, wallet_id)
            for credit_type in CreditType:  # the accounts' lock order
                if credit_type in changes:
                    self._lock_account(session, wallet_id, credit_type)
                    session.execute(update(ACCOUNTS).where(
                        ACCOUNTS.c.wallet_id == wallet_id, ACCOUNTS.c.credit_type == credit_type.value,
                    ).values(alert_threshold=changes[credit_type]))
                    alerts.rearm(session, wallet_id, credit_type.value, utcnow())
            return self._thresholds(session, wallet_id)

    def _thresholds(self, session, wallet_id: int) -> dict[str, dict]:
        rows = {row.credit_type: row for row in session.execute(
            select(ACCOUNTS.c.credit_type, ACCOUNTS.c.alert_threshold, ACCOUNTS.c.alert_below)
            .where(ACCOUNTS.c.wallet_id == wallet_id))}
        if not rows:
            raise unknown(wallet_id)
        defaults = alerts.settings.defaults
        return {
            credit_type.value: {
                "threshold": row.alert_threshold if row.alert_threshold is not None else defaults.get(credit_type.value),
                "default": row.alert_threshold is None, "alerted": bool(row.alert_below),
            }
            for credit_type in CreditType for row in (rows[credit_type.value],)
        }
