"""CoinbaseStream through ccxt.pro against the loopback Coinbase websocket (tests/fakes/coinbase_ws.py).

Each test runs the real ccxt.pro `coinbase` class (markets loaded over REST, subscribe frames, pings) on its own
event loop against the fake, which runs on another loop in its own thread. Times of trades are fixed in 2024 and
the stream's clock is a settable one, so candle periods do not depend on when the test runs.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, UTC
from decimal import Decimal
from typing import Any

import pytest

from exchanges.base import VenueCandle
from exchanges.streams.base import ClosedCandle, PriceTick, ReconnectPolicy, StreamState
from exchanges.streams.coinbase import CoinbaseStream
from tests.fakes.coinbase_ws import FakeCoinbaseWs, rfc3339_ns

M = datetime(2024, 1, 1, 0, 10, tzinfo=UTC)  # the minute most candle tests build
FAST = ReconnectPolicy(base_delay=0.01, max_delay=0.05)


class Recorder:
    """A sink that keeps everything it is told."""

    def __init__(self) -> None:
        self.prices: list[PriceTick] = []
        self.candles: list[ClosedCandle] = []
        self.states: list[StreamState] = []
        self.reconnects = 0

    def ticks(self, ticks: list[PriceTick]) -> None:
        self.prices.extend(ticks)

    def candle(self, candle: ClosedCandle) -> None:
        self.candles.append(candle)

    def state(self, state: StreamState) -> None:
        self.states.append(state)

    def reconnected(self) -> None:
        self.reconnects += 1

    @property
    def streaming(self) -> bool:
        return bool(self.states) and self.states[-1] == StreamState(True, "streaming")


class Clock:
    def __init__(self, at: datetime) -> None:
        self.now = at.timestamp()

    def __call__(self) -> float:
        return self.now

    def set(self, at: datetime) -> None:
        self.now = at.timestamp()


class Sleeps:
    """The stream's back-off waits, recorded (and waited)."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(seconds)


@pytest.fixture
def fake() -> Iterator[FakeCoinbaseWs]:
    with FakeCoinbaseWs(heartbeat_interval=0.1) as server:
        yield server


def at(seconds: float) -> datetime:
    """A time `seconds` after the start of minute M."""
    return M + timedelta(seconds=seconds)


def stream_for(fake: FakeCoinbaseWs, **overrides: Any) -> CoinbaseStream:
    options: dict[str, Any] = {"base_url": fake.base_url, "clock": Clock(at(30)), "reconnect": FAST,
                               "stale_after": 2.0, "poll_interval": 0.05}
    options.update(overrides)
    return CoinbaseStream(**options)


