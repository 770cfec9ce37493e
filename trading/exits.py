"""Exits pursued until flat: a WORKING close signal is driven step by step until its strategy holds nothing.

Each step cancels the strategy's working entries in the market, moves its exits in flight along, and only when
nothing is working sends a new exit order for what is left (new client id, backoff, reduce-only where it reduces the
venue's net). Also the close signals of the monitor and the kill switch, created once per position state.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from exchanges.base import Connector, Side
from exchanges.errors import VenueError
from trading.audit import audit
from trading.connectors import connector_for
from trading.domain import Rule
from trading.intake import signal_create
from trading.leases import order_send_lease
from trading.logcontext import log_context
from trading.models import Order, Position, Signal, VenueAccount
from trading.orders import (
    trading_setting,
    UNACKNOWLEDGED,
    _order_send,
    _purpose,
    new_client_order_id,
    order_cancel,
    order_recover,
    order_sync,
)
from trading.recording import _plain, _signal_settle, order_apply_venue_state

log = logging.getLogger("trading.engine")  # one logger for every room of the engine (log routing keys on it)


def exit_drive(*, signal_id: int, now: datetime | None = None) -> Signal:
    """Take one step of a WORKING exit toward the strategy being flat in its market; return the signal.

    A step never waits on the venue for long and never sends twice: the strategy's working entries in the market
    are canceled; its exits in flight are asked about (and canceled once older than EXIT_ORDER_TIMEOUT_SECONDS);
    only when nothing of the strategy is working there does a new exit order go out, under the account lock: a new
    client id, the strategy's remaining position (never more), after a backoff that grows with each failed attempt,
    reduce-only only where it reduces the venue's net, and never a plain order while the venue's net differs from
    the book's (it could open a position the other way). A newer accepted signal of the strategy in that market
    replaces the exit; a flat position executes it.
    """
    now = now or timezone.now()
    with log_context(signal_id=signal_id):
        signal = Signal.objects.select_related("strategy", "account").get(pk=signal_id)
        if signal.status != Signal.Status.WORKING:
            return signal
        if _signal_replaced(signal, now=now):
            return Signal.objects.get(pk=signal_id)
        if _exit_wait_for_working(signal, now=now):
            return signal
        held = _held(signal)
        if held == 0:
            if _exit_unacknowledged_recently(signal, now=now):
                return signal
            _signal_settle(signal.pk, now)
            return Signal.objects.get(pk=signal_id)
        failed = [o for o in signal.orders.order_by("pk") if o.is_final and o.filled_quantity < o.quantity]
        if failed and now < failed[-1].updated_at + _exit_backoff(len(failed)):
            return signal
        return _exit_attempt(signal, attempt=len(failed) + 1, now=now)


def _exit_backoff(failures: int) -> timedelta:
    """The wait between a failed exit attempt and the next: none after the first, then 1, 2, 4 ... s, capped."""
    seconds = 0 if failures <= 1 else min(2 ** (failures - 2), int(trading_setting("EXIT_RETRY_MAX_SECONDS")))
    return timedelta(seconds=seconds)


def _held(signal: Signal) -> Decimal:
    return Position.objects.filter(account_id=signal.account_id, strategy_id=signal.strategy_id,
                                   symbol=signal.symbol).values_list("quantity", flat=True).first() or Decimal(0)


def _signal_replaced(signal: Signal, *, now: datetime) -> bool:
    """Mark an exit REPLACED when a newer accepted signal of its strategy in the same market took over."""
    newer = Signal.objects.filter(
        strategy_id=signal.strategy_id, symbol=signal.symbol,
        status__in=(Signal.Status.ACCEPTED, Signal.Status.WORKING, Signal.Status.EXECUTED),
    ).filter(Q(received_at__gt=signal.received_at) | Q(received_at=signal.received_at, pk__gt=signal.pk)).exclude(
        decision_rule="internal_error").order_by("received_at", "pk").first()
    if newer is None:
        return False
    detail = f"{signal.decision_detail} | replaced by signal {newer.pk} ({newer.action})"
    if Signal.objects.filter(pk=signal.pk, status=Signal.Status.WORKING).update(status=Signal.Status.REPLACED,
                                                                              decision_detail=detail):
        audit(actor="engine", action="signal.replaced", entity="signal", entity_id=signal.pk, now=now, by=newer.pk)
    return True


def _exit_unacknowledged_recently(signal: Signal, *, now: datetime) -> bool:
    """Whether an order of the strategy in the exit's market was finished here without the venue ever having
    acknowledged it, less than EXIT_ORDER_TIMEOUT_SECONDS ago: a venue's order lookup can lag its acceptance, so
    the venue is asked again each step, and the exit is done only once that window has passed with nothing found
    (an entry that shows up after all is recorded, and the exit closes what it bought)."""
    window = now - timedelta(seconds=trading_setting("EXIT_ORDER_TIMEOUT_SECONDS"))
    recent = list(Order.objects.filter(
        account_id=signal.account_id, strategy_id=signal.strategy_id, symbol=signal.symbol,
        status=Order.Status.CANCELED, venue_order_id="", updated_at__gte=window, reason__contains=UNACKNOWLEDGED))
    for order in recent:
        try:
            found = connector_for(signal.account).fetch_order_by_client_id(order.symbol, order.client_order_id)
        except VenueError as exc:
            log.warning("exit of signal %s: order %s could not be asked about: %s", signal.pk, order.pk, exc)
            continue
        if found is not None:
            order_apply_venue_state(order_id=order.pk, venue_order=found, now=now)
    return bool(recent)


def _exit_wait_for_working(signal: Signal, *, now: datetime) -> bool:
    """Move the strategy's working orders in the exit's market along; return whether any is still working."""
    waiting = False
    timeout = timedelta(seconds=trading_setting("EXIT_ORDER_TIMEOUT_SECONDS"))
    for order in Order.objects.filter(account_id=signal.account_id, strategy_id=signal.strategy_id,
                                      symbol=signal.symbol, status__in=Order.WORKING).order_by("pk"):
        try:
            if order.purpose == Order.Purpose.ENTRY or order.signal_id != signal.pk:
                # An entry's remainder (or an exit of a signal this one replaced) gives way to this exit.
                order = order_cancel(order_id=order.pk, by=f"exit (signal {signal.pk})", now=now)
            elif order.status in (Order.Status.NEW, Order.Status.SUBMITTING, Order.Status.UNKNOWN):
                order = order_recover(order_id=order.pk, now=now)
            else:
                order = order_sync(order_id=order.pk, now=now)
                if not order.is_final and now - (order.submitted_at or order.created_at) > timeout:
                    order = order_cancel(order_id=order.pk, by=f"exit (signal {signal.pk}): working too long",
                                         now=now)
        except VenueError as exc:
            log.warning("exit of signal %s: order %s could not be moved along: %s", signal.pk, order.pk, exc)
        waiting = waiting or not order.is_final
    return waiting


def _exit_attempt(signal: Signal, *, attempt: int, now: datetime) -> Signal:
    """Send the next exit order of a WORKING signal for the strategy's whole remaining position."""
    account = signal.account
    connector = connector_for(account)
    try:
        venue_net = _venue_net(connector, signal.symbol)
        ticker = connector.ticker(signal.symbol)
        market = connector.market(signal.symbol)
    except VenueError as exc:
        log.warning("exit of signal %s waits for its venue: %s", signal.pk, exc)
        return signal
    with ExitStack() as leases:
        with transaction.atomic():
            VenueAccount.objects.select_for_update(no_key=True).filter(pk=account.pk).first()  # the account lock
            locked = Signal.objects.select_for_update().get(pk=signal.pk)
            if locked.status != Signal.Status.WORKING or Order.objects.filter(
                    account_id=account.pk, strategy_id=signal.strategy_id, symbol=signal.symbol,
                    status__in=Order.WORKING).exists():
                return locked  # another step got here first
            held = _held(signal)
            if held == 0:
                _signal_settle(signal.pk, now)
                return Signal.objects.get(pk=signal.pk)
            side = Side.SELL if held > 0 else Side.BUY
            quantity = market.round_qty(abs(held))
            if quantity <= 0 or quantity < market.min_qty:
                # No order can close it: retrying would be refused for ever. Said plainly, for a human to act on.
                detail = (f"{locked.decision_detail.split(' | closing: ')[0]} | dust: {_plain(abs(held))} "
                          f"{signal.symbol} is left, below the venue's smallest order ({_plain(market.min_qty)}, lot "
                          f"{_plain(market.lot_size)}): close it on the venue by hand")
                Signal.objects.filter(pk=signal.pk).update(status=Signal.Status.FAILED, decision_rule=Rule.DUST,
                                                           decision_detail=detail)
                audit(actor="engine", action="signal.failed", entity="signal", entity_id=signal.pk, now=now,
                      rule=Rule.DUST, detail=detail)
                log.error("exit of signal %s: %s", signal.pk, detail)
                return Signal.objects.get(pk=signal.pk)
            book = Position.objects.filter(account_id=account.pk, symbol=signal.symbol).values_list(
                "quantity", flat=True)
            book_net = sum(book, Decimal(0))
            net = book_net if venue_net is None else venue_net
            claimed = sum((o.quantity - o.filled_quantity for o in Order.objects.filter(
                account_id=account.pk, symbol=signal.symbol, status__in=Order.WORKING, reduce_only=True, side=side)),
                Decimal(0))
            reduce_only = quantity <= -net * side.sign - claimed
            if not reduce_only and venue_net is not None and venue_net != book_net:
                # A plain order against a book that disagrees with the venue could open a position the other way.
                note = (f"closing: attempt {attempt} waits: the venue's net {_plain(venue_net)} {signal.symbol} "
                        f"differs from the book's {_plain(book_net)} (reconciliation finds out)")
                Signal.objects.filter(pk=signal.pk).update(decision_detail=_with_note(locked.decision_detail, note))
                log.warning("exit of signal %s: %s", signal.pk, note)
                return Signal.objects.get(pk=signal.pk)
            widen = Decimal(trading_setting("EXIT_WIDEN_BPS")) * min(attempt - 1, 5) / Decimal(10000)
            reference = ticker.price * (1 + widen * side.sign)
            order = Order(client_order_id=new_client_order_id(), account=account, strategy_id=signal.strategy_id,
                          signal=signal, symbol=signal.symbol, side=side.value, type=Order.Type.MARKET,
                          purpose=_purpose(signal, "exit"), reduce_only=reduce_only, quantity=quantity,
                          reference_price=reference, status=Order.Status.SUBMITTING, attempts=1, created_at=now,
                          submitted_at=now, updated_at=now)
            order.save()
            audit(actor="engine", action="exit.attempt", entity="signal", entity_id=signal.pk, now=now,
                  attempt=attempt, order=order.client_order_id, quantity=quantity, reduce_only=reduce_only)
            leases.enter_context(order_send_lease(order.pk))
        log.info("exit of signal %s: attempt %s, %s %s %s%s", signal.pk, attempt, side.value, quantity,
                 signal.symbol, " reduce-only" if reduce_only else "")
        _order_send(order, connector=connector, now=now)
    return Signal.objects.get(pk=signal.pk)


