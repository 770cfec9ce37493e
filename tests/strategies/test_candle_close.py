"""Evaluation on candle close: a stored candle's strategies evaluate it at once (a task each); the beat catches up."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import transaction

from exchanges.base import VenueCandle, datetime_to_ms
from strategies import services
from strategies.candles import candles_read_csv
from strategies.models import Candle, StrategyEvaluation
from strategies.selectors import strategy_price_chart
from strategies.tasks import strategy_evaluate_task
from tests.conftest import WorkerGroup, wait_for
from tests.fakes.tasks import QueuedTasks
from trading import dispatch
from trading.models import Signal, Strategy, VenueAccount

PARAMS = {"period": 7, "oversold": 25, "overbought": 75}
FIRST_ENTRY = 11  # with PARAMS, RSI(7) crosses up through 25 at the bundled file's candle 11
MINUTE = timedelta(minutes=1)
EVALUATE = "strategies.tasks.strategy_evaluate"
DATA = Path(__file__).resolve().parents[2] / "data" / "ETH_BTC-1m.csv"
_rows: list[VenueCandle] = []


def bundled() -> list[VenueCandle]:
    if not _rows:
        _rows.extend(candles_read_csv(DATA, form="rows", timeframe="1m").rows)
    return _rows


def _store(last: int, venue: str = "demo") -> list[VenueCandle]:
    rows = bundled()[:last + 1]
    services.candles_import(venue=venue, symbol="ETH/BTC", timeframe="1m", rows=rows, by="test")
    return rows


def _rsi(account: Any, make_strategy: Callable[..., Any], **overrides: Any) -> Strategy:
    data = {"kind": "rsi", "symbol": "ETH/BTC", "timeframe": "1m", "sizing_mode": "quantity", "sizing_value": "1",
            "params": PARAMS, **overrides}
    return make_strategy(account, **data)


def _evaluated(strategy: Strategy) -> list[datetime]:
    return list(StrategyEvaluation.objects.filter(strategy=strategy).order_by("candle_open_time")
                .values_list("candle_open_time", flat=True))


@pytest.mark.django_db
def test_a_closed_candle_queues_the_newest_bar_for_each_strategy_reading_it_after_commit(
        make_account: Callable[..., Any], make_strategy: Callable[..., Any], monkeypatch: pytest.MonkeyPatch,
        django_capture_on_commit_callbacks: Any) -> None:
    queued = QueuedTasks()
    monkeypatch.setattr(dispatch, "task", queued)
    demo = make_account(quote_asset="BTC", paper_initial_cash="1")
    elsewhere = make_account(quote_asset="BTC", paper_initial_cash="1")
    reader, second = _rsi(demo, make_strategy), _rsi(demo, make_strategy, kind="macd", params={})
    _rsi(demo, make_strategy, timeframe="5m")  # another timeframe
    _rsi(demo, make_strategy, start=False)  # stopped
    make_strategy(demo, symbol="ETH/BTC", sizing_mode="quantity", sizing_value="1")  # a webhook strategy
    _rsi(elsewhere, make_strategy)
    # A paper account priced by another feed reads that feed's candles (moved there once its strategy exists: the
    # venue's markets are not needed here).
    VenueAccount.objects.filter(pk=elsewhere.pk).update(price_feed="hyperliquid")
    rows = _store(FIRST_ENTRY)

    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        count = services.candles_closed(venue="demo", symbol="ETH/BTC", timeframe="1m",
                                        open_times=[rows[-2].open_time, rows[-1].open_time])
        assert count == 2 and queued.sent == []  # nothing leaves before the candles are committed
    newest = datetime_to_ms(rows[-1].open_time)
    assert queued.sent == [(EVALUATE, (reader.pk, newest), 60.0), (EVALUATE, (second.pk, newest), 60.0)]
    assert services.candles_closed(venue="demo", symbol="ETH/BTC", timeframe="1m", open_times=[]) == 0


@pytest.mark.django_db(transaction=True)
def test_a_worker_evaluates_the_closed_candle_at_once_and_stores_its_signal(
        workers: WorkerGroup, make_account: Callable[..., Any], make_strategy: Callable[..., Any]) -> None:
    account = make_account(quote_asset="BTC", paper_initial_cash="1")
    strategy, hourly = _rsi(account, make_strategy), _rsi(account, make_strategy, timeframe="1h")
    workers.start()
    rows = _store(FIRST_ENTRY)
    bar = rows[-1].open_time
    assert services.candles_closed(venue="demo", symbol="ETH/BTC", timeframe="1m", open_times=[bar]) == 1

    evaluation = wait_for(lambda: StrategyEvaluation.objects.filter(strategy=strategy).first(), timeout=30,
                          what="the worker's evaluation")
    assert evaluation.candle_open_time == bar and evaluation.action == "open_long"
    signal = Signal.objects.get(strategy=strategy)
    assert signal.pk == evaluation.signal_id
    assert signal.idempotency_key == f"strategy:{strategy.pk}:{datetime_to_ms(bar)}"
    assert "strategies.tasks.strategy_evaluate" in workers.logs()
    assert not StrategyEvaluation.objects.filter(strategy=hourly).exists()


@pytest.mark.django_db
def test_the_beat_catches_up_what_no_close_task_evaluated_and_no_bar_is_evaluated_twice(
        make_account: Callable[..., Any], make_strategy: Callable[..., Any], monkeypatch: pytest.MonkeyPatch,
        django_capture_on_commit_callbacks: Any) -> None:
    queued = QueuedTasks()
    monkeypatch.setattr(dispatch, "task", queued)
    strategy = _rsi(make_account(quote_asset="BTC", paper_initial_cash="1"), make_strategy)
    rows = _store(FIRST_ENTRY + 2)
    opens = [r.open_time for r in rows]

    def closed(index: int) -> tuple[Any, ...]:
        with django_capture_on_commit_callbacks(execute=True):
            services.candles_closed(venue="demo", symbol="ETH/BTC", timeframe="1m", open_times=[opens[index]])
        return queued.sent[-1][1]

    # Bar 10 closes: its task evaluates it; the beat's tick after it finds nothing left.
    assert strategy_evaluate_task.apply(closed(10)).get() == "none"
    assert services.strategies_evaluate_due(now=opens[11] + timedelta(seconds=2))["evaluated"] == 0
    # Bar 11 closes but its task is late (a busy or restarted worker): the beat evaluates it, once.
    late = closed(11)
    assert services.strategies_evaluate_due(now=opens[12] + timedelta(seconds=2))["evaluated"] == 1
    assert services.strategies_evaluate_due(now=opens[12] + timedelta(seconds=7))["evaluated"] == 0
    assert strategy_evaluate_task.apply(late).get() == "skipped"
    # Bar 12: the beat's tick and the close task race for it; whoever is second does nothing.
    assert services.strategies_evaluate_due(now=opens[13])["evaluated"] == 1
    assert strategy_evaluate_task.apply(closed(12)).get() == "skipped"

    assert _evaluated(strategy) == opens[10:13]
    assert list(Signal.objects.filter(strategy=strategy).values_list("action", flat=True)) == ["open_long"]
    assert StrategyEvaluation.objects.get(candle_open_time=opens[FIRST_ENTRY]).signal is not None


@pytest.mark.django_db
def test_a_paper_strategy_reads_its_price_feeds_candles_not_the_bundled_paper_rows(
        make_account: Callable[..., Any], make_strategy: Callable[..., Any]) -> None:
    strategy = _rsi(make_account(quote_asset="BTC", paper_initial_cash="1"), make_strategy)
    _store(500, venue="paper")  # the demo backtests' 2018 candles
    demo = [replace(r, open_time=r.open_time + timedelta(days=3000)) for r in bundled()[1000:1030]]
    services.candles_import(venue="demo", symbol="ETH/BTC", timeframe="1m", rows=demo, by="test")

    assert services.strategies_evaluate_due(now=demo[-1].open_time + MINUTE)["evaluated"] == 1
    assert _evaluated(strategy) == [demo[-1].open_time]
    chart = strategy_price_chart(strategy)
    assert chart["x"] == [datetime_to_ms(c.open_time) // 1000 for c in demo]
    assert Candle.objects.filter(venue="paper").count() == 501  # untouched
