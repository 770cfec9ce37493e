"""Coinbase Advanced Trade market data (prices, and candles built from trades) through ccxt.pro's `coinbase` class.

ccxt.pro speaks the websocket (`wss://advanced-trade-ws.coinbase.com`, one connection for every channel, JSON
subscribe frames, protocol pings, the venue's envelope `{channel, client_id, timestamp, sequence_num, events[]}`);
this module runs one watcher task per followed market and channel on top of it and turns the wire strings into
Decimal (the `info` dict of each ccxt ticker and trade, never its floats):

- Prices: `watch_ticker` (channel `ticker`, sent on every trade). Several ticker messages can arrive between two
  reads; the latest one ccxt holds is reported, stamped with the message's `timestamp` (a ticker has no time).
- Candles: ccxt has no `watch_ohlcv` for Coinbase, and the venue's `candles` channel is 5-minute only, so candles of
  every followed timeframe (a whole number of minutes, hours or days that divides a day, aligned to UTC like the
  venue's REST candles) are built here from `watch_trades` (channel `market_trades`). A trade is counted once (by
  `trade_id`; subscribing, and so every reconnect, replays the venue's most recent trades). A candle is reported
  once, when a trade of a later period arrives or, while the connection is healthy, `candle_grace` seconds after
  its period ended. A period without a trade has no candle: that is a quiet market, not an outage.
- A candle is never reported half-seen. The first trades of a subscription (the replay) show whether anything was
  missed: if they include a trade already counted, the candle being built carries on; if not (a fresh start, or a
  gap longer than the replay), every candle up to the period of the oldest replayed trade is left out, to the
  caller's REST backfill (`sink.reconnected()`).
- Reconnection: ccxt never reconnects by itself; a lost connection fails every pending watch with
  `ccxt.NetworkError`, and each watcher calls again after its back-off (`ReconnectPolicy`), which redials and
  resubscribes (ccxt shares one connection between the watchers). The first data on a new connection after a lost
  one calls `sink.reconnected()` once.
- Staleness is ours to detect: a socket that answers pings but sends nothing leaves a watch waiting forever. The
  `heartbeats` channel (one message a second; ccxt never subscribes it, and its own subscribe never resolves, so it
  runs as a task of its own) keeps a quiet connection talking, and each watch waits at most until `stale_after`
  seconds have passed without any message on the connection (pings and pongs do not count); then the stream
  reports `stale: no message for N s` and replaces the connection. A quiet market on a talking connection is not
  stale.
- A message ccxt cannot handle is logged and skipped (ccxt would otherwise raise inside its reader callback, which
  stops reading the socket for good); `sequence_num` jumps are counted and logged, not acted on (Coinbase documents
  no gap recovery; confirm on a live capture).
- One ccxt exchange per `run` (it binds to the running loop), closed when `run` is cancelled.

ccxt's own `un_watch_*` waits for an empty `subscriptions` reply, which never comes while other channels (the
heartbeats) stay subscribed: a market that is no longer followed has its watcher cancelled and an unsubscribe frame
sent on the live connection here.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, UTC
from decimal import Decimal
from typing import Any, TypeVar

import ccxt
import ccxt.pro

from exchanges.base import EPOCH, VenueCandle
from exchanges.streams.base import (
    Clock,
    ClosedCandle,
    MarketStream,
    PriceTick,
    ReconnectPolicy,
    Sleep,
    StreamSink,
    StreamState,
)

logger = logging.getLogger(__name__)

VENUE = "coinbase"
MAINNET_URL = "https://api.coinbase.com"
MAINNET_WS_URL = "wss://advanced-trade-ws.coinbase.com"
TICKER = "ticker"
TRADES = "market_trades"
HEARTBEATS = "heartbeats"
SEEN_TRADES = 5000  # trade ids remembered per market: more than ccxt keeps (tradesLimit 1000) plus a replay
SKIP_LOG_EVERY = 10.0  # seconds between two warnings about skipped messages
_TIMEFRAME = re.compile(r"^([1-9][0-9]*)([mhd])$")
_UNIT = {"m": 60, "h": 3600, "d": 86400}
_RFC3339 = re.compile(r"^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})$")
_MICRO = timedelta(microseconds=1)

_T = TypeVar("_T")


def timeframe_seconds(timeframe: str) -> int:
    """The length of a timeframe built from trades ("1m", "4h", "1d"); ValueError unless it divides a day."""
    match = _TIMEFRAME.match(timeframe)
    seconds = int(match[1]) * _UNIT[match[2]] if match else 0
    if not seconds or 86400 % seconds:
        raise ValueError(f"coinbase candles are built for whole minutes, hours or days dividing a day, "
                         f"not {timeframe!r}")
    return seconds


@dataclass(frozen=True, slots=True)
class _Trade:
    trade_id: str
    micros: int  # epoch microseconds
    price: Decimal
    size: Decimal  # base


@dataclass(slots=True)
class _Forming:
    start: int  # epoch seconds of the candle's open
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    first: tuple[int, int, str]  # order (_trade_order) of the trades giving the open and the close
    last: tuple[int, int, str]

    @classmethod
    def of(cls, start: int, trade: _Trade) -> _Forming:
        order = _trade_order(trade)
        return cls(start, trade.price, trade.price, trade.price, trade.price, trade.size, order, order)

    def add(self, trade: _Trade) -> None:
        """Count a trade of this candle's period (which may arrive after a later one)."""
        order = _trade_order(trade)
        self.high = max(self.high, trade.price)
        self.low = min(self.low, trade.price)
        self.volume += trade.size
        if order < self.first:
            self.first, self.open = order, trade.price
        if order > self.last:
            self.last, self.close = order, trade.price


