"""The market-data role (`manage.py marketdata`): venues' live prices and closed candles into the database.

One asyncio process. Every REFRESH seconds it reads what is in use (`wanted`): per price feed, the markets of open
positions and active strategies on the accounts that feed prices (a paper account's chosen feed, a live account's
own venue), and the (market, timeframe) of active indicator strategies. It runs one stream per feed in use
(`exchanges/streams`: the venue's websocket) and tells it what to follow as that changes; a feed no longer in use is
stopped.

* Prices: the ticks of a feed are coalesced in memory and written every FLUSH seconds, one upsert for every market
  that moved (a burst of ticks costs one write per market per interval); then `price_arrived` sends the monitor of
  every account whose stop the new price crosses.
* Candles: a closed candle is stored (`candles_import`, once) and the strategies on that market and timeframe are
  evaluated at once (a task each); after every reconnect the missed candles are fetched over REST (`backfill`).
* Staleness is read from the prices themselves (trading.selectors.stale_markets): a market whose price is older
  than TRADING_MAX_PRICE_AGE_SECONDS refuses entries (rule `stale_price`), while exits still go out.

All database work runs on one thread of its own (Django's connections are per thread; the event loop never waits on
the database).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from django.conf import settings
from django.db import close_old_connections, connections

from exchanges.streams.base import ClosedCandle, PriceTick, StreamState
from trading.models import Position, PriceFeed, Strategy, VenueAccount
from trading.prices import accounts_priced_by, prices_store
from trading.tasks import price_arrived

log = logging.getLogger("strategies.feeds")


class Stream(Protocol):
    """What the role needs of a venue's stream (exchanges/streams/base.py)."""

    def set_subscriptions(self, symbols: set[str], candles: set[tuple[str, str]]) -> None: ...

    async def run(self, sink: Any) -> None: ...


StreamFactory = Callable[[str], Stream]  # feed name -> a new stream of that feed


@dataclass(frozen=True)
class Wanted:
    """What one feed must follow: markets (prices) and (market, timeframe) pairs (candles)."""

    symbols: frozenset[str]
    candles: frozenset[tuple[str, str]]


def wanted(feeds: Iterable[str]) -> dict[str, Wanted]:
    """Per streamable feed, the markets and candles in use (feeds with nothing in use are left out)."""
    from strategies.library import RULES

    found: dict[str, Wanted] = {}
    for feed in feeds:
        accounts = VenueAccount.objects.filter(accounts_priced_by(feed)).values("pk")
        active = Strategy.objects.filter(account__in=accounts, status=Strategy.Status.ACTIVE)
        symbols = set(active.values_list("symbol", flat=True))
        symbols |= set(Position.objects.filter(account__in=accounts).exclude(quantity=0).values_list(
            "symbol", flat=True))
        candles = set(active.filter(kind__in=list(RULES)).values_list("symbol", "timeframe"))
        if symbols or candles:
            found[feed] = Wanted(frozenset(symbols), frozenset(candles))
    return found


@dataclass
class _FeedSink:
    """Receives one feed's stream events on the event loop; the role writes them."""

    role: MarketDataRole
    feed: str
    pending: dict[str, PriceTick] = field(default_factory=dict)
    state: StreamState | None = None

    def ticks(self, ticks: list[PriceTick]) -> None:
        for tick in ticks:
            self.pending[tick.symbol] = tick  # the newest wins: one write per market per flush

    def candle(self, closed: ClosedCandle) -> None:
        self.role.spawn(self.role.db(candle_store, self.feed, closed))

    def state_changed(self, state: StreamState) -> None:
        if self.state is None or self.state.connected != state.connected:
            level = logging.INFO if state.connected else logging.WARNING
            log.log(level, "feed %s %s%s", self.feed, "connected" if state.connected else "disconnected",
                    f": {state.detail}" if state.detail else "")
        self.state = state

    def reconnected(self) -> None:
        want = self.role.current.get(self.feed)
        if want is not None and want.candles:
            self.role.spawn(self.role.db(backfill, self.feed, sorted(want.candles)))


