"""This thread's own database connections beside Django's: an autocommit one whose writes are committed whatever
transaction the caller holds, and one that holds session advisory locks (the journal's locks, the send leases)."""

from __future__ import annotations

import os
import threading
from typing import Any

from django.db import DEFAULT_DB_ALIAS, InterfaceError, OperationalError, connection, connections
from django.db.backends.base.base import BaseDatabaseWrapper

_side = threading.local()
_SIDE_STATEMENT_TIMEOUT_MS = 5000
_side_all: list[BaseDatabaseWrapper] = []  # every thread's side connection, so they can all be closed
_side_all_lock = threading.Lock()
_locks = threading.local()
_process_locks: dict[str, threading.RLock] = {}


def _side_connection() -> BaseDatabaseWrapper:
    """This thread's own autocommit connection to the default database (recreated after a fork)."""
    conn: BaseDatabaseWrapper | None = getattr(_side, "conn", None)
    if conn is None or conn.connection is None or getattr(_side, "pid", None) != os.getpid():
        conn = connections.create_connection(DEFAULT_DB_ALIAS)
        conn.inc_thread_sharing()  # side_connections_close() may close it from another thread
        conn.ensure_connection()
        with conn.cursor() as cursor:
            # Never hang the caller: a journal write that cannot finish in 5 s fails loudly.
            cursor.execute(f"SET statement_timeout = {_SIDE_STATEMENT_TIMEOUT_MS}")
        _side.conn, _side.pid = conn, os.getpid()
        with _side_all_lock:
            _side_all.append(conn)
    return conn


def side_connections_close() -> None:
    """Close every thread's side connection (tests, before their database is dropped)."""
    with _side_all_lock:
        conns = list(_side_all)
        _side_all.clear()
    for conn in conns:
        conn.close()
    _side.conn = None


def durable_sql(sql: str, params: list[Any]) -> None:
    """Run one write on this thread's side connection: committed when it returns, whatever transaction is open."""
    for attempt in (1, 2):
        conn = _side_connection()
        try:
            with conn.cursor() as cursor:
                cursor.execute(sql, params)
            return
        except (OperationalError, InterfaceError):
            # A dropped connection (server restart, idle timeout): reconnect once, then give up loudly.
            conn.close()
            _side.conn = None
            if attempt == 2:
                raise


def needs_side_connection() -> bool:
    """Inside an atomic block a write on the default connection would commit (or roll back) with it."""
    # SQLite allows one writer at a time: a second connection would wait on the outer transaction, so there the
    # journal commits with it (SQLite is for development; live venues run on Postgres).
    return connection.in_atomic_block and connection.vendor == "postgresql"


def process_lock(name: str) -> threading.RLock:
    """This process's re-entrant lock called `name` (where no database lock exists: SQLite)."""
    with _side_all_lock:
        return _process_locks.setdefault(name, threading.RLock())


def lock_connection() -> BaseDatabaseWrapper:
    """This thread's autocommit connection that holds journal locks (recreated after a fork)."""
    conn: BaseDatabaseWrapper | None = getattr(_locks, "conn", None)
    if conn is None or conn.connection is None or getattr(_locks, "pid", None) != os.getpid():
        conn = connections.create_connection(DEFAULT_DB_ALIAS)
        conn.inc_thread_sharing()
        conn.ensure_connection()
        _locks.conn, _locks.pid = conn, os.getpid()
        with _side_all_lock:
            _side_all.append(conn)
    return conn


def lock_connection_lost(conn: BaseDatabaseWrapper) -> None:
    """Close a lock connection whose session is gone (and its locks with it); the next call opens a new one."""
    conn.close()
    _locks.conn = None
