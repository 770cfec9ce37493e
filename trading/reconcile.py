"""Reconciliation: our orders and positions against the venue's, at start and on a timer.

What it does, and what it never does:
- Working orders (OPEN, PARTIALLY_FILLED) are refreshed from the venue, so fills that happened while we were
  down are recorded (once each: fills are keyed by the venue's fill id).
- Orders whose outcome we never heard (UNKNOWN, or SUBMITTING left by a crash) are looked up by client order id,
  read-only: when the venue has one, its state and fills are recorded; resending stays the sweeper's decision.
- Orders on the venue that we did not place are flagged (report, log, one audit row each), never adopted and
  never canceled: a human decides.
- Positions and the quote balance are compared with the venue's; a live account whose cash book was never
  funded (no cash, no fill yet) takes its opening cash from the venue's quote balance, with an audit row.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from exchanges.base import Connector, VenueOrder
from exchanges.errors import OrderNotFoundError, VenueError
from trading.audit import audit
from trading.connectors import connector_for
from trading.models import AuditEvent, Fill, Order, Position, VenueAccount
from trading.orders import UNACKNOWLEDGED, UNACKNOWLEDGED_WATCH_HOURS, order_cancel, order_sync
from trading.protection import protections_sync
from trading.recording import order_apply_venue_state

log = logging.getLogger("trading.reconcile")


def account_reconcile(*, account: VenueAccount, now: datetime | None = None) -> dict[str, object]:
    """Record fills we missed, flag venue orders we do not know, and compare positions and cash; return the report."""
    now = now or timezone.now()
    report: dict[str, object] = {"time": now.isoformat(), "updated_orders": 0}
    try:
        connector = connector_for(account)
        # Orders not yet acknowledged are the sweeper's (it may resend); here we only read.
        for order in Order.objects.filter(account=account, status__in=(Order.Status.OPEN,
                                                                        Order.Status.PARTIALLY_FILLED)):
            before = order.status, order.filled_quantity
            refreshed = order_sync(order_id=order.pk, now=now)
            if (refreshed.status, refreshed.filled_quantity) != before:
                report["updated_orders"] = int(report["updated_orders"]) + 1  # type: ignore[call-overload]
        report["recovered_orders"] = _unacknowledged_lookup(account, connector, now=now)
        venue_open = connector.open_orders()
        known = dict(Order.objects.filter(account=account, client_order_id__in=[o.client_order_id for o in venue_open])
                     .values_list("client_order_id", "status"))
        unknown = [o.client_order_id or o.venue_order_id for o in venue_open if o.client_order_id not in known]
        # Final in our book but still working on the venue (a cancel we believe in that never happened).
        stale = [o.client_order_id for o in venue_open if known.get(o.client_order_id) in Order.FINAL]
        ours: dict[str, Decimal] = defaultdict(Decimal)
        for symbol, qty in Position.objects.filter(account=account).values_list("symbol", "quantity"):
            ours[symbol] += qty
        if connector.capabilities.positions:
            theirs = {p.symbol: p.quantity for p in connector.positions()}
            diffs = {
                s: {"ours": str(ours.get(s, Decimal(0))), "venue": str(theirs.get(s, Decimal(0)))}
                for s in set(ours) | set(theirs)
                if ours.get(s, Decimal(0)) != theirs.get(s, Decimal(0))
            }
        else:
            diffs = _holdings_compare(connector, ours)
        if account.venue != VenueAccount.Venue.PAPER:
            report["cash"] = _cash_compare(account, connector, now=now)
        # Protective orders follow their positions (placed after a restart, moved, removed once flat).
        report["protected_positions"] = protections_sync(account_id=account.pk, now=now)
    except VenueError as exc:
        report["error"] = f"{type(exc).__name__}: {exc}"
        log.warning("reconcile of account %s failed: %s", account.pk, exc)
    else:
        # Orders on the venue that we did not place are flagged for a human, never silently adopted.
        report["unknown_venue_orders"] = unknown
        report["final_here_open_on_venue"] = stale
        report["position_differences"] = diffs
        _unknown_orders_audit(account, unknown, now=now)
        if unknown or diffs or stale:
            log.warning("account %s differs from its venue: unknown orders %s, final here but open there %s, "
                        "positions %s", account.pk, unknown, stale, diffs)
    VenueAccount.objects.filter(pk=account.pk).update(last_reconciled_at=now, last_reconcile_report=report)
    return report


def accounts_reconcile(*, now: datetime | None = None) -> dict[str, object]:
    """Reconcile every account (one failing account never stops the others); return the reports by name."""
    reports: dict[str, object] = {}
    for account in VenueAccount.objects.all():
        try:
            reports[account.name] = account_reconcile(account=account, now=now)
        except Exception as exc:  # noqa: BLE001 - the next account must still be reconciled
            log.exception("reconcile of account %s crashed", account.pk)
            reports[account.name] = {"error": f"{type(exc).__name__}: {exc}"}
    return reports


def _holdings_compare(connector: Connector, ours: dict[str, Decimal]) -> dict[str, dict[str, str]]:
    """A spot venue keeps balances, not positions: flag each base asset our book holds more of than the venue's
    balance (holding more there is normal: the account may own coins no strategy bought), and any short."""
    held: dict[str, Decimal] = defaultdict(Decimal)
    for symbol, qty in ours.items():
        if qty != 0:
            held[connector.market(symbol).base] += qty
    if not held:
        return {}
    balances = {b.asset: b.total for b in connector.balances()}
    return {asset: {"ours": str(qty), "venue": str(balances.get(asset, Decimal(0)))}
            for asset, qty in held.items() if qty < 0 or qty > balances.get(asset, Decimal(0))}


def _unacknowledged_lookup(account: VenueAccount, connector: Connector, *, now: datetime) -> int:
    """Ask the venue, by client id only, about orders whose outcome we never heard, and about orders the engine
    finished without the venue ever acknowledging them (given up after the attempt cap, canceled before an answer)
    for UNACKNOWLEDGED_WATCH_HOURS: a venue that lagged or lost a reply may still have them. Record what it has; an
    order canceled here that turns out to be working there is canceled there."""
    stuck_before = now - timedelta(seconds=int(settings.TRADING["STUCK_AFTER_SECONDS"]))
    found = 0
    orders = (Order.objects.filter(account=account, status=Order.Status.UNKNOWN)
              | Order.objects.filter(account=account, status=Order.Status.SUBMITTING, updated_at__lt=stuck_before)
              | Order.objects.filter(account=account, status__in=(Order.Status.REJECTED, Order.Status.CANCELED),
                                     venue_order_id="", reason__contains=UNACKNOWLEDGED,
                                     updated_at__gte=now - timedelta(hours=UNACKNOWLEDGED_WATCH_HOURS)))
    for order in orders:
        try:
            venue_order = connector.fetch_order_by_client_id(order.symbol, order.client_order_id)
        except VenueError as exc:
            log.warning("reconcile lookup of order %s failed: %s", order.pk, exc)
            continue
        if venue_order is not None:
            if order.is_final:
                log.warning("order %s (%s here) is on the venue after all: %s", order.pk, order.status,
                            venue_order.status)
            recorded = order_apply_venue_state(order_id=order.pk, venue_order=venue_order, now=now)
            if order.status == Order.Status.CANCELED and not recorded.is_final:
                order_cancel(order_id=order.pk, by="reconcile (canceled here before the venue acknowledged "
                                                  "it)", now=now)
            found += 1
    return found


def _unknown_orders_audit(account: VenueAccount, unknown: Sequence[str], *, now: datetime) -> None:
    """One audit row per venue order we do not know, the first time reconciliation sees it."""
    if not unknown:
        return
    seen = set(AuditEvent.objects.filter(action="reconcile.unknown_venue_order", entity="account",
                                         entity_id=str(account.pk), data__order__in=list(unknown))
               .values_list("data__order", flat=True))
    for order_id in unknown:
        if order_id not in seen:
            audit(actor="reconcile", action="reconcile.unknown_venue_order", entity="account",
                  entity_id=account.pk, now=now, order=order_id)


def _cash_compare(account: VenueAccount, connector: Connector, *, now: datetime) -> dict[str, str | None]:
    """Compare the cash book with the venue's quote balance; fund a live book that was never funded."""
    balance = next((b for b in connector.balances() if b.asset == account.quote_asset), None)
    venue_cash = None if balance is None else balance.total
    if venue_cash is not None and venue_cash > 0 and account.cash == 0:
        account_cash_from_venue(account=account, venue_cash=venue_cash, now=now)
        account.refresh_from_db(fields=["cash"])
    return {"ours": str(account.cash), "venue": None if venue_cash is None else str(venue_cash),
            "asset": account.quote_asset}


