"""Orders to the venue: send, submit, recover, sync and cancel, each by the order's row and client id.

An order row with its client order id is committed as SUBMITTING before any venue call; an ambiguous venue failure
makes it UNKNOWN, and recovery asks the venue by client id before anything is resent. No order is sent or looked up
while another thread holds its send lease (trading/leases.py). What the venue answers is recorded by
trading/recording.py.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from exchanges.base import Connector, OrderRequest, OrderType, Side, VenueOrder
from exchanges.errors import AuthError, InvalidOrderError, VenueError
from trading import dispatch
from trading.audit import audit
from trading.connectors import connector_for
from trading.leases import order_send_lease
from trading.logcontext import log_context
from trading.models import KillSwitch, Order, Position, Signal
from trading.orderjson import order_to_json
from trading.recording import _signal_settle, _venue_state_record, order_apply_venue_state

log = logging.getLogger("trading.engine")  # one logger for every room of the engine (log routing keys on it)


def trading_setting(name: str) -> int:
    """One of the engine's TRADING settings (tradesite/settings.py), as an int."""
    return int(settings.TRADING[name])


def new_client_order_id() -> str:
    """A fresh client order id: 32 hex digits (fits every venue's format, e.g. Hyperliquid's 0x cloid)."""
    return uuid.uuid4().hex


def kill_switch_engaged() -> bool:
    """Return whether the global kill switch is engaged."""
    return KillSwitch.objects.filter(pk=1, engaged=True).exists()


def _purpose(signal: Signal, purpose: str) -> str:
    if purpose == "exit" and signal.source == Signal.Source.KILL_SWITCH:
        return Order.Purpose.KILL_SWITCH
    if purpose == "exit" and signal.source == Signal.Source.MONITOR:
        key = signal.idempotency_key
        return Order.Purpose.STOP_LOSS if key.startswith("sl:") else Order.Purpose.TAKE_PROFIT
    return Order.Purpose.ENTRY if purpose == "entry" else Order.Purpose.EXIT


def _request(order: Order) -> OrderRequest:
    return OrderRequest(
        client_order_id=order.client_order_id,
        symbol=order.symbol,
        side=Side(order.side),
        type=OrderType(order.type),
        quantity=order.quantity,
        price=order.price if order.type == Order.Type.LIMIT else order.reference_price,
        trigger_price=order.trigger_price,
        reduce_only=order.reduce_only,
        post_only=order.post_only,
        leverage=order.leverage,
    )


def _order_mark_submitting(order: Order, now: datetime) -> None:
    order.status = Order.Status.SUBMITTING
    order.attempts += 1
    order.submitted_at = order.submitted_at or now
    order.updated_at = now
    order.save(update_fields=["status", "attempts", "submitted_at", "updated_at"])
    if order.signal_id:
        Signal.objects.filter(pk=order.signal_id, submitted_at__isnull=True).update(submitted_at=now)


def _order_send(order: Order, *, now: datetime, connector: Connector | None = None,
                positions: dict[tuple[int, str], Position] | None = None,
                siblings: Sequence[Order] = (), book_later: bool = False) -> Order:
    """Call the venue for an order already committed as SUBMITTING, and record what it said.

    Inside an `in_database` venue's unit of work (`positions` given: the book read under the account lock), the
    reply is recorded in the same transaction; otherwise each step takes its own. With `book_later` (a live
    venue's exit fired by a price pass: other accounts' exits wait for this process) an accepted order's reply is
    handed to an execution worker (`order_reply_enqueue`) and the order is returned still SUBMITTING; a refusal
    or an ambiguous failure is recorded here as always.
    """
    connector = connector or connector_for(order.account)
    joined = positions is not None
    with log_context(order_id=order.pk, client_order_id=order.client_order_id):
        sent = timezone.now()
        signal = order._state.fields_cache.get("signal")
        if joined and signal is not None:  # written once with the stages by the in-database path
            signal.submitted_at = signal.submitted_at or sent
        elif order.signal_id:
            Signal.objects.filter(pk=order.signal_id, submitted_at__isnull=True).update(submitted_at=sent)
        try:
            venue_order = connector.create_order(_request(order))
        except (InvalidOrderError, AuthError) as exc:
            # A refusal before the order exists on the venue (its checks, or our credentials): nothing to ask about
            # later, nothing to resend.
            what = "venue refused the credentials" if isinstance(exc, AuthError) else "venue refused"
            with transaction.atomic():
                locked = order if joined else Order.objects.select_for_update().get(pk=order.pk)
                if locked.status != Order.Status.SUBMITTING:
                    return locked  # already decided by what the venue told a recovery: that stands
                return _order_finish(locked, Order.Status.REJECTED, f"{what}: {exc}", timezone.now())
        except VenueError as exc:
            # Timeouts, 5xx, dropped connections: the venue may or may not have the order. Never "failed".
            log.warning("order %s outcome unknown after %s: %s", order.pk, type(exc).__name__, exc)
            Order.objects.filter(pk=order.pk, status=Order.Status.SUBMITTING).update(
                status=Order.Status.UNKNOWN, reason=f"{type(exc).__name__}: {exc}", updated_at=timezone.now()
            )
            order.refresh_from_db()
            return order
        if joined:
            others_final = all(o.is_final for o in siblings if o is not order)
            return _venue_state_record(order.account, order, venue_order, recorded=[], now=timezone.now(),
                                       positions=positions, others_final=others_final)
        if book_later and order_reply_enqueue(order, venue_order):
            return order
        return order_apply_venue_state(order_id=order.pk, venue_order=venue_order, account_id=order.account_id)