class _SinkAdapter:
    """The sink object handed to a stream: `ticks`, `candle`, `state`, `reconnected`."""

    def __init__(self, sink: _FeedSink) -> None:
        self._sink = sink

    def ticks(self, ticks: list[PriceTick]) -> None:
        self._sink.ticks(ticks)

    def candle(self, closed: ClosedCandle) -> None:
        self._sink.candle(closed)

    def state(self, state: StreamState) -> None:
        self._sink.state_changed(state)

    def reconnected(self) -> None:
        self._sink.reconnected()


def prices_write(feed: str, ticks: list[PriceTick]) -> int:
    """Store a feed's newest prices (one upsert) and send the monitors whose stops they cross; return how many
    monitors were sent."""
    prices_store(feed, [(t.symbol, t.price, t.time) for t in ticks])
    return sum(price_arrived(t.symbol, t.price, feed) for t in ticks)


def candle_store(feed: str, closed: ClosedCandle) -> int:
    """Store one closed candle of a feed (once) and evaluate the strategies on it; return how many were new."""
    from strategies.services import candles_closed, candles_import

    inserted = candles_import(venue=feed, symbol=closed.symbol, timeframe=closed.timeframe, rows=[closed.candle],
                              by="marketdata").inserted
    if inserted:
        candles_closed(venue=feed, symbol=closed.symbol, timeframe=closed.timeframe,
                       open_times=[closed.candle.open_time])
    return inserted


def backfill(feed: str, pairs: list[tuple[str, str]]) -> int:
    """Fetch the closed candles a feed missed (at start, after every reconnect) over the venue's REST API into the
    store, from the last stored one on, and evaluate the strategies on the newest; return how many were new."""
    from strategies.download import candles_download
    from strategies.models import Candle
    from strategies.services import candles_closed

    venue, network, _ = feed_endpoint(feed)
    total = 0
    for symbol, timeframe in pairs:
        last = Candle.objects.filter(venue=feed, symbol=symbol, timeframe=timeframe).order_by(
            "-open_time").values_list("open_time", flat=True).first()
        try:
            result = candles_download(venue=venue, symbol=symbol, timeframe=timeframe, since=last, network=network,
                                      by="marketdata", store_as=feed, budget=BACKFILL_BUDGET_SECONDS)
        except Exception:  # noqa: BLE001 - one market's REST failure must not stop the others' backfill
            log.exception("backfill of %s %s %s failed; the next reconnect or the beat tries again",
                          feed, symbol, timeframe)
            continue
        total += result.walk.stored
        if result.walk.stored and result.walk.last is not None:
            candles_closed(venue=feed, symbol=symbol, timeframe=timeframe, open_times=[result.walk.last])
    return total


BACKFILL_BUDGET_SECONDS = 30.0  # one market's backfill at most: the rest goes on at the next reconnect or start


def streamable_feeds() -> list[str]:
    """The feeds this role can stream (the demo feed is `manage.py demo_feed`'s)."""
    return [PriceFeed.HYPERLIQUID, PriceFeed.HYPERLIQUID_TESTNET, PriceFeed.COINBASE]


def feed_endpoint(feed: str) -> tuple[str, str, str]:
    """(venue, network, REST base URL) of a feed: the venue's published URL, or `<VENUE>_PUBLIC_ENDPOINT` (a mirror,
    a loopback fake), the same setting the candle downloads use."""
    venue, _, testnet = feed.partition("-")
    network = "testnet" if testnet == "testnet" else "mainnet"
    override = (getattr(settings, "PUBLIC_ENDPOINTS", {}) or {}).get(venue)
    if override:
        return venue, network, override
    if venue == PriceFeed.HYPERLIQUID:
        from exchanges.hyperliquid import URLS

        return venue, network, URLS[network]
    if venue == PriceFeed.COINBASE and network == "mainnet":
        return venue, network, "https://api.coinbase.com"
    raise ValueError(f"no stream for price feed {feed!r} (streamed: {', '.join(streamable_feeds())})")


def stream_for(feed: str) -> Stream:
    """A new stream of a feed (the role's default factory)."""
    venue, _, url = feed_endpoint(feed)
    if venue == PriceFeed.HYPERLIQUID:
        from exchanges.streams.hyperliquid import HyperliquidStream

        return HyperliquidStream(base_url=url)
    if venue == PriceFeed.COINBASE:
        from exchanges.streams.coinbase import CoinbaseStream

        return CoinbaseStream(base_url=url)
    raise ValueError(f"no stream for price feed {feed!r}")


