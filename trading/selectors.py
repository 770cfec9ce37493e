"""Reads for the control API: filtered querysets with a fixed number of queries, P&L views, masked credentials."""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import F, Prefetch, QuerySet

from trading import pnl
from trading.fields import EXACT
from trading.prices import feed_name, price_feed_of
from trading.models import (EquitySnapshot, Fill, KillSwitch, MarketPrice, Order, Position, Signal, Strategy,
                            VenueAccount)

_ZERO = Decimal("0")


def strategy_list() -> QuerySet[Strategy]:
    """Strategies with their account, newest first."""
    return Strategy.objects.select_related("account").order_by("-id")


def account_list() -> QuerySet[VenueAccount]:
    """Venue accounts by name."""
    return VenueAccount.objects.order_by("name")


def account_credentials_masked(account: VenueAccount) -> dict[str, str]:
    """Which `<credentials_env>_*` variables are set, each shown as `****` plus at most its last 4 characters."""
    prefix = account.credentials_env
    if not prefix:
        return {}
    masked: dict[str, str] = {}
    for name, value in sorted(os.environ.items()):
        if name.startswith(prefix + "_") and value:
            # Short values would be mostly revealed by their last 4 characters: show nothing of them.
            masked[name[len(prefix) + 1:]] = "****" + (value[-4:] if len(value) >= 12 else "")
    return masked


def order_list(*, strategy: int | None = None, account: int | None = None, status: str | None = None,
               symbol: str | None = None, created_after: datetime | None = None,
               created_before: datetime | None = None) -> QuerySet[Order]:
    """Orders, newest first, filtered by strategy, account, status, symbol and creation time."""
    qs = Order.objects.select_related("strategy", "account").order_by("-created_at", "-id")
    return _where(qs, strategy_id=strategy, account_id=account, status=status, symbol=symbol,
                  created_at__gte=created_after, created_at__lt=created_before)


def _where(qs: QuerySet[Any], **lookups: object) -> QuerySet[Any]:
    """Apply each lookup that has a value (None or an empty string means: no filter)."""
    given = {k: v for k, v in lookups.items() if v is not None and v != ""}
    return qs.filter(**given) if given else qs


def position_list(*, include_flat: bool = False) -> QuerySet[Position]:
    """Positions (open ones unless include_flat), with their strategy and account."""
    qs = Position.objects.select_related("strategy", "account").order_by("id")
    return qs if include_flat else qs.exclude(quantity=0)


# The signals page's problem filter: what went wrong, in a trader's words.
SIGNAL_PROBLEMS = {
    "failed": "failed or refused",
    "closing": "closing (an exit still pursued)",
    "partly_filled": "an order filled in part",
}


def signal_list(*, strategy: int | None = None, source: str | None = None, status: str | None = None,
                decision_rule: str | None = None, received_after: datetime | None = None,
                received_before: datetime | None = None, problem: str | None = None) -> QuerySet[Signal]:
    """Signals, newest first, with their orders: the decision trail and stage times."""
    qs = (Signal.objects.select_related("strategy")
          .prefetch_related(Prefetch("orders", queryset=Order.objects.order_by("id")))
          .order_by("-received_at", "-id"))
    if problem == "failed":
        qs = qs.filter(status__in=(Signal.Status.FAILED, Signal.Status.REJECTED))
    elif problem == "closing":
        qs = qs.filter(status=Signal.Status.WORKING)
    elif problem == "partly_filled":
        # Money columns compare exactly as equal or not on every database (text on SQLite): no < on them here.
        partly = (Order.objects.filter(status__in=Order.FINAL).exclude(filled_quantity=0)
                  .exclude(filled_quantity=F("quantity")).values("signal_id"))
        qs = qs.filter(pk__in=partly)
    return _where(qs, strategy_id=strategy, source=source, status=status, decision_rule=decision_rule,
                  received_at__gte=received_after, received_at__lt=received_before)


@dataclass(frozen=True)
class Closing:
    """An exit pursued for a position: how many attempts so far and what the venue last said."""

    signal_id: int
    attempts: int
    last_refusal: str


