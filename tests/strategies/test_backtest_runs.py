"""Stored backtest runs launched as Celery tasks on stored candles, with progress, metrics and trades."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from strategies import services
from strategies.candles import candles_read_csv
from strategies.models import BacktestRun
from tests.conftest import wait_for

DATA = Path(__file__).resolve().parents[2] / "data" / "ETH_BTC-1m.csv"


def _import(limit: int = 3000) -> None:
    parsed = candles_read_csv(DATA, form="rows", timeframe="1m")
    assert not parsed.errors
    services.candles_import(venue="paper", symbol="ETH/BTC", timeframe="1m", rows=parsed.rows[:limit], by="test")


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_backtest_run_executes_on_a_worker_with_progress_and_results(workers) -> None:
    _import()
    workers.start()
    run = services.backtest_run_create(kind="rsi", params={"period": 14}, symbol="ETH/BTC", timeframe="1m",
                                       config={"cash": "1", "fee": "0.001"}, by="test")
    wait_for(lambda: BacktestRun.objects.get(pk=run.pk).status in ("done", "failed"), timeout=60,
             what="backtest finished")
    run.refresh_from_db()
    assert run.status == "done", run.error
    assert run.progress == 1.0 and run.finished_at is not None
    assert run.metrics["trades"] == len(run.trades) > 0
    assert {"entry_time", "exit_time", "side", "quantity", "entry_price", "exit_price", "fees", "pnl"} <= set(
        run.trades[0])


@pytest.mark.django_db
def test_backtest_run_refuses_bad_params_per_field_and_stores_nothing() -> None:
    with pytest.raises(ValidationError) as excinfo:
        services.backtest_run_create(kind="rsi", params={"period": 1, "bogus": 2}, symbol="ETH/BTC",
                                     timeframe="1m", config={"cash": "-5", "leverage": 3}, by="test")
    assert {"params.period", "params.bogus", "config"} <= set(excinfo.value.message_dict)
    assert BacktestRun.objects.count() == 0


@pytest.mark.django_db
def test_backtest_run_without_candles_fails_with_a_reason() -> None:
    """The launch refuses a market with no candles; a run whose candles went away after it was queued fails in
    the worker with a reason, once."""
    with pytest.raises(ValidationError) as refused:
        services.backtest_run_create(kind="rsi", params={}, symbol="ETH/BTC", timeframe="1m", by="test")
    assert "no stored 1m candles" in refused.value.message_dict["symbol"][0]
    run = BacktestRun.objects.create(kind="rsi", params={}, symbol="ETH/BTC", timeframe="1m", config={},
                                     created_by="test", created_at=timezone.now())
    done = services.backtest_run_execute(run_id=run.pk)
    assert done.status == "failed" and "stored candle" in done.error
    assert services.backtest_run_execute(run_id=run.pk).status == "failed"  # a second delivery changes nothing