class MarketDataRole:
    """Runs the streams of the feeds in use and writes what they send (see the module's docstring)."""

    def __init__(self, *, streams: StreamFactory, feeds: list[str] | None = None,
                 flush_seconds: float | None = None, refresh_seconds: float | None = None) -> None:
        self.streams = streams
        self.feeds = feeds if feeds is not None else streamable_feeds()
        self.flush_seconds = settings.MARKETDATA_FLUSH_SECONDS if flush_seconds is None else flush_seconds
        self.refresh_seconds = settings.MARKETDATA_REFRESH_SECONDS if refresh_seconds is None else refresh_seconds
        self.current: dict[str, Wanted] = {}
        self.sinks: dict[str, _FeedSink] = {}
        self.running: dict[str, tuple[Stream, asyncio.Task[None]]] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="marketdata-db")
        self._spawned: set[asyncio.Task[Any]] = set()

    async def db(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a database function on the role's database thread."""
        def call() -> Any:
            close_old_connections()
            return fn(*args)

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)
        task.add_done_callback(_log_failure)

    async def refresh(self) -> None:
        """Read what is in use and start, retarget or stop the feeds' streams."""
        self.current = await self.db(wanted, self.feeds)
        for feed, want in self.current.items():
            if feed not in self.running:
                sink = self.sinks.setdefault(feed, _FeedSink(self, feed))
                stream = self.streams(feed)
                stream.set_subscriptions(set(want.symbols), set(want.candles))
                self.running[feed] = (stream, asyncio.ensure_future(stream.run(_SinkAdapter(sink))))
                log.info("feed %s: following %s market(s), %s candle series", feed, len(want.symbols),
                         len(want.candles))
                if want.candles:
                    self.spawn(self.db(backfill, feed, sorted(want.candles)))
            else:
                self.running[feed][0].set_subscriptions(set(want.symbols), set(want.candles))
        for feed in [f for f in self.running if f not in self.current]:
            _, task = self.running.pop(feed)
            task.cancel()
            log.info("feed %s: nothing in use any more, stopped", feed)

    async def flush(self) -> int:
        """Write every feed's pending prices; return how many markets were written."""
        written = 0
        for feed, sink in self.sinks.items():
            if not sink.pending:
                continue
            ticks, sink.pending = list(sink.pending.values()), {}
            await self.db(prices_write, feed, ticks)
            written += len(ticks)
        return written

    async def run(self, *, until: Callable[[], bool] = lambda: False) -> None:
        """Run until cancelled (or until `until()` is true, checked at each flush)."""
        next_refresh = next_beat = 0.0
        loop = asyncio.get_running_loop()
        try:
            while not until():
                if loop.time() >= next_beat:
                    self.spawn(self.db(heartbeat_write))
                    next_beat = loop.time() + HEARTBEAT_SECONDS
                if loop.time() >= next_refresh:
                    try:
                        await self.refresh()
                    except Exception:  # noqa: BLE001 - a database hiccup: streams go on, the next refresh retries
                        log.exception("market data: reading what is in use failed")
                    next_refresh = loop.time() + self.refresh_seconds
                try:
                    await self.flush()
                except Exception:  # noqa: BLE001 - the prices stay pending and go with the next flush
                    log.exception("market data: writing prices failed")
                await asyncio.sleep(self.flush_seconds)
            await self.flush()
        finally:
            await self.stop()

    async def stop(self) -> None:
        tasks = [task for _, task in self.running.values()] + list(self._spawned)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.running.clear()
        try:
            await self.db(connections.close_all)  # the database thread's connection goes with it
        finally:
            self._executor.shutdown(wait=True)


HEARTBEAT_SECONDS = 5.0


def heartbeat_path() -> Path:
    """This host's market-data heartbeat file (the container probe reads it: tradesite/healthcheck.py)."""
    return Path(settings.VAR_DIR) / "heartbeats" / f"marketdata@{socket.gethostname()}"


def heartbeat_write() -> None:
    """Say that the role's loop runs: the time, written atomically."""
    path = heartbeat_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_suffix(".part")
    part.write_text(f"{time.time():.3f}")
    os.replace(part, path)


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("market data: a write failed", exc_info=task.exception())
