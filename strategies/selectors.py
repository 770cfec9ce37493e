"""Reads of market data and strategy state.

Candles come back as `strategies.base.Candles` (numpy float64 columns, time in epoch ms): the Decimal -> float
conversion happens here and nowhere else, and only for indicator maths. Missing candles stay missing: there is
no forward fill, a gap in the store is a gap in the arrays, and strategies evaluate once per stored candle.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime
from decimal import Decimal

import numpy as np
from django.db import connection
from django.db.models import BigIntegerField, F, FloatField, Func, QuerySet, TextField
from django.db.models.functions import Cast

from exchanges.base import VenueCandle, datetime_to_ms, ms_to_datetime
from strategies.base import Candles
from strategies.candles import ATR_MAX_AGE_BARS, ATR_PERIOD, ATR_WINDOW, atr_value, timeframe_delta
from strategies.models import BacktestRun, Candle, StrategyEvaluation
from trading.models import Strategy, VenueAccount
from trading.prices import accounts_priced_by, price_feed_of

_COLUMNS = ("open_time", "open", "high", "low", "close", "volume")


def _market(venue: str, symbol: str, timeframe: str):
    return Candle.objects.filter(venue=venue, symbol=symbol, timeframe=timeframe)


def candle_venue(account: VenueAccount) -> str:
    """The candle store's venue key an account's strategies read: the account's price feed, under whose name the
    feeds store their closed candles (`demo`: the demo feed's; a live account's own venue, `-testnet` on testnet).

    A paper account therefore reads the candles of the prices it trades on, never the bundled 2018 rows under
    `paper` (backtests name their venue key themselves)."""
    return price_feed_of(account)


def candles_read(venue: str, symbol: str, timeframe: str, *, since: datetime | None = None,
                 until: datetime | None = None, limit: int | None = None) -> Candles:
    """Stored candles with since <= open_time <= until, oldest first; with limit, the last `limit` of them."""
    rows = _market(venue, symbol, timeframe)
    if since is not None:
        rows = rows.filter(open_time__gte=since)
    if until is not None:
        rows = rows.filter(open_time__lte=until)
    # Skip the exact-Decimal round trip of every value: PostgreSQL converts numeric to float8 itself (correctly
    # rounded, via its text form), SQLite hands over the stored text for Python's float(). Same float either way.
    postgres = connection.vendor == "postgresql"
    rows = rows.annotate(**{f"{c}_f": Cast(c, FloatField() if postgres else TextField()) for c in _COLUMNS[1:]})
    if postgres:  # epoch ms straight from the server: parsing a datetime per row costs more than the maths
        rows = rows.annotate(open_ms=Func(F("open_time"), output_field=BigIntegerField(),
                                          template="(EXTRACT(EPOCH FROM %(expressions)s) * 1000)::bigint"))
    columns = ("open_ms" if postgres else "open_time", *(f"{c}_f" for c in _COLUMNS[1:]))
    if limit is not None:
        data = list(rows.order_by("-open_time").values_list(*columns)[:limit])
        data.reverse()
    else:
        data = list(rows.order_by("open_time").values_list(*columns))
    return candles_from_rows(data)


def candles_from_rows(data: list[tuple]) -> Candles:
    """Build float columns from (open time or epoch ms, open, high, low, close, volume) rows (Decimal, text, float)."""
    n = len(data)
    time = np.fromiter((r[0] if isinstance(r[0], int) else datetime_to_ms(r[0]) for r in data), dtype=np.int64,
                       count=n)
    cols = [np.fromiter((float(r[i]) for r in data), dtype=np.float64, count=n) for i in range(1, 6)]
    return Candles(time, *cols)


def candle_rows_read(venue: str, symbol: str, timeframe: str, *, since: datetime | None = None,
                     until: datetime | None = None, limit: int | None = None,
                     chunk: int = 5000) -> Iterator[VenueCandle]:
    """Stored candles as exact Decimal rows, oldest first, streamed in chunks (for replays)."""
    rows = _market(venue, symbol, timeframe).order_by("open_time")
    if until is not None:
        rows = rows.filter(open_time__lte=until)
    after, left = since, limit
    first = True
    while left is None or left > 0:
        page = rows
        if after is not None:
            page = page.filter(open_time__gte=after) if first else page.filter(open_time__gt=after)
        size = chunk if left is None else min(chunk, left)
        batch = list(page.values_list(*_COLUMNS)[:size])
        if not batch:
            return
        for r in batch:
            yield VenueCandle(*r)
        after, first = batch[-1][0], False
        if left is not None:
            left -= len(batch)


def candles_last_closed(venue: str, symbol: str, timeframe: str, *, now: datetime) -> datetime | None:
    """Open time of the newest stored candle that has closed by `now` (open_time + timeframe <= now)."""
    return (_market(venue, symbol, timeframe).filter(open_time__lte=now - timeframe_delta(timeframe))
            .order_by("-open_time").values_list("open_time", flat=True).first())


def candles_closed_after(venue: str, symbol: str, timeframe: str, *, after: datetime | None, now: datetime,
                         limit: int) -> list[datetime]:
    """Open times of the newest `limit` candles closed by `now` and opened after `after`, oldest first."""
    rows = _market(venue, symbol, timeframe).filter(open_time__lte=now - timeframe_delta(timeframe))
    if after is not None:
        rows = rows.filter(open_time__gt=after)
    times = list(rows.order_by("-open_time").values_list("open_time", flat=True)[:limit])
    times.reverse()
    return times


def candles_count(venue: str, symbol: str, timeframe: str, *, since: datetime | None = None) -> int:
    """How many candles of a market and timeframe are stored (from `since` on)."""
    rows = _market(venue, symbol, timeframe)
    return (rows if since is None else rows.filter(open_time__gte=since)).count()


def atr_from_store(strategy: Strategy, now: datetime) -> Decimal | None:
    """ATR(14) of the strategy's market at its last closed candle (None without enough fresh candles)."""
    step = timeframe_delta(strategy.timeframe)
    candles = candles_read(candle_venue(strategy.account), strategy.symbol, strategy.timeframe, until=now - step,
                           limit=ATR_WINDOW)
    if len(candles) <= ATR_PERIOD:
        return None
    last_close = ms_to_datetime(int(candles.time[-1])) + step
    if now - last_close > ATR_MAX_AGE_BARS * step:
        return None  # the store is behind: no ATR rather than a stale one
    return atr_value(candles)


