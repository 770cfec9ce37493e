"""Recording what a venue says of an order: fills (once each), position, cash, P&L, status, and the signal's stages.

Every write to an account's book runs under its account row lock. A signal is settled here once all its orders are
final: an entry EXECUTED or FAILED, an exit EXECUTED once its strategy is flat in the market.
"""

from __future__ import annotations

import logging
from functools import partial
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

from django.db import connection, transaction
from django.db.models import Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from exchanges.base import Side, VenueOrder, VenueOrderStatus
from infra import rows
from trading import pnl
from trading.audit import audit
from trading.intake import signal_create, signal_enqueue
from trading.models import Fill, Order, Position, Signal, Strategy, VenueAccount

log = logging.getLogger("trading.engine")  # one logger for every room of the engine (log routing keys on it)


_VENUE_STATUS = {
    VenueOrderStatus.OPEN: Order.Status.OPEN,
    VenueOrderStatus.PARTIALLY_FILLED: Order.Status.PARTIALLY_FILLED,
    VenueOrderStatus.FILLED: Order.Status.FILLED,
    VenueOrderStatus.CANCELED: Order.Status.CANCELED,
    VenueOrderStatus.REJECTED: Order.Status.REJECTED,
}


def order_apply_venue_state(*, order_id: int, venue_order: VenueOrder, now: datetime | None = None,
                            account_id: int | None = None) -> Order:
    """Record what the venue says of an order: new fills (once each), position, P&L and status."""
    now = now or timezone.now()
    if account_id is None:
        account_id = Order.objects.values_list("account_id", flat=True).get(pk=order_id)
    with transaction.atomic():
        _commit_without_fsync_wait()
        # The account row first, as everywhere: every write to an account's book runs one at a time.
        account = VenueAccount.objects.select_for_update(no_key=True).only("cash").get(pk=account_id)
        order = Order.objects.select_for_update(no_key=True, of=("self",)).select_related("signal").get(pk=order_id)
        recorded = list(order.fills.values_list("venue_fill_id", "quantity", "price"))
        return _venue_state_record(account, order, venue_order, recorded=recorded, now=now)


def _venue_state_record(account: VenueAccount, order: Order, venue_order: VenueOrder, *, recorded: list,
                        now: datetime, positions: dict[tuple[int, str], Position] | None = None,
                        others_final: bool | None = None) -> Order:
    """Record new fills, status and stages of a locked order (fills already `recorded` are skipped)."""
    known = {row[0] for row in recorded}
    fresh = [f for f in venue_order.fills if f.fill_id not in known]
    was_final = order.is_final
    status: str = _VENUE_STATUS[venue_order.status]
    if order.is_final and order.venue_order_id and status not in Order.FINAL:
        # An older reply (sent before the one that finished the order) never reopens it. An order we finished
        # without ever hearing from the venue (venue_order_id empty) takes the venue's word: it is the truth.
        status = order.status
    if not fresh and order.status == status and order.venue_order_id == venue_order.venue_order_id:
        return order
    if fresh:
        _fills_record(account, order, fresh, recorded, now, positions)
    previous = order.status
    order.venue_order_id = venue_order.venue_order_id
    order.status = status
    if venue_order.reason and status in (Order.Status.REJECTED, Order.Status.CANCELED):
        order.reason = venue_order.reason
    elif status == Order.Status.FILLED and order.filled_quantity < order.quantity:
        order.reason = (f"the venue filled {_plain(order.filled_quantity)} of {_plain(order.quantity)} and closed "
                        f"it{': ' + venue_order.reason if venue_order.reason else ''}")
    order.acknowledged_at = order.acknowledged_at or now
    order.updated_at = now
    rows.save_fields(order, ["venue_order_id", "status", "reason", "acknowledged_at", "updated_at",
                              "filled_quantity", "fees", "average_fill_price"])
    if order.signal_id:
        _signal_stages(order, order.signal_id, filled=bool(fresh), now=now, others_final=others_final)
    if fresh and was_final and order.purpose == Order.Purpose.ENTRY:
        _late_entry_close(order, now=now)
    if previous != status:
        audit(actor="engine", action=f"order.{status}", entity="order", entity_id=order.pk, now=now,
              venue_order_id=venue_order.venue_order_id, filled=order.filled_quantity)
    return order