def closings(positions: list[Position]) -> dict[tuple[int, int, str], Closing]:
    """The exits being pursued for these positions, by (account, strategy, symbol) (one query)."""
    if not positions:
        return {}
    accounts = {p.account_id for p in positions}
    working = (Signal.objects.filter(status=Signal.Status.WORKING, account_id__in=accounts)
               .prefetch_related(Prefetch("orders", queryset=Order.objects.order_by("id"))).order_by("pk"))
    out: dict[tuple[int, int, str], Closing] = {}
    for signal in working:
        orders = list(signal.orders.all())
        failed = [o for o in orders if o.is_final and o.filled_quantity != o.quantity]
        last = failed[-1] if failed else None
        refusal = ""
        if last is not None:
            refusal = f"{last.status}" + (f": {last.reason}" if last.reason else "")
        elif " | closing: " in signal.decision_detail:
            refusal = signal.decision_detail.split(" | closing: ", 1)[1]
        out[(signal.account_id, signal.strategy_id, signal.symbol)] = Closing(signal.pk, len(orders), refusal)
    return out


def equity_series(*, account: int | None = None, strategy: int | None = None,
                  since: datetime | None = None) -> QuerySet[EquitySnapshot]:
    """Equity snapshots oldest first: a strategy's when given, else accounts' own (strategy-less) rows."""
    qs = EquitySnapshot.objects.order_by("time", "id")
    if strategy is not None:
        qs = qs.filter(strategy_id=strategy)
    else:
        qs = qs.filter(strategy__isnull=True)
    if account is not None:
        qs = qs.filter(account_id=account)
    if since is not None:
        qs = qs.filter(time__gte=since)
    return qs


def kill_switch_get() -> KillSwitch:
    """The kill switch row (an unsaved released one when it was never engaged)."""
    return KillSwitch.objects.filter(pk=1).first() or KillSwitch(pk=1)


@dataclass(frozen=True)
class PnlLine:
    """P&L of a strategy or an account, in the account's quote currency."""

    id: int
    name: str
    account_id: int
    realized_pnl: Decimal  # net of fees
    fees: Decimal
    unrealized_pnl: Decimal
    equity: Decimal
    open_positions: int


@dataclass(frozen=True)
class PriceFreshness:
    """The age of the latest price of a market in use (an open position or an active strategy's market), in its
    account's price feed; `age_seconds` None: no price at all."""

    feed: str
    symbol: str
    age_seconds: float | None
    stale: bool


def prices_in_use(*, now: datetime, max_age_seconds: float) -> list[PriceFreshness]:
    """Every market in use with its price's age, by feed and symbol: a price older than `max_age_seconds` (or none)
    is stale, and entries priced from it are refused (rule stale_price)."""
    columns = ("account__venue", "account__network", "account__price_feed", "symbol")
    in_use = Position.objects.exclude(quantity=0).values_list(*columns).union(
        Strategy.objects.filter(status=Strategy.Status.ACTIVE).values_list(*columns))  # one query
    markets = {(feed_name(venue, network, feed), symbol) for venue, network, feed, symbol in in_use}
    times = {(f, s): t for f, s, t in MarketPrice.objects.filter(
        symbol__in={s for _, s in markets}).values_list("feed", "symbol", "time")}
    out = []
    for feed, symbol in sorted(markets):
        at = times.get((feed, symbol))
        age = None if at is None else max(0.0, (now - at).total_seconds())
        out.append(PriceFreshness(feed, symbol, age, age is None or age > max_age_seconds))
    return out


def marks_of(markets: list[tuple[str, str]]) -> dict[tuple[str, str], Decimal]:
    """The latest price of each (price feed, symbol) that has one (one query)."""
    wanted = set(markets)
    if not wanted:
        return {}
    found = MarketPrice.objects.filter(symbol__in={symbol for _, symbol in wanted},
                                       feed__in={feed for feed, _ in wanted}).values_list("feed", "symbol", "price")
    return {(feed, symbol): price for feed, symbol, price in found if (feed, symbol) in wanted}


