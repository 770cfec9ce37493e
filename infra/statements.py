"""One statement run on its own, as a protocol-level prepared statement on the psycopg connection.

For a hot path that runs a statement by itself (the webhook's signal INSERT and its strategy read): no batching
scope (`rows.fetch_one` joins one), no transaction block of ours. Django and psycopg only.
"""

from __future__ import annotations

from typing import Any

import psycopg
from django.db import connections


def statement_row(sql: str, params: list[Any]) -> tuple[Any, ...] | None:
    """Run one statement and return its first row: on PostgreSQL as a protocol-level prepared statement (planned
    once per connection) on the psycopg connection, outside any transaction block of ours (in autocommit a write is
    committed, durably, before this returns)."""
    db = connections["default"]  # the wrapper itself: each attribute read through the proxy costs a lookup
    if db.vendor != "postgresql":
        with db.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchone()
    db.ensure_connection()
    with db.wrap_database_errors, psycopg.Cursor(db.connection) as cursor:
        cursor.execute(sql, params, prepare=True)
        return cursor.fetchone()