REPLY_RECORD_PRIORITY = 9  # kombu's Redis transport: 0 is taken first, 9 last


def order_reply_enqueue(order: Order, venue_order: VenueOrder) -> bool:
    """Queue the record of a venue's reply to `order` (trading.execution.order_reply_record); False when the broker
    did not take it (the caller records it at once). A message lost after that leaves the order SUBMITTING: the
    sweeper asks the venue by client id and records what it says, as after any send whose answer went missing."""
    try:  # the lowest priority: a worker takes every waiting monitor and signal first (on Redis, the list of
        # priority 9 is read after every other): the exits out before any of their booking
        dispatch.task(dispatch.ORDER_REPLY_RECORD).apply_async((order.pk, order_to_json(venue_order)), retry=False,
                                                                priority=REPLY_RECORD_PRIORITY)
    except Exception:  # noqa: BLE001 - a broker failure: the reply is in hand, so it is recorded here instead
        log.exception("order %s: its reply could not be queued; recorded here", order.pk)
        return False
    return True


def _order_finish(order: Order, status: str, reason: str, now: datetime) -> Order:
    order.status, order.reason, order.updated_at = status, reason, now
    order.save(update_fields=["status", "reason", "updated_at"])
    audit(actor="engine", action=f"order.{status}", entity="order", entity_id=order.pk, now=now, reason=reason)
    if order.signal_id:
        _signal_settle(order.signal_id, now)
    log.info("order %s %s: %s", order.pk, status, reason)
    return order


# In the reason of an order we finished without the venue ever acknowledging it (it may still arrive there):
# reconciliation keeps asking the venue about such orders for UNACKNOWLEDGED_WATCH_HOURS and records what it finds.
UNACKNOWLEDGED = "the venue had not acknowledged it"
UNACKNOWLEDGED_WATCH_HOURS = 24


def order_recover(*, order_id: int, now: datetime | None = None) -> Order:
    """Find out what happened to an order stuck in NEW, SUBMITTING or UNKNOWN: ask the venue first, resend last.

    Never while its send is in flight (another thread or process holds its send lease): that one records the
    answer, however long the venue takes."""
    now = now or timezone.now()
    order = Order.objects.select_related("account").get(pk=order_id)
    if order.is_final:
        return order
    with order_send_lease(order_id) as mine:
        if not mine:
            log.info("order %s is being sent right now: left to its sender", order_id)
            return order
        order = Order.objects.select_related("account").get(pk=order_id)  # as its sender left it
        if order.is_final:
            return order
        return _order_recover(order, now)


_UNSENT_OR_UNKNOWN = (Order.Status.NEW, Order.Status.SUBMITTING, Order.Status.UNKNOWN)