def _with_note(detail: str, note: str) -> str:
    """The decision detail with the exit's latest note in place of the previous one."""
    return f"{detail.split(' | closing: ')[0]} | {note}"


def _venue_net(connector: Connector, symbol: str) -> Decimal | None:
    """The venue's net position in a market, where the venue keeps positions (None on spot venues)."""
    if not connector.capabilities.positions:
        return None
    return sum((p.quantity for p in connector.positions() if p.symbol == symbol), Decimal(0))


def exits_drive(*, now: datetime | None = None) -> dict[str, int]:
    """Take one step of every WORKING exit, oldest first (one broken account never holds up the others)."""
    counts = {"working": 0, "executed": 0}
    for signal_id in Signal.objects.filter(status=Signal.Status.WORKING).order_by("received_at", "pk").values_list(
            "pk", flat=True)[:500]:
        counts["working"] += 1
        try:
            if exit_drive(signal_id=signal_id, now=now or timezone.now()).status == Signal.Status.EXECUTED:
                counts["executed"] += 1
        except Exception:  # noqa: BLE001 - one exit's fault must not stop the others; the next tick tries again
            log.exception("exit of signal %s failed this step; the next tick tries again", signal_id)
    return counts


def _exits_working(account_id: int, *, source: str | None = None) -> set[tuple[int, str]]:
    """The (strategy, market) pairs of an account with an exit being pursued (of one source, if given)."""
    working = Signal.objects.filter(account_id=account_id, status=Signal.Status.WORKING)
    if source is not None:
        working = working.filter(source=source)
    return set(working.values_list("strategy_id", "symbol"))


def _exit_signal(position: Position, *, source: str, key: str, payload: dict[str, Any],
                 now: datetime) -> tuple[Signal, bool]:
    """The close signal `key` of a position, created once. If it ended refused or failed while the position is
    still open, a new one follows it (the key and the refused signal's id): an exit is never given up, except on
    dust, which no order can close (a human must)."""
    signal, created = signal_create(strategy=position.strategy, source=source, idempotency_key=key,
                                    action=Signal.Action.CLOSE, symbol=position.symbol, payload=payload, now=now,
                                    enqueue=False)
    for _ in range(100):
        if created or signal.status not in (Signal.Status.REJECTED, Signal.Status.FAILED) \
                or signal.decision_rule == Rule.DUST:
            break
        signal, created = signal_create(strategy=position.strategy, source=source,
                                        idempotency_key=f"{key}:after:{signal.pk}", action=Signal.Action.CLOSE,
                                        symbol=position.symbol, payload=payload, now=now, enqueue=False)
    return signal, created
