"""Hyperliquid market data (mids and candles) over the venue's websocket, with our own asyncio client.

Not the SDK's `WebsocketManager`: it runs websocket-client in a thread of its own (callbacks on that thread, a
second non-daemon thread for pings), never reconnects (after a server close the thread ends silently and the
subscriptions are lost: hyperliquid-python-sdk issue #191) and cannot tell a silent feed from a quiet one. This
module speaks the same protocol on the market-data role's event loop instead
(https://hyperliquid.gitbook.io/hyperliquid-docs/for-developers/api/websocket):

- `{"method": "subscribe", "subscription": {"type": "allMids"}}` and `{"type": "candle", "coin", "interval"}`
  (`unsubscribe` likewise); the server acks on channel `subscriptionResponse`, then sends `{channel, data}`:
  `allMids` data `{mids: {coin: px}}` (every coin at once: filtered here to the followed markets), `candle` data
  `{t, T, s, i, o, c, h, l, v, n}` (the whole candle so far, `t` its open and `T` its close in epoch ms).
  Numbers arrive as strings and become Decimal here; a number the venue sends unquoted is read exactly
  (`parse_float=Decimal`), never through a float.
- The server cuts a client that sends nothing for 60 s: `{"method": "ping"}` goes out every `ping_interval`
  (50 s, as the SDK) and the answer is `{"channel": "pong"}`; a ping still unanswered when the next one is due
  recycles the socket. Protocol-level pings are off (the venue documents only its own heartbeat), and they would
  prove nothing anyway: a server whose feed has stopped still answers them.
- Staleness is ours to detect: while mids are followed, `stale_after` seconds (10) without a data message
  (pongs and acks do not count) reports `stale: no message for N s` and recycles the socket. With candles only,
  a quiet market sends nothing for minutes, so only `candle_stale_after` (off by default) and the ping apply.
- A candle is closed only when the venue starts the next one for the same coin and interval (a later `t`); it
  is reported once. What was forming when a connection was lost is dropped, not reported: updates may have been
  missed. The venue's next message for that candle (it resends the whole candle) starts it again; otherwise the
  caller's REST backfill after `sink.reconnected()` fills it.
- Reconnection: capped exponential back-off with full jitter (`ReconnectPolicy`: 0.5 s doubling to 30 s, reset
  after a connection that stayed up a minute); everything followed is subscribed again on each new connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.uri import parse_uri

from exchanges.base import VenueCandle, ms_to_datetime
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

VENUE = "hyperliquid"
# The candle intervals the venue serves (docs "Subscriptions": candle interval).
INTERVALS = ("1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "8h", "12h", "1d", "3d", "1w", "1M")
PING = json.dumps({"method": "ping"})
WELCOME = "Websocket connection established."  # the venue's first frame, plain text (the SDK skips it too)
SKIP_LOG_EVERY = 10.0  # seconds between two warnings about skipped messages

_T = TypeVar("_T")
_Key = tuple[str, str]  # (coin, interval)


class _Recycle(Exception):
    """The connection must be replaced (a stale feed, a missing pong); the message is the state's detail."""


@dataclass
class _Connection:
    """What one connection has seen: its last data message (loop time), whether it streams, a ping in flight."""

    last_data: float
    streaming: bool = False
    pong_due: bool = False


