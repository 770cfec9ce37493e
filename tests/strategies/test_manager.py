"""The StrategyManager: each (strategy, closed candle) evaluated once, one signal per candle, errors stop it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from exchanges.base import VenueCandle, datetime_to_ms
from strategies import services
from strategies.base import Candles, Signals
from strategies.candles import candles_read_csv
from strategies.library import RULES, RsiRule
from strategies.models import StrategyEvaluation
from strategies.schedules import schedules_ensure
from strategies.tasks import strategies_evaluate_due_task
from tests.conftest import run_threads
from trading import services as trading_services
from trading.models import AuditEvent, Signal, Strategy

DATA = Path(__file__).resolve().parents[2] / "data" / "ETH_BTC-1m.csv"
PARAMS = {"period": 7, "oversold": 25, "overbought": 75}
FIRST_ENTRY, SECOND_ENTRY = 11, 30  # with PARAMS, RSI(7) crosses up through 25 at the bundled file's candles 11, 30
MINUTE = timedelta(minutes=1)
_rows: list[VenueCandle] = []


def rows() -> list[VenueCandle]:
    if not _rows:
        _rows.extend(candles_read_csv(DATA, form="rows", timeframe="1m").rows)
    return _rows


def _store(first: int, last: int) -> list[VenueCandle]:
    selected = rows()[first:last]
    services.candles_import(venue="demo", symbol="ETH/BTC", timeframe="1m", rows=selected, by="test")
    return selected


@pytest.fixture
def rsi_strategy(make_account: Callable[..., Any], make_strategy: Callable[..., Any]) -> Strategy:
    account = make_account(quote_asset="BTC", paper_initial_cash="1")
    return make_strategy(account, kind="rsi", symbol="ETH/BTC", sizing_mode="quantity", sizing_value="1",
                         params=PARAMS)


@pytest.mark.django_db
def test_the_same_candle_evaluated_twice_gives_one_evaluation_and_one_signal(rsi_strategy: Strategy) -> None:
    candles = _store(0, FIRST_ENTRY + 1)
    when = candles[FIRST_ENTRY].open_time
    first = services.strategy_evaluate(strategy_id=rsi_strategy.pk, candle_open_time=when, enqueue=False)
    again = services.strategy_evaluate(strategy_id=rsi_strategy.pk, candle_open_time=when, enqueue=False)
    assert first is not None and first.action == "open_long"
    assert again is None
    assert StrategyEvaluation.objects.filter(strategy=rsi_strategy).count() == 1
    signal = Signal.objects.get(strategy=rsi_strategy)
    assert signal.pk == first.signal_id
    assert (signal.source, signal.action, signal.symbol) == ("strategy", "open_long", "ETH/BTC")
    assert signal.idempotency_key == f"strategy:{rsi_strategy.pk}:{datetime_to_ms(when)}"
    assert signal.payload["candle_ms"] == datetime_to_ms(when)
    rsi_strategy.refresh_from_db()
    assert rsi_strategy.last_evaluated_at is not None

    quiet = services.strategy_evaluate(strategy_id=rsi_strategy.pk, candle_open_time=candles[5].open_time,
                                       enqueue=False)
    assert quiet is not None and quiet.action == "" and quiet.signal_id is None


@pytest.mark.django_db
def test_a_strategy_with_atr_exits_sends_the_atr_of_the_evaluated_bar(make_account, make_strategy) -> None:
    from strategies import indicators

    account = make_account(quote_asset="BTC", paper_initial_cash="1")
    strategy = make_strategy(account, kind="rsi", symbol="ETH/BTC", sizing_mode="quantity", sizing_value="1",
                             params=PARAMS, stop_loss_mode="atr", stop_loss_value="2")
    candles = _store(0, SECOND_ENTRY + 1)
    early = services.strategy_evaluate(strategy_id=strategy.pk, candle_open_time=candles[FIRST_ENTRY].open_time,
                                       enqueue=False)
    assert early is not None and early.signal is not None and early.signal.atr is None  # ATR(14) needs 15 bars
    evaluation = services.strategy_evaluate(strategy_id=strategy.pk, candle_open_time=candles[SECOND_ENTRY].open_time,
                                            enqueue=False)
    assert evaluation is not None and evaluation.signal is not None
    head = candles[:SECOND_ENTRY + 1]
    expected = indicators.atr([float(c.high) for c in head], [float(c.low) for c in head],
                              [float(c.close) for c in head], 14)[-1]
    assert evaluation.signal.atr == Decimal(repr(float(expected)))


@pytest.mark.django_db(transaction=True)
def test_two_workers_evaluating_one_candle_at_once_record_it_once(rsi_strategy: Strategy) -> None:
    candles = _store(0, FIRST_ENTRY + 1)
    for candle in candles[FIRST_ENTRY - 3:]:
        barrier = threading.Barrier(2)
        results: list[object] = []

        def evaluate(when: datetime = candle.open_time) -> None:
            barrier.wait(timeout=10)  # noqa: B023 - called within this iteration
            results.append(services.strategy_evaluate(strategy_id=rsi_strategy.pk, candle_open_time=when,  # noqa: B023 - called within this iteration
                                                      enqueue=False))

        errors = run_threads(evaluate, 2)
        assert not errors, errors
        assert sum(r is not None for r in results) == 1, candle.open_time
    assert StrategyEvaluation.objects.filter(strategy=rsi_strategy).count() == 4
    assert Signal.objects.filter(strategy=rsi_strategy).count() == 1
    assert Strategy.objects.get(pk=rsi_strategy.pk).status == Strategy.Status.ACTIVE


@pytest.mark.django_db
def test_beat_tick_evaluates_each_closed_candle_once(rsi_strategy: Strategy) -> None:
    candles = _store(0, 30)
    opens = [c.open_time for c in candles]

    def evaluated() -> list[datetime]:
        return list(StrategyEvaluation.objects.filter(strategy=rsi_strategy).order_by("candle_open_time")
                    .values_list("candle_open_time", flat=True))

    # A strategy never evaluated starts at the newest closed candle (candle 20 closes at opens[21]).
    assert services.strategies_evaluate_due(now=opens[21])["evaluated"] == 1
    assert evaluated() == [opens[20]]
    assert services.strategies_evaluate_due(now=opens[21] + timedelta(seconds=30))["evaluated"] == 0
    # Three more candles closed: each evaluated, once, whatever how many ticks run.
    for _ in range(3):
        services.strategies_evaluate_due(now=opens[24])
    assert evaluated() == opens[20:24]
    # Behind by six: only the newest five are evaluated (no stale bar traded late).
    assert services.strategies_evaluate_due(now=opens[29] + MINUTE)["evaluated"] == 5
    assert evaluated() == [*opens[20:24], *opens[25:30]]

    # The Celery task runs the same tick (now = the wall clock: every stored candle has long closed).
    assert strategies_evaluate_due_task.apply().get() == {"strategies": 1, "evaluated": 0, "signals": 0,
                                                          "candles_fetched": 0}


@pytest.mark.django_db
def test_evaluation_follows_stored_candles_across_a_gap(rsi_strategy: Strategy) -> None:
    gap = 5784  # the bundled file's missing minute follows this row
    candles = _store(gap - 2, gap + 3)
    for i, _candle in enumerate(candles[:-1]):
        services.strategies_evaluate_due(now=candles[i + 1].open_time)
    times = list(StrategyEvaluation.objects.filter(strategy=rsi_strategy).order_by("candle_open_time")
                 .values_list("candle_open_time", flat=True))
    assert times == [c.open_time for c in candles[:-1]]
    assert times[3] - times[2] == 2 * MINUTE  # the missing minute was never evaluated


@pytest.mark.django_db
def test_only_active_strategies_and_stored_candles_are_evaluated(rsi_strategy: Strategy) -> None:
    candles = _store(0, 20)
    missing = candles[-1].open_time + MINUTE
    assert services.strategy_evaluate(strategy_id=rsi_strategy.pk, candle_open_time=missing) is None
    assert not StrategyEvaluation.objects.exists()
    assert Strategy.objects.get(pk=rsi_strategy.pk).status == Strategy.Status.ACTIVE  # not an error

    trading_services.strategy_pause(strategy=rsi_strategy, by="test")
    assert services.strategy_evaluate(strategy_id=rsi_strategy.pk, candle_open_time=candles[-1].open_time) is None
    assert services.strategies_evaluate_due(now=missing + MINUTE)["strategies"] == 0
    assert not StrategyEvaluation.objects.exists()


class ExplodingRule(RsiRule):
    """A rule whose maths fails (a hand-written fake)."""

    @classmethod
    def signals(cls, candles: Candles, params: Any) -> Signals:
        raise FloatingPointError("division by zero in the indicator")


@pytest.mark.django_db
def test_a_rule_that_raises_puts_the_strategy_in_error(rsi_strategy: Strategy, monkeypatch: Any) -> None:
    candles = _store(0, 20)
    monkeypatch.setitem(RULES, "rsi", ExplodingRule)
    assert services.strategies_evaluate_due(now=candles[-1].open_time + MINUTE)["evaluated"] == 0
    strategy = Strategy.objects.get(pk=rsi_strategy.pk)
    assert strategy.status == Strategy.Status.ERROR
    assert strategy.last_error == "FloatingPointError: division by zero in the indicator"
    event = AuditEvent.objects.get(action="strategy.error", entity_id=str(strategy.pk))
    assert event.data["previous"] == "active"
    assert not StrategyEvaluation.objects.exists()  # the failed bar is not marked done
    # No crash loop: later ticks skip the strategy until someone starts it again.
    assert services.strategies_evaluate_due(now=candles[-1].open_time + 2 * MINUTE)["strategies"] == 0
    assert AuditEvent.objects.filter(action="strategy.error").count() == 1

    monkeypatch.setitem(RULES, "rsi", RsiRule)
    trading_services.strategy_start(strategy=strategy, by="test")
    assert Strategy.objects.get(pk=strategy.pk).last_error == ""
    assert services.strategies_evaluate_due(now=candles[-1].open_time + MINUTE)["evaluated"] == 1


@pytest.mark.django_db
def test_the_beat_schedule_runs_the_tick_on_the_strategies_queue() -> None:
    from django_celery_beat.models import PeriodicTask

    schedules_ensure()
    task = PeriodicTask.objects.get(name="strategies evaluate due")
    assert (task.task, task.queue, task.interval.every) == ("strategies.tasks.strategies_evaluate_due",
                                                           "strategies", 10)
    assert schedules_ensure() == 0  # an admin's edits are kept
