"""Celery entry points of the StrategyManager (queue "strategies"): ids in, one service call, idempotent."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="strategies.tasks.strategy_evaluate", acks_late=True)
def strategy_evaluate_task(strategy_id: int, candle_open_ms: int) -> str:
    """Evaluate one strategy on one closed candle (a no-op when that bar was evaluated already)."""
    from strategies import services
    from exchanges.base import ms_to_datetime

    evaluation = services.strategy_evaluate(strategy_id=strategy_id, candle_open_time=ms_to_datetime(candle_open_ms))
    return "skipped" if evaluation is None else (evaluation.action or "none")


@shared_task(name="strategies.tasks.strategies_evaluate_due", acks_late=True)
def strategies_evaluate_due_task() -> dict[str, int]:
    """Evaluate every active indicator strategy on its newly closed candles (the beat's tick)."""
    from strategies import services

    return services.strategies_evaluate_due()


@shared_task(name="strategies.tasks.backtest_run", acks_late=True)
def backtest_run_task(run_id: int) -> str:
    """Run one stored backtest (a no-op when it already ran)."""
    from strategies import services

    return services.backtest_run_execute(run_id=run_id).status


@shared_task(name="strategies.tasks.candles_download", acks_late=True)
def candles_download_task(venue: str, symbol: str, timeframe: str, since_ms: int, until_ms: int | None = None,
                          network: str = "mainnet", by: str = "") -> str:
    """Download a market's candle history for a while, then queue the rest (a rerun resumes: idempotent)."""
    from strategies import download

    return download.candles_download_slice(venue=venue, symbol=symbol, timeframe=timeframe, since_ms=since_ms,
                                           until_ms=until_ms, network=network, by=by or "candles_download")
