"""Venue health: each account's circuit-breaker state and equity-snapshot failures, recorded durably."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from django.db import connection
from django.utils import timezone

from exchanges.resilience import BreakerEvent
from trading.models import VenueHealth
from trading.sidedb import durable_sql, needs_side_connection


def venue_health_record(*, account_id: int, event: BreakerEvent, secrets: Sequence[str] = ()) -> None:
    """Persist a breaker transition of an account's venue (durable even if the caller's transaction rolls back).

    `secrets` (the account's credential values) are blanked out of the error text should a venue echo one.
    """
    now = timezone.now()
    reporter = f"{socket.gethostname()}:{os.getpid()}"[:100]
    last_error = event.last_error
    for secret in secrets:
        last_error = last_error.replace(secret, "[redacted]")
    values = [event.state.value, event.since, event.consecutive_failures, last_error, reporter, now]
    if needs_side_connection():
        durable_sql(
            f"INSERT INTO {VenueHealth._meta.db_table} "
            f"(account_id, state, since, consecutive_failures, last_error, reporter, updated_at) "
            f"VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (account_id) DO UPDATE SET state = EXCLUDED.state, "
            f"since = EXCLUDED.since, consecutive_failures = EXCLUDED.consecutive_failures, "
            f"last_error = EXCLUDED.last_error, reporter = EXCLUDED.reporter, updated_at = EXCLUDED.updated_at",
            [account_id, *values],
        )
        return
    fields = dict(zip(("state", "since", "consecutive_failures", "last_error", "reporter", "updated_at"), values))
    VenueHealth.objects.update_or_create(account_id=account_id, defaults=fields)


def venue_health_snapshot_record(*, account_id: int, error: str | None, now: datetime) -> None:
    """Record an equity snapshot's outcome in the account's venue health: a failure (`error`, secret-free) counts up
    with its error and time; a success (None) clears them. Durable like the breaker's reports."""
    table = VenueHealth._meta.db_table
    if error is None:
        sql = f"UPDATE {table} SET snapshot_failures = 0, snapshot_error = '' WHERE account_id = %s " \
              f"AND snapshot_failures > 0"
        params: list[Any] = [account_id]
    else:
        at = connection.ops.adapt_datetimefield_value(now)
        # The row may not exist yet: no breaker transition was ever reported, or no connector could be built.
        sql = (f"INSERT INTO {table} (account_id, state, since, consecutive_failures, last_error, reporter, "
               f"updated_at, snapshot_failures, snapshot_error, snapshot_failed_at) "
               f"VALUES (%s, %s, %s, 0, '', '', %s, 1, %s, %s) ON CONFLICT (account_id) DO UPDATE SET "
               f"snapshot_failures = {table}.snapshot_failures + 1, snapshot_error = EXCLUDED.snapshot_error, "
               f"snapshot_failed_at = EXCLUDED.snapshot_failed_at")
        params = [account_id, VenueHealth.State.CLOSED.value, at, at, error, at]
    if needs_side_connection():
        durable_sql(sql, params)
        return
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def health_reporter(account_id: int, *, secrets: Sequence[str]) -> Callable[[BreakerEvent], None]:
    """The breaker callback of an account's connector: each transition recorded by venue_health_record."""
    def report(event: BreakerEvent) -> None:
        venue_health_record(account_id=account_id, event=event, secrets=secrets)
    return report