def account_cash_from_venue(*, account: VenueAccount, venue_cash: Decimal, now: datetime) -> bool:
    """Open a live account's cash book at the venue's quote balance, once: only while it is empty and unused."""
    with transaction.atomic():
        locked = VenueAccount.objects.select_for_update(no_key=True).get(pk=account.pk)
        if locked.venue == VenueAccount.Venue.PAPER or locked.cash != 0 or Fill.objects.filter(account=locked).exists():
            return False
        locked.cash = venue_cash
        locked.save(update_fields=["cash"])
        audit(actor="reconcile", action="account.cash_from_venue", entity="account", entity_id=locked.pk,
              now=now, cash=venue_cash, asset=locked.quote_asset)
    log.info("account %s cash book opened at the venue's %s %s", account.pk, venue_cash, account.quote_asset)
    return True


def live_orders_changed(*, account: VenueAccount, connector: Connector) -> list[VenueOrder]:
    """Our working orders on a live venue whose state there differs from ours (one open-orders read per account).

    A live venue works its orders by itself (there is no `match()` to call): the monitor asks it which of our
    resting orders filled or left the book since the last tick, so their fills and exits are recorded promptly.
    """
    ours = list(Order.objects.filter(account=account, status__in=(Order.Status.OPEN, Order.Status.PARTIALLY_FILLED))
                .exclude(venue_order_id="").values_list("venue_order_id", "symbol", "status", "filled_quantity"))
    if not ours:
        return []
    working = {o.venue_order_id: o for o in connector.open_orders()}
    changed: list[VenueOrder] = []
    for venue_order_id, symbol, status, filled in ours:
        venue_order = working.get(venue_order_id)
        if venue_order is None:  # it left the book: filled, canceled or expired
            try:
                venue_order = connector.fetch_order(symbol, venue_order_id)
            except OrderNotFoundError:
                log.warning("order %s is neither open nor known on the venue", venue_order_id)
                continue
        if venue_order.filled_quantity != filled or venue_order.status.value != status:  # same names
            changed.append(venue_order)
    return changed
