"""An order's send lease: while one thread or process talks to the venue about an order's creation, no other does."""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection

from trading.sidedb import lock_connection, lock_connection_lost

_SEND_LEASE_SPACE = 7413  # advisory-lock namespace of order send leases (key 2 = order id modulo 2**31)
_leases = threading.local()  # the send leases this thread holds, by order id: how many times


@contextmanager
def order_send_lease(order_id: int) -> Iterator[bool]:
    """Whether this thread may talk to the venue about an order's creation now: yields True while it holds the
    order's send lease, False when another thread or process holds it (a create call for it is on the wire).

    Whoever sends an order holds the lease from before its SUBMITTING row is visible until the venue's answer is
    recorded; whoever recovers an order takes it before asking the venue, so a send in flight is never repeated by
    a sweep, a worker's start-up recovery or a cancel, however long the venue takes. The lease dies with its
    holder: a PostgreSQL session advisory lock on this thread's lock connection (a crashed worker's session ends),
    or, on SQLite (one machine), an flock on var/locks/ (the kernel drops it with the process). Re-entrant."""
    held = getattr(_leases, "leases", None)
    if held is None:
        held = _leases.leases = {}
    if held.get(order_id):
        held[order_id] += 1
        try:
            yield True
        finally:
            held[order_id] -= 1
        return
    release: Callable[[], None]
    if connection.vendor == "postgresql":
        conn = lock_connection()
        with conn.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [_SEND_LEASE_SPACE, order_id % 2**31])
            got = bool(cursor.fetchone()[0])

        def release() -> None:
            if not got:
                return
            try:
                with conn.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [_SEND_LEASE_SPACE, order_id % 2**31])
            except (OperationalError, InterfaceError):
                lock_connection_lost(conn)  # the session is gone, and its lock with it
    else:
        path = settings.VAR_DIR / "locks" / f"order-{order_id}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            got = True
        except BlockingIOError:
            got = False

        def release() -> None:
            if got:
                path.unlink(missing_ok=True)  # a waiter that opened it before gets the lock on a file no one holds
            os.close(fd)
    if not got:
        release()
        yield False
        return
    held[order_id] = 1
    try:
        yield True
    finally:
        held.pop(order_id, None)
        release()
