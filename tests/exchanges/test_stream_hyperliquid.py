"""The Hyperliquid market-data stream against the loopback websocket (tests/fakes/hyperliquid_ws.py).

No pytest-asyncio in requirements-dev.txt: each test runs its coroutine with asyncio.run under a timeout. Waits are
polls for an outcome (`eventually`), never assertions on elapsed time; back-off goes through an injected sleep.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC
from decimal import Decimal
from typing import Any

import pytest

from exchanges.base import VenueCandle, ms_to_datetime
from exchanges.streams import ClosedCandle, PriceTick, ReconnectPolicy, StreamState
from exchanges.streams.hyperliquid import HyperliquidStream
from tests.fakes.hyperliquid_ws import FakeHyperliquidWs, candle_data, candle_frame

BTC, ETH, PEPE = "BTC/USDC:USDC", "ETH/USDC:USDC", "PEPE/USDC:USDC"
NOW = 1_700_000_000.0  # the injected clock: epoch seconds
T0 = 1_700_000_040_000  # a minute boundary, epoch ms
MIN = 60_000
STREAMING = StreamState(True, "streaming")


class Recorder:
    """The sink: records everything the stream reports."""

    def __init__(self) -> None:
        self.batches: list[list[PriceTick]] = []
        self.closed: list[ClosedCandle] = []
        self.states: list[StreamState] = []
        self.reconnects = 0

    def ticks(self, ticks: list[PriceTick]) -> None:
        self.batches.append(ticks)

    def candle(self, candle: ClosedCandle) -> None:
        self.closed.append(candle)

    def state(self, state: StreamState) -> None:
        self.states.append(state)

    def reconnected(self) -> None:
        self.reconnects += 1

    def prices(self, symbol: str) -> list[Decimal]:
        return [tick.price for batch in self.batches for tick in batch if tick.symbol == symbol]


class Sleeps:
    """The injected back-off sleep: records each wait and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)


class TopOfRange(random.Random):
    """Jitter that always draws the ceiling, so the back-off's growth is visible."""

    def uniform(self, a: float, b: float) -> float:
        return b


@pytest.fixture
def fake() -> Iterator[FakeHyperliquidWs]:
    with FakeHyperliquidWs() as server:
        yield server


def arun(make: Callable[[], Awaitable[None]], timeout: float = 20.0) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(timeout):
            await make()
    asyncio.run(bounded())


