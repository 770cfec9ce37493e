"""Reconciliation: our orders and positions against the venue's, at start and on a timer."""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import datetime
from decimal import Decimal

from django.utils import timezone

from exchanges.errors import VenueError
from trading import engine
from trading.models import Order, Position, VenueAccount
from trading.venues import connector_for

log = logging.getLogger("trading.reconcile")


def account_reconcile(*, account: VenueAccount, now: datetime | None = None) -> dict[str, object]:
    """Record fills we missed, flag venue orders we do not know, and compare positions; return the report."""
    now = now or timezone.now()
    connector = connector_for(account)
    report: dict[str, object] = {"time": now.isoformat(), "updated_orders": 0}
    try:
        # Orders not yet acknowledged are the sweeper's (it may resend); here we only read.
        for order in Order.objects.filter(account=account, status__in=(Order.Status.OPEN,
                                                                        Order.Status.PARTIALLY_FILLED)):
            before = order.status, order.filled_quantity
            refreshed = engine.order_sync(order_id=order.pk, now=now)
            if (refreshed.status, refreshed.filled_quantity) != before:
                report["updated_orders"] = int(report["updated_orders"]) + 1  # type: ignore[call-overload]
        venue_open = connector.open_orders()
        known = set(Order.objects.filter(account=account, client_order_id__in=[o.client_order_id for o in venue_open])
                    .values_list("client_order_id", flat=True))
        unknown = [o.client_order_id or o.venue_order_id for o in venue_open if o.client_order_id not in known]
        ours: dict[str, Decimal] = defaultdict(Decimal)
        for symbol, qty in Position.objects.filter(account=account).values_list("symbol", "quantity"):
            ours[symbol] += qty
        theirs = {p.symbol: p.quantity for p in connector.positions()}
        diffs = {
            s: {"ours": str(ours.get(s, Decimal(0))), "venue": str(theirs.get(s, Decimal(0)))}
            for s in set(ours) | set(theirs)
            if ours.get(s, Decimal(0)) != theirs.get(s, Decimal(0))
        }
    except VenueError as exc:
        report["error"] = f"{type(exc).__name__}: {exc}"
        log.warning("reconcile of account %s failed: %s", account.pk, exc)
    else:
        # Orders on the venue that we did not place are flagged for a human, never silently adopted.
        report["unknown_venue_orders"] = unknown
        report["position_differences"] = diffs
        if unknown or diffs:
            log.warning("account %s differs from its venue: unknown orders %s, positions %s", account.pk, unknown,
                        diffs)
    VenueAccount.objects.filter(pk=account.pk).update(last_reconciled_at=now, last_reconcile_report=report)
    return report


def accounts_reconcile(*, now: datetime | None = None) -> dict[str, object]:
    """Reconcile every account; return the reports by account name."""
    return {a.name: account_reconcile(account=a, now=now) for a in VenueAccount.objects.all()}
