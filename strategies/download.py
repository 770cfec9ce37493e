"""Candle history from a venue's public market data into the candle store (`manage.py download_candles`, the
backtest page's download button, the `candles_download` task).

The walk itself is `strategies.history` (pure); here it gets the venue, through a public connector
(`exchanges.registry.build_public`: no credentials, behind the venue's shared rate budget, retries and breaker), and
the store, through `services.candles_import` (one transaction and one audit row per page: a failure keeps the pages
stored before it, and a candle is never stored twice nor overwritten). A rerun resumes after the candles stored
without a gap from the range's start. Candles are stored under the venue's price feed name, as the feeds store theirs
and strategies read them: `hyperliquid`, `coinbase`, and `hyperliquid-testnet` for Hyperliquid's testnet.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F, Q, Window
from django.db.models.functions import Lead
from django.utils import timezone

from exchanges.base import Connector, Market, VenueCandle, datetime_to_ms, ms_to_datetime
from exchanges.errors import VenueError
from strategies.candles import timeframe_delta
from strategies.history import HistoryError, HistoryResult, history_page_through
from strategies.models import Candle
from strategies.services import CandleImportError, candles_import
from trading import connectors, dispatch
from trading.prices import feed_name
from trading.services import TIMEFRAMES

log = logging.getLogger("strategies.download")

CANDLES_DOWNLOAD = "strategies.tasks.candles_download"  # queued by name (trading/dispatch.py)
NETWORKS = ("mainnet", "testnet")
DEFAULT_CANDLES = 5000  # the span offered when no start is given: Hyperliquid keeps its last 5000 candles
TASK_SLICE_SECONDS = 30.0  # a task downloads this long, then queues the rest (Celery's soft limit is 45 s)
BACKFILL_CANDLES = 300  # a backfill reaches this far back at most (the market-data role's gap after a reconnect)



class DownloadError(Exception):
    """A download that stopped part-way: `stored` candles are in the store and a rerun resumes after them."""

    def __init__(self, message: str, *, stored: int) -> None:
        super().__init__(message)
        self.stored = stored


@dataclass(frozen=True)
class DownloadResult:
    venue: str
    store: str  # the candle store's venue key they are stored under (the price feed's name)
    symbol: str  # the venue's market symbol the candles are stored under
    timeframe: str
    since: datetime
    walk: HistoryResult


def feed_venue(feed: str) -> tuple[str, str]:
    """The (venue, network) of a price feed name: "hyperliquid-testnet" -> ("hyperliquid", "testnet")."""
    venue, _, network = feed.partition("-")
    return venue, network or "mainnet"


def public_connector(venue: str, network: str = "mainnet") -> Connector:
    """This process's connector for the venue's public market data (no credentials), sharing its request budget
    (trading.connectors.public_connector, by the feed's name)."""
    return connectors.public_connector(venue if network == "mainnet" else f"{venue}-{network}")


def download_timeframes(connector: Connector) -> tuple[str, ...]:
    """The timeframes a venue's candles can be downloaded in: those it serves that strategies and backtests use."""
    offered = connector.capabilities.timeframes
    return TIMEFRAMES if offered is None else tuple(t for t in TIMEFRAMES if t in offered)


def download_check(*, venue: str, timeframe: str, since: datetime | None, until: datetime | None,
                   network: str = "mainnet", now: datetime | None = None) -> Connector:
    """Check a download request without any request to the venue; return its public connector.

    Raise ValidationError with messages per field (venue, network, timeframe, since, until)."""
    now = now or timezone.now()
    errors: dict[str, list[str]] = {}
    connector: Connector | None = None
    if network not in NETWORKS:
        errors["network"] = [f"must be one of {', '.join(NETWORKS)}"]
    else:
        try:
            connector = public_connector(venue, network)
        except VenueError as exc:
            errors["venue"] = [str(exc)]
    if connector is not None:
        offered = download_timeframes(connector)
        if not offered:
            errors["timeframe"] = [f"{venue} serves no candles"]
        elif timeframe not in offered:
            errors["timeframe"] = [f"{venue} serves candles in {', '.join(offered)}; not {timeframe}"]
    if since is not None and since >= now:
        errors["since"] = ["must be in the past"]
    if since is not None and until is not None and until <= since:
        errors["until"] = ["must be after since"]
    if errors:
        raise ValidationError(errors)
    assert connector is not None
    return connector


def market_resolve(connector: Connector, symbol: str) -> Market:
    """The venue's market for a symbol as given: its own symbol (BTC/USDC:USDC), a product id (BTC-USD) or a base
    asset that names one market only (BTC on Hyperliquid). Raise ValidationError on `symbol` otherwise."""
    wanted = symbol.strip()
    markets = list(connector.markets())
    for candidate in (wanted, wanted.replace("-", "/")):
        found = next((m for m in markets if m.symbol == candidate), None)
        if found is not None:
            return found
    by_base = [m for m in markets if m.base.upper() == wanted.upper()]
    if len(by_base) == 1:
        return by_base[0]
    venue = connector.capabilities.venue
    if by_base:
        names = ", ".join(sorted(m.symbol for m in by_base)[:10])
        raise ValidationError({"symbol": [f"{wanted!r} names several {venue} markets ({names}): choose one"]})
    raise ValidationError({"symbol": [f"{venue} has no market {wanted!r}"]})


def stored_run(venue: str, symbol: str, timeframe: str, *, since: datetime,
               until: datetime | None) -> tuple[datetime, datetime] | None:
    """The first stored candle opening in [since, until) and the last of the candles stored without a gap after it."""
    rows = Candle.objects.filter(venue=venue, symbol=symbol, timeframe=timeframe, open_time__gte=since)
    if until is not None:
        rows = rows.filter(open_time__lt=until)
    first = rows.order_by("open_time").values_list("open_time", flat=True).first()
    if first is None:
        return None
    step = timeframe_delta(timeframe)
    run_end = (rows.annotate(following=Window(Lead("open_time"), order_by=F("open_time").asc()))
               .filter(Q(following__isnull=True) | Q(following__gt=F("open_time") + step))
               .order_by("open_time").values_list("open_time", flat=True).first())
    return first, run_end or first


def candles_download(*, venue: str, symbol: str, timeframe: str, since: datetime | None = None,
                     until: datetime | None = None, network: str = "mainnet", by: str,
                     progress: Callable[[int, int], None] | None = None, budget: float | None = None,
                     store_as: str | None = None, now: datetime | None = None) -> DownloadResult:
    """Download a market's closed candles opening in [since, until) from the venue into the store, resumably.

    `since` defaults to the last DEFAULT_CANDLES candles; `budget` (seconds) ends the walk early (`walk.complete`
    False, `walk.next` where to go on); `store_as`: the store's venue key (default: the venue's feed name). Raise
    ValidationError for a request that cannot be made, DownloadError for a venue or store failure part-way (what
    was stored stays).
    """
    now = now or timezone.now()
    connector = download_check(venue=venue, timeframe=timeframe, since=since, until=until, network=network, now=now)
    step = timeframe_delta(timeframe)
    since = since if since is not None else (until or now) - step * DEFAULT_CANDLES
    try:
        market = market_resolve(connector, symbol)
    except VenueError as exc:
        raise DownloadError(f"{venue} markets unavailable: {exc}", stored=0) from exc
    key = store_as or feed_name(venue, network, "")
    counts = {"stored": 0}

    def fetch(start: datetime, limit: int) -> Sequence[VenueCandle]:
        return connector.candles(market.symbol, timeframe, since=start, limit=limit)

    def store(rows: Sequence[VenueCandle]) -> int:
        inserted = candles_import(venue=key, symbol=market.symbol, timeframe=timeframe, rows=rows,
                                  by=by, now=now).inserted
        counts["stored"] += inserted
        return inserted

    deadline = None if budget is None else time.monotonic() + budget
    try:
        walk = history_page_through(
            fetch=fetch, store=store, step=step, since=since, until=until, now=now,
            page=connector.capabilities.candle_page,
            stored=stored_run(key, market.symbol, timeframe, since=since, until=until), progress=progress,
            stop=None if deadline is None else (lambda: time.monotonic() >= deadline),
        )
    except VenueError as exc:
        raise DownloadError(f"{venue} stopped answering: {exc}", stored=counts["stored"]) from exc
    except CandleImportError as exc:
        raise DownloadError(f"the venue's candles differ from the stored ones ({exc}); delete the stored range "
                            "to replace it", stored=counts["stored"]) from exc
    except HistoryError as exc:
        raise DownloadError(str(exc), stored=counts["stored"]) from exc
    return DownloadResult(venue=venue, store=key, symbol=market.symbol, timeframe=timeframe, since=since, walk=walk)


def candles_backfill(*, feed: str, symbol: str, timeframe: str, now: datetime | None = None) -> int:
    """Fetch the closed candles a price feed's store misses after its last stored one (at most BACKFILL_CANDLES
    back) from the feed's venue; return how many were new. `feed` is a PriceFeed name ("hyperliquid",
    "hyperliquid-testnet"), the store's venue key of its candles. Raise as `candles_download`."""
    now = now or timezone.now()
    venue, network = feed_venue(feed)
    step = timeframe_delta(timeframe)
    last = (Candle.objects.filter(venue=feed, symbol=symbol, timeframe=timeframe).order_by("-open_time")
            .values_list("open_time", flat=True).first())
    floor = now - step * BACKFILL_CANDLES
    since = floor if last is None else max(last + step, floor)
    if since + step > now:
        return 0  # nothing has closed since the last stored candle
    result = candles_download(venue=venue, symbol=symbol, timeframe=timeframe, since=since, network=network,
                              by="marketdata", store_as=feed, now=now)
    return result.walk.stored


def candles_download_queue(*, venue: str, symbol: str, timeframe: str, since: datetime | None = None,
                           until: datetime | None = None, network: str = "mainnet", by: str,
                           now: datetime | None = None) -> None:
    """Check a download request and queue it for a worker after commit (ValidationError per field)."""
    now = now or timezone.now()
    if not symbol.strip():
        raise ValidationError({"symbol": ["this field is required"]})
    download_check(venue=venue, timeframe=timeframe, since=since, until=until, network=network, now=now)
    since = since if since is not None else (until or now) - timeframe_delta(timeframe) * DEFAULT_CANDLES
    log.info("candle download queued by %s: %s %s %s from %s", by, venue, symbol, timeframe, since.isoformat())
    transaction.on_commit(lambda: dispatch.task(CANDLES_DOWNLOAD).delay(
        venue=venue, symbol=symbol.strip(), timeframe=timeframe, since_ms=datetime_to_ms(since),
        until_ms=None if until is None else datetime_to_ms(until), network=network, by=by))


def candles_download_slice(*, venue: str, symbol: str, timeframe: str, since_ms: int, until_ms: int | None,
                           network: str, by: str) -> str:
    """One task's share of a download: TASK_SLICE_SECONDS of it, then the rest queued from where it stopped."""
    since = ms_to_datetime(since_ms)
    until = None if until_ms is None else ms_to_datetime(until_ms)
    try:
        result = candles_download(venue=venue, symbol=symbol, timeframe=timeframe, since=since, until=until,
                                  network=network, by=by, budget=TASK_SLICE_SECONDS)
    except (ValidationError, DownloadError) as exc:
        log.warning("candle download of %s %s %s failed: %s", venue, symbol, timeframe, exc)
        return "failed"
    walk = result.walk
    log.info("candle download of %s %s %s: %d new candle(s) in %d request(s)%s", venue, result.symbol, timeframe,
             walk.stored, walk.requests, "" if walk.complete else f", going on from {walk.next.isoformat()}")
    if walk.complete:
        return "done"
    if walk.next <= since:
        log.warning("candle download of %s %s %s made no progress in %gs: stopped", venue, result.symbol, timeframe,
                    TASK_SLICE_SECONDS)
        return "stalled"
    dispatch.task(CANDLES_DOWNLOAD).delay(
        venue=venue, symbol=result.symbol, timeframe=timeframe, since_ms=datetime_to_ms(walk.next),
        until_ms=until_ms, network=network, by=by)
    return "continued"


def history_start_note(result: DownloadResult, step: timedelta) -> str:
    """A line saying that the venue's history begins after `since` ("" when it does not, or when it resumed)."""
    walk = result.walk
    if walk.resumed or walk.first is None or walk.first < result.since + step:
        return ""
    return (f"the venue's {result.timeframe} history of {result.symbol} begins at {walk.first:%Y-%m-%d %H:%M} UTC: "
            "nothing older is available")