def _late_entry_close(order: Order, *, now: datetime) -> None:
    """An entry finished here (the venue had not acknowledged it) turned out to have filled. If its strategy was
    closed since, its last target in the market is flat: a new close goes after what the entry bought (stored in
    the fill's transaction; the worker, or else the sweeper, takes it)."""
    last = Signal.objects.filter(strategy_id=order.strategy_id, symbol=order.symbol).exclude(
        pk=order.signal_id,  # type: ignore[misc]  # an order without a signal excludes nothing
    ).order_by("-received_at", "-pk").only("action", "received_at").first()
    if last is None or last.action != Signal.Action.CLOSE or last.received_at < order.created_at:
        return
    strategy = Strategy.objects.get(pk=order.strategy_id)
    signal, created = signal_create(strategy=strategy, source=Signal.Source.MONITOR,
                                    idempotency_key=f"late:{order.pk}:{_plain(order.filled_quantity)}",
                                    action=Signal.Action.CLOSE, symbol=order.symbol, now=now,
                                    payload={"trigger": "late_fill", "order": order.client_order_id})
    if created:
        log.warning("entry %s filled after its strategy was closed: close signal %s goes after it",
                    order.client_order_id, signal.pk)


def _commit_without_fsync_wait() -> None:
    """Let this transaction's commit skip the WAL flush wait (PostgreSQL).

    Only for writes that recovery can redo: if a crash of the database loses a recorded fill, the order is
    still SUBMITTING or OPEN in the durable state, and the sweeper or the reconciler asks the venue again.
    The decision and its orders are never written this way: they must be durable before any venue call.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit TO OFF")


def _signal_stages(order: Order, signal_id: int, *, filled: bool, now: datetime,
                   others_final: bool | None = None) -> None:
    """Stamp the signal's acknowledged and filled stages, and settle it once all its orders are final."""
    signal = order._state.fields_cache.get("signal")
    if signal is not None and others_final is not None:
        # The in-database path: its caller holds the signal read under the account lock and writes it once.
        signal.acknowledged_at = signal.acknowledged_at or now
        if filled:
            signal.filled_at = now
        return  # settled by the caller once every order was sent (_signal_conclude)
    changes: dict[str, object] = {"acknowledged_at": Coalesce("acknowledged_at", Value(now))}
    if filled:
        changes["filled_at"] = Value(now)
    Signal.objects.filter(pk=signal_id).update(**changes)
    settled = _signal_settle(signal_id, now) if order.is_final else None
    if signal is not None:  # the caller's copy (read under the account lock) says what the row now says
        signal.acknowledged_at = signal.acknowledged_at or now
        if filled:
            signal.filled_at = now
        if settled is not None:
            signal.status, signal.decision_detail = settled


def _fills_record(account: VenueAccount, order: Order, fills: Sequence, recorded: list, now: datetime,
                  positions: dict[tuple[int, str], Position] | None = None) -> None:
    # Every writer of this account's positions holds the account lock, so a plain read is enough here; the
    # in-database path passes the open positions it read under that lock (a flat one is absent from them).
    key = (order.strategy_id, order.symbol)
    if positions is not None:  # every row of the account, read under this transaction's account lock
        position = positions.get(key)
    else:
        position = Position.objects.filter(account=account, strategy_id=order.strategy_id,
                                           symbol=order.symbol).first()
    if position is None:
        position = Position(account=account, strategy_id=order.strategy_id, symbol=order.symbol, updated_at=now)
    if positions is not None:
        positions[key] = position
    state = pnl.PositionState(position.quantity, position.cost_basis, position.realized_pnl, position.fees_paid)
    was_flat = position.quantity == 0
    side = Side(order.side)
    cash_delta = Decimal(0)
    fills_made = []
    for f in fills:
        state, realized = pnl.apply_fill(state, side=side, quantity=f.quantity, price=f.price, fee=f.fee)
        cash_delta += realized - f.fee
        fills_made.append(Fill(order=order, account=account, strategy_id=order.strategy_id, symbol=order.symbol,
                               side=order.side, venue_fill_id=f.fill_id, quantity=f.quantity, price=f.price,
                               fee=f.fee, fee_currency=f.fee_currency, realized_pnl=realized, time=f.time,
                               recorded_at=now))
    rows.insert(fills_made, returning=False)
    order.filled_quantity += sum((f.quantity for f in fills), Decimal(0))
    order.fees += sum((f.fee for f in fills), Decimal(0))
    notional = sum((q * p for _, q, p in recorded), Decimal(0)) + sum((f.quantity * f.price for f in fills),
                                                                      Decimal(0))
    order.average_fill_price = notional / order.filled_quantity if order.filled_quantity else None

    flipped = not was_flat and state.quantity != 0 and (position.quantity > 0) != (state.quantity > 0)
    position.quantity, position.cost_basis = state.quantity, state.cost
    position.realized_pnl, position.fees_paid = state.realized, state.fees
    position.average_entry = state.avg_entry
    signal = order.signal if order.purpose == Order.Purpose.ENTRY else None
    if state.quantity == 0 or was_flat or flipped:
        position.trail_peak = None
    if state.quantity == 0:
        position.stop_loss = position.take_profit = position.opened_at = None
    elif was_flat or flipped:
        position.opened_at = now
        position.stop_loss = signal.stop_loss if signal else None
        position.take_profit = signal.take_profit if signal else None
    elif signal is not None:
        # Adding to a position: the newest entry's exits apply to the whole position.
        position.stop_loss = signal.stop_loss or position.stop_loss
        position.take_profit = signal.take_profit or position.take_profit
    position.updated_at = now
    if position.pk is None:
        rows.insert([position])
    else:
        rows.save_fields(position, ["quantity", "cost_basis", "realized_pnl", "fees_paid", "average_entry",
                                     "stop_loss", "take_profit", "trail_peak", "opened_at", "updated_at"])
    account.cash += cash_delta
    rows.save_fields(account, ["cash"])


