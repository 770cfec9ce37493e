"""Market data and strategy runs: stored candles, one evaluation per (strategy, closed candle), backtest runs."""

from __future__ import annotations

from django.db import models

from trading.fields import money
from trading.models import Signal, Strategy


class Candle(models.Model):
    """One OHLCV candle of a market and timeframe; open_time is the candle's open (aware UTC)."""

    # Whose market data: a price feed's name (trading.models.PriceFeed: "demo", "hyperliquid-testnet", ...) as the
    # feeds store their closed candles, or "paper" and any key an import names.
    venue = models.CharField(max_length=32, default="paper")
    symbol = models.CharField(max_length=32)
    timeframe = models.CharField(max_length=8)
    open_time = models.DateTimeField()
    open = money()
    high = money()
    low = money()
    close = money()
    volume = money()  # base asset

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["venue", "symbol", "timeframe", "open_time"], name="candle_once"),
        ]
        # The unique constraint's btree index (venue, symbol, timeframe, open_time) is the index for range reads,
        # forwards and backwards ("the last N candles up to t"); a second index would only slow imports.

    def __str__(self) -> str:
        return f"{self.venue} {self.symbol} {self.timeframe} {self.open_time:%Y-%m-%d %H:%M}"


class StrategyEvaluation(models.Model):
    """That a strategy looked at one closed candle (inserted first: a bar is never evaluated twice)."""

    strategy = models.ForeignKey(Strategy, on_delete=models.CASCADE, related_name="evaluations")
    candle_open_time = models.DateTimeField()
    created_at = models.DateTimeField()
    action = models.CharField(max_length=12, blank=True, default="")  # "" when the rule did not fire
    signal = models.ForeignKey(Signal, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["strategy", "candle_open_time"], name="evaluation_once_per_candle"),
        ]

    def __str__(self) -> str:
        return f"{self.strategy_id} @ {self.candle_open_time:%Y-%m-%d %H:%M} {self.action or '-'}"


class BacktestRun(models.Model):
    """A backtest of a strategy kind and params over stored candles, run by a worker; results kept as JSON."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"

    kind = models.CharField(max_length=32)
    params = models.JSONField(default=dict, blank=True)
    venue = models.CharField(max_length=32, default="paper")
    symbol = models.CharField(max_length=32)
    timeframe = models.CharField(max_length=8, default="1m")
    start = models.DateTimeField(null=True, blank=True)  # first candle's open time (None: from the first stored)
    end = models.DateTimeField(null=True, blank=True)  # last candle's open time (None: to the last stored)
    config = models.JSONField(default=dict, blank=True)  # BacktestConfig fields (Decimals as strings)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.QUEUED)
    progress = models.FloatField(default=0.0)  # 0..1
    metrics = models.JSONField(default=dict, blank=True)
    trades = models.JSONField(default=list, blank=True)
    error = models.TextField(blank=True, default="")
    created_by = models.CharField(max_length=150, blank=True, default="")
    created_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["status", "created_at"])]

    def __str__(self) -> str:
        return f"backtest {self.pk} {self.kind} {self.symbol} {self.timeframe} ({self.status})"
