"""The demo feed: history at start, the candles of the prices it publishes stored as they close, on a fake clock."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from exchanges.base import VenueCandle, datetime_to_ms
from strategies.candles import candles_read_csv, candles_resample
from strategies.management.commands.demo_feed import DemoFeed, feed_run
from strategies.models import Candle, StrategyEvaluation
from tests.conftest import WorkerGroup, wait_for
from tests.fakes.tasks import QueuedTasks
from trading import dispatch
from trading.models import MarketPrice, Signal

DATA = Path(__file__).resolve().parents[2] / "data" / "ETH_BTC-1m.csv"
MINUTE = timedelta(minutes=1)
T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
_rows: list[VenueCandle] = []


def bundled() -> list[VenueCandle]:
    if not _rows:
        _rows.extend(candles_read_csv(DATA, form="rows", timeframe="1m").rows)
    return _rows


@dataclass
class FakeClock:
    """Time that moves on only when the feed sleeps."""

    time: datetime

    def now(self) -> datetime:
        return self.time

    def sleep(self, seconds: float) -> None:
        self.time += timedelta(seconds=seconds)


def _feed(start: datetime, *, rows: list[VenueCandle] | None = None, history: int = 20,
          timeframes: tuple[str, ...] = ("1m", "5m")) -> DemoFeed:
    return DemoFeed(rows=rows or bundled(), symbol="ETH/BTC", interval=1.0, clock=FakeClock(start),
                    timeframes=timeframes, history=history)


def _stored(timeframe: str) -> list[VenueCandle]:
    return [VenueCandle(*r) for r in Candle.objects.filter(venue="demo", symbol="ETH/BTC", timeframe=timeframe)
            .order_by("open_time").values_list("open_time", "open", "high", "low", "close", "volume")]


def _built(start: datetime, rows: list[VenueCandle]) -> VenueCandle:
    """The 1m candle of prices published from rows, as the feed does: closes for the price, the rows' volumes."""
    closes = [r.close for r in rows]
    return VenueCandle(start, closes[0], max(closes), min(closes), closes[-1], sum(r.volume for r in rows))


@pytest.fixture
def queued(monkeypatch: pytest.MonkeyPatch) -> QueuedTasks:
    recorder = QueuedTasks()
    monkeypatch.setattr(dispatch, "task", recorder)
    return recorder


@pytest.mark.django_db
def test_the_feed_stores_history_to_the_last_closed_minute_then_each_minute_as_it_closes(
        make_account: Callable[..., Any], make_strategy: Callable[..., Any], queued: QueuedTasks,
        django_capture_on_commit_callbacks: Any) -> None:
    account = make_account(quote_asset="BTC", paper_initial_cash="1")  # priced by the demo feed (the default)
    minute_rsi = make_strategy(account, kind="rsi", symbol="ETH/BTC", timeframe="1m")
    five_rsi = make_strategy(account, kind="rsi", symbol="ETH/BTC", timeframe="5m")
    rows = bundled()
    feed = _feed(T0 + timedelta(minutes=3, seconds=37))  # starts at 12:03:37
    with django_capture_on_commit_callbacks(execute=True):
        assert feed_run(feed, limit=150, signal_every=0) == 150  # rows 0..149 at 12:03:37 .. 12:06:06

    minutes = _stored("1m")
    # History: 20 bars of the longest timeframe (5m), from the 5m grid, to 12:03; then 12:03, 12:04, 12:05 played.
    start = T0 - timedelta(minutes=100)
    assert [c.open_time for c in minutes] == [start + i * MINUTE for i in range(106)]
    history, played = minutes[:103], minutes[103:]
    assert history[-1].close == rows[-1].close  # the row played just before the first one, the file looping
    assert history[-1] == _built(T0 + 2 * MINUTE, rows[-60:])  # one row a second: 60 a minute
    assert played == [_built(T0 + 3 * MINUTE, rows[:23]),  # from 12:03:37: a minute of 23 rows
                      _built(T0 + 4 * MINUTE, rows[23:83]), _built(T0 + 5 * MINUTE, rows[83:143])]
    # 5m: built from the stored 1m once their bucket closed; 12:05's is still filling at 12:06:06 (no look-ahead).
    fives = _stored("5m")
    assert [c.open_time for c in fives] == [start + i * 5 * MINUTE for i in range(21)]
    assert fives == candles_resample(minutes[:-1], "5m")
    assert not Candle.objects.exclude(venue="demo").exists()  # nothing under paper, the bundled 2018 rows' key
    price = MarketPrice.objects.get(feed="demo", symbol="ETH/BTC")
    assert (price.price, price.volume, price.time) == (rows[149].close, rows[149].volume, feed.clock.now())

    # Each closed candle was handed to its strategies at once (the history was not: it is no close).
    evaluate = "strategies.tasks.strategy_evaluate"
    assert queued.sent == [
        (evaluate, (minute_rsi.pk, datetime_to_ms(T0 + 3 * MINUTE)), 60.0),
        (evaluate, (minute_rsi.pk, datetime_to_ms(T0 + 4 * MINUTE)), 60.0),
        (evaluate, (five_rsi.pk, datetime_to_ms(T0)), 300.0),
        (evaluate, (minute_rsi.pk, datetime_to_ms(T0 + 5 * MINUTE)), 60.0),
    ]