def pnl_summary() -> dict[str, list[PnlLine]]:
    """Realized (net of fees), unrealized at the latest marks, fees and equity per strategy and per account.

    Marks come from the MarketPrice feed (no venue call per request); a market without a price is marked at
    its average entry (unrealized 0). Strategy equity is its net realized plus unrealized P&L; account equity
    is its cash book plus unrealized P&L.
    """
    accounts = list(VenueAccount.objects.order_by("id"))
    strategies = list(Strategy.objects.order_by("id"))
    positions = list(Position.objects.all())
    feeds = {a.pk: price_feed_of(a) for a in accounts}
    marks = marks_of([(feeds[p.account_id], p.symbol) for p in positions if p.quantity != 0])
    per_strategy: dict[int, list[Any]] = {s.pk: [_ZERO, _ZERO, _ZERO, 0] for s in strategies}
    per_account: dict[int, list[Any]] = {a.pk: [_ZERO, _ZERO, _ZERO, 0] for a in accounts}
    for p in positions:
        state = pnl.PositionState(p.quantity, p.cost_basis, p.realized_pnl, p.fees_paid)
        upnl = _ZERO
        if p.quantity != 0:
            mark = marks.get((feeds[p.account_id], p.symbol), p.average_entry)
            upnl = pnl.unrealized(state, mark) if mark is not None else _ZERO
        for acc in (per_strategy.setdefault(p.strategy_id, [_ZERO, _ZERO, _ZERO, 0]),
                    per_account.setdefault(p.account_id, [_ZERO, _ZERO, _ZERO, 0])):
            acc[0] += state.realized - state.fees
            acc[1] += state.fees
            acc[2] += upnl
            acc[3] += 1 if p.quantity != 0 else 0
    return {
        "strategies": [
            PnlLine(s.pk, s.slug, s.account_id, per_strategy[s.pk][0], per_strategy[s.pk][1], per_strategy[s.pk][2],
                    per_strategy[s.pk][0] + per_strategy[s.pk][2], per_strategy[s.pk][3])
            for s in strategies
        ],
        "accounts": [
            PnlLine(a.pk, a.name, a.pk, per_account[a.pk][0], per_account[a.pk][1], per_account[a.pk][2],
                    a.cash + per_account[a.pk][2], per_account[a.pk][3])
            for a in accounts
        ],
    }


# --------------------------------------------------------------------------------------------- dashboard pages


@dataclass(frozen=True)
class PositionMark:
    """An open position with its mark and unrealized P&L (quote)."""

    position: Position
    mark: Decimal | None
    unrealized_pnl: Decimal
    closing: Closing | None = None


@dataclass(frozen=True)
class AccountToday:
    """An account's equity now and its change since UTC midnight (None when no baseline is known)."""

    account: VenueAccount
    equity: Decimal
    unrealized_pnl: Decimal
    pnl_today: Decimal | None
    realized_today: Decimal  # net of fees, from today's fills


def positions_marked(*, strategy: int | None = None) -> list[PositionMark]:
    """Open positions with the latest feed price, unrealized P&L and any exit being pursued (4 queries)."""
    positions = list(_where(position_list(), strategy_id=strategy))
    marks = marks_of([(price_feed_of(p.account), p.symbol) for p in positions])
    exits = closings(positions)
    out = []
    for p in positions:
        mark = marks.get((price_feed_of(p.account), p.symbol))
        state = pnl.PositionState(p.quantity, p.cost_basis, p.realized_pnl, p.fees_paid)
        out.append(PositionMark(p, mark, pnl.unrealized(state, mark) if mark is not None else _ZERO,
                                exits.get((p.account_id, p.strategy_id, p.symbol))))
    return out


