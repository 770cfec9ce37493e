"""The market-data stream interface every venue stream implements, and the events it hands to its sink.

A stream is one long-running coroutine (`run`) on the market-data role's event loop: it connects, subscribes to
what it was told to follow (`set_subscriptions`, callable while it runs), and calls the sink with prices, closed
candles and its connection state until it is cancelled. It reconnects by itself (capped exponential back-off with
full jitter) and, after every reconnect, calls `sink.reconnected()` so that the caller backfills candles over REST:
a stream never guesses what it missed.

The sink's methods are called on the stream's event loop and must return quickly (hand the work to a queue or a
coalescing buffer): a sink that blocks stalls the socket. An exception raised by the sink is logged, not
propagated, so that one bad consumer call does not tear the connection down.
"""

from __future__ import annotations

import abc
import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Protocol

from exchanges.base import VenueCandle

Clock = Callable[[], float]  # epoch seconds, as time.time
Sleep = Callable[[float], Awaitable[None]]  # as asyncio.sleep


@dataclass(frozen=True, slots=True)
class PriceTick:
    """The latest price of a market (quote per base) as the venue streamed it; time aware UTC."""

    symbol: str
    price: Decimal
    time: datetime


@dataclass(frozen=True, slots=True)
class ClosedCandle:
    """A candle that will not change any more: the venue has started the next one on the same market and timeframe."""

    symbol: str
    timeframe: str
    candle: VenueCandle


@dataclass(frozen=True, slots=True)
class StreamState:
    """The stream's connection: `connected` once data flows, False (with the reason) while it does not."""

    connected: bool
    detail: str


class StreamSink(Protocol):
    """What a stream reports to; every method is called on the stream's event loop and must not block."""

    def ticks(self, ticks: list[PriceTick]) -> None:
        """Prices of the followed markets, one batch per venue message."""

    def candle(self, candle: ClosedCandle) -> None:
        """A closed candle of a followed (market, timeframe), once each."""

    def state(self, state: StreamState) -> None:
        """The connection changed: streaming, stale, disconnected, refused, stopped."""

    def reconnected(self) -> None:
        """A new connection is subscribed after a lost one: backfill the followed candles over REST."""


@dataclass(frozen=True)
class ReconnectPolicy:
    """Capped exponential back-off with full jitter (AWS "Exponential Backoff and Jitter"); seconds.

    The draw before reconnect attempt n (0 for the first after a loss) is uniform in [0, min(max_delay,
    base_delay * 2**n)]; n goes back to 0 once a connection has stayed up for `healthy_after` seconds.
    """

    base_delay: float = 0.5
    max_delay: float = 30.0
    healthy_after: float = 60.0

    def ceiling(self, attempt: int) -> float:
        """The largest wait before reconnect attempt `attempt` (0 for the first)."""
        return min(self.max_delay, self.base_delay * (2 ** min(attempt, 62)))

    def delay(self, attempt: int, rng: random.Random) -> float:
        """The wait before reconnect attempt `attempt`, drawn with full jitter."""
        return rng.uniform(0.0, self.ceiling(attempt))


def default_coin(symbol: str) -> str:
    """The venue's name of a market from our ccxt-style symbol: its base asset ("BTC/USDC:USDC" -> "BTC")."""
    return symbol.split("/", 1)[0]


class MarketStream(abc.ABC):
    """One venue's market-data stream. Built with the venue's REST base URL; time and waits are injectable.

    `coins` maps our symbols to the venue's market names where the default rule (the symbol's base asset) is not
    right; `clock` stamps prices that the venue sends without a time (epoch seconds); `sleep` waits out the
    reconnect back-off (tests inject a recorder); `rng` draws the jitter.
    """

    venue: str = ""

    def __init__(
        self,
        *,
        base_url: str,
        coins: Mapping[str, str] | None = None,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        reconnect: ReconnectPolicy | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url {base_url!r} must start with http:// or https://")
        self.base_url = base_url.rstrip("/")
        self._coins = dict(coins or {})
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.reconnect_policy = reconnect or ReconnectPolicy()

    def coin(self, symbol: str) -> str:
        """The venue's name of one of our markets."""
        found = self._coins.get(symbol)
        return found if found is not None else default_coin(symbol)

    @abc.abstractmethod
    async def run(self, sink: StreamSink) -> None:
        """Connect, subscribe and report to `sink` until cancelled; reconnects by itself, never returns."""

    @abc.abstractmethod
    def set_subscriptions(self, symbols: set[str], candles: set[tuple[str, str]]) -> None:
        """Follow the prices of `symbols` and the candles of (symbol, timeframe) pairs, replacing what came before.

        Callable before and while `run` runs (from the loop's thread or any other); the live socket gets the
        subscribe and unsubscribe frames of the difference.
        """
