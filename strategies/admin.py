"""Admin for market data, evaluations and backtest runs: all read-only (they change only through services)."""

from __future__ import annotations

from django.contrib import admin

from strategies.models import BacktestRun, Candle, StrategyEvaluation
from trading.admin import ReadOnlyAdmin


@admin.register(Candle)
class CandleAdmin(ReadOnlyAdmin):
    list_display = ("venue", "symbol", "timeframe", "open_time", "open", "high", "low", "close", "volume")
    list_filter = ("venue", "symbol", "timeframe")
    date_hierarchy = "open_time"
    show_full_result_count = False  # millions of rows: no COUNT(*) per page


@admin.register(StrategyEvaluation)
class StrategyEvaluationAdmin(ReadOnlyAdmin):
    list_display = ("strategy", "candle_open_time", "action", "signal", "created_at")
    list_select_related = ("strategy", "signal")


@admin.register(BacktestRun)
class BacktestRunAdmin(ReadOnlyAdmin):
    list_display = ("id", "kind", "symbol", "timeframe", "status", "progress", "created_by", "created_at",
                    "finished_at")
    list_filter = ("status", "kind")