@pytest.mark.django_db
def test_a_restarted_feed_keeps_what_it_stored_and_fills_only_the_minutes_it_was_away() -> None:
    feed_run(_feed(T0 + timedelta(minutes=3, seconds=37)), limit=150, signal_every=0)
    before = {c.open_time: c for c in _stored("1m")}
    fives = _stored("5m")

    assert _feed(T0 + timedelta(minutes=20, seconds=10)).history_store() == 14  # the new ones: 12:06 .. 12:19
    after = _stored("1m")
    assert [c.open_time for c in after] == [T0 - timedelta(minutes=100) + i * MINUTE for i in range(120)]
    assert all(before[c.open_time] == c for c in after if c.open_time in before)  # nothing overwritten
    assert _stored("5m")[:len(fives)] == fives
    assert _stored("5m")[-1].open_time == T0 + 15 * MINUTE


@pytest.mark.django_db
def test_the_feed_warns_once_of_a_strategy_on_a_timeframe_it_does_not_build(
        make_account: Callable[..., Any], make_strategy: Callable[..., Any]) -> None:
    account = make_account(quote_asset="BTC", paper_initial_cash="1")
    hourly = make_strategy(account, kind="rsi", symbol="ETH/BTC", timeframe="4h")
    make_strategy(account, kind="rsi", symbol="ETH/BTC", timeframe="5m")
    feed = _feed(T0 + timedelta(seconds=50))
    feed_run(feed, limit=80, signal_every=0)
    assert feed.warned == {hourly.pk}


@pytest.mark.django_db
def test_the_command_refuses_timeframes_it_cannot_build_and_history_no_demo_needs(tmp_path: Path) -> None:
    def run(*args: str) -> None:
        call_command("demo_feed", "--limit", "1", "--interval", "0.001", *args, stdout=io.StringIO())

    with pytest.raises(CommandError, match="unknown timeframe '30s'"):
        run("--timeframes", "1m,30s")
    with pytest.raises(CommandError, match="at most 50000"):
        run("--history", "3000")  # hours (its longest timeframe up to 1h): 180,000 minutes
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,open,high,low,close,volume\n60000,1,1,1,1,-1\n")
    with pytest.raises(CommandError, match="line 2: volume -1 is negative"):
        run("--file", str(bad))
    assert not Candle.objects.exists()

    before = timezone.now()
    run("--history", "2", "--timeframes", "1m")  # on the wall clock: two minutes of history, one price
    (first, last) = [c.open_time for c in _stored("1m")]
    assert last - first == MINUTE and before - 2 * MINUTE < last + MINUTE <= timezone.now()
    assert MarketPrice.objects.get(feed="demo", symbol="ETH/BTC").price == bundled()[0].close


def _trend_file(tmp_path: Path) -> Path:
    """Rows that rise 0.1 % each for 20 minutes of feed, then fall back over 50 minutes: the feed plays the rise
    after a history of falling minutes (the file's tail, which loops round to its start)."""
    rise = [Decimal("1.001") ** i for i in range(1200)]
    fall = [rise[-1] * (Decimal(1) / rise[-1]) ** (Decimal(j) / 3000) for j in range(1, 3001)]
    lines = [f"{(i + 1) * 60_000},{p:.8f},{p:.8f},{p:.8f},{p:.8f},1" for i, p in enumerate(rise + fall)]
    path = tmp_path / "trend.csv"
    path.write_text("timestamp,open,high,low,close,volume\n" + "\n".join(lines) + "\n")
    return path


@pytest.mark.django_db(transaction=True)
def test_an_rsi_strategy_on_the_demo_feed_signals_within_a_few_demo_candles(
        workers: WorkerGroup, make_account: Callable[..., Any], make_strategy: Callable[..., Any],
        tmp_path: Path) -> None:
    # RSI(14) is 0 after 30 falling minutes; minutes rising 2.5 times as fast as they fell lift it through 30 at the
    # third of them (Wilder: 100 * G(1 - q^k) / (G(1 - q^k) + L q^k) with q = 13/14, G = 2.5 L).
    account = make_account(quote_asset="BTC", paper_initial_cash="1")
    strategy = make_strategy(account, kind="rsi", symbol="ETH/BTC", timeframe="1m", sizing_mode="quantity",
                             sizing_value="1")
    rows = candles_read_csv(_trend_file(tmp_path), form="rows", timeframe="1m").rows
    workers.start()
    start = timezone.now().replace(second=0, microsecond=0) - timedelta(hours=1)
    feed_run(_feed(start, rows=rows, history=30, timeframes=("1m",)), limit=8 * 60 + 1, signal_every=0)

    signal = wait_for(lambda: Signal.objects.filter(strategy=strategy).first(), timeout=60,
                      what="the RSI strategy's signal")
    assert signal.action == "open_long" and signal.source == "strategy"
    evaluation = StrategyEvaluation.objects.get(signal=signal)
    assert evaluation.candle_open_time == start + 2 * MINUTE  # the third played minute, not a history bar
    wait_for(lambda: StrategyEvaluation.objects.filter(strategy=strategy).count() == 8, timeout=60,
             what="the eight played minutes evaluated")
    assert Signal.objects.filter(strategy=strategy).count() == 1


@pytest.mark.django_db
def test_by_default_every_timeframe_is_built_with_history_of_300_hours_at_most() -> None:
    feed = DemoFeed(rows=bundled(), symbol="ETH/BTC", interval=1.0, clock=FakeClock(T0 + timedelta(minutes=7)))
    feed.history_store()
    counts = {t: Candle.objects.filter(venue="demo", timeframe=t).count() for t in feed.timeframes}
    # 300 hours back from 12:07, from the day's grid (so that every daily bucket is whole): 12 days and 12:07.
    minutes = 12 * 1440 + 12 * 60 + 7
    assert counts == {"1m": minutes, "3m": minutes // 3, "5m": minutes // 5, "15m": minutes // 15,
                      "30m": minutes // 30, "1h": 300, "2h": 150, "4h": 75, "6h": 50, "12h": 25, "1d": 12}
