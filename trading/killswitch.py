"""The kill switch, enforced: while engaged, every working order is canceled and every position closed until flat."""

from __future__ import annotations

import logging
from datetime import datetime
from decimal import Decimal

from django.utils import timezone

from exchanges.errors import VenueError
from trading.connectors import connector_for
from trading.execution import signal_process
from trading.exits import _exit_signal, _exits_working
from trading.models import KillSwitch, Order, Position, Signal, VenueAccount
from trading.orders import order_cancel
from trading.recording import _plain

log = logging.getLogger("trading.engine")  # one logger for every room of the engine (log routing keys on it)


def kill_switch_enforce(*, now: datetime | None = None) -> dict[str, int]:
    """While the kill switch is engaged: cancel every working order and close every position reduce-only."""
    now = now or timezone.now()
    switch = KillSwitch.objects.filter(pk=1).first()
    counts = {"canceled": 0, "closing": 0}
    if switch is None or not switch.engaged:
        return counts
    stamp = int((switch.changed_at or now).timestamp() * 1000)
    for order in Order.objects.filter(status__in=Order.WORKING).exclude(purpose=Order.Purpose.KILL_SWITCH):
        try:
            order_cancel(order_id=order.pk, by="kill_switch", now=now)
            counts["canceled"] += 1
        except Exception:  # noqa: BLE001 - one venue's fault must not stop the others; the next tick tries again
            log.exception("kill switch: order %s could not be canceled this tick", order.pk)
    exiting: dict[int, set[tuple[int, str]]] = {}
    for position in Position.objects.exclude(quantity=0).select_related("strategy"):
        try:
            if position.account_id not in exiting:
                exiting[position.account_id] = _exits_working(position.account_id, source=Signal.Source.KILL_SWITCH)
            if (position.strategy_id, position.symbol) in exiting[position.account_id]:
                continue  # the kill switch's exit for it is pursued until flat (exits_drive)
            state = int(position.updated_at.timestamp() * 1000)
            signal, created = _exit_signal(position, source=Signal.Source.KILL_SWITCH,
                                           key=f"kill:{stamp}:{position.pk}:{state}",
                                           payload={"reason": switch.reason}, now=now)
            if created or signal.status == Signal.Status.RECEIVED:
                counts["closing"] += 1
                signal_process(signal_id=signal.pk)
        except Exception:  # noqa: BLE001 - one venue's fault must not stop the others; the next tick tries again
            log.exception("kill switch: position %s could not be closed this tick", position.pk)
    still_open = kill_switch_still_open()
    KillSwitch.objects.filter(pk=1, engaged=True).update(
        still_open=still_open, flat_at=None if still_open else (switch.flat_at or timezone.now()))
    return counts


def kill_switch_still_open() -> list[dict[str, str]]:
    """What is still open, per account and market, in our book and on the venue (where it keeps positions), and
    the working orders: empty only when every venue says every market is flat.

    A position the venue holds that no strategy owns is listed, never traded: a human decides (as reconciliation).
    """
    still: list[dict[str, str]] = []
    for account in VenueAccount.objects.order_by("pk"):
        book: dict[str, Decimal] = {}
        for symbol, quantity in Position.objects.filter(account=account).exclude(quantity=0).values_list(
                "symbol", "quantity"):
            book[symbol] = book.get(symbol, Decimal(0)) + quantity
        working = Order.objects.filter(account=account, status__in=Order.WORKING).count()
        venue: dict[str, Decimal] = {}
        known = "unknown"
        try:
            connector = connector_for(account)
            if connector.capabilities.positions:
                venue = {p.symbol: p.quantity for p in connector.positions() if p.quantity != 0}
                known = "0"
            else:
                known = "n/a (spot)"
        except VenueError as exc:
            still.append({"account": account.name, "error": f"the venue could not be asked: {type(exc).__name__}"})
        for symbol in sorted(set(book) | set(venue)):
            still.append({"account": account.name, "symbol": symbol, "book": _plain(book.get(symbol, Decimal(0))),
                          "venue": _plain(venue[symbol]) if symbol in venue else known})
        if working:
            still.append({"account": account.name, "working_orders": str(working)})
    return still