def accounts_today(*, now: datetime) -> list[AccountToday]:
    """Each account's equity at the latest marks and its P&L since UTC midnight (a fixed number of queries)."""
    from django.db.models import F, Min, Sum

    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    lines = {line.id: line for line in pnl_summary()["accounts"]}
    today = Fill.objects.filter(time__gte=midnight)
    realized: dict[int, Decimal]
    if connection.vendor == "postgresql":  # numeric: exact in SQL
        realized = dict(today.values("account_id").annotate(net=Sum(F("realized_pnl") - F("fee")))
                        .values_list("account_id", "net"))
    else:  # SQLite keeps money as text, and its arithmetic on it is REAL: sum exactly here
        realized = defaultdict(lambda: _ZERO)
        for account_id, realized_pnl, fee in today.values_list("account_id", "realized_pnl", "fee"):
            realized[account_id] = EXACT.add(realized[account_id], EXACT.subtract(realized_pnl, fee))
    first_today = dict(
        EquitySnapshot.objects.filter(strategy__isnull=True, time__gte=midnight).values("account_id")
        .annotate(first=Min("time")).values_list("account_id", "first")
    )
    baseline_rows = EquitySnapshot.objects.filter(strategy__isnull=True, time__in=list(first_today.values()))
    baselines = {r.account_id: r.equity for r in baseline_rows if first_today.get(r.account_id) == r.time}
    out = []
    for account in VenueAccount.objects.order_by("name"):
        line = lines.get(account.pk)
        equity = line.equity if line else account.cash
        base = account.day_start_equity if account.day_start == midnight.date() else baselines.get(account.pk)
        out.append(AccountToday(account, equity, line.unrealized_pnl if line else _ZERO,
                                None if base is None else equity - base, realized.get(account.pk) or _ZERO))
    return out


def equity_points(*, strategy: int | None = None, since: datetime | None = None,
                  limit: int = 2000) -> list[tuple[datetime, int, Decimal]]:
    """(time, account id, equity) of the newest `limit` snapshots, oldest first: a strategy's, else accounts'."""
    rows = list(equity_series(strategy=strategy, since=since).order_by("-time", "-id")
                .values_list("time", "account_id", "equity")[:limit])
    rows.reverse()
    return rows


def strategy_list_with_activity() -> QuerySet[Strategy]:
    """Strategies with their account and their newest signal's time, action and status (one query)."""
    from django.db.models import OuterRef, Subquery

    newest = Signal.objects.filter(strategy=OuterRef("pk")).order_by("-received_at", "-id")
    return strategy_list().annotate(
        last_signal_at=Subquery(newest.values("received_at")[:1]),
        last_signal_action=Subquery(newest.values("action")[:1]),
        last_signal_status=Subquery(newest.values("status")[:1]),
    )


def fill_list(*, strategy: int | None = None, since: datetime | None = None) -> QuerySet[Fill]:
    """Fills newest first, with their order's purpose and strategy."""
    qs = Fill.objects.select_related("order", "strategy").order_by("-time", "-id")
    return _where(qs, strategy_id=strategy, time__gte=since)


def venue_health() -> list[dict[str, Any]]:
    """Each account's venue health for the dashboard: breaker line and the problems its last reconciliation found."""
    out = []
    for line in venue_health_list():
        summary = line.reconcile_summary or {}
        problems = [k for k in ("unknown_venue_orders", "position_differences", "final_here_open_on_venue")
                    if summary.get(k)]
        out.append({"line": line, "summary": summary, "problems": problems})
    return out


def signal_decision_preview(*, strategy: Strategy, intent: Any, atr: Decimal | None = None,
                            now: datetime) -> Any:
    """What risk would decide for `intent` (a domain SignalIntent) on this strategy now, writing nothing.

    Runs the engine's own book read and `risk.decide` inside a transaction that is always rolled back, so the
    preview sees what a real signal would and leaves no row behind. Raises VenueError when the venue is down.
    """
    from django.db import transaction

    from trading import risk
    from trading.decision import _account_view, _atr, account_limits, strategy_risk
    from trading.domain import MarketRules, Quote
    from trading.connectors import connector_for

    with transaction.atomic():
        try:
            account = VenueAccount.objects.get(pk=strategy.account_id)
            connector = connector_for(account)
            market = connector.market(intent.symbol)
            book = _account_view(account, connector, now=now, symbol=intent.symbol)  # the engine's own read
            ticker = book.quote
            # The ATR an ATR-multiple exit needs: the alert's, else market data's, as the engine finds it.
            atr = _atr(Signal(strategy=strategy, atr=atr), now)
            return risk.decide(
                intent=intent, strategy_id=strategy.pk, account=book.view,
                market=MarketRules.from_market(market),
                quote=Quote(ticker.price, ticker.time), atr=atr, risk=strategy_risk(strategy),
                limits=account_limits(account), now=now,
            )
        finally:
            transaction.set_rollback(True)