@dataclass
class _Candles:
    """One market's candles built from its trades, for each followed timeframe."""

    symbol: str
    timeframes: dict[str, int]  # timeframe -> seconds
    forming: dict[str, _Forming] = field(default_factory=dict)
    done: dict[str, int] = field(default_factory=dict)  # timeframe -> start of the last candle reported or given up
    seen: dict[str, None] = field(default_factory=dict)  # trade ids counted, oldest first
    synced: bool = False  # the current subscription's replay has been checked against what was counted

    def resync(self, trades: list[_Trade]) -> bool:
        """Check a subscription's replay against the trades counted; False (candles given up) on a possible gap."""
        self.synced = True
        if not trades or any(t.trade_id in self.seen for t in trades):
            return True
        oldest = min(t.micros for t in trades)
        for timeframe, seconds in self.timeframes.items():
            start = _bucket(oldest, seconds)
            self.done[timeframe] = max(self.done.get(timeframe, start), start)
            forming = self.forming.get(timeframe)
            if forming is not None and forming.start <= self.done[timeframe]:
                del self.forming[timeframe]
        return False

    def add(self, trades: list[_Trade]) -> tuple[list[ClosedCandle], int, int]:
        """Count new trades; the candles they close, and how many were duplicates and how many late."""
        closed: list[ClosedCandle] = []
        duplicates = late = 0
        for trade in sorted(trades, key=_trade_order):
            if trade.trade_id in self.seen:
                duplicates += 1
                continue
            self.seen[trade.trade_id] = None
            if len(self.seen) > SEEN_TRADES:
                del self.seen[next(iter(self.seen))]
            counted = False
            for timeframe, seconds in self.timeframes.items():
                start = _bucket(trade.micros, seconds)
                if start <= self.done.get(timeframe, -1):
                    continue  # its candle was reported or given up
                forming = self.forming.get(timeframe)
                if forming is None or start > forming.start:
                    if forming is not None:
                        closed.append(self._close(timeframe, forming))
                    self.forming[timeframe] = _Forming.of(start, trade)
                elif start == forming.start:
                    forming.add(trade)
                else:
                    continue  # older than the candle being built: that one already superseded it
                counted = True
            late += not counted
        return closed, duplicates, late

    def due(self, now: float, grace: float) -> list[ClosedCandle]:
        """The candles whose period ended `grace` seconds before `now` (epoch seconds)."""
        return [self._close(timeframe, forming) for timeframe, forming in list(self.forming.items())
                if now >= forming.start + self.timeframes[timeframe] + grace]

    def _close(self, timeframe: str, forming: _Forming) -> ClosedCandle:
        del self.forming[timeframe]
        self.done[timeframe] = forming.start
        candle = VenueCandle(open_time=datetime.fromtimestamp(forming.start, UTC), open=forming.open,
                             high=forming.high, low=forming.low, close=forming.close, volume=forming.volume)
        return ClosedCandle(self.symbol, timeframe, candle)


class _Stale(Exception):
    """The connection sent nothing for `stale_after` seconds; the message is the state's detail."""


class _UnknownMarket(Exception):
    """The symbol is not one of the venue's markets."""


