"""The execution path of one signal: decide (trading/decision.py), send (trading/orders.py), then follow up.

After its first step, an exit still working goes on at once (trading/exits.py), and the protective orders of the
position it traded follow (trading/protection.py). On an in-database venue (paper) the decision, the send and the
record are one transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime
from decimal import Decimal
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.db import DatabaseError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from exchanges.errors import VenueError
from infra import rows
from trading.audit import _audit_batch
from trading.connectors import connector_for_id
from trading.decision import (
    _DECISION_FIELDS,
    _earlier_pending,
    _lock_sql,
    _positions_sql,
    _signal_account,
    _signal_decide,
    _signal_reject,
    _working_sql,
)
from trading.exits import exit_drive
from trading.leases import order_send_lease
from trading.logcontext import log_context
from trading.models import Order, Position, Signal
from trading.orderjson import order_from_json
from trading.orders import _order_send, new_client_order_id
from trading.protection import protection_enabled, protection_sync
from trading.recording import _signal_conclude, order_apply_venue_state

log = logging.getLogger("trading.engine")  # one logger for every room of the engine (log routing keys on it)


def signal_process(*, signal_id: int, now: datetime | None = None, book_later: bool = False) -> Signal:
    """Decide a received signal under the account lock, create its orders, and submit them.

    With `book_later` (an exit fired by a price pass) a live venue's reply is recorded by an execution worker
    (`order_reply_record`), which then follows the signal up: this process goes on to the next exit at once.

    A strategy's signals are decided in the order they arrived: one that overtook an earlier one still waiting
    (two workers, one task retried, the sweeper) first processes the earlier ones, oldest first. Each is decided
    once (a signal no longer RECEIVED is left as it is), so its own task finds nothing to do.

    Venue, database and time-limit errors are passing: they propagate, and the task or the sweeper tries again.
    Any other exception is a fault of ours that would recur on every try: its transaction is rolled back (no order
    exists), the signal is marked FAILED with the exception's type (details in the log), and nothing is raised, so
    one bad signal never holds up its strategy's later signals or the sweeper.
    """
    with log_context(signal_id=signal_id):
        try:
            return _signal_process(signal_id=signal_id, now=now, book_later=book_later)
        except _PASSING:
            raise
        except Exception as exc:  # noqa: BLE001 - see the docstring
            log.exception("signal %s failed inside the engine", signal_id)
            return _signal_fail(signal_id, exc, now=now or timezone.now())


# Errors that a later try may not meet again: retried, never a FAILED signal.
_PASSING = (VenueError, DatabaseError, OSError, SoftTimeLimitExceeded, Signal.DoesNotExist)


def _signal_fail(signal_id: int, exc: Exception, *, now: datetime) -> Signal:
    """Mark a still-RECEIVED signal FAILED after an internal error (the type only: messages may quote data)."""
    with transaction.atomic():
        signal = Signal.objects.select_for_update().get(pk=signal_id)
        if signal.status == Signal.Status.RECEIVED:
            signal.attempts += 1
            _signal_reject(signal, rule="internal_error", status=Signal.Status.FAILED, now=now,
                           detail=f"internal error ({type(exc).__name__}); the engine log has the traceback")
    return signal


def _signal_wait(signal_id: int, *, earlier_id: int) -> Signal:
    """Leave a signal RECEIVED behind its strategy's earlier signal `earlier_id`, which still waits; it is decided
    after it (the exit's settlement sends the strategy's waiting signals again, oldest first, and the sweeper
    re-drives any left)."""
    detail = f"waits for the strategy's earlier signal {earlier_id}, itself waiting"
    Signal.objects.filter(pk=signal_id, status=Signal.Status.RECEIVED).update(decision_detail=detail)
    return Signal.objects.get(pk=signal_id)


def _signal_process(*, signal_id: int, now: datetime | None, book_later: bool = False) -> Signal:
    """signal_process without its handling of internal errors."""
    now = now or timezone.now()
    account_id, updated_at, symbol, overtook = _signal_account(signal_id)
    if overtook:
        for earlier_id in _earlier_pending(signal_id):
            with log_context(overtaken_by=signal_id):
                signal_process(signal_id=earlier_id, now=now)
        waiting = _earlier_pending(signal_id)
        if waiting:  # an earlier one still waits (for the strategy's exit in flight): deciding this one now would
            return _signal_wait(signal_id, earlier_id=waiting[0])  # reorder them (a close before the open it follows)
    connector = connector_for_id(account_id, updated_at)
    if connector.capabilities.in_database:
        # Nothing leaves the database: decide, send and record in one transaction (the venue's lock first,
        # as its own writers take it, then the account row). A crash before COMMIT leaves the signal RECEIVED.
        # On PostgreSQL every read of the unit travels in one round trip with the venue's lock, and every
        # write in one before COMMIT: the account stays locked for as short a time as possible.
        client_ids = [new_client_order_id(), new_client_order_id()]  # a decision makes at most two orders
        with _batched_transaction():
            rows.prefetch([_lock_sql(signal_id), _positions_sql(account_id), _working_sql(account_id)])
            rows.reserve_ids(Order, len(client_ids))
            connector.prefetch(symbols=[symbol], client_order_ids=client_ids)
            with connector.unit_of_work(), _audit_batch():
                signal, orders, book = _signal_decide(signal_id=signal_id, account_id=account_id, now=now,
                                                      save=False, client_ids=client_ids)
                for order in orders:
                    _order_send(order, connector=connector, now=timezone.now(),
                                positions=book.positions if book else None, siblings=orders)
                if orders:  # the decision and the stages, written once
                    held = book.positions.get((signal.strategy_id, signal.symbol)) if book else None
                    _signal_conclude(signal, orders, held.quantity if held else Decimal(0))
                    rows.save_fields(signal, [*_DECISION_FIELDS, "acknowledged_at", "filled_at"])
        return _exit_follow(signal, now=now, live=connector.capabilities.live)
    queued = False
    with ExitStack() as leases:
        with transaction.atomic():
            signal, orders, _ = _signal_decide(signal_id=signal_id, account_id=account_id, now=now)
            for order in orders:  # before COMMIT: no recovery sees these orders but with their send lease held
                leases.enter_context(order_send_lease(order.pk))
        for order in orders:  # committed as SUBMITTING, in the decision's transaction
            order = _order_send(order, connector=connector, now=order.submitted_at or timezone.now(),
                                book_later=book_later)
            queued = queued or (book_later and order.status == Order.Status.SUBMITTING)
    if queued:
        return signal  # its reply's record follows it up (order_reply_record)
    if orders:
        signal.refresh_from_db()
    return _exit_follow(signal, now=now, live=connector.capabilities.live)


def order_reply_record(*, order_id: int, reply: dict[str, Any], now: datetime | None = None) -> Order:
    """Record a live venue's reply to an order that a price pass sent (`book_later`), then follow its signal up as
    `signal_process` would have: an exit still working goes on (a refusal or a partial fill is retried at once),
    and protective orders follow. A reply older than what recovery recorded since changes nothing."""
    now = now or timezone.now()
    with log_context(order_id=order_id):
        order = order_apply_venue_state(order_id=order_id, venue_order=order_from_json(reply), now=now)
        if order.signal_id is None:
            return order
        signal = Signal.objects.select_related("strategy").get(pk=order.signal_id)
        _exit_follow(signal, now=now, live=True)
    return order


def _exit_follow(signal: Signal, *, now: datetime, live: bool) -> Signal:
    """After a signal's first step: an exit still working goes on at once (a refusal is retried, an entry
    canceled), and a protected strategy's orders on the venue follow its position."""
    if signal.status == Signal.Status.WORKING:
        signal = exit_drive(signal_id=signal.pk, now=max(now, timezone.now()))  # after what the first step recorded
    if signal.status in (Signal.Status.ACCEPTED, Signal.Status.EXECUTED, Signal.Status.FAILED):
        _protect_after(signal, now=now, live=live)
    return signal


