"""The market-data role end to end: the real Hyperliquid stream against the loopback websocket fake, the role's
database thread on the test database, real Celery workers where a task must run (the monitor a crossed stop sends).

Covered: it follows only what is in use (and starts following a strategy created while it runs); a burst of ticks is
written once per market per flush, under the account's feed, never over another feed's price; a stop crossed by a
streamed price is exited by a worker; a closed candle is stored once under the feed and its strategies are queued;
a silent feed makes the market stale (entries refused) and a resumed one fresh again.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from exchanges.base import datetime_to_ms
from exchanges.streams.hyperliquid import HyperliquidStream
from strategies.feeds import MarketDataRole
from strategies.models import Candle
from tests.conftest import wait_for
from tests.fakes.hyperliquid_ws import FakeHyperliquidWs
from trading.execution import signal_process
from trading.intake import signal_create
from trading.models import MarketPrice, Position, Signal

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _the_feed_lists_the_paper_markets(feed_markets: Callable[..., None]) -> None:
    """Paper accounts on the hyperliquid feed trade its markets: here the bundled ones (BTC/USD streams as BTC)."""
    feed_markets("hyperliquid")


class RunningRole:
    """The role on an event loop in a thread of this process, stopped at the end of the test."""

    def __init__(self, fake: FakeHyperliquidWs) -> None:
        self.streams: list[HyperliquidStream] = []

        def factory(feed: str) -> HyperliquidStream:
            assert feed == "hyperliquid"
            stream = HyperliquidStream(base_url=fake.base_url, stale_after=2.0)
            self.streams.append(stream)
            return stream

        self.role = MarketDataRole(streams=factory, feeds=["hyperliquid"], flush_seconds=0.05, refresh_seconds=0.2)
        self.writes: list[int] = []
        self._stop = threading.Event()
        original = self.role.flush

        async def counted_flush() -> int:
            written = await original()
            if written:
                self.writes.append(written)
            return written

        self.role.flush = counted_flush  # type: ignore[method-assign]
        self._thread = threading.Thread(target=lambda: asyncio.run(self.role.run(until=self._stop.is_set)),
                                        daemon=True)

    def start(self) -> RunningRole:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)
        assert not self._thread.is_alive(), "the role did not stop"


@pytest.fixture
def fake() -> Iterator[FakeHyperliquidWs]:
    with FakeHyperliquidWs() as running:
        yield running


@pytest.fixture
def role(fake: FakeHyperliquidWs) -> Iterator[Callable[[], RunningRole]]:
    started: list[RunningRole] = []

    def start() -> RunningRole:
        started.append(RunningRole(fake).start())
        return started[-1]

    yield start
    for running in started:
        running.stop()
    connection.close()


def _price(feed: str, symbol: str) -> Decimal | None:
    return MarketPrice.objects.filter(feed=feed, symbol=symbol).values_list("price", flat=True).first()


def test_prices_of_markets_in_use_are_written_under_their_feed_coalesced(fake, role, make_account, make_strategy,
                                                                         set_price) -> None:
    set_price("BTC/USD", "40000")  # the demo feed's BTC/USD: never touched by hyperliquid's stream
    account = make_account(price_feed="hyperliquid")
    make_strategy(account, symbol="BTC/USD")
    running = role()
    wait_for(lambda: fake.push_mids({"BTC": "61000.5", "ETH": "3000"}) > 0, what="the role subscribed allMids")
    wait_for(lambda: _price("hyperliquid", "BTC/USD") == Decimal("61000.5"), what="BTC's mid written")
    assert _price("hyperliquid", "ETH/USD") is None  # not in use: not written
    assert _price("demo", "BTC/USD") == Decimal("40000")

    before = len(running.writes)
    for n in range(200):  # a burst: one write per market per flush, the newest price wins
        fake.push_mids({"BTC": f"{61001 + n}"})
    wait_for(lambda: _price("hyperliquid", "BTC/USD") == Decimal("61200"), what="the burst's last price")
    assert len(running.writes) - before < 50  # coalesced: far fewer writes than the 200 ticks

    make_strategy(account, symbol="ETH/USD")  # in use from now on: followed after the next refresh
    wait_for(lambda: (fake.push_mids({"ETH": "3001.25"}), _price("hyperliquid", "ETH/USD"))[1] == Decimal(
        "3001.25"), what="ETH followed once a strategy uses it")


def test_a_streamed_price_that_crosses_a_stop_is_exited_by_a_worker(fake, role, workers, make_account,
                                                                    make_strategy, set_price) -> None:
    account = make_account(price_feed="hyperliquid")
    strategy = make_strategy(account, symbol="BTC/USD", sizing_value="0.1", stop_loss_mode="percent",
                             stop_loss_value="1")
    set_price("BTC/USD", "60000", feed="hyperliquid")
    signal, _ = signal_create(strategy=strategy, source="manual", action="open_long", idempotency_key="o",
                              enqueue=False)
    assert signal_process(signal_id=signal.pk).status == Signal.Status.EXECUTED
    assert Position.objects.get(strategy=strategy).stop_loss == Decimal("59400")
    workers.start()
    role()
    wait_for(lambda: fake.push_mids({"BTC": "59000"}) > 0 and _price("hyperliquid", "BTC/USD") == Decimal("59000"),
             what="the crossing price written")
    wait_for(lambda: Position.objects.get(strategy=strategy).quantity == 0, timeout=60, what="the stop's exit")
    exit_signal = Signal.objects.get(strategy=strategy, source=Signal.Source.MONITOR)
    assert exit_signal.status == Signal.Status.EXECUTED and exit_signal.payload["trigger"] == "sl"


def test_a_closed_candle_is_stored_once_under_the_feed_and_queues_its_strategies(fake, role, make_account,
                                                                                 make_strategy, monkeypatch) -> None:
    from strategies import services

    queued: list[tuple[str, str, str, list[Any]]] = []
    real = services.candles_closed

    def recording(**kwargs: Any) -> int:
        queued.append((kwargs["venue"], kwargs["symbol"], kwargs["timeframe"], list(kwargs["open_times"])))
        return real(**kwargs)

    monkeypatch.setattr(services, "candles_closed", recording)
    account = make_account(price_feed="hyperliquid")
    make_strategy(account, symbol="BTC/USD", kind="rsi", timeframe="1m",
                  params={"period": 14, "oversold": 30, "overbought": 70})
    role()
    t0 = datetime_to_ms(timezone.now().replace(second=0, microsecond=0) - timedelta(minutes=2))
    wait_for(lambda: fake.push_candle("BTC", "1m", t0, o="60000", h="60100", l="59900", c="60050", v="12.5") > 0,
             what="the role subscribed the 1m candles")
    fake.push_candle("BTC", "1m", t0, o="60000", h="60200", l="59900", c="60150", v="13")  # the same bar moves on
    assert not Candle.objects.filter(venue="hyperliquid").exists()  # still forming: nothing stored
    fake.push_candle("BTC", "1m", t0 + 60_000, o="60150", h="60150", l="60150", c="60150", v="0.1")  # the next bar
    wait_for(lambda: Candle.objects.filter(venue="hyperliquid").exists(), what="the closed bar stored")
    (stored,) = Candle.objects.filter(venue="hyperliquid", symbol="BTC/USD", timeframe="1m")
    assert (stored.open, stored.high, stored.low, stored.close, stored.volume) == (
        Decimal("60000"), Decimal("60200"), Decimal("59900"), Decimal("60150"), Decimal("13"))
    wait_for(lambda: any(q[:3] == ("hyperliquid", "BTC/USD", "1m") for q in queued), what="its strategies queued")


def test_a_silent_feed_makes_its_markets_stale_and_entries_refused_until_it_resumes(
        fake, role, make_account, make_strategy, settings) -> None:
    from trading.selectors import prices_in_use

    settings.TRADING = {**settings.TRADING, "MAX_PRICE_AGE_SECONDS": 1}
    account = make_account(price_feed="hyperliquid")
    strategy = make_strategy(account, symbol="BTC/USD", sizing_value="0.1")
    role()
    wait_for(lambda: fake.push_mids({"BTC": "60000"}) > 0 and _price("hyperliquid", "BTC/USD") is not None,
             what="a first price")
    fake.silent()
    wait_for(lambda: prices_in_use(now=timezone.now(), max_age_seconds=1)[0].stale, what="stale after 1 s")
    signal, _ = signal_create(strategy=strategy, source="manual", action="open_long", idempotency_key="stale",
                              enqueue=False)
    refused = signal_process(signal_id=signal.pk)
    assert refused.status == Signal.Status.REJECTED and refused.decision_rule == "stale_price"
    fake.silent(False)
    wait_for(lambda: fake.push_mids({"BTC": "60010"}) > 0 and _price("hyperliquid", "BTC/USD") == Decimal("60010"),
             timeout=60, what="prices again after the silence (the stream recycles a stale socket)")
    signal, _ = signal_create(strategy=strategy, source="manual", action="open_long", idempotency_key="fresh",
                              enqueue=False)
    assert signal_process(signal_id=signal.pk).status == Signal.Status.EXECUTED


def test_the_role_writes_a_heartbeat_that_the_container_probe_reads(role, monkeypatch, settings, tmp_path) -> None:
    import os
    import time

    from strategies.feeds import heartbeat_path
    from tradesite import healthcheck

    settings.VAR_DIR = tmp_path
    monkeypatch.setenv("TRADESITE_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("TRADESITE_COMPONENT", "marketdata")
    assert healthcheck.main() == 1  # no heartbeat yet
    running = role()
    wait_for(lambda: heartbeat_path().exists(), what="the role's heartbeat")
    assert healthcheck.main() == 0
    running.stop()  # the loop stops: nothing writes the heartbeat any more
    old = time.time() - 60
    heartbeat_path().write_text(f"{old:.3f}")  # a loop that stopped a minute ago
    os.utime(heartbeat_path(), (old, old))
    assert healthcheck._marketdata_problem().startswith("its loop has not run")
