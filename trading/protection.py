"""Protective orders: a position's stop-loss and take-profit resting on the venue as reduce-only trigger orders.

They follow the position (placed, moved, removed when flat, while an exit is pursued or under the kill switch), and
only where they reduce the account's net; otherwise the monitor (trading/monitor.py) guards the position. Trailing
stops move here too.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from datetime import datetime
from decimal import Decimal

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from exchanges.base import Connector, OrderType, Side
from exchanges.errors import VenueError
from trading.audit import audit
from trading.connectors import connector_for
from trading.exits import _exits_working, _venue_net
from trading.leases import order_send_lease
from trading.models import Order, Position, Signal, Strategy, VenueAccount
from trading.orders import _order_send, kill_switch_engaged, new_client_order_id, order_cancel

log = logging.getLogger("trading.engine")  # one logger for every room of the engine (log routing keys on it)


def protection_enabled(strategy: Strategy, account: VenueAccount | None = None, *, live: bool | None = None) -> bool:
    """Whether a strategy's stop-loss and take-profit rest on the venue (auto: on for live accounts only); `live`
    (the connector's word) spares reading the account."""
    if strategy.protective_orders == Strategy.Protection.AUTO:
        return live if live is not None else account is not None and account.venue != VenueAccount.Venue.PAPER
    return strategy.protective_orders == Strategy.Protection.ON


_PROTECTIVE: dict[str, OrderType] = {Order.Purpose.STOP_LOSS: OrderType.STOP,
                                     Order.Purpose.TAKE_PROFIT: OrderType.TAKE_PROFIT}


def protection_sync(*, position_id: int, now: datetime | None = None) -> dict[str, int]:
    """Make the venue's protective orders of a position match it: a stop-loss and a take-profit trigger order, each
    reduce-only for the strategy's whole position at the position's levels; moved (canceled and placed again) when
    a level or the size changed; the sibling canceled once one filled; all removed when the position is flat, while
    an exit is pursued, or under the kill switch.

    Placed only where the venue has trigger orders and the order reduces the account's net (several strategies may
    net the other way: then the bot's monitor alone guards that position); on a venue without reduce-only orders
    (spot), only the stop-loss, as a resting order holds the coins it would sell.
    """
    now = now or timezone.now()
    position = Position.objects.select_related("strategy", "account").get(pk=position_id)
    account, strategy = position.account, position.strategy
    connector = connector_for(account)
    held = position.quantity
    side = Side.SELL if held > 0 else Side.BUY
    want: dict[str, Decimal] = {}
    if (held != 0 and protection_enabled(strategy, account) and connector.capabilities.stop_orders
            and not kill_switch_engaged()
            and (strategy.pk, position.symbol) not in _exits_working(account.pk)):
        if position.stop_loss is not None:
            want[Order.Purpose.STOP_LOSS] = position.stop_loss
        if position.take_profit is not None and connector.capabilities.reduce_only:
            want[Order.Purpose.TAKE_PROFIT] = position.take_profit
    if want and connector.capabilities.reduce_only:
        # Checked for the orders already resting too: other strategies' trades move the account's net.
        net = _venue_net(connector, position.symbol)
        if net is not None and not abs(held) <= -net * side.sign:
            log.info("position %s: no protective orders on the venue (the account's net %s would not be reduced); "
                     "the bot's monitor guards it", position.pk, net)
            want = {}
    counts = {"kept": 0, "canceled": 0, "placed": 0}
    waiting = False
    for order in Order.objects.filter(position_id=position.pk, status__in=Order.WORKING).order_by("pk"):
        level = want.get(order.purpose)
        if (level is not None and order.side == side.value and order.trigger_price == level
                and order.quantity - order.filled_quantity == abs(held)):
            del want[order.purpose]
            counts["kept"] += 1
            continue
        try:
            order = order_cancel(order_id=order.pk, by="protection (moved or no longer needed)", now=now)
        except VenueError as exc:
            log.warning("protective order %s could not be canceled: %s", order.pk, exc)
        counts["canceled"] += 1
        waiting = waiting or not order.is_final
    if waiting or not want:
        return counts  # a replacement goes out once the old order is gone (the next sync)
    for purpose, level in want.items():
        try:
            _protective_place(position, purpose=purpose, side=side, trigger=level, connector=connector, now=now)
        except _ProtectionStale:
            log.info("position %s changed while its protective orders were decided; the next sync decides again",
                     position.pk)
            break
        counts["placed"] += 1
    return counts


class _ProtectionStale(Exception):
    """The position changed, or an exit or the kill switch started, after its protective orders were decided."""


def _protective_place(position: Position, *, purpose: str, side: Side, trigger: Decimal, connector: Connector,
                      now: datetime) -> Order:
    """Place one protective trigger order for a position (committed with its client id before the venue call)."""
    with ExitStack() as leases:
        with transaction.atomic():
            locked = VenueAccount.objects.select_for_update(no_key=True).filter(pk=position.account_id).values_list(
                "pk", flat=True).first()
            # Decided outside the lock: under it, the position must be as it was and no exit under way (an exit
            # sent meanwhile would leave this stop resting for a size that is gone, free to sell another's share).
            current = Position.objects.filter(pk=position.pk).values_list("quantity", flat=True).first()
            if (locked is None or current != position.quantity or kill_switch_engaged()
                    or Signal.objects.filter(account_id=position.account_id, strategy_id=position.strategy_id,
                                             symbol=position.symbol, status=Signal.Status.WORKING).exists()):
                raise _ProtectionStale
            order = Order(client_order_id=new_client_order_id(), account=position.account,
                          strategy_id=position.strategy_id, position=position, symbol=position.symbol,
                          side=side.value, type=_PROTECTIVE[purpose].value, purpose=purpose,
                          reduce_only=connector.capabilities.reduce_only, quantity=abs(position.quantity),
                          trigger_price=trigger, reference_price=trigger, status=Order.Status.SUBMITTING, attempts=1,
                          created_at=now, submitted_at=now, updated_at=now)
            order.save()
            audit(actor="engine", action="protection.placed", entity="position", entity_id=position.pk, now=now,
                  order=order.client_order_id, purpose=purpose, trigger=trigger, quantity=order.quantity)
            leases.enter_context(order_send_lease(order.pk))
        return _order_send(order, connector=connector, now=now)


def protections_sync(*, account_id: int | None = None, now: datetime | None = None) -> int:
    """Sync the protective orders of every position that has or should have them; return how many were looked at."""
    positions = Position.objects.filter(Q(protective_orders__status__in=Order.WORKING) | ~Q(quantity=0))
    if account_id is not None:
        positions = positions.filter(account_id=account_id)
    seen = 0
    for position_id in positions.values_list("pk", flat=True).distinct():
        position = Position.objects.select_related("strategy", "account").get(pk=position_id)
        if position.quantity != 0 and not protection_enabled(position.strategy, position.account):
            continue
        seen += 1
        try:
            protection_sync(position_id=position_id, now=now)
        except VenueError as exc:
            log.warning("protective orders of position %s wait for the venue: %s", position_id, exc)
        except Exception:  # noqa: BLE001 - one position's fault must not stop the others
            log.exception("protective orders of position %s failed this round", position_id)
    return seen


def _trail(position: Position, price: Decimal, market_tick: Decimal, *, now: datetime) -> bool:
    """Move a position's trailing stop with the price (only ever tighter); return whether the stop moved."""
    strategy = position.strategy
    distance = strategy.trailing_stop_percent
    if distance is None or position.quantity == 0 or position.average_entry is None:
        return False
    long = position.quantity > 0
    activation = (strategy.trailing_activation_percent or Decimal(0)) / 100
    entry = position.average_entry
    if position.trail_peak is None and not (price >= entry * (1 + activation) if long
                                            else price <= entry * (1 - activation)):
        return False
    peak = price if position.trail_peak is None else (max(position.trail_peak, price) if long
                                                      else min(position.trail_peak, price))
    stop = peak * (1 - distance / 100) if long else peak * (1 + distance / 100)
    # Onto the tick toward the price (never a looser stop than computed).
    stop = (-((-stop) // market_tick) * market_tick) if long else (stop // market_tick) * market_tick
    tighter = position.stop_loss is None or (stop > position.stop_loss if long else stop < position.stop_loss)
    if peak == position.trail_peak and not tighter:
        return False
    changes: dict[str, object] = {"trail_peak": peak}
    if tighter:
        changes["stop_loss"] = stop
    moved = Position.objects.filter(pk=position.pk, updated_at=position.updated_at, quantity=position.quantity).update(
        **changes)
    if moved and tighter:
        audit(actor="engine", action="position.trailing_stop", entity="position", entity_id=position.pk, now=now,
              stop_loss=stop, peak=peak)
    return bool(moved and tighter)