def _signal_settle(signal_id: int, now: datetime) -> tuple[str, str] | None:
    """Settle an accepted or working signal once every one of its orders is final; return (status, detail) when it
    changed. An entry is EXECUTED when every order filled in full, else FAILED with what fell short; an exit is
    EXECUTED once the strategy is flat in the market, else it stays WORKING for the exit driver."""
    signal = Signal.objects.filter(pk=signal_id, status__in=(Signal.Status.ACCEPTED, Signal.Status.WORKING)).only(
        "status", "decision_detail", "account_id", "strategy_id", "symbol").first()
    if signal is None:
        return None
    orders = list(Order.objects.filter(signal_id=signal_id))
    held = Position.objects.filter(account_id=signal.account_id, strategy_id=signal.strategy_id,
                                   symbol=signal.symbol).values_list("quantity", flat=True).first()
    before = signal.status
    if not _signal_conclude(signal, orders, held or Decimal(0)):
        return None
    if Signal.objects.filter(pk=signal_id, status=before).update(status=signal.status,
                                                                 decision_detail=signal.decision_detail):
        audit(actor="engine", action=f"signal.{signal.status}", entity="signal", entity_id=signal_id, now=now,
              detail=signal.decision_detail)
        if before == Signal.Status.WORKING:  # the exit is done: the strategy's signals that waited for it go on
            for waiting in Signal.objects.filter(strategy_id=signal.strategy_id, symbol=signal.symbol,
                                                 status=Signal.Status.RECEIVED).order_by(
                                                     "received_at", "pk").values_list("pk", flat=True)[:20]:
                transaction.on_commit(partial(signal_enqueue, signal_id=waiting))
    return signal.status, signal.decision_detail


def _signal_conclude(signal: Signal, orders: Sequence[Order], held: Decimal) -> bool:
    """Settle a signal in memory once all its orders are final (`held`: the strategy's position in the market
    now); return whether its status changed. The caller writes it."""
    if not all(o.is_final for o in orders):
        return False
    if signal.status == Signal.Status.WORKING:
        if held != 0:
            return False  # the exit goes on (an exit that never needed an order is done once flat)
        signal.status = Signal.Status.EXECUTED
        return True
    if signal.status != Signal.Status.ACCEPTED or not orders:
        return False
    short = [o for o in orders if o.filled_quantity < o.quantity]
    if not short:
        signal.status = Signal.Status.EXECUTED
        return True
    signal.status = Signal.Status.FAILED
    signal.decision_detail = f"{signal.decision_detail} | failed: {'; '.join(order_shortfall(o) for o in short)}"
    return True


def order_shortfall(order: Order) -> str:
    """Say in words why a final order filled less than it asked for."""
    said = f"{order.purpose} {order.side} {_plain(order.quantity)}"
    filled = f"filled {_plain(order.filled_quantity)} of {_plain(order.quantity)}"
    if order.status == Order.Status.FILLED:
        return f"{said}: {filled} (the venue clipped it)"
    done = f"{filled}, then {order.status}" if order.filled_quantity else order.status
    return f"{said}: {done}" + (f": {order.reason}" if order.reason else "")


def _plain(value: Decimal) -> str:
    normal = value.normalize()
    return format(normal if normal != 0 else Decimal(0), "f")