@dataclass(frozen=True)
class VenueHealthLine:
    """One account's venue health: its circuit breaker (as last reported by a worker) and its last reconciliation."""

    account_id: int
    account_name: str
    venue: str
    network: str
    breaker_state: str  # closed | open | half_open; "none" for paper accounts (no breaker)
    breaker_since: datetime | None
    consecutive_failures: int
    last_error: str  # error class and message, secret-looking values removed
    reported_by: str  # host:pid of the process that saw the last transition
    last_reconciled_at: datetime | None
    reconcile_summary: dict[str, Any]
    snapshot_failures: int = 0  # consecutive equity snapshots that could not value the account (0: the last did)
    snapshot_error: str = ""  # the latest failed snapshot's error, secret-free
    snapshot_failed_at: datetime | None = None


def venue_health_list() -> list[VenueHealthLine]:
    """Every account's breaker state and reconciliation summary, by account name, in one query."""
    lines = []
    for account in VenueAccount.objects.select_related("venue_health").order_by("name"):
        health = getattr(account, "venue_health", None)  # no row: no breaker transition was ever reported
        paper = account.venue == VenueAccount.Venue.PAPER
        lines.append(VenueHealthLine(
            account_id=account.pk, account_name=account.name, venue=account.venue, network=account.network,
            breaker_state="none" if paper else (health.state if health else "closed"),
            breaker_since=health.since if health else None,
            consecutive_failures=health.consecutive_failures if health else 0,
            last_error=health.last_error if health else "",
            reported_by=health.reporter if health else "",
            last_reconciled_at=account.last_reconciled_at,
            reconcile_summary=reconcile_summary(account.last_reconcile_report),
            snapshot_failures=health.snapshot_failures if health else 0,
            snapshot_error=health.snapshot_error if health else "",
            snapshot_failed_at=health.snapshot_failed_at if health else None,
        ))
    return lines


_RECONCILE_PROBLEMS = ("unknown_venue_orders", "position_differences", "final_here_open_on_venue")


def reconcile_summary(report: dict[str, Any] | None) -> dict[str, Any]:
    """Counts of a reconciliation report (lists and mappings by their length), its error, and whether all agreed."""
    if not report:
        return {}
    summary: dict[str, Any] = {"ok": True}
    for key, value in report.items():
        if key == "time":
            continue
        if key == "error":
            summary["error"] = str(value)
            summary["ok"] = False
        elif isinstance(value, dict) and key not in _RECONCILE_PROBLEMS and all(
                isinstance(v, (str, int, bool)) or v is None for v in value.values()):
            summary[key] = value  # a small record, e.g. the cash comparison
        elif isinstance(value, (list, tuple, dict)):
            summary[key] = len(value)
            if value and key in _RECONCILE_PROBLEMS:
                summary["ok"] = False
        elif isinstance(value, (int, str, bool)) or value is None:
            summary[key] = value
    return summary


def fills_latest(*, limit: int = 10) -> list[Fill]:
    """The newest recorded fills (by id: the primary-key index, no sort of the whole table)."""
    return list(Fill.objects.select_related("order", "strategy").order_by("-id")[:limit])


# --------------------------------------------------------------------------------------------- API tokens


def api_token_list(*, user: Any = None) -> QuerySet[Any]:
    """API tokens, newest first: a user's, else everyone's (their keys are never stored, so never here)."""
    from knox.models import AuthToken

    tokens = AuthToken.objects.select_related("user").order_by("-created", "digest")
    return tokens.filter(user=user) if user is not None else tokens


def api_token_find(*, prefix: str, user: Any = None) -> Any | None:
    """The token whose key starts with `prefix` (8 to 15 characters; a user's only, when given); None when no one
    token matches (none, or more than one)."""
    from knox.settings import CONSTANTS

    if not 8 <= len(prefix) <= CONSTANTS.TOKEN_KEY_LENGTH:
        return None
    found = list(api_token_list(user=user).filter(token_key__startswith=prefix)[:2])
    return found[0] if len(found) == 1 else None