class HyperliquidStream(MarketStream):
    """Hyperliquid's mids and candles for the followed markets; `base_url` is the REST URL (http[s]://host)."""

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
        stale_after: float = 10.0,
        candle_stale_after: float | None = None,
        ping_interval: float = 50.0,
        open_timeout: float = 10.0,
        close_timeout: float = 2.0,
    ) -> None:
        super().__init__(base_url=base_url, coins=coins, clock=clock, sleep=sleep, rng=rng, reconnect=reconnect)
        if stale_after <= 0 or ping_interval <= 0 or (candle_stale_after is not None and candle_stale_after <= 0):
            raise ValueError("stale_after, candle_stale_after and ping_interval must be positive")
        # As the SDK's WebsocketManager: http://host -> ws://host/ws, https://host -> wss://host/ws.
        self.ws_url = "ws" + self.base_url[4:] + "/ws"
        parse_uri(self.ws_url)  # a bad URL fails here, not on every reconnect
        self.stale_after = stale_after
        self.candle_stale_after = candle_stale_after
        self.ping_interval = ping_interval
        self.open_timeout = open_timeout
        self.close_timeout = close_timeout
        self._mid_symbols: dict[str, str] = {}  # coin -> our symbol, for the followed prices
        self._candle_symbols: dict[_Key, str] = {}  # (coin, interval) -> our symbol, for the followed candles
        self._last_mids: dict[str, tuple[object, Decimal]] = {}  # coin -> (its last wire value, that as Decimal)
        self._forming: dict[_Key, tuple[int, VenueCandle]] = {}  # (coin, interval) -> (open ms, candle so far)
        self._emitted: dict[_Key, int] = {}  # (coin, interval) -> open ms of the last candle reported closed
        self._outbox: asyncio.Queue[str] | None = None  # frames for the live socket's writer
        self._loop: asyncio.AbstractEventLoop | None = None
        self._skipped_since_log = 0
        self._skip_logged_at = -math.inf
        # Counters for metrics and the benchmark (this process's, since construction).
        self.messages = 0  # frames received
        self.skipped = 0  # malformed messages or values skipped
        self.connections = 0  # connections opened

    # -- what is followed ---------------------------------------------------------------------------------------

    def set_subscriptions(self, symbols: set[str], candles: set[tuple[str, str]]) -> None:
        """Follow the prices of `symbols` and the candles of (symbol, interval) pairs, replacing what came before."""
        symbols, candles = set(symbols), set(candles)
        for _, interval in candles:
            if interval not in INTERVALS:
                raise ValueError(f"hyperliquid has no {interval!r} candles; it has {', '.join(INTERVALS)}")
        loop = self._loop
        if loop is not None and not _runs_on(loop):
            try:
                loop.call_soon_threadsafe(self._apply, symbols, candles)
                return
            except RuntimeError:
                pass  # the loop has closed: nothing runs, so the state is ours to change
        self._apply(symbols, candles)

    def _apply(self, symbols: set[str], candles: set[tuple[str, str]]) -> None:
        before = self._subscriptions()
        self._mid_symbols = {self.coin(symbol): symbol for symbol in sorted(symbols)}
        self._candle_symbols = {(self.coin(symbol), interval): symbol for symbol, interval in sorted(candles)}
        for key in [key for key in self._forming if key not in self._candle_symbols]:
            del self._forming[key]
        for coin in [coin for coin in self._last_mids if coin not in self._mid_symbols]:
            del self._last_mids[coin]
        after = self._subscriptions()
        if self._outbox is not None:
            for gone in sorted(before.keys() - after.keys()):
                self._outbox.put_nowait(_frame("unsubscribe", before[gone]))
            for new in sorted(after.keys() - before.keys()):
                self._outbox.put_nowait(_frame("subscribe", after[new]))

    def _subscriptions(self) -> dict[tuple[str, ...], dict[str, str]]:
        subs: dict[tuple[str, ...], dict[str, str]] = {}
        if self._mid_symbols:
            subs[("allMids",)] = {"type": "allMids"}
        for coin, interval in self._candle_symbols:
            subs[("candle", coin, interval)] = {"type": "candle", "coin": coin, "interval": interval}
        return subs

    def _stale_limit(self) -> float | None:
        return self.stale_after if self._mid_symbols else self.candle_stale_after

    # -- the connection -------------------------------------------------------------------------------------------

    async def run(self, sink: StreamSink) -> None:
        """Connect, subscribe and report to `sink` until cancelled; reconnects by itself, never returns."""
        if self._loop is not None:
            raise RuntimeError("this stream is already running")
        self._loop = asyncio.get_running_loop()
        policy = self.reconnect_policy
        attempt = 0
        opened_before = False
        try:
            while True:
                up_for = await self._connection(sink, reconnect=opened_before)
                if up_for is not None:
                    opened_before = True
                    if up_for >= policy.healthy_after:
                        attempt = 0
                delay = policy.delay(attempt, self._rng)
                attempt += 1
                logger.info("hyperliquid stream: reconnecting to %s in %.2f s", self.ws_url, delay)
                await self._sleep(delay)
        finally:
            self._outbox = None
            self._loop = None
            self._forming.clear()
            _call(sink.state, StreamState(False, "stopped"))

    async def _connection(self, sink: StreamSink, *, reconnect: bool) -> float | None:
        """One connection, from dial to loss; how long it stayed up (clock seconds), None if it never opened."""
        try:
            ws = await connect(self.ws_url, open_timeout=self.open_timeout, close_timeout=self.close_timeout,
                               ping_interval=None, max_size=2 ** 22)
        except (OSError, TimeoutError, WebSocketException) as exc:
            detail = f"connect failed: {_describe(exc)}"
            logger.warning("hyperliquid stream: %s (%s)", detail, self.ws_url)
            _call(sink.state, StreamState(False, detail))
            return None
        except Exception as exc:  # not a network failure we know of: logged in full, then retried like one
            detail = f"connect failed: {_describe(exc)}"
            logger.error("hyperliquid stream: %s (%s)", detail, self.ws_url, exc_info=exc)
            _call(sink.state, StreamState(False, detail))
            return None
        opened_at = self._clock()
        self.connections += 1
        try:
            detail = await self._session(ws, sink, reconnect=reconnect)
            logger.warning("hyperliquid stream: %s (%s)", detail, self.ws_url)
            _call(sink.state, StreamState(False, detail))
        finally:
            self._outbox = None
            self._forming.clear()  # what was forming may have missed updates: never reported half-formed
            await ws.close()
        return self._clock() - opened_at

    async def _session(self, ws: ClientConnection, sink: StreamSink, *, reconnect: bool) -> str:
        """Subscribe, then read and write until the connection must go; the reason it went."""
        loop = asyncio.get_running_loop()
        self._forming.clear()
        outbox: asyncio.Queue[str] = asyncio.Queue()
        initial = [_frame("subscribe", sub) for _, sub in sorted(self._subscriptions().items())]
        self._outbox = outbox  # from here on set_subscriptions sends its difference through the writer
        conn = _Connection(last_data=loop.time())
        try:
            for frame in initial:
                await ws.send(frame)
        except ConnectionClosed as exc:
            return f"disconnected: {_describe(exc)}"
        if reconnect:
            _call(sink.reconnected)
        detail = ""
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._read(ws, sink, conn))
                tasks.create_task(self._write(ws, outbox, conn))
        except* _Recycle as group:
            detail = str(group.exceptions[0])
        except* ConnectionClosed as group:
            detail = detail or f"disconnected: {_describe(group.exceptions[0])}"
        except* Exception as group:  # a bug of ours: logged, and the stream carries on with a new connection
            logger.error("hyperliquid stream: unexpected error", exc_info=group.exceptions[0])
            detail = detail or f"error: {_describe(group.exceptions[0])}"
        return detail or "disconnected"

    async def _read(self, ws: ClientConnection, sink: StreamSink, conn: _Connection) -> None:
        loop = asyncio.get_running_loop()
        while True:
            limit = self._stale_limit()
            if limit is None:
                raw = await ws.recv()
            else:
                try:
                    async with asyncio.timeout_at(conn.last_data + limit):
                        raw = await ws.recv()
                except TimeoutError:
                    raise _Recycle(f"stale: no message for {limit:g} s") from None
            self.messages += 1
            self._handle(raw, sink, conn, loop)

    async def _write(self, ws: ClientConnection, outbox: asyncio.Queue[str], conn: _Connection) -> None:
        loop = asyncio.get_running_loop()
        next_ping = loop.time() + self.ping_interval
        while True:
            try:
                async with asyncio.timeout_at(next_ping):
                    frame = await outbox.get()
            except TimeoutError:
                if conn.pong_due:
                    raise _Recycle(f"no pong for {self.ping_interval:g} s") from None
                conn.pong_due = True
                frame = PING
                next_ping = loop.time() + self.ping_interval
            await ws.send(frame)

    # -- messages -------------------------------------------------------------------------------------------------

    def _handle(self, raw: str | bytes, sink: StreamSink, conn: _Connection, loop: asyncio.AbstractEventLoop) -> None:
        if raw == WELCOME:
            return
        try:
            message = json.loads(raw, parse_float=Decimal)
            channel = message["channel"]
        except (ValueError, TypeError, KeyError):
            self._skip("not a venue message", raw)
            return
        if channel == "allMids" or channel == "candle":
            conn.last_data = loop.time()
            try:
                if channel == "allMids":
                    self._on_mids(message["data"]["mids"], sink)
                else:
                    self._on_candle(message["data"], sink)
            except (ValueError, TypeError, KeyError, AttributeError, ArithmeticError):
                self._skip(f"a malformed {channel} message", raw)
        elif channel == "pong":
            conn.pong_due = False
            return
        elif channel == "subscriptionResponse":
            logger.debug("hyperliquid stream: %s", message.get("data"))
        elif channel == "error":
            logger.warning("hyperliquid stream: the venue refused a request: %.300s", message.get("data"))
            return
        else:
            return
        if not conn.streaming:  # the first ack or data message on this connection
            conn.streaming = True
            logger.info("hyperliquid stream: streaming from %s", self.ws_url)
            _call(sink.state, StreamState(True, "streaming"))

    def _on_mids(self, mids: Mapping[str, Any], sink: StreamSink) -> None:
        if not isinstance(mids, Mapping):
            raise TypeError("mids is not an object")
        now = ms_to_datetime(round(self._clock() * 1000))
        ticks: list[PriceTick] = []
        last = self._last_mids
        for coin, symbol in self._mid_symbols.items():
            value = mids.get(coin)
            if value is None:
                continue
            seen = last.get(coin)
            if seen is not None and seen[0] == value:
                price = seen[1]  # unchanged since the last block: most coins, most of the time
            else:
                try:
                    price = _positive(value)
                except (ValueError, TypeError, ArithmeticError):
                    self._skip(f"allMids {coin}", value)
                    continue
                last[coin] = (value, price)
            ticks.append(PriceTick(symbol, price, now))
        if ticks:
            _call(sink.ticks, ticks)

    def _on_candle(self, data: Mapping[str, Any], sink: StreamSink) -> None:
        key = (data["s"], data["i"])
        symbol = self._candle_symbols.get(key)
        if symbol is None:
            return  # not followed (any more): a frame sent before our unsubscribe reached the venue
        start = data["t"]
        if not isinstance(start, int) or isinstance(start, bool):
            raise TypeError(f"candle t {start!r} is not epoch milliseconds")
        high, low = _positive(data["h"]), _positive(data["l"])
        if high < low:
            raise ValueError(f"candle high {high} below low {low}")
        candle = VenueCandle(open_time=ms_to_datetime(start), open=_positive(data["o"]), high=high, low=low,
                             close=_positive(data["c"]), volume=_non_negative(data["v"]))
        forming = self._forming.get(key)
        if forming is None:
            if start > self._emitted.get(key, -1):
                self._forming[key] = (start, candle)
            return
        forming_start, forming_candle = forming
        if start == forming_start:
            self._forming[key] = (start, candle)
        elif start > forming_start:
            self._forming[key] = (start, candle)
            if forming_start > self._emitted.get(key, -1):
                self._emitted[key] = forming_start
                _call(sink.candle, ClosedCandle(symbol, key[1], forming_candle))
        # an older candle than the forming one arrived late: the forming one already superseded it

    def _skip(self, what: str, raw: object) -> None:
        self.skipped += 1
        self._skipped_since_log += 1
        now = time.monotonic()
        if now - self._skip_logged_at >= SKIP_LOG_EVERY:
            logger.warning("hyperliquid stream: skipped %s (%d skipped since the last warning): %.200r",
                           what, self._skipped_since_log, raw)
            self._skip_logged_at, self._skipped_since_log = now, 0


def _frame(method: str, subscription: Mapping[str, str]) -> str:
    return json.dumps({"method": method, "subscription": dict(subscription)})


def _decimal(value: object) -> Decimal:
    """A wire number (a string, or an exact Decimal/int parsed from an unquoted one) as a finite Decimal."""
    if isinstance(value, str | Decimal) or (isinstance(value, int) and not isinstance(value, bool)):
        result = Decimal(value)
    else:
        raise TypeError(f"{value!r} is not a number")
    if not result.is_finite():
        raise ValueError(f"{value!r} is not finite")
    return result


def _positive(value: object) -> Decimal:
    result = _decimal(value)
    if result <= 0:
        raise ValueError(f"{value!r} is not positive")
    return result


def _non_negative(value: object) -> Decimal:
    result = _decimal(value)
    if result < 0:
        raise ValueError(f"{value!r} is negative")
    return result


def _call(method: Callable[..., _T], *args: object) -> None:
    """Call a sink method; its failure is logged, not propagated (the socket must keep being read)."""
    try:
        method(*args)
    except Exception:
        logger.exception("hyperliquid stream: the sink's %s() failed", getattr(method, "__name__", method))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, InvalidStatus):
        return f"HTTP {exc.response.status_code}"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _runs_on(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
