"""Celery entry points of the engine: each takes ids only, loads its row, and calls one service."""

from __future__ import annotations

import logging
from datetime import datetime
from decimal import Decimal
from typing import Any

from celery import shared_task
from celery.signals import worker_ready
from django.conf import settings
from django.utils import timezone

from exchanges.errors import VenueError
from trading import funding, reconcile, selectors, services
from trading.execution import order_reply_record, signal_process
from trading.exits import exits_drive
from trading.killswitch import kill_switch_enforce
from trading.models import PriceFeed
from trading.monitor import account_monitor, accounts_to_monitor, stops_crossed
from trading.recovery import orders_sweep, startup_recover

log = logging.getLogger("trading.tasks")


@shared_task(name="trading.tasks.signal_process", acks_late=True, bind=True, max_retries=5)
def signal_process_task(self, signal_id: int) -> str:
    """Process one stored signal (a no-op when it was already processed)."""
    try:
        return signal_process(signal_id=signal_id).status
    except VenueError as exc:
        if exc.retryable:
            raise self.retry(countdown=min(2 ** self.request.retries, 30), exc=exc) from exc
        raise


@shared_task(name="trading.tasks.order_reply_record", acks_late=True)
def order_reply_record_task(order_id: int, reply: dict[str, Any]) -> str:
    """Record a venue's reply to an order sent by a price pass (the reply as trading/orderjson.py writes it: no
    secret), then follow its signal up. A lost message leaves the order to the sweeper, which asks the venue."""
    return order_reply_record(order_id=order_id, reply=reply).status


@shared_task(name="trading.tasks.orders_sweep", acks_late=True)
def orders_sweep_task() -> dict[str, int]:
    """Re-drive stuck signals and orders."""
    return orders_sweep()


@shared_task(name="trading.tasks.exits_drive", acks_late=True)
def exits_drive_task() -> dict[str, int]:
    """Take one step of every exit still pursued (until each strategy is flat)."""
    return exits_drive()


@shared_task(name="trading.tasks.positions_monitor", acks_late=True)
def positions_monitor_task() -> int:
    """Fan the monitor out: one task per account, so a slow or broken venue never delays another account's stops.

    Each expires after one monitor interval: the next tick sends a fresh one, and a backlog never builds up."""
    every = int(settings.TRADING["MONITOR_EVERY_SECONDS"])
    account_ids = accounts_to_monitor()
    for account_id in account_ids:
        account_monitor_task.apply_async((account_id,), expires=every)
    return len(account_ids)


def price_arrived(symbol: str, price: Decimal, feed: str = PriceFeed.DEMO) -> int:
    """A new price of `symbol` arrived from `feed` (the demo feed, a replay, a venue's stream): send the monitor of
    every account priced by that feed whose stop-loss or take-profit it crosses at once, rather than at the next
    tick. Returns how many were sent."""
    every = int(settings.TRADING["MONITOR_EVERY_SECONDS"])
    account_ids = stops_crossed(symbol=symbol, price=price, feed=feed)
    for account_id in account_ids:
        account_monitor_task.apply_async((account_id, symbol), expires=every)
    return len(account_ids)


@shared_task(name="trading.tasks.account_monitor", acks_late=True)
def account_monitor_task(account_id: int, symbol: str | None = None) -> dict[str, int]:
    """One account's monitor tick: order changes recorded, trailing stops moved, stop-loss / take-profit fired
    (with `symbol`: only that market's positions, as a price of it just crossed a stop)."""
    return account_monitor(account_id=account_id, symbol=symbol)


@shared_task(name="trading.tasks.kill_switch_enforce", acks_late=True)
def kill_switch_enforce_task() -> dict[str, int]:
    """Cancel orders and close positions while the kill switch is engaged."""
    return kill_switch_enforce()


@shared_task(name="trading.tasks.accounts_reconcile", acks_late=True)
def accounts_reconcile_task() -> dict[str, object]:
    """Compare every account's orders and positions with its venue."""
    return reconcile.accounts_reconcile()


@shared_task(name="trading.tasks.funding_settle", acks_late=True)
def funding_settle_task() -> dict[str, int]:
    """Book the perp funding due: paper accounts on a venue's feed at its rate, live accounts from the venue's
    records (each payment once; a run after downtime catches up)."""
    return funding.funding_settle()


@shared_task(name="trading.tasks.equity_snapshot", acks_late=True)
def equity_snapshot_task() -> int:
    """Fan the equity snapshot out: one task per account, all at this tick's time, so a slow or broken venue never
    costs another account its snapshot. Each expires after one snapshot interval."""
    now = timezone.now().isoformat()
    account_ids = [account.pk for account in selectors.account_list()]
    for account_id in account_ids:
        account_equity_snapshot_task.apply_async((account_id, now),
                                                 expires=int(settings.TRADING["SNAPSHOT_EVERY_SECONDS"]))
    return len(account_ids)


@shared_task(name="trading.tasks.account_equity_snapshot", acks_late=True)
def account_equity_snapshot_task(account_id: int, at: str) -> int:
    """Record equity and P&L of one account and its strategies at `at` (ISO 8601); return rows written."""
    return services.account_equity_snapshot_take(account_id=account_id, now=datetime.fromisoformat(at))


@worker_ready.connect
def _recover_on_start(sender: object = None, **kwargs: object) -> None:
    """On worker start, finish what a crashed worker left half done, then reconcile with the venues."""
    try:
        counts = startup_recover()
        log.info("startup recovery: %s", counts)
        reconcile.accounts_reconcile()
    except Exception:  # noqa: BLE001 - a failed recovery must not stop the worker; the sweeper retries
        log.exception("startup recovery failed; the sweeper will retry")