def _protect_after(signal: Signal, *, now: datetime, live: bool) -> None:
    """Sync the protective orders of the position a signal traded, when its strategy keeps them on the venue, and
    those resting for the account's other strategies in that market: the trade moved the account's net, and one
    that would no longer only reduce it is removed (the venue would clip it when it fires)."""
    own = protection_enabled(signal.strategy, live=live)
    if not (own or live):
        return
    wanted = Q(protective_orders__status__in=Order.WORKING)
    if own:
        wanted |= Q(strategy_id=signal.strategy_id)
    for position_id in Position.objects.filter(account_id=signal.account_id, symbol=signal.symbol).filter(
            wanted).order_by("pk").values_list("pk", flat=True).distinct():
        try:
            protection_sync(position_id=position_id, now=now)
        except VenueError as exc:  # the timer (reconcile) places them once the venue answers
            log.warning("protective orders of position %s wait for the venue: %s", position_id, exc)


@contextmanager
def _batched_transaction() -> Iterator[None]:
    """The in-database unit's transaction with batching (PostgreSQL); elsewhere the venue's unit opens its own."""
    if not rows.batchable():
        yield
        return
    outermost = not connection.in_atomic_block  # then its last writes may carry the COMMIT
    with transaction.atomic(), rows.batching(commit=outermost):
        yield