def _order_recover(order: Order, now: datetime) -> Order:
    """order_recover, with the order's send lease held."""
    connector = connector_for(order.account)
    with log_context(order_id=order.pk, client_order_id=order.client_order_id):
        try:
            found = connector.fetch_order_by_client_id(order.symbol, order.client_order_id)
        except VenueError as exc:
            log.warning("order %s lookup failed, will retry: %s", order.pk, exc)
            return order
        if found is not None:
            return order_apply_venue_state(order_id=order.pk, venue_order=found, now=now)
        if order.status not in _UNSENT_OR_UNKNOWN:
            return order
        # The venue has never seen this client id. Resend it (same id: a venue that did get it dedupes) once
        # the venue had time to show it, and give up cleanly after the attempt cap. (NEW: a row of an older
        # release, which queued orders before sending them; orders are now committed SUBMITTING.)
        since = order.updated_at if order.status == Order.Status.UNKNOWN else (order.submitted_at or order.updated_at)
        if now - since < timedelta(seconds=trading_setting("RESEND_AFTER_SECONDS")):
            return order
        with transaction.atomic():
            locked = Order.objects.select_for_update().get(pk=order.pk)
            if locked.status not in _UNSENT_OR_UNKNOWN or locked.updated_at != order.updated_at:
                return locked  # someone else moved it since our lookup: theirs to finish
            if locked.attempts >= trading_setting("MAX_SUBMIT_ATTEMPTS"):
                return _order_finish(locked, Order.Status.REJECTED, f"venue never showed the order after "
                                     f"{locked.attempts} attempts; {UNACKNOWLEDGED}", now)
            if locked.purpose == Order.Purpose.ENTRY and kill_switch_engaged():
                return _order_finish(locked, Order.Status.CANCELED,
                                     f"kill switch engaged before resending; {UNACKNOWLEDGED}", now)
            _order_mark_submitting(locked, now)
        log.info("order %s unknown to the venue: resending with the same client id", order.pk)
        return _order_send(locked, now=now)


def order_sync(*, order_id: int, now: datetime | None = None) -> Order:
    """Refresh a working order from the venue (fills that arrived since, cancels by the venue)."""
    order = Order.objects.select_related("account").get(pk=order_id)
    if order.is_final or not order.venue_order_id:
        return order_recover(order_id=order_id, now=now)
    try:
        found = connector_for(order.account).fetch_order(order.symbol, order.venue_order_id)
    except VenueError as exc:
        log.warning("order %s sync failed: %s", order.pk, exc)
        return order
    return order_apply_venue_state(order_id=order.pk, venue_order=found, now=now)


def order_cancel(*, order_id: int, by: str, now: datetime | None = None) -> Order:
    """Cancel a working order on its venue (cancels are always allowed, even under the kill switch)."""
    now = now or timezone.now()
    order = Order.objects.select_related("account").get(pk=order_id)
    if order.is_final:
        return order
    if order.status == Order.Status.NEW:
        with transaction.atomic():
            locked = Order.objects.select_for_update().get(pk=order_id)
            if locked.status == Order.Status.NEW:
                return _order_finish(locked, Order.Status.CANCELED, f"canceled by {by} before sending", now)
        order.refresh_from_db()
    if not order.venue_order_id:
        order = _order_cancel_unacknowledged(order, by=by, now=now)
        if order.is_final or not order.venue_order_id:
            return order
    try:
        venue_order = connector_for(order.account).cancel_order(order.symbol, order.venue_order_id)
    except VenueError as exc:
        log.warning("cancel of order %s failed: %s", order.pk, exc)
        return order
    with transaction.atomic():
        audit(actor=by, action="order.cancel_requested", entity="order", entity_id=order.pk, now=now)
    return order_apply_venue_state(order_id=order.pk, venue_order=venue_order, now=now)


def _order_cancel_unacknowledged(order: Order, *, by: str, now: datetime) -> Order:
    """A cancel of an order the venue has not acknowledged: ask the venue by client id, and never send it. Found:
    the venue's state is recorded (the caller then cancels it there). Not found: it is finished here as canceled,
    and reconciliation keeps looking for it (a lost reply may still bring it). While its send is in flight, or if
    the venue cannot be asked, nothing changes (cancel again later)."""
    with order_send_lease(order.pk) as mine:
        if not mine:
            log.info("cancel of order %s waits: its send is in flight", order.pk)
            return order
        try:
            found = connector_for(order.account).fetch_order_by_client_id(order.symbol, order.client_order_id)
        except VenueError as exc:
            log.warning("cancel of order %s: the venue could not be asked about it: %s", order.pk, exc)
            return order
        if found is not None:
            return order_apply_venue_state(order_id=order.pk, venue_order=found, now=now)
        with transaction.atomic():
            locked = Order.objects.select_for_update().get(pk=order.pk)
            if locked.is_final or locked.venue_order_id:
                return locked
            return _order_finish(locked, Order.Status.CANCELED, f"canceled by {by}; {UNACKNOWLEDGED}", now)