class _Exchange(ccxt.pro.coinbase):
    """ccxt.pro's coinbase with a hook on every message and a reader that survives a message it cannot handle."""

    def __init__(self, config: dict[str, Any], stream: CoinbaseStream) -> None:
        super().__init__(config)
        self._stream = stream

    def handle_message(self, client: Any, message: Any) -> None:
        try:
            if not self._stream._on_message(client, message):
                return
        except Exception:  # a bug of ours: ccxt still gets the message
            logger.exception("coinbase stream: reading a message failed")
        try:
            super().handle_message(client, message)
        except ccxt.ExchangeError as exc:  # an {"type": "error"} message: the venue refused a request
            logger.warning("coinbase stream: the venue answered an error: %s", exc)
        except Exception as exc:  # raising here would stop ccxt reading the socket
            self._stream._skip(f"a message ccxt could not handle ({type(exc).__name__}: {exc})", message)


class CoinbaseStream(MarketStream):
    """Coinbase's prices and trade-built candles for the followed markets; `base_url` is the REST URL.

    `ws_url` defaults to the venue's websocket for the venue's REST URL, and to the same host (ws[s]://, root path)
    for any other, such as a loopback fake. `stale_after`: seconds without any message before the connection is
    replaced; `candle_grace`: seconds after a candle's period before the clock closes it without a later trade;
    `poll_interval`: how often a trade watcher looks at the clock; `timeout`: seconds per REST request (the markets
    load) and per dial; `keep_alive`: seconds between ccxt's protocol pings (ccxt's default when None).
    """

    venue = VENUE

    def __init__(
        self,
        *,
        base_url: str,
        coins: Mapping[str, str] | None = None,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        reconnect: ReconnectPolicy | None = None,
        ws_url: str | None = None,
        stale_after: float = 10.0,
        candle_grace: float = 2.0,
        poll_interval: float = 1.0,
        timeout: float = 10.0,
        keep_alive: float | None = None,
    ) -> None:
        super().__init__(base_url=base_url, coins=coins, clock=clock, sleep=sleep, rng=rng, reconnect=reconnect)
        if min(stale_after, poll_interval, timeout) <= 0 or candle_grace < 0 or (keep_alive is not None
                                                                                 and keep_alive <= 0):
            raise ValueError("stale_after, poll_interval, timeout and keep_alive must be positive, "
                             "candle_grace not negative")
        if ws_url is None:
            ws_url = MAINNET_WS_URL if self.base_url == MAINNET_URL else "ws" + self.base_url[4:]
        if not ws_url.startswith(("ws://", "wss://")):
            raise ValueError(f"ws_url {ws_url!r} must start with ws:// or wss://")
        self.ws_url = ws_url
        self.stale_after = stale_after
        self.candle_grace = candle_grace
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.keep_alive = keep_alive
        self._symbols: set[str] = set()
        self._timeframes: dict[str, dict[str, int]] = {}  # symbol -> followed timeframes -> seconds
        self._candles: dict[str, _Candles] = {}
        self._by_product: dict[str, str] = {}  # venue product id -> our symbol (its candles)
        self._markets: dict[str, str] = {}  # our symbol -> ccxt's symbol, once the markets are loaded
        self._watchers: dict[tuple[str, str], asyncio.Task[None]] = {}  # (symbol, channel) -> its watcher
        self._background: set[asyncio.Task[Any]] = set()  # heartbeat subscribes and unsubscribe frames
        self._heartbeat: asyncio.Task[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sink: StreamSink | None = None
        self.exchange: Any = None  # the ccxt exchange while `run` runs (for diagnostics and tests)
        self._reported: StreamState | None = None
        self._client: Any = None  # the ccxt connection that last delivered data
        self._delivering = False  # that connection is (as far as we know) alive
        self._reconnect_due = False  # a connection that delivered was lost: tell the sink on the next one
        self._up_since = 0.0
        self._last_message = 0.0  # loop time of the last message on any connection
        self._sequence: tuple[Any, int] | None = None  # (connection, last sequence_num)
        self._loss: BaseException | None = None  # the error of the last loss reported
        self._skipped_since_log = 0
        self._skip_logged_at = -math.inf
        # Counters for metrics and the benchmark (this process's, since construction).
        self.messages = 0  # messages received
        self.skipped = 0  # malformed messages or values skipped
        self.connections = 0  # connections that delivered data
        self.trades = 0  # trades counted into candles
        self.duplicate_trades = 0  # trades seen again (a reconnect's replay) and not counted twice
        self.late_trades = 0  # trades for a candle already reported or given up
        self.sequence_gaps = 0  # sequence_num jumps on one connection

    def coin(self, symbol: str) -> str:
        """The venue's product id of one of our markets ("BTC/USD" -> "BTC-USD")."""
        found = self._coins.get(symbol)
        return found if found is not None else symbol.split(":", 1)[0].replace("/", "-")

    # -- what is followed -----------------------------------------------------------------------------------------

    def set_subscriptions(self, symbols: set[str], candles: set[tuple[str, str]]) -> None:
        """Follow the prices of `symbols` and the candles of (symbol, timeframe) pairs, replacing what came before."""
        symbols, candles = set(symbols), set(candles)
        for _, timeframe in candles:
            timeframe_seconds(timeframe)
        loop = self._loop
        if loop is not None and not _runs_on(loop):
            try:
                loop.call_soon_threadsafe(self._apply, symbols, candles)
                return
            except RuntimeError:
                pass  # the loop has closed: nothing runs, so the state is ours to change
        self._apply(symbols, candles)

    def _apply(self, symbols: set[str], candles: set[tuple[str, str]]) -> None:
        timeframes: dict[str, dict[str, int]] = {}
        for symbol, timeframe in sorted(candles):
            timeframes.setdefault(symbol, {})[timeframe] = timeframe_seconds(timeframe)
        for symbol in [s for s in self._candles if s not in timeframes]:
            del self._candles[symbol]
        now = self._clock()
        for symbol, followed in timeframes.items():
            builder = self._candles.get(symbol)
            if builder is None:
                self._candles[symbol] = _Candles(symbol, dict(followed))
                continue
            for timeframe in [t for t in builder.timeframes if t not in followed]:
                builder.forming.pop(timeframe, None)
                builder.done.pop(timeframe, None)
            for timeframe, seconds in followed.items():
                if timeframe not in builder.timeframes:  # its current period began before we counted its trades
                    builder.done[timeframe] = _bucket(int(now * 1_000_000), seconds)
            builder.timeframes = dict(followed)
        self._symbols, self._timeframes = symbols, timeframes
        self._by_product = {}
        for symbol in timeframes:
            product = self.coin(symbol)
            self._by_product[product] = symbol
            if product.endswith("-USDC"):  # the venue answers -USDC subscriptions with -USD data
                self._by_product.setdefault(product[:-1], symbol)
        if self.exchange is not None:
            self._sync_watchers()

    def _wanted(self) -> set[tuple[str, str]]:
        return {(s, TICKER) for s in self._symbols} | {(s, TRADES) for s in self._timeframes}

    def _sync_watchers(self) -> None:
        wanted = self._wanted()
        for key in [k for k in self._watchers if k not in wanted]:
            self._watchers.pop(key).cancel()
            self._unsubscribe(*key)
        for key in sorted(wanted - self._watchers.keys()):
            symbol, channel = key
            self._watchers[key] = asyncio.create_task(self._watch(symbol, channel),
                                                      name=f"coinbase stream {channel} {symbol}")

    def _unsubscribe(self, symbol: str, channel: str) -> None:
        """Tell the live connection to stop sending a channel of a market nobody follows any more."""
        ex, market = self.exchange, self._markets.get(symbol)
        client = ex.clients.get(self.ws_url) if ex is not None and ex.clients else None
        if client is None or market is None:
            return  # nothing subscribed on a live connection
        # Forget ccxt's record of it, so that following the market again subscribes again.
        client.subscriptions.pop(f"{channel}::{market}", None)
        frame = {"type": "unsubscribe", "product_ids": [ex.market(market)["id"]], "channel": channel}
        self._spawn(client.send(frame))

    # -- the stream -----------------------------------------------------------------------------------------------

    async def run(self, sink: StreamSink) -> None:
        """Connect, subscribe and report to `sink` until cancelled; reconnects by itself, never returns."""
        if self._loop is not None:
            raise RuntimeError("this stream is already running")
        self._loop = loop = asyncio.get_running_loop()
        self._sink = sink
        self._last_message = loop.time()
        self.exchange = self._new_exchange()
        try:
            self._sync_watchers()
            await loop.create_future()  # forever: the watchers do the work
        finally:
            tasks = [*self._watchers.values(), *self._background]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            try:
                await self.exchange.close()
            except Exception:
                logger.exception("coinbase stream: closing the ccxt exchange failed")
            self._watchers.clear()
            self._background.clear()
            self._heartbeat = None
            self.exchange = self._client = self._sink = self._loop = None
            self._delivering = self._reconnect_due = False
            self._reported = self._loss = None
            for builder in self._candles.values():
                builder.synced = False
                builder.forming.clear()  # what was forming may miss trades: never reported half-seen
            _call(sink.state, StreamState(False, "stopped"))

    def _new_exchange(self) -> Any:
        ws: dict[str, Any] = {"connectionTimeout": int(self.timeout * 1000)}
        if self.keep_alive is not None:
            ws["keepAlive"] = int(self.keep_alive * 1000)
        options: dict[str, Any] = {"adjustForTimeDifference": False, "maxRetriesOnFailure": 0, "ws": ws}
        ex = _Exchange({"enableRateLimit": False, "timeout": int(self.timeout * 1000), "options": options}, self)
        # In place: a new urls['api'] dict would lose 'ws' and the client would dial the venue itself.
        ex.urls["api"]["rest"] = self.base_url
        ex.urls["api"]["ws"] = self.ws_url
        ex.timeout_on_exit = 0
        return ex

    async def _watch(self, symbol: str, channel: str) -> None:
        """Follow one market's ticker or trades until cancelled, coming back after every loss."""
        assert self._loop is not None
        loop, ex, policy = self._loop, self.exchange, self.reconnect_policy
        attempt = 0
        started = loop.time()
        while True:
            try:
                market = await self._market(ex, symbol)
                while True:
                    if self._delivering and self._clock() - self._up_since >= policy.healthy_after:
                        attempt = 0
                    self._keep_heartbeats(ex)
                    deadline = max(self._last_message, started) + self.stale_after
                    wake = deadline if channel == TICKER else min(deadline, loop.time() + self.poll_interval)
                    try:
                        # In this task, not in wait_for's own: messages handled before a new task would first run
                        # would resolve no future, and be handed over only with the next one.
                        async with asyncio.timeout_at(wake):
                            if channel == TICKER:
                                result = await ex.watch_ticker(market)
                            else:
                                result = await ex.watch_trades(market)
                    except TimeoutError:
                        if loop.time() >= max(self._last_message, started) + self.stale_after:
                            raise _Stale(self._recycle(ex)) from None
                        if channel == TRADES:
                            self._close_due(symbol)
                        continue
                    if channel == TICKER:
                        self._on_ticker(ex, symbol, result)
                    else:
                        self._on_trades(symbol, result)
            except asyncio.CancelledError as exc:
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise
                self._lost(exc, "the connection was closed")  # ccxt cancelled the watch (its client closed)
            except _UnknownMarket as exc:
                logger.error("coinbase stream: %s; not followed", exc)
                return
            except _Stale:
                pass  # reported, and the connection failed, by _recycle
            except ccxt.NetworkError as exc:
                self._lost(exc, _describe(exc))
            except ccxt.BaseError as exc:  # not the connection's fault (the markets load was refused, ...)
                logger.warning("coinbase stream: %s %s: %s", channel, symbol, _describe(exc))
                if not self._delivering:
                    self._report(StreamState(False, f"error: {_describe(exc)}"))
            except Exception as exc:  # a bug of ours: logged, and the watcher carries on after its back-off
                logger.exception("coinbase stream: unexpected error in the %s watcher of %s", channel, symbol)
                if not self._delivering:
                    self._report(StreamState(False, f"error: {_describe(exc)}"))
            delay = policy.delay(attempt, self._rng)
            attempt += 1
            logger.info("coinbase stream: %s %s again in %.2f s", channel, symbol, delay)
            await self._sleep(delay)
            started = loop.time()

    async def _market(self, ex: Any, symbol: str) -> str:
        """ccxt's symbol for one of ours, loading the venue's markets the first time."""
        found = self._markets.get(symbol)
        if found is not None:
            return found
        await ex.load_markets()
        markets = (ex.markets_by_id or {}).get(self.coin(symbol)) or []
        if not markets and symbol in (ex.markets or {}):
            markets = [ex.markets[symbol]]
        if not markets:
            raise _UnknownMarket(f"{symbol} ({self.coin(symbol)}) is not a coinbase market")
        found = str(markets[0]["symbol"])
        self._markets[symbol] = found
        return found

    def _keep_heartbeats(self, ex: Any) -> None:
        """Subscribe the heartbeats channel on the live connection if it is not (ccxt's subscribe never resolves)."""
        client = ex.clients.get(self.ws_url) if ex.clients else None
        if client is None or HEARTBEATS in client.subscriptions:
            return
        if self._heartbeat is not None and not self._heartbeat.done():
            return
        self._heartbeat = self._spawn(ex.subscribe(HEARTBEATS, False))

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background_done)
        return task

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.debug("coinbase stream: background call ended: %s", task.exception())

    def _recycle(self, ex: Any) -> BaseException:
        """Fail the live connection (a stale one answers pings, so ccxt keeps it): every watch redials.

        The error every pending watch now fails with, so that the loss is reported once, as stale.
        """
        error = ccxt.RequestTimeout(f"stale: no message for {self.stale_after:g} s")
        client = ex.clients.get(self.ws_url) if ex.clients else None
        self._loss = error
        self._report_loss(f"stale: no message for {self.stale_after:g} s")
        if client is not None and client.isConnected:
            client.on_error(error)
        return error

    def _delivered(self, client: Any) -> None:
        """The venue sent something on a connection: note a new one (streaming; reconnected after a lost one)."""
        if self._delivering and client is self._client:
            return
        ex = self.exchange
        if ex is None or (ex.clients or {}).get(self.ws_url) is not client:
            return  # a connection already given up (closing): what it still hands over proves nothing
        self._client, self._delivering, self._up_since = client, True, self._clock()
        self.connections += 1
        self._keep_heartbeats(ex)
        self._report(StreamState(True, "streaming"))
        if self._reconnect_due and self._sink is not None:
            self._reconnect_due = False
            logger.info("coinbase stream: resubscribed on a new connection to %s", self.ws_url)
            _call(self._sink.reconnected)

    def _lost(self, error: BaseException, reason: str) -> None:
        """A watch failed with its connection: report each loss once (ccxt fails every watch with one error)."""
        if error is self._loss:
            return
        self._loss = error
        self._report_loss(f"disconnected: {reason}" if self._delivering else f"connect failed: {reason}")

    def _report_loss(self, detail: str) -> None:
        if self._delivering:
            self._delivering = False
            self._reconnect_due = True
            for builder in self._candles.values():
                builder.synced = False
            logger.warning("coinbase stream: %s (%s)", detail, self.ws_url)
        self._report(StreamState(False, detail))

    def _report(self, state: StreamState) -> None:
        if state != self._reported and self._sink is not None:
            self._reported = state
            _call(self._sink.state, state)

    # -- messages -------------------------------------------------------------------------------------------------

    def _on_message(self, client: Any, message: Any) -> bool:
        """Every message, before ccxt: the connection's liveness, its sequence, the trade replays; False to drop it."""
        if self._loop is not None:
            self._last_message = self._loop.time()
        self.messages += 1
        if not isinstance(message, dict):
            self._skip("a message that is not a JSON object", message)
            return False
        sequence = message.get("sequence_num")
        if isinstance(sequence, int) and not isinstance(sequence, bool):
            if self._sequence is not None and self._sequence[0] is client and sequence > self._sequence[1] + 1:
                self.sequence_gaps += 1
                logger.warning("coinbase stream: sequence_num jumped from %d to %d", self._sequence[1], sequence)
            self._sequence = (client, sequence)
        if isinstance(message.get("channel"), str):
            self._delivered(client)
        if message.get("channel") == TRADES:
            try:
                self._on_replay(message.get("events"))
            except (ValueError, TypeError, KeyError, AttributeError, ArithmeticError) as exc:
                self._skip(f"a malformed market_trades message ({exc})", message)
        return True

    def _on_replay(self, events: Any) -> None:
        """Check the first trades of a subscription against the trades counted (see the module's docstring)."""
        for event in events or []:
            trades = event.get("trades") or []
            products = {str(t["product_id"]) for t in trades}
            for product in products:
                symbol = self._by_product.get(product)
                builder = self._candles.get(symbol) if symbol is not None else None
                if builder is None or (builder.synced and event.get("type") != "snapshot"):
                    continue
                rows = [self._trade(t) for t in trades if t.get("product_id") == product]
                parsed = [row for row in rows if row is not None]
                if not builder.resync(parsed):
                    logger.info("coinbase stream: %s trades replayed from %s on do not reach the last trade "
                                "counted; its candles up to then are left to the REST backfill", symbol,
                                EPOCH + min(t.micros for t in parsed) * _MICRO)

    def _on_ticker(self, ex: Any, symbol: str, result: Any) -> None:
        latest = (ex.tickers or {}).get(result.get("symbol")) or result  # the newest, if several came at once
        info = latest.get("info") or {}
        try:
            price = _positive(info["price"])
            stamp = latest.get("datetime")
            moment = _utc(stamp) if stamp else datetime.fromtimestamp(self._clock(), UTC)
        except (ValueError, TypeError, KeyError, ArithmeticError) as exc:
            self._skip(f"a malformed ticker ({exc})", info)
            return
        if self._sink is not None:
            _call(self._sink.ticks, [PriceTick(symbol, price, moment)])

    def _on_trades(self, symbol: str, result: Any) -> None:
        builder = self._candles.get(symbol)
        if builder is None or self._sink is None:
            return
        products = {self.coin(symbol)}
        products |= {p[:-1] for p in products if p.endswith("-USDC")}  # -USDC is answered with -USD data
        wire = [t.get("info") or {} for t in result or []]
        rows = [self._trade(t) for t in wire if t.get("product_id") in products]
        parsed = [row for row in rows if row is not None]
        closed, duplicates, late = builder.add(parsed)
        self.trades += len(parsed) - duplicates - late
        self.duplicate_trades += duplicates
        self.late_trades += late
        for candle in closed:
            _call(self._sink.candle, candle)

    def _close_due(self, symbol: str) -> None:
        """Close by the clock the candles whose period ended, while the connection is known to be complete."""
        builder = self._candles.get(symbol)
        if builder is None or self._sink is None or not (builder.synced and self._delivering):
            return
        for candle in builder.due(self._clock(), self.candle_grace):
            _call(self._sink.candle, candle)

    def _trade(self, wire: Mapping[str, Any]) -> _Trade | None:
        try:
            trade_id = wire["trade_id"]
            if not isinstance(trade_id, str) or not trade_id:
                raise ValueError(f"trade_id {trade_id!r}")
            moment = _utc(wire["time"])
            return _Trade(trade_id, (moment - EPOCH) // _MICRO, _positive(wire["price"]), _positive(wire["size"]))
        except (ValueError, TypeError, KeyError, ArithmeticError) as exc:
            self._skip(f"a malformed trade ({exc})", wire)
            return None

    def _skip(self, what: str, raw: object) -> None:
        self.skipped += 1
        self._skipped_since_log += 1
        now = time.monotonic()
        if now - self._skip_logged_at >= SKIP_LOG_EVERY:
            logger.warning("coinbase stream: skipped %s (%d skipped since the last warning): %.200r",
                           what, self._skipped_since_log, raw)
            self._skip_logged_at, self._skipped_since_log = now, 0


def _bucket(micros: int, seconds: int) -> int:
    """The start (epoch seconds) of the period of `seconds` holding the time `micros` (epoch microseconds)."""
    return micros // 1_000_000 // seconds * seconds


def _trade_order(trade: _Trade) -> tuple[int, int, str]:
    return trade.micros, int(trade.trade_id) if trade.trade_id.isdigit() else 0, trade.trade_id


def _utc(text: object) -> datetime:
    """An RFC 3339 time as the venue writes it (nanoseconds, "Z" or an offset) as an aware UTC datetime."""
    if not isinstance(text, str):
        raise TypeError(f"time {text!r} is not a string")
    match = _RFC3339.match(text)
    if match is None:
        raise ValueError(f"time {text!r} is not RFC 3339")
    fraction = (match[3] or "").ljust(6, "0")[:6]
    zone = "+00:00" if match[4] == "Z" else match[4]
    return datetime.fromisoformat(f"{match[1]}T{match[2]}.{fraction}{zone}").astimezone(UTC)


def _positive(value: object) -> Decimal:
    """A wire number (a string) as a positive finite Decimal."""
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a number string")
    result = Decimal(value)
    if not result.is_finite() or result <= 0:
        raise ValueError(f"{value!r} is not a positive number")
    return result


def _call(method: Callable[..., _T], *args: object) -> None:
    """Call a sink method; its failure is logged, not propagated (the socket must keep being read)."""
    try:
        method(*args)
    except Exception:
        logger.exception("coinbase stream: the sink's %s() failed", getattr(method, "__name__", method))


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _runs_on(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
