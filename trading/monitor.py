"""The monitor: each account's orders' changes recorded, trailing stops moved, stop-loss and take-profit exits fired.

Run per account on a timer (trading/tasks.py fans it out), and at once when a price crosses a stop (`stops_crossed`).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from decimal import Decimal

from django.core.cache import cache
from django.db.models import Exists, F, OuterRef, Q, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from exchanges.base import Connector
from exchanges.errors import VenueError
from trading.connectors import connector_for
from trading.execution import signal_process
from trading.exits import _exit_signal, _exits_working
from trading.logcontext import log_context
from trading.models import Order, Position, PriceFeed, Signal, VenueAccount
from trading.prices import accounts_priced_by
from trading.protection import _trail, protection_enabled, protection_sync
from trading.reconcile import live_orders_changed
from trading.recording import order_apply_venue_state

log = logging.getLogger("trading.engine")  # one logger for every room of the engine (log routing keys on it)


def positions_monitor(*, now: datetime | None = None) -> dict[str, int]:
    """Match working paper orders against prices, sync working orders, and fire stop-loss / take-profit exits, for
    every account in turn (the Celery task runs each account as a task of its own: see accounts_to_monitor)."""
    counts = {"matched": 0, "exits": 0}
    for account_id in accounts_to_monitor():
        for key, value in account_monitor(account_id=account_id, now=now).items():
            counts[key] += value
    return counts


def accounts_to_monitor() -> list[int]:
    """Ids of the accounts with working orders, stops, take-profits or trailing stops to watch, the one whose
    monitor last started longest ago first (see monitor_order)."""
    # Two EXISTS probes (each on an index) rather than a join of every order and position, which grew with the
    # order history (0.3 s at 20,000 orders) and kept flat positions of trailing strategies watched for ever.
    working = Order.objects.filter(account_id=OuterRef("pk"), status__in=(Order.Status.OPEN,
                                                                         Order.Status.PARTIALLY_FILLED))
    guarded = Position.objects.filter(account_id=OuterRef("pk")).exclude(quantity=0).filter(
        Q(stop_loss__isnull=False) | Q(take_profit__isnull=False) | Q(strategy__trailing_stop_percent__isnull=False))
    return monitor_order(list(VenueAccount.objects.filter(Exists(working) | Exists(guarded)).order_by("pk")
                              .values_list("pk", flat=True)))


def _started_key(account_id: int) -> str:
    return f"trading:monitor:started:{account_id}"


def monitor_order(account_ids: list[int]) -> list[int]:
    """`account_ids` with the account whose last full monitor pass started longest ago (or never) first.

    The fan-outs send one monitor per account, each expiring after one interval: when monitors are slow (a venue's
    budget spent) and only some run before the rest expire, sending them in a fixed order would starve the same
    accounts tick after tick. Least recently monitored first, every account's turn comes."""
    if len(account_ids) < 2:
        return account_ids
    started = cache.get_many([_started_key(a) for a in account_ids])
    return sorted(account_ids, key=lambda a: (started.get(_started_key(a), 0.0), a))


def _monitor_started(account_id: int) -> None:
    try:
        cache.set(_started_key(account_id), time.time(), timeout=24 * 3600)
    except Exception:  # noqa: BLE001 - only the fan-out's order depends on it: never a reason to skip a monitor
        log.warning("could not stamp the start of account %s's monitor", account_id, exc_info=True)


def stops_crossed(*, symbol: str, price: Decimal, feed: str = PriceFeed.DEMO) -> list[int]:
    """Ids of the accounts priced by `feed` with a position in `symbol` whose stop-loss or take-profit `price`
    reaches, or whose
    strategy trails its stop (a new price may move it): called as each price arrives, so an exit leaves within
    milliseconds of the crossing instead of at the next monitor tick. One indexed read; nothing is locked."""
    # A trailing stop moves only on a new best price (or the first that reaches its activation level).
    activation = Coalesce(F("strategy__trailing_activation_percent"), Value(Decimal(0))) / Value(Decimal(100))
    trails = Q(strategy__trailing_stop_percent__isnull=False) & (
        Q(quantity__gt=0, trail_peak__lt=price) | Q(quantity__lt=0, trail_peak__gt=price)
        | Q(quantity__gt=0, trail_peak__isnull=True, average_entry__lte=price / (1 + activation))
        | Q(quantity__lt=0, trail_peak__isnull=True, average_entry__gte=price / (1 - activation)))
    crossed = (Q(quantity__gt=0, stop_loss__gte=price) | Q(quantity__gt=0, take_profit__lte=price)
               | Q(quantity__lt=0, stop_loss__lte=price) | Q(quantity__lt=0, take_profit__gte=price) | trails)
    accounts = VenueAccount.objects.filter(accounts_priced_by(feed)).values("pk")
    return monitor_order(list(Position.objects.filter(symbol=symbol, account__in=accounts).exclude(quantity=0)
                              .filter(crossed)
                              .order_by("account_id").values_list("account_id", flat=True).distinct()))