async def until(predicate: Callable[[], bool], what: str, timeout: float = 8.0) -> None:
    """Wait until `predicate()` holds (checked every 10 ms); fail with `what` after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@asynccontextmanager
async def running(stream: CoinbaseStream, sink: Recorder) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(stream.run(sink), name="stream under test")
    try:
        yield task
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass


def candles_of(sink: Recorder, timeframe: str = "1m") -> list[VenueCandle]:
    return [c.candle for c in sink.candles if c.timeframe == timeframe]


def candle(start: datetime, o: str, h: str, l: str, c: str, v: str) -> VenueCandle:  # noqa: E741
    return VenueCandle(open_time=start, open=Decimal(o), high=Decimal(h), low=Decimal(l), close=Decimal(c),
                       volume=Decimal(v))


def subscribed(fake: FakeCoinbaseWs) -> set[tuple[str, str]]:
    return set().union(*fake.subscriptions()) if fake.open_connections else set()


# -- prices ----------------------------------------------------------------------------------------------------------

def test_ticks_come_for_the_followed_markets_only_as_exact_decimals(fake: FakeCoinbaseWs) -> None:
    async def scenario() -> None:
        sink, stream = Recorder(), stream_for(fake)
        stream.set_subscriptions({"BTC/USD", "XLM/BTC"}, set())
        async with running(stream, sink):
            await until(lambda: {t.symbol for t in sink.prices} == {"BTC/USD", "XLM/BTC"}, "the ticker snapshots")
            # One ticker message may carry several products: ETH-USD is not followed and must not come through.
            frame = {"channel": "ticker", "client_id": "", "timestamp": "2024-05-24T18:22:24.546809523Z",
                     "sequence_num": 90, "events": [{"type": "update", "tickers": [
                         {"type": "ticker", "product_id": "ETH-USD", "price": "2500.5"},
                         {"type": "ticker", "product_id": "BTC-USD", "price": "43210.87"}]}]}
            fake.push_raw(json.dumps(frame), to=("ticker", "BTC-USD"))
            fake.push_ticker("XLM-BTC", "0.00000273")
            await until(lambda: len(sink.prices) >= 4, "two more ticks")
            await asyncio.sleep(0.1)
        assert {t.symbol for t in sink.prices} == {"BTC/USD", "XLM/BTC"}
        assert sorted((t.symbol, t.price) for t in sink.prices) == [
            ("BTC/USD", Decimal("43210.87")), ("BTC/USD", Decimal("50000")),
            ("XLM/BTC", Decimal("0.00000271")), ("XLM/BTC", Decimal("0.00000273"))]
        assert all(type(t.price) is Decimal for t in sink.prices)
        btc = next(t for t in sink.prices if t.price == Decimal("43210.87"))
        assert btc.time == datetime(2024, 5, 24, 18, 22, 24, 546809, tzinfo=UTC)  # the message's timestamp
        # ccxt loaded the markets from the fake and subscribed each followed product, and the heartbeats.
        assert {"GET /v2/currencies", "GET /v2/currencies/crypto", "GET /v2/exchange-rates",
                "GET /api/v3/brokerage/market/products"} <= set(fake.rest_requests())
        frames = [m for _, m in fake.received()]
        assert {"type": "subscribe", "product_ids": ["BTC-USD"], "channel": "ticker"} in frames
        assert {"type": "subscribe", "product_ids": ["XLM-BTC"], "channel": "ticker"} in frames
        assert any(m["channel"] == "heartbeats" and m["type"] == "subscribe" for m in frames)
        assert not any("ETH-USD" in m["product_ids"] for m in frames)

    asyncio.run(scenario())


def test_malformed_messages_are_skipped_and_the_socket_keeps_being_read(fake: FakeCoinbaseWs) -> None:
    async def scenario() -> None:
        sink, stream = Recorder(), stream_for(fake)
        stream.set_subscriptions({"BTC/USD"}, {("BTC/USD", "1m")})
        async with running(stream, sink):
            await until(lambda: sink.streaming and len(sink.prices) == 1, "the ticker snapshot")
            envelope = {"client_id": "", "timestamp": rfc3339_ns(), "sequence_num": 500}
            for text in [
                "not json at all",
                json.dumps({**envelope, "channel": "ticker", "events": [{"type": "update", "tickers": [
                    {"type": "ticker", "product_id": "BTC-USD", "price": "abc"}]}]}),
                # ccxt quotes the venue sending empty tickers
                json.dumps({**envelope, "channel": "ticker", "events": [{"type": "snapshot", "tickers": [
                    {"type": "ticker", "product_id": "", "price": "", "volume_24_h": ""}]}]}),
                # an empty trades list makes ccxt's handle_trade raise inside its reader callback
                json.dumps({**envelope, "channel": "market_trades", "events": [{"type": "update", "trades": []}]}),
                json.dumps({**envelope, "channel": "market_trades", "events": [{"type": "update", "trades": [
                    {"trade_id": "7", "product_id": "BTC-USD", "price": "1", "size": "-2", "side": "BUY",
                     "time": "yesterday"}]}]}),
                json.dumps({"type": "error", "message": "failure to subscribe"}),
            ]:
                fake.push_raw(text, to=("ticker", "BTC-USD"))
            fake.push_ticker("BTC-USD", "50001.01")
            await until(lambda: Decimal("50001.01") in [t.price for t in sink.prices], "the good tick after them")
        assert stream.skipped >= 3
        assert all(t.price > 0 for t in sink.prices)
        assert sink.reconnects == 0 and fake.connections_opened == 1  # nothing made it reconnect
        assert sink.candles == []

    asyncio.run(scenario())


# -- candles ---------------------------------------------------------------------------------------------------------

def test_trades_build_a_1m_candle_reported_once_with_exact_ohlcv(fake: FakeCoinbaseWs) -> None:
    async def scenario() -> None:
        # The replay on subscribing starts in the minute before M: that candle is not reported (trades of it may
        # predate the replay), M is complete.
        fake.trades["BTC-USD"] = [fake.trade("BTC-USD", "99", "5", at(-15))]
        clock = Clock(at(30))
        sink, stream = Recorder(), stream_for(fake, clock=clock, candle_grace=2.0)
        stream.set_subscriptions(set(), {("BTC/USD", "1m"), ("BTC/USD", "5m")})
        async with running(stream, sink):
            await until(lambda: stream.late_trades == 1, "the replay (a trade of a candle given up)")
            fake.push_trades("BTC-USD", [fake.trade("BTC-USD", "100.5", "0.1", at(5)),
                                         fake.trade("BTC-USD", "101.25", "0.2", at(20), side="SELL")])
            fake.push_trades("BTC-USD", [fake.trade("BTC-USD", "99.75", "0.3", at(40)),
                                         fake.trade("BTC-USD", "100", "0.4", "2024-01-01T00:10:59.999999999Z")])
            await until(lambda: stream.trades == 4, "four trades counted")
            assert sink.candles == []  # M is still forming
            fake.push_trades("BTC-USD", [fake.trade("BTC-USD", "102", "1.5", at(61))])  # M + 1 starts
            await until(lambda: len(sink.candles) == 1, "the candle of M")
            # M + 1 has no later trade: the clock closes it, once its period and the grace have passed.
            clock.set(at(121))
            await asyncio.sleep(0.3)
            assert len(sink.candles) == 1
            clock.set(at(122.5))
            await until(lambda: len(sink.candles) == 2, "the candle of M + 1 by the clock")
            # Late for M (reported), in time for the 5m candle still forming, where it is not the close.
            fake.push_trades("BTC-USD", [fake.trade("BTC-USD", "150", "9", at(50))])
            await until(lambda: stream.trades == 6, "the late trade")
            clock.set(at(600))
            await until(lambda: len(sink.candles) == 3, "the 5m candle by the clock")
            await asyncio.sleep(0.3)
        assert candles_of(sink) == [candle(M, "100.5", "101.25", "99.75", "100", "1.0"),
                                    candle(at(60), "102", "102", "102", "102", "1.5")]
        # 5m: M's period (00:10-00:15) began after the replay's oldest trade (00:09:45): complete.
        assert candles_of(sink, "5m") == [candle(M, "100.5", "150", "99.75", "102", "11.5")]
        assert stream.late_trades == 1 and stream.duplicate_trades == 0
        assert all(c.symbol == "BTC/USD" for c in sink.candles)

    asyncio.run(scenario())


@pytest.mark.parametrize("abort", [False, True], ids=["close-frame", "tcp-reset"])
def test_a_drop_mid_candle_resubscribes_and_counts_no_trade_twice(fake: FakeCoinbaseWs, abort: bool) -> None:
    async def scenario() -> None:
        fake.trades["BTC-USD"] = [fake.trade("BTC-USD", "99", "5", at(-15))]
        sink, stream = Recorder(), stream_for(fake)
        stream.set_subscriptions({"BTC/USD"}, {("BTC/USD", "1m")})
        async with running(stream, sink):
            await until(lambda: stream.late_trades == 1 and sink.streaming, "the replay")
            fake.push_trades("BTC-USD", [fake.trade("BTC-USD", "100", "0.1", at(5)),
                                         fake.trade("BTC-USD", "103", "0.2", at(15))])
            await until(lambda: stream.trades == 2, "two trades of M")
            assert fake.drop(abort=abort) == 1
            await until(lambda: sink.reconnects == 1 and sink.streaming, "the reconnect")
            # The new subscription replays the three trades already counted: none counts again.
            await until(lambda: stream.duplicate_trades == 3, "the replay on the new connection")
            fake.push_trades("BTC-USD", [fake.trade("BTC-USD", "98", "0.3", at(45))])
            fake.push_trades("BTC-USD", [fake.trade("BTC-USD", "101", "1", at(65))])
            await until(lambda: len(sink.candles) == 1, "the candle of M")
            await asyncio.sleep(0.3)
        assert candles_of(sink) == [candle(M, "100", "103", "98", "98", "0.6")]
        assert sink.reconnects == 1
        assert [s.connected for s in sink.states] == [True, False, True, False]  # ..., stopped
        assert sink.states[1].detail.startswith("disconnected: ")
        # Every channel was subscribed again on the second connection.
        second = [m for n, m in fake.received() if n == 2]
        assert {(m["channel"], tuple(m["product_ids"])) for m in second if m["type"] == "subscribe"} == {
            ("ticker", ("BTC-USD",)), ("market_trades", ("BTC-USD",)), ("heartbeats", ())}

    asyncio.run(scenario())


def test_a_gap_longer_than_the_replay_leaves_its_candle_to_the_backfill(fake: FakeCoinbaseWs) -> None:
    async def scenario() -> None:
        fake.replay = 1  # the venue replays only its newest trade
        fake.trades["BTC-USD"] = [fake.trade("BTC-USD", "99", "5", at(-15))]
        sink, stream = Recorder(), stream_for(fake)
        stream.set_subscriptions(set(), {("BTC/USD", "1m")})
        async with running(stream, sink):
            await until(lambda: stream.late_trades == 1 and sink.streaming, "the replay")
            fake.push_trades("BTC-USD", [fake.trade("BTC-USD", "100", "0.1", at(5))])
            await until(lambda: stream.trades == 1, "a trade of M")
            fake.refuse(10_000)
            fake.drop()
            await until(lambda: not sink.streaming, "the loss")
            # Trades the stream never sees, then one it sees only as the replay: a gap in M.
            fake.push_trades("BTC-USD", [fake.trade("BTC-USD", "90", "7", at(20)),
                                         fake.trade("BTC-USD", "101", "0.2", at(50))])
            await until(lambda: any(s.detail.startswith("connect failed") for s in sink.states), "a refused dial")
            fake.refuse(0)
            await until(lambda: sink.reconnects == 1 and sink.streaming, "the reconnect")
            fake.push_trades("BTC-USD", [fake.trade("BTC-USD", "102", "1", at(70))])
            fake.push_trades("BTC-USD", [fake.trade("BTC-USD", "103", "2", at(130))])
            await until(lambda: len(sink.candles) == 1, "the candle of M + 1")
            await asyncio.sleep(0.3)
        assert candles_of(sink) == [candle(at(60), "102", "102", "102", "102", "1")]  # M is left out, not half-seen

    asyncio.run(scenario())


# -- connection health -----------------------------------------------------------------------------------------------

def test_a_silent_socket_that_answers_pings_is_reported_stale_then_recovers(fake: FakeCoinbaseWs) -> None:
    async def scenario() -> None:
        sink, stream = Recorder(), stream_for(fake, stale_after=0.6, keep_alive=0.1)
        stream.set_subscriptions({"BTC/USD"}, set())
        async with running(stream, sink):
            await until(lambda: sink.streaming and len(sink.prices) == 1, "streaming")
            pings = fake.pings
            fake.silent()
            await until(lambda: StreamState(False, "stale: no message for 0.6 s") in sink.states, "the stale state")
            assert fake.pings > pings  # the socket was answering pings all along
            await until(lambda: fake.connections_opened >= 2, "a fresh connection")
            fake.silent(False)
            await until(lambda: sink.streaming and sink.reconnects == 1, "the recovery")
            fake.push_ticker("BTC-USD", "50500")
            await until(lambda: sink.prices[-1].price == Decimal("50500"), "a tick after the recovery")
        stale = sink.states.index(StreamState(False, "stale: no message for 0.6 s"))
        assert sink.states[stale + 1:] == [StreamState(True, "streaming"), StreamState(False, "stopped")]
        assert not any("ping-pong" in s.detail for s in sink.states)

    asyncio.run(scenario())


def test_a_quiet_market_on_a_talking_connection_is_not_stale(fake: FakeCoinbaseWs) -> None:
    async def scenario() -> None:
        sink, stream = Recorder(), stream_for(fake, stale_after=0.5)
        stream.set_subscriptions({"ETH/USD"}, {("ETH/USD", "1m")})
        async with running(stream, sink):
            await until(lambda: sink.streaming, "streaming")
            await asyncio.sleep(1.5)  # three stale periods without a ticker or a trade; heartbeats every 0.1 s
        assert sink.states == [StreamState(True, "streaming"), StreamState(False, "stopped")]
        assert fake.connections_opened == 1

    asyncio.run(scenario())


def test_refused_handshakes_back_off_by_the_policy_then_stream(fake: FakeCoinbaseWs) -> None:
    async def scenario() -> None:
        policy = ReconnectPolicy(base_delay=0.02, max_delay=0.05)
        sleeps = Sleeps()
        sink = Recorder()
        stream = stream_for(fake, reconnect=policy, sleep=sleeps, rng=random.Random(7))
        stream.set_subscriptions({"BTC/USD"}, set())
        fake.refuse(3)
        async with running(stream, sink):
            await until(lambda: sink.streaming and len(sink.prices) == 1, "streaming after the refusals")
        draws = random.Random(7)
        assert sleeps.waits == [policy.delay(n, draws) for n in range(3)]
        assert fake.handshakes == 4 and fake.connections_opened == 1
        assert sink.states[0].detail.startswith("connect failed: ")
        assert sink.reconnects == 0  # the first connection: the caller backfills on start anyway

    asyncio.run(scenario())


# -- following and stopping -------------------------------------------------------------------------------------------

def watcher_names() -> set[str]:
    return {t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("coinbase stream ")}


def test_set_subscriptions_adds_and_removes_a_market_while_running(fake: FakeCoinbaseWs) -> None:
    async def scenario() -> None:
        sink, stream = Recorder(), stream_for(fake)
        stream.set_subscriptions({"BTC/USD"}, set())
        async with running(stream, sink):
            await until(lambda: sink.streaming and len(sink.prices) == 1, "streaming")
            await asyncio.to_thread(stream.set_subscriptions, {"BTC/USD", "ETH/USD"}, set())  # from another thread
            await until(lambda: ("ticker", "ETH-USD") in subscribed(fake), "the ETH subscription")
            fake.push_ticker("ETH-USD", "2600.01")
            await until(lambda: any(t.symbol == "ETH/USD" and t.price == Decimal("2600.01") for t in sink.prices),
                        "an ETH tick")
            assert watcher_names() == {"coinbase stream ticker BTC/USD", "coinbase stream ticker ETH/USD"}

            stream.set_subscriptions({"ETH/USD"}, {("ETH/USD", "1m")})
            await until(lambda: ("ticker", "BTC-USD") not in subscribed(fake), "the BTC unsubscribe")
            await until(lambda: ("market_trades", "ETH-USD") in subscribed(fake), "the ETH trades")
            assert watcher_names() == {"coinbase stream ticker ETH/USD", "coinbase stream market_trades ETH/USD"}
            before = len(sink.prices)
            assert fake.push_ticker("BTC-USD", "1") == 0  # the venue no longer sends it
            fake.push_ticker("ETH-USD", "2600.02")
            await until(lambda: len(sink.prices) == before + 1, "the next ETH tick")

            stream.set_subscriptions({"ETH/USD", "BTC/USD"}, set())  # following BTC again subscribes again
            await until(lambda: ("ticker", "BTC-USD") in subscribed(fake), "the BTC subscription again")
            fake.push_ticker("BTC-USD", "50002")
            await until(lambda: sink.prices[-1].price == Decimal("50002"), "a BTC tick again")
        assert fake.connections_opened == 1  # all on the live connection
        assert {"type": "unsubscribe", "product_ids": ["BTC-USD"], "channel": "ticker"} in [m for _, m in
                                                                                            fake.received()]
        assert sink.reconnects == 0

    asyncio.run(scenario())


def test_timeframes_are_checked_when_followed() -> None:
    stream = CoinbaseStream(base_url="https://api.coinbase.com")
    assert stream.ws_url == "wss://advanced-trade-ws.coinbase.com"
    stream.set_subscriptions({"BTC/USD"}, {("BTC/USD", "4h"), ("BTC/USD", "3m"), ("BTC/USD", "1d")})
    for bad in ("7m", "5h", "1w", "0m", "m"):
        with pytest.raises(ValueError, match="coinbase candles"):
            stream.set_subscriptions({"BTC/USD"}, {("BTC/USD", bad)})


def test_cancelling_run_closes_the_exchange_and_leaves_no_task(fake: FakeCoinbaseWs) -> None:
    async def scenario() -> None:
        sink, stream = Recorder(), stream_for(fake)
        stream.set_subscriptions({"BTC/USD", "ETH/USD"}, {("BTC/USD", "1m")})
        task = asyncio.create_task(stream.run(sink))
        await until(lambda: sink.streaming and len(sink.prices) == 2, "streaming")
        exchange = stream.exchange
        assert exchange is not None and exchange.clients
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert sink.states[-1] == StreamState(False, "stopped")
        assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
        assert exchange.closed_by_user and exchange.session is None and not exchange.clients
        assert stream.exchange is None
        await until(lambda: fake.open_connections == 0, "the venue to see the socket closed")

    asyncio.run(scenario())
