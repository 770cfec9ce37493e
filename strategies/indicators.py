"""Technical indicators: thin wrappers around TA-Lib that check their input first. Pure (numpy, TA-Lib).

Every indicator takes array-likes of prices (converted to contiguous float64), returns float64 arrays of the
same length with NaN during the warm-up, and equals TA-Lib's output. Bad input raises `IndicatorInputError`
instead of silently producing NaN: NaN or infinite prices, mismatched lengths, bad periods, too few rows.
`crossed_up` / `crossed_down` are the crossing primitives the strategy rules share (TA-Lib has none).
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import numpy.typing as npt
import talib
from talib import abstract

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


class IndicatorInputError(ValueError):
    """The input of an indicator is unusable (non-finite values, mismatched lengths, bad periods, too short)."""


def _series(name: str, values: Any) -> FloatArray:
    """Convert one input column to a finite 1-D float64 array."""
    try:
        array = np.ascontiguousarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise IndicatorInputError(f"{name}: not numeric ({exc})") from exc
    if array.ndim != 1:
        raise IndicatorInputError(f"{name}: must be one-dimensional, got shape {array.shape}")
    bad = ~np.isfinite(array)
    if bad.any():
        first = int(np.argmax(bad))
        raise IndicatorInputError(f"{name}: {int(bad.sum())} NaN or infinite value(s), first at index {first}")
    return array


def _period(name: str, value: Any, *, minimum: int = 2) -> int:
    """Check one integer period."""
    if isinstance(value, bool):
        raise IndicatorInputError(f"{name} must be an integer, got {value!r}")
    try:
        period = operator.index(value)
    except TypeError as exc:
        raise IndicatorInputError(f"{name} must be an integer, got {value!r}") from exc
    if period < minimum:
        raise IndicatorInputError(f"{name} must be at least {minimum}, got {period}")
    return period


def _need_rows(label: str, rows: int, function: str, **parameters: Any) -> None:
    """Require enough rows for at least one output value (TA-Lib's lookback + 1)."""
    spec = abstract.Function(function)  # type: ignore[attr-defined]  # talib.abstract defines it at import
    spec.set_parameters(**parameters)
    needed = int(spec.lookback) + 1
    if rows < needed:
        raise IndicatorInputError(f"{label} needs at least {needed} rows, got {rows}")


def _same_length(**columns: FloatArray) -> int:
    """The common length of the given columns."""
    lengths = {name: len(column) for name, column in columns.items()}
    if len(set(lengths.values())) > 1:
        raise IndicatorInputError(f"inputs differ in length: {lengths}")
    return next(iter(lengths.values()))


def rsi(close: Any, period: int = 14) -> FloatArray:
    """Relative strength index (Wilder), 0..100."""
    period = _period("period", period)
    prices = _series("close", close)
    _need_rows(f"rsi(period={period})", len(prices), "RSI", timeperiod=period)
    return talib.RSI(prices, timeperiod=period)


def macd(close: Any, fast: int = 12, slow: int = 26, signal: int = 9) -> tuple[FloatArray, FloatArray, FloatArray]:
    """MACD line, its signal line and the histogram (macd - signal)."""
    fast, slow, signal = _period("fast", fast), _period("slow", slow), _period("signal", signal)
    if fast >= slow:
        raise IndicatorInputError(f"fast ({fast}) must be below slow ({slow})")
    prices = _series("close", close)
    _need_rows(f"macd(fast={fast}, slow={slow}, signal={signal})", len(prices), "MACD",
               fastperiod=fast, slowperiod=slow, signalperiod=signal)
    line, signal_line, hist = talib.MACD(prices, fastperiod=fast, slowperiod=slow, signalperiod=signal)
    return line, signal_line, hist


def bollinger_bands(close: Any, period: int = 20, stddev: float = 2.0) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Upper band, middle band (simple moving average) and lower band, `stddev` population deviations apart."""
    period = _period("period", period)
    if isinstance(stddev, bool) or not isinstance(stddev, (int, float, np.integer, np.floating)):
        raise IndicatorInputError(f"stddev must be a number, got {stddev!r}")
    width = float(stddev)
    if not np.isfinite(width) or width <= 0:
        raise IndicatorInputError(f"stddev must be a positive finite number, got {stddev!r}")
    prices = _series("close", close)
    _need_rows(f"bollinger_bands(period={period})", len(prices), "BBANDS", timeperiod=period)
    upper, middle, lower = talib.BBANDS(prices, timeperiod=period, nbdevup=width, nbdevdn=width,
                                        matype=talib.MA_Type.SMA)
    return upper, middle, lower


def atr(high: Any, low: Any, close: Any, period: int = 14) -> FloatArray:
    """Average true range (Wilder), in price units."""
    period = _period("period", period)
    highs, lows, closes = _series("high", high), _series("low", low), _series("close", close)
    rows = _same_length(high=highs, low=lows, close=closes)
    _need_rows(f"atr(period={period})", rows, "ATR", timeperiod=period)
    return talib.ATR(highs, lows, closes, timeperiod=period)



def crossed_up(series: Any, level: Any) -> BoolArray:
    """Bars where `series` crosses up through `level`: series[t-1] < level[t-1] and series[t] >= level[t]."""
    a = np.asarray(series, dtype=np.float64)
    b = np.broadcast_to(np.asarray(level, dtype=np.float64), a.shape)
    out = np.zeros(a.shape, dtype=np.bool_)
    # NaN compares False, so nothing fires while either side is still warming up.
    out[1:] = (a[:-1] < b[:-1]) & (a[1:] >= b[1:])
    return out


def crossed_down(series: Any, level: Any) -> BoolArray:
    """Bars where `series` crosses down through `level`: series[t-1] > level[t-1] and series[t] <= level[t]."""
    a = np.asarray(series, dtype=np.float64)
    b = np.broadcast_to(np.asarray(level, dtype=np.float64), a.shape)
    out = np.zeros(a.shape, dtype=np.bool_)
    out[1:] = (a[:-1] > b[:-1]) & (a[1:] <= b[1:])
    return out
