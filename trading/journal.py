"""The live venues' journal in the database: durable writes (committed even inside the caller's transaction) and
locks held across processes."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from django.db import InterfaceError, OperationalError, connection
from django.utils import timezone

from exchanges.errors import TemporaryError
from trading.models import VenueJournalEntry
from trading.sidedb import durable_sql, lock_connection, lock_connection_lost, needs_side_connection, process_lock

_JOURNAL_LOCK_SPACE = 7412  # advisory-lock namespace of journal locks (key 2 = hash of the name)
JOURNAL_LOCK_WAIT_SECONDS = 30
_held = threading.local()  # the journal locks this thread holds, by name: how many times


class DjangoVenueJournal:
    """A VenueJournal in the database: `put` and `delete` are committed when they return, even when the caller
    holds a transaction (which may still roll back) — e.g. a raw transaction is stored before its broadcast."""

    def __init__(self, account_id: int) -> None:
        self.account_id = account_id

    def put(self, key: str, value: Mapping[str, Any]) -> None:
        data = dict(value)
        now = timezone.now()
        if needs_side_connection():
            table = VenueJournalEntry._meta.db_table
            durable_sql(
                f"INSERT INTO {table} (account_id, key, value, created_at, updated_at) "
                f"VALUES (%s, %s, %s::jsonb, %s, %s) ON CONFLICT (account_id, key) "
                f"DO UPDATE SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at",
                [self.account_id, key, json.dumps(data), now, now],
            )
            return
        VenueJournalEntry.objects.update_or_create(account_id=self.account_id, key=key,
                                                   defaults={"value": data, "updated_at": now},
                                                   create_defaults={"value": data, "created_at": now,
                                                                    "updated_at": now})

    def get(self, key: str) -> Mapping[str, Any] | None:
        value: dict[str, Any] | None = VenueJournalEntry.objects.filter(
            account_id=self.account_id, key=key).values_list("value", flat=True).first()
        return value

    def items(self, prefix: str = "") -> list[tuple[str, Mapping[str, Any]]]:
        rows = VenueJournalEntry.objects.filter(account_id=self.account_id, key__startswith=prefix)
        return list(rows.order_by("key").values_list("key", "value"))

    def delete(self, key: str) -> None:
        if needs_side_connection():
            durable_sql(f"DELETE FROM {VenueJournalEntry._meta.db_table} WHERE account_id = %s AND key = %s",
                        [self.account_id, key])
            return
        VenueJournalEntry.objects.filter(account_id=self.account_id, key=key).delete()

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Hold `name` across processes: a PostgreSQL session advisory lock on this thread's lock connection (its
        own, so that no journal write's reconnect can drop it). Re-entrant. SQLite (development): this process.

        Waits up to JOURNAL_LOCK_WAIT_SECONDS, then raises TemporaryError (the caller has done nothing yet)."""
        held = getattr(_held, "held", None)
        if held is None:
            held = _held.held = {}
        if held.get(name):
            held[name] += 1
            try:
                yield
            finally:
                held[name] -= 1
            return
        if connection.vendor != "postgresql":
            with process_lock(name):
                held[name] = 1
                try:
                    yield
                finally:
                    held.pop(name, None)
            return
        conn = lock_connection()
        deadline = time.monotonic() + JOURNAL_LOCK_WAIT_SECONDS
        with conn.cursor() as cursor:
            while True:
                cursor.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", [_JOURNAL_LOCK_SPACE, name])
                if cursor.fetchone()[0]:
                    break
                if time.monotonic() > deadline:
                    raise TemporaryError(f"{name} is held by another process for over "
                                         f"{JOURNAL_LOCK_WAIT_SECONDS} s", venue="journal")
                time.sleep(0.02)
        held[name] = 1
        try:
            yield
        finally:
            held.pop(name, None)
            try:
                with conn.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", [_JOURNAL_LOCK_SPACE, name])
            except (OperationalError, InterfaceError):
                lock_connection_lost(conn)  # the session is gone, and its lock with it