def strategies_for_market(*, venue: str, symbol: str, timeframe: str) -> list[int]:
    """Ids of the active indicator strategies that read a market's candles (`venue`: the candle store's key, a price
    feed's name; see candle_venue) on a timeframe."""
    from strategies.library import RULES

    accounts = VenueAccount.objects.filter(accounts_priced_by(venue)).values("pk")
    return list(Strategy.objects.filter(status=Strategy.Status.ACTIVE, kind__in=list(RULES), symbol=symbol,
                                        timeframe=timeframe, account__in=accounts)
                .order_by("pk").values_list("pk", flat=True))


def strategy_last_evaluated_candle(strategy_id: int) -> datetime | None:
    """Open time of the newest candle a strategy has evaluated, or None."""
    return (StrategyEvaluation.objects.filter(strategy_id=strategy_id).order_by("-candle_open_time")
            .values_list("candle_open_time", flat=True).first())


# --------------------------------------------------------------------------------------------- dashboard pages


def backtest_run_list() -> QuerySet[BacktestRun]:
    """Backtest runs newest first, without their trade lists."""
    return BacktestRun.objects.defer("trades").order_by("-created_at", "-id")


def backtest_equity(run: BacktestRun) -> dict[str, object]:
    """A run's equity after each closed trade and its drawdown (%), from its stored trades (Decimal as strings)."""
    cash = Decimal(str((run.config or {}).get("cash", "10000")))
    start_ms = run.trades[0]["entry_time"] if run.trades else (datetime_to_ms(run.start) if run.start else 0)
    times, equity, drawdown = [start_ms // 1000], [str(cash)], ["0"]
    peak = cash
    for trade in run.trades:
        cash += Decimal(trade["pnl"])
        peak = max(peak, cash)
        times.append(int(trade["exit_time"]) // 1000)
        equity.append(str(cash))
        drawdown.append(str(((cash / peak) - 1) * 100 if peak > 0 else Decimal(0)))
    return {"x": times, "equity": equity, "drawdown": drawdown, "per": "trade"}


def candle_markets() -> list[Mapping[str, object]]:
    """Stored candle markets (venue, symbol, timeframe) with their first and last candle and count."""
    from django.db.models import Count, Max, Min

    return list(Candle.objects.values("venue", "symbol", "timeframe")
                .annotate(first=Min("open_time"), last=Max("open_time"), count=Count("id"))
                .order_by("venue", "symbol", "timeframe"))


def strategy_price_chart(strategy: Strategy, *, limit: int = 500) -> dict[str, list]:
    """The last `limit` stored closes of a strategy's market (epoch seconds, floats for drawing only)."""
    from trading.models import MarketPrice

    candles = candles_read(candle_venue(strategy.account), strategy.symbol, strategy.timeframe, limit=limit)
    chart: dict[str, object] = {"x": (candles.time // 1000).tolist(), "close": candles.close.tolist(), "mark": None}
    latest = MarketPrice.objects.filter(feed=price_feed_of(strategy.account),  # drawn after the fills when no candles
                                        symbol=strategy.symbol).first()
    if latest is not None:
        chart["mark"] = {"t": int(latest.time.timestamp()), "price": str(latest.price)}
    return chart  # type: ignore[return-value]


BARS_CHART_MAX_CANDLES = 300_000  # above this the run's page draws equity per trade instead of re-running it


def backtest_equity_bars(run: BacktestRun, *, points: int = 1000) -> dict[str, list] | None:
    """A finished run's equity at every candle close and its drawdown (%), downsampled to min/max per bucket.

    Runs store trades and metrics only, so the curve is rebuilt by the same backtester on the same stored candles
    (deterministic) and cached. None when the run is not done, too long to redo on a page view, or when the rebuilt
    run no longer matches the stored one (its candles changed): the caller falls back to equity per trade.
    """
    from django.core.cache import cache

    if run.status != BacktestRun.Status.DONE:
        return None
    key = f"dashboard:bt-equity:{run.pk}:{run.finished_at.timestamp() if run.finished_at else 0}:{points}"
    cached = cache.get(key)
    if cached is not None:
        return cached or None
    chart = _equity_bars(run, points)
    cache.set(key, chart or {}, timeout=24 * 3600)
    return chart


def _equity_bars(run: BacktestRun, points: int) -> dict[str, list] | None:
    from strategies.backtest import config_from_json, run as backtest
    from trading.fields import column_error

    if candles_count(run.venue, run.symbol, run.timeframe, since=run.start) > BARS_CHART_MAX_CANDLES:
        return None
    candles = candles_read(run.venue, run.symbol, run.timeframe, since=run.start, until=run.end)
    if len(candles) < 2:
        return None
    try:
        result = backtest(candles, config_from_json(run.kind, run.params, run.config, fits=column_error))
    except (ValueError, ArithmeticError):
        return None
    if len(result.trades) != len(run.trades) or (result.trades and str(result.trades[-1].pnl) != run.trades[-1]["pnl"]):
        return None
    equity = result.equity
    start = float(result.metrics["start_equity"])
    peak = np.maximum.accumulate(np.maximum(equity, start))
    drawdown = (np.divide(equity, peak, out=np.zeros_like(equity), where=peak > 0) - 1.0) * 100
    keep = _min_max_indices(equity, points)
    return {"x": (result.equity_time[keep] // 1000).tolist(), "equity": equity[keep].tolist(),
            "drawdown": drawdown[keep].tolist(), "per": "candle"}


def _min_max_indices(values: np.ndarray, points: int) -> np.ndarray:
    """Indices of the first, last, and each bucket's min and max (so every spike stays visible), in order."""
    n = len(values)
    if n <= points:
        return np.arange(n)
    buckets = max(points // 2, 1)
    edges = np.linspace(0, n, buckets + 1, dtype=np.int64)
    keep = {0, n - 1}
    for lo, hi in zip(edges[:-1], edges[1:]):
        if hi > lo:
            part = values[lo:hi]
            keep.add(int(lo + np.argmin(part)))
            keep.add(int(lo + np.argmax(part)))
    return np.array(sorted(keep), dtype=np.int64)