async def eventually(condition: Callable[[], Any], what: str, timeout: float = 5.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = condition()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


@asynccontextmanager
async def running(stream: HyperliquidStream, sink: Recorder) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(stream.run(sink))
    try:
        yield task
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass


def make_stream(fake: FakeHyperliquidWs, **options: Any) -> HyperliquidStream:
    options.setdefault("clock", lambda: NOW)
    options.setdefault("sleep", Sleeps())
    return HyperliquidStream(base_url=fake.base_url, **options)


async def barrier(fake: FakeHyperliquidWs, sink: Recorder, n: int) -> None:
    """Everything pushed before has been handled: a BTC mid sent after it has arrived (one ordered socket)."""
    price = Decimal(f"1000{n}")
    fake.push_mids({"BTC": str(price)})
    await eventually(lambda: price in sink.prices(BTC), f"the barrier tick {price}")


def push(fake: FakeHyperliquidWs, t: int, o: str, h: str, low: str, c: str, v: str, coin: str = "BTC",
         interval: str = "1m") -> None:
    assert fake.push_candle(coin, interval, t, o=o, h=h, l=low, c=c, v=v) == 1


def candle(t: int, o: str, h: str, low: str, c: str, v: str) -> VenueCandle:
    return VenueCandle(open_time=ms_to_datetime(t), open=Decimal(o), high=Decimal(h), low=Decimal(low),
                       close=Decimal(c), volume=Decimal(v))


# -- construction ---------------------------------------------------------------------------------------------------

def test_ws_url_is_derived_from_the_rest_url_as_the_sdk_does() -> None:
    assert HyperliquidStream(base_url="https://api.hyperliquid.xyz/").ws_url == "wss://api.hyperliquid.xyz/ws"
    assert HyperliquidStream(base_url="http://127.0.0.1:8081").ws_url == "ws://127.0.0.1:8081/ws"
    with pytest.raises(ValueError):
        HyperliquidStream(base_url="api.hyperliquid.xyz")


def test_an_interval_the_venue_lacks_is_refused() -> None:
    stream = HyperliquidStream(base_url="http://127.0.0.1:1")
    with pytest.raises(ValueError, match="6h"):
        stream.set_subscriptions({BTC}, {(BTC, "6h")})


def test_reconnect_policy_draws_full_jitter_under_a_capped_doubling_ceiling() -> None:
    policy = ReconnectPolicy()
    assert [policy.ceiling(n) for n in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert policy.ceiling(10_000) == 30
    rng = random.Random(7)
    draws = [policy.delay(n, rng) for n in range(200)]
    assert all(0 <= d <= policy.ceiling(n) for n, d in enumerate(draws))
    assert len(set(draws)) == len(draws)  # drawn, not the ceiling itself
    assert min(draws[10:]) < 15 < max(draws[10:])  # spread over the whole [0, 30] range


# -- prices ---------------------------------------------------------------------------------------------------------

def test_ticks_are_filtered_to_the_followed_markets_with_exact_decimals(fake: FakeHyperliquidWs) -> None:
    async def body() -> None:
        stream = make_stream(fake, coins={PEPE: "kPEPE"})
        stream.set_subscriptions({BTC, ETH, PEPE}, set())
        sink = Recorder()
        async with running(stream, sink):
            await eventually(lambda: fake.subscriptions() == [{("allMids",)}], "the allMids subscription")
            await eventually(lambda: STREAMING in sink.states, "the streaming state (the ack)")
            assert fake.push_mids({"BTC": "43210.5", "ETH": "2345.60", "SOL": "98.765", "kPEPE": "0.001604"}) == 1
            await eventually(lambda: sink.batches, "a batch of ticks")
        at = ms_to_datetime(1_700_000_000_000)
        assert sorted(sink.batches[0], key=lambda tick: tick.symbol) == [
            PriceTick(BTC, Decimal("43210.5"), at), PriceTick(ETH, Decimal("2345.60"), at),
            PriceTick(PEPE, Decimal("0.001604"), at)]
        assert [str(tick.price) for tick in sink.batches[0] if tick.symbol == ETH] == ["2345.60"]
        assert at.tzinfo is UTC
        assert fake.received()[0] == (1, {"method": "subscribe", "subscription": {"type": "allMids"}})
        assert sink.states[-1] == StreamState(False, "stopped")
    arun(body)


def test_bad_messages_are_skipped_and_the_stream_keeps_going(fake: FakeHyperliquidWs) -> None:
    async def body() -> None:
        stream = make_stream(fake)
        stream.set_subscriptions({BTC, ETH}, {(BTC, "1m")})
        sink = Recorder()
        to_candles = ("candle", "BTC", "1m")
        async with running(stream, sink):
            await eventually(lambda: fake.subscriptions() == [{("allMids",), to_candles}], "the subscriptions")
            fake.push_raw("not json")
            fake.push_raw('{"no": "channel"}')
            fake.push_raw('{"channel": "allMids", "data": {"mids": ["BTC", "1"]}}')
            fake.push_raw('{"channel": "allMids", "data": {"mids": {"BTC": "abc", "ETH": "2345.6"}}}')
            fake.push_raw('{"channel": "allMids", "data": {"mids": {"BTC": "NaN", "ETH": "-1"}}}')
            fake.push_raw('{"channel": "candle", "data": null}', to=to_candles)
            fake.push_raw('{"channel": "candle", "data": {"s": "BTC", "i": "1m", "t": "x"}}', to=to_candles)
            bad = candle_data("BTC", "1m", T0, o="-1", h="2", l="1", c="1", v="1")
            fake.push_raw(candle_frame(bad), to=to_candles)
            fake.push_raw('{"channel": "allMids", "data": {"mids": {"BTC": 43210.25}}}')  # unquoted: read exactly
            await eventually(lambda: Decimal("43210.25") in sink.prices(BTC), "the tick after the bad ones")
        assert sink.prices(ETH) == [Decimal("2345.6")]
        assert sink.prices(BTC) == [Decimal("43210.25")]
        assert str(sink.prices(BTC)[0]) == "43210.25"
        assert sink.closed == []
        assert stream.skipped == 9
        assert fake.connections_opened == 1
    arun(body)


def test_a_failing_sink_does_not_stop_the_stream(fake: FakeHyperliquidWs) -> None:
    class Flaky(Recorder):
        def ticks(self, ticks: list[PriceTick]) -> None:
            super().ticks(ticks)
            if len(self.batches) == 1:
                raise RuntimeError("the consumer's bug")

    async def body() -> None:
        stream = make_stream(fake)
        stream.set_subscriptions({BTC}, set())
        sink = Flaky()
        async with running(stream, sink):
            await eventually(lambda: fake.subscriptions() == [{("allMids",)}], "the subscription")
            fake.push_mids({"BTC": "1"})
            fake.push_mids({"BTC": "2"})
            await eventually(lambda: len(sink.batches) == 2, "both batches")
        assert sink.prices(BTC) == [Decimal("1"), Decimal("2")]
        assert fake.connections_opened == 1
    arun(body)


# -- candles --------------------------------------------------------------------------------------------------------

def test_a_candle_is_reported_closed_once_when_the_next_one_starts(fake: FakeHyperliquidWs) -> None:
    async def body() -> None:
        stream = make_stream(fake)
        stream.set_subscriptions({BTC}, {(BTC, "1m")})
        sink = Recorder()
        async with running(stream, sink):
            await eventually(lambda: fake.subscriptions() == [{("allMids",), ("candle", "BTC", "1m")}], "subs")
            push(fake, T0, "100", "101", "99", "100.5", "1")
            push(fake, T0, "100", "103", "98", "102", "2.50")
            await barrier(fake, sink, 1)
            assert sink.closed == []  # still forming
            push(fake, T0 + MIN, "102", "102", "102", "102", "0.1")
            await eventually(lambda: sink.closed, "the first closed candle")
            assert sink.closed == [ClosedCandle(BTC, "1m", candle(T0, "100", "103", "98", "102", "2.50"))]
            push(fake, T0 + MIN, "102", "104", "101", "103", "0.7")
            push(fake, T0, "100", "103", "98", "99", "3")  # a late update of the closed one
            await barrier(fake, sink, 2)
            assert len(sink.closed) == 1
            push(fake, T0 + 2 * MIN, "103", "103", "103", "103", "0")
            await eventually(lambda: len(sink.closed) == 2, "the second closed candle")
            await barrier(fake, sink, 3)
        assert sink.closed == [ClosedCandle(BTC, "1m", candle(T0, "100", "103", "98", "102", "2.50")),
                               ClosedCandle(BTC, "1m", candle(T0 + MIN, "102", "104", "101", "103", "0.7"))]
        assert sink.closed[0].candle.open_time.tzinfo is UTC
    arun(body)


def test_a_drop_mid_candle_reconnects_resubscribes_and_reports_no_half_candle(fake: FakeHyperliquidWs) -> None:
    async def body() -> None:
        sleeps = Sleeps()
        stream = make_stream(fake, sleep=sleeps)
        stream.set_subscriptions({BTC}, {(BTC, "1m"), (ETH, "5m")})
        everything = {("allMids",), ("candle", "BTC", "1m"), ("candle", "ETH", "5m")}
        sink = Recorder()
        async with running(stream, sink):
            await eventually(lambda: fake.subscriptions() == [everything], "the subscriptions")
            push(fake, T0, "100", "110", "90", "105", "5")
            push(fake, T0 + MIN, "105", "106", "104", "105", "1")
            await eventually(lambda: len(sink.closed) == 1, "the first candle closed")
            push(fake, T0 + MIN, "105", "120", "104", "119", "2")  # the candle forms on ...
            assert fake.drop(code=1011, reason="going away mid-candle") == 1  # ... and the socket goes
            await eventually(lambda: fake.connections_opened == 2 and fake.subscriptions() == [everything],
                             "a new connection with every subscription again")
            await eventually(lambda: sink.reconnects == 1, "reconnected() called")
            # The venue moved on while we were away: the minute that formed across the drop is never reported.
            push(fake, T0 + 2 * MIN, "121", "122", "120", "121", "1")
            push(fake, T0 + 3 * MIN, "121", "121", "121", "121", "1")
            await eventually(lambda: len(sink.closed) == 2, "the candle after the gap closed")
            await barrier(fake, sink, 1)
        assert [c.candle.open_time for c in sink.closed] == [ms_to_datetime(T0), ms_to_datetime(T0 + 2 * MIN)]
        assert sink.closed[1] == ClosedCandle(BTC, "1m", candle(T0 + 2 * MIN, "121", "122", "120", "121", "1"))
        assert any(not s.connected and s.detail.startswith("disconnected") and "1011" in s.detail
                   for s in sink.states)
        assert sink.states.count(STREAMING) == 2
        assert len(sleeps.delays) == 1
        subscribes = [frame for number, frame in fake.received() if number == 2]
        assert len(subscribes) == 3 and all(frame["method"] == "subscribe" for frame in subscribes)
    arun(body)


def test_a_candle_resent_after_a_reconnect_is_reported_once_with_its_final_values(fake: FakeHyperliquidWs) -> None:
    async def body() -> None:
        stream = make_stream(fake)
        stream.set_subscriptions({BTC}, {(BTC, "1m")})
        sink = Recorder()
        async with running(stream, sink):
            await eventually(lambda: fake.subscriptions() == [{("allMids",), ("candle", "BTC", "1m")}], "subs")
            push(fake, T0, "100", "110", "90", "105", "5")
            push(fake, T0 + MIN, "105", "110", "104", "109", "1")
            await eventually(lambda: len(sink.closed) == 1, "the first candle closed")
            fake.drop(abort=True)  # a bare TCP reset, no close frame
            await eventually(lambda: sink.reconnects == 1 and fake.connections_opened == 2
                             and fake.subscriptions() == [{("allMids",), ("candle", "BTC", "1m")}], "the reconnect")
            push(fake, T0, "100", "110", "90", "105", "5")  # the venue resends what it has: the old one too
            push(fake, T0 + MIN, "105", "125", "104", "124", "9")  # the whole candle so far
            push(fake, T0 + 2 * MIN, "124", "124", "124", "124", "0")
            await eventually(lambda: len(sink.closed) == 2, "the second candle closed")
            await barrier(fake, sink, 1)
        assert sink.closed == [ClosedCandle(BTC, "1m", candle(T0, "100", "110", "90", "105", "5")),
                               ClosedCandle(BTC, "1m", candle(T0 + MIN, "105", "125", "104", "124", "9"))]
    arun(body)


# -- staleness and liveness -----------------------------------------------------------------------------------------

def test_a_silent_server_that_answers_pings_goes_stale_then_recovers(fake: FakeHyperliquidWs) -> None:
    async def body() -> None:
        stream = make_stream(fake, stale_after=0.3, ping_interval=0.05)
        stream.set_subscriptions({BTC}, set())
        sink = Recorder()
        stale = StreamState(False, "stale: no message for 0.3 s")
        async with running(stream, sink):
            await eventually(lambda: fake.subscriptions() == [{("allMids",)}], "the subscription")
            fake.push_mids({"BTC": "1"})
            await eventually(lambda: sink.prices(BTC), "a first tick")
            fake.silent(True)
            pings = fake.pings
            await eventually(lambda: stale in sink.states, "the stale state")
            assert fake.pings > pings  # pinged, and answered, all along: pongs do not count as data
            assert not any("pong" in s.detail for s in sink.states)
            await eventually(lambda: fake.connections_opened >= 2, "the socket recycled")
            fake.silent(False)
            await eventually(lambda: fake.push_mids({"BTC": "2"}) and Decimal("2") in sink.prices(BTC),
                             "ticks again once the server speaks")
        at_stale = sink.states.index(stale)
        assert STREAMING in sink.states[at_stale:]
        assert sink.reconnects >= 1
    arun(body)


def test_a_missing_pong_recycles_the_socket(fake: FakeHyperliquidWs) -> None:
    async def body() -> None:
        stream = make_stream(fake, ping_interval=0.1)
        stream.set_subscriptions(set(), {(BTC, "1h")})  # candles only: no data timer, the ping is the check
        sink = Recorder()
        async with running(stream, sink):
            await eventually(lambda: fake.subscriptions() == [{("candle", "BTC", "1h")}], "the subscription")
            fake.answer_pings(False)
            await eventually(lambda: StreamState(False, "no pong for 0.1 s") in sink.states, "the no-pong state")
            await eventually(lambda: fake.connections_opened >= 2, "a new connection")
        assert fake.pings >= 1  # the unanswered one
    arun(body)


# -- reconnection ---------------------------------------------------------------------------------------------------

def test_refused_connections_back_off_doubling_up_to_the_cap(fake: FakeHyperliquidWs) -> None:
    async def body() -> None:
        sleeps = Sleeps()
        stream = make_stream(fake, sleep=sleeps, rng=TopOfRange())
        stream.set_subscriptions({BTC}, set())
        sink = Recorder()
        fake.refuse(9)
        async with running(stream, sink):
            await eventually(lambda: STREAMING in sink.states, "streaming after the refusals")
        assert sleeps.delays == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
        assert fake.handshakes == 10
        assert sink.states[:9] == [StreamState(False, "connect failed: HTTP 503")] * 9
        assert sink.reconnects == 0  # never connected before: the caller's start-up backfill covers it
    arun(body)


def test_backoff_resets_after_a_healthy_minute(fake: FakeHyperliquidWs) -> None:
    async def body() -> None:
        now = [NOW]
        sleeps = Sleeps()
        stream = make_stream(fake, sleep=sleeps, rng=TopOfRange(), clock=lambda: now[0])
        stream.set_subscriptions({BTC}, set())
        sink = Recorder()
        fake.refuse(3)
        async with running(stream, sink):
            await eventually(lambda: fake.subscriptions() == [{("allMids",)}], "the first connection")
            now[0] += 61  # up a minute
            fake.drop()
            await eventually(lambda: fake.connections_opened == 2 and fake.subscriptions() == [{("allMids",)}],
                             "the second connection")
            fake.drop()  # up for no time: the back-off goes on growing
            await eventually(lambda: fake.connections_opened == 3 and fake.subscriptions() == [{("allMids",)}],
                             "the third connection")
        assert sleeps.delays == [0.5, 1, 2, 0.5, 1]
        assert sink.reconnects == 2
    arun(body)


# -- following more or less -----------------------------------------------------------------------------------------

def test_set_subscriptions_adds_and_removes_on_the_live_socket(fake: FakeHyperliquidWs) -> None:
    async def body() -> None:
        stream = make_stream(fake)
        stream.set_subscriptions({BTC}, set())
        sink = Recorder()
        eth_1m = ("candle", "ETH", "1m")
        async with running(stream, sink):
            await eventually(lambda: fake.subscriptions() == [{("allMids",)}], "the allMids subscription")
            stream.set_subscriptions({BTC}, {(ETH, "1m")})
            await eventually(lambda: fake.subscriptions() == [{("allMids",), eth_1m}], "the candle subscription")
            push(fake, T0, "2000", "2001", "1999", "2000", "3", coin="ETH")
            push(fake, T0 + MIN, "2000", "2000", "2000", "2000", "0", coin="ETH")
            await eventually(lambda: sink.closed, "ETH's candle closed")
            stream.set_subscriptions({ETH}, set())
            await eventually(lambda: fake.subscriptions() == [{("allMids",)}], "the candle unsubscribed")
            # A candle frame the venue sent before our unsubscribe reached it is not reported.
            for t in (T0 + 2 * MIN, T0 + 3 * MIN):
                fake.push_raw(candle_frame(candle_data("ETH", "1m", t, o="1", h="1", l="1", c="1", v="1")))
            fake.push_mids({"BTC": "43000", "ETH": "2300"})
            await eventually(lambda: sink.prices(ETH), "an ETH tick")
            stream.set_subscriptions(set(), set())
            await eventually(lambda: fake.subscriptions() == [frozenset()], "allMids unsubscribed")
        assert sink.prices(BTC) == []  # no longer followed
        assert sink.prices(ETH) == [Decimal("2300")]
        assert sink.closed == [ClosedCandle(ETH, "1m", candle(T0, "2000", "2001", "1999", "2000", "3"))]
        assert fake.connections_opened == 1
        frames = [frame for _, frame in fake.received()]
        assert frames == [
            {"method": "subscribe", "subscription": {"type": "allMids"}},
            {"method": "subscribe", "subscription": {"type": "candle", "coin": "ETH", "interval": "1m"}},
            {"method": "unsubscribe", "subscription": {"type": "candle", "coin": "ETH", "interval": "1m"}},
            {"method": "unsubscribe", "subscription": {"type": "allMids"}},
        ]
    arun(body)


def test_set_subscriptions_from_another_thread_reaches_the_socket(fake: FakeHyperliquidWs) -> None:
    async def body() -> None:
        stream = make_stream(fake)
        sink = Recorder()
        async with running(stream, sink):
            await eventually(lambda: fake.connections_opened == 1, "the connection")
            caller = threading.Thread(target=stream.set_subscriptions, args=({BTC}, {(BTC, "4h")}))
            caller.start()
            caller.join()
            await eventually(lambda: fake.subscriptions() == [{("allMids",), ("candle", "BTC", "4h")}], "subs")
    arun(body)


# -- stopping -------------------------------------------------------------------------------------------------------

def test_cancelling_run_leaves_no_task_thread_or_socket_behind(fake: FakeHyperliquidWs) -> None:
    async def body() -> None:
        threads = set(threading.enumerate())
        stream = make_stream(fake, ping_interval=0.05)
        stream.set_subscriptions({BTC}, {(BTC, "1m")})
        sink = Recorder()
        task = asyncio.create_task(stream.run(sink))
        await eventually(lambda: STREAMING in sink.states, "streaming")
        await eventually(lambda: fake.pings, "the writer pinging")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert asyncio.all_tasks() == {asyncio.current_task()}
        assert sink.states[-1] == StreamState(False, "stopped")
        await eventually(lambda: fake.open_connections == 0, "the server seeing the socket closed")

        # Cancelled while waiting out a back-off: the same.
        never = asyncio.Event()

        async def forever(_: float) -> None:
            await never.wait()

        waiting = make_stream(fake, sleep=forever)
        waiting.set_subscriptions({BTC}, set())
        fake.refuse(1)
        task = asyncio.create_task(waiting.run(sink))
        await eventually(lambda: fake.handshakes >= 2, "the refused attempt")
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert asyncio.all_tasks() == {asyncio.current_task()}
        assert set(threading.enumerate()) == threads
        assert fake.open_connections == 0
    arun(body)
