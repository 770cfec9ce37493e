"""Recovery: the sweeper that re-drives signals and orders stuck in an intermediate state, and start-up recovery."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.db.models import Q
from django.utils import timezone

from exchanges.errors import VenueError
from trading.execution import signal_process
from trading.exits import exits_drive
from trading.models import Order, Signal
from trading.orders import order_recover, trading_setting

log = logging.getLogger("trading.engine")  # one logger for every room of the engine (log routing keys on it)


def orders_sweep(*, now: datetime | None = None) -> dict[str, int]:
    """Re-drive signals and orders stuck in an intermediate state (the outbox relay and the crash recovery)."""
    now = now or timezone.now()
    stuck_before = now - timedelta(seconds=trading_setting("STUCK_AFTER_SECONDS"))
    counts = {"signals": 0, "orders": 0}
    for signal_id in Signal.objects.filter(status=Signal.Status.RECEIVED, received_at__lt=stuck_before).values_list(
        "pk", flat=True
    )[:500]:
        counts["signals"] += 1
        try:
            signal_process(signal_id=signal_id)
        except VenueError as exc:
            log.warning("signal %s still waiting for its venue: %s", signal_id, exc)
    stuck = Order.objects.filter(
        Q(status=Order.Status.UNKNOWN)
        | Q(status__in=(Order.Status.NEW, Order.Status.SUBMITTING), updated_at__lt=stuck_before)
    ).values_list("pk", flat=True)[:500]
    for order_id in stuck:
        counts["orders"] += 1
        try:
            order_recover(order_id=order_id, now=timezone.now())
        except VenueError as exc:
            log.warning("order %s still waiting for its venue: %s", order_id, exc)
        except Exception:  # noqa: BLE001 - one order's fault must not stop the recovery of the others
            log.exception("recovery of order %s failed; the next sweep tries again", order_id)
    return counts


def startup_recover(*, stuck_after_seconds: int = 0) -> dict[str, int]:
    """At worker start: recover every non-final order and every unprocessed signal, whatever its age."""
    counts = {"signals": 0, "orders": 0}
    for signal_id in Signal.objects.filter(status=Signal.Status.RECEIVED).values_list("pk", flat=True):
        counts["signals"] += 1
        try:
            signal_process(signal_id=signal_id)
        except VenueError as exc:
            log.warning("signal %s still waiting for its venue: %s", signal_id, exc)
    for order_id in Order.objects.filter(status__in=(Order.Status.NEW, Order.Status.SUBMITTING, Order.Status.UNKNOWN)
                                         ).values_list("pk", flat=True):
        counts["orders"] += 1
        try:
            order_recover(order_id=order_id)
        except VenueError as exc:
            log.warning("order %s still waiting for its venue: %s", order_id, exc)
        except Exception:  # noqa: BLE001 - one order's fault (an account without credentials) must not stop the rest
            log.exception("start-up recovery of order %s failed; the sweeper tries again", order_id)
    counts["exits"] = exits_drive()["working"]  # exits a dead worker left half done go on
    return counts