def account_monitor(*, account_id: int, now: datetime | None = None, symbol: str | None = None) -> dict[str, int]:
    """One account's monitor tick: its orders' changes recorded, its trailing stops moved, its exits fired.

    With `symbol` (a price of that market just arrived and crossed a stop), only that market's positions are
    looked at, and a live venue's orders are left to the tick: the exit leaves after one price read. A venue
    error ends this account's tick only; the next tick tries again."""
    now = now or timezone.now()
    counts = {"matched": 0, "exits": 0}
    account = VenueAccount.objects.filter(pk=account_id).first()
    if account is None:
        return counts
    if symbol is None:  # a price pass skips the live order sync: not the account's turn in the tick
        _monitor_started(account_id)
    with log_context(account_id=account_id):
        try:
            connector = connector_for(account)
            match = getattr(connector, "match", None)
            if callable(match):
                changed = match()
            elif symbol is not None:
                changed = []  # the tick syncs a live venue's orders; this pass is for the stop that was crossed
            else:  # a live venue works its orders itself: ask it which of ours changed (trading.reconcile)
                changed = live_orders_changed(account=account, connector=connector)
            by_client_id = {o.client_order_id: o for o in changed}
            touched: set[tuple[int, str]] = set()
            for order in Order.objects.filter(client_order_id__in=list(by_client_id)):
                counts["matched"] += 1
                order_apply_venue_state(order_id=order.pk, venue_order=by_client_id[order.client_order_id], now=now)
                touched.add((order.strategy_id, order.symbol))
            counts["exits"] += _exits_fire(account, connector, now=now, touched=touched, symbol=symbol)
            _protections_follow(account, touched, now=now)
        except VenueError as exc:
            log.warning("monitor of account %s stopped by a venue error: %s", account.pk, exc)
    return counts


def _protections_follow(account: VenueAccount, touched: set[tuple[int, str]], *, now: datetime) -> None:
    """Sync the protective orders of the positions whose orders changed (a fill, a stop that fired, a trail), and
    those resting for other strategies in the same markets (a fill moved the account's net there)."""
    if not touched:
        return
    symbols = {symbol for _, symbol in touched}
    for position in Position.objects.filter(account=account, symbol__in=symbols).select_related("strategy"):
        if ((position.strategy_id, position.symbol) in touched and protection_enabled(position.strategy, account)
                or Order.objects.filter(position=position, status__in=Order.WORKING).exists()):
            try:
                protection_sync(position_id=position.pk, now=now)
            except VenueError as exc:
                log.warning("protective orders of position %s wait for the venue: %s", position.pk, exc)


def _exits_fire(account: VenueAccount, connector: Connector, *, now: datetime,
                touched: set[tuple[int, str]] | None = None, symbol: str | None = None) -> int:
    """Move trailing stops and fire the stop-loss and take-profit exits that the venue's prices reach (every
    guarded position of the account, or only those in `symbol`); all prices come from one `tickers` read."""
    fired = 0
    positions = list(Position.objects.filter(account=account).exclude(quantity=0).filter(
        Q(stop_loss__isnull=False) | Q(take_profit__isnull=False) | Q(strategy__trailing_stop_percent__isnull=False)
    ).filter(**({"symbol": symbol} if symbol is not None else {})).select_related("strategy"))
    if not positions:
        return 0
    try:
        prices = {s: t.price for s, t in connector.tickers(sorted({p.symbol for p in positions})).items()}
    except VenueError as exc:
        log.warning("monitor of account %s has no prices: %s", account.pk, exc)
        return 0
    exiting = _exits_working(account.pk)
    for position in positions:
        if position.symbol not in prices:
            continue  # its price could not be read: the next tick tries again
        price = prices[position.symbol]
        if position.strategy.trailing_stop_percent is not None and (position.strategy_id, position.symbol) \
                not in exiting and _trail(position, price, connector.market(position.symbol).tick_size, now=now):
            position.refresh_from_db(fields=["stop_loss", "trail_peak"])
            if touched is not None:
                touched.add((position.strategy_id, position.symbol))
        long = position.quantity > 0
        hit_stop = position.stop_loss is not None and (
            price <= position.stop_loss if long else price >= position.stop_loss)
        hit_tp = position.take_profit is not None and (
            price >= position.take_profit if long else price <= position.take_profit)
        if not (hit_stop or hit_tp):
            continue
        if (position.strategy_id, position.symbol) in exiting:
            continue  # an exit is already pursued: it goes on until flat
        kind = "sl" if hit_stop else "tp"  # when both are touched, the stop is taken first
        # One exit per state of the position: a position that changed since (added to) gets a new one.
        state = int(position.updated_at.timestamp() * 1000)
        signal, created = _exit_signal(position, source=Signal.Source.MONITOR, key=f"{kind}:{position.pk}:{state}",
                                       payload={"trigger": kind, "price": str(price)}, now=now)
        if created or signal.status == Signal.Status.RECEIVED:
            fired += int(created)
            log.info("%s hit for position %s at %s", "stop-loss" if hit_stop else "take-profit", position.pk, price)
            try:  # a price pass leaves the booking to an execution worker: the next account's exit goes sooner
                signal_process(signal_id=signal.pk, book_later=symbol is not None)
            except VenueError as exc:  # stored: the sweeper and the next tick drive it on
                log.warning("exit of position %s waits for its venue: %s", position.pk, exc)
    return fired
