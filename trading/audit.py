"""The audit trail: one AuditEvent row per change of money or configuration, written in the caller's transaction.

Every app records through `audit`; the engine's in-database unit collects a signal's rows with `_audit_batch` and
inserts them in one statement at its end.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal

from infra import rows
from trading.models import AuditEvent

_batch = threading.local()


def audit(*, actor: str, action: str, entity: str, entity_id: object, now: datetime, **data: object) -> None:
    """Append one audit row (inside the caller's transaction; in an `_audit_batch`, at its end)."""
    event = AuditEvent(time=now, actor=actor, action=action, entity=entity, entity_id=str(entity_id),
                       data=_jsonable(data))
    pending: list[AuditEvent] | None = getattr(_batch, "events", None)
    if pending is not None:
        pending.append(event)
    else:
        event.save()


@contextmanager
def _audit_batch() -> Iterator[None]:
    """Collect the audit rows written inside and insert them in one statement (inside the same transaction)."""
    if getattr(_batch, "events", None) is not None:
        yield
        return
    _batch.events = []
    try:
        yield
        if _batch.events:
            rows.insert(_batch.events, returning=False)
    finally:
        _batch.events = None


def _jsonable(data: dict[str, object]) -> dict[str, object]:
    return {k: (str(v) if isinstance(v, (Decimal, datetime)) else v) for k, v in data.items()}

