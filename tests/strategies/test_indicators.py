"""The indicator wrappers equal TA-Lib on real candles, keep NaN for exactly the warm-up, and refuse bad input."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import talib
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies import indicators
from strategies.candles import candles_read_csv
from strategies.indicators import IndicatorInputError

CSV = Path(__file__).resolve().parents[2] / "data" / "ETH_BTC-1m.csv"


@functools.cache
def ohlc() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """High, low and close of the bundled ETH/BTC 1m candles (14,397 rows, one missing minute)."""
    candles = candles_read_csv(CSV, form="columns")
    return candles.high, candles.low, candles.close


def first_defined(values: np.ndarray) -> int:
    """Index of the first non-NaN value; everything after it must be defined too."""
    defined = ~np.isnan(values)
    first = int(np.argmax(defined))
    assert defined[first:].all()
    return first


@pytest.mark.parametrize("period", [2, 14, 50, 200])
def test_rsi_equals_talib_on_real_candles(period: int) -> None:
    close = ohlc()[2]
    result = indicators.rsi(close, period)
    np.testing.assert_array_equal(result, talib.RSI(close, timeperiod=period))
    assert first_defined(result) == period
    assert len(result) == len(close) and result.dtype == np.float64


@pytest.mark.parametrize(("fast", "slow", "signal"), [(12, 26, 9), (2, 3, 2), (5, 35, 5), (50, 200, 30)])
def test_macd_equals_talib_on_real_candles(fast: int, slow: int, signal: int) -> None:
    close = ohlc()[2]
    result = indicators.macd(close, fast, slow, signal)
    expected = talib.MACD(close, fastperiod=fast, slowperiod=slow, signalperiod=signal)
    for got, want in zip(result, expected, strict=True):
        np.testing.assert_array_equal(got, want)
        assert first_defined(got) == slow + signal - 2
    np.testing.assert_allclose(result[2], result[0] - result[1], rtol=0, atol=1e-15)


@pytest.mark.parametrize(("period", "stddev"), [(20, 2.0), (2, 0.1), (50, 1.5), (200, 10.0), (10, 3)])
def test_bollinger_bands_equal_talib_on_real_candles(period: int, stddev: float) -> None:
    close = ohlc()[2]
    upper, middle, lower = indicators.bollinger_bands(close, period, stddev)
    expected = talib.BBANDS(close, timeperiod=period, nbdevup=stddev, nbdevdn=stddev, matype=talib.MA_Type.SMA)
    for got, want in zip((upper, middle, lower), expected, strict=True):
        np.testing.assert_array_equal(got, want)
        assert first_defined(got) == period - 1
    np.testing.assert_array_equal(middle, talib.SMA(close, timeperiod=period))
    assert (upper[period - 1:] >= middle[period - 1:]).all() and (lower[period - 1:] <= middle[period - 1:]).all()


@pytest.mark.parametrize("period", [2, 14, 100])
def test_atr_equals_talib_on_real_candles(period: int) -> None:
    high, low, close = ohlc()
    result = indicators.atr(high, low, close, period)
    np.testing.assert_array_equal(result, talib.ATR(high, low, close, timeperiod=period))
    assert first_defined(result) == period
    assert (result[period:] >= 0).all()


def test_indicators_accept_plain_lists_and_integer_arrays() -> None:
    closes = [float(v) for v in ohlc()[2][:100]]
    np.testing.assert_array_equal(indicators.rsi(closes), indicators.rsi(np.asarray(closes)))
    integers = np.arange(1, 60, dtype=np.int64)
    np.testing.assert_array_equal(indicators.macd(integers)[0], talib.MACD(integers.astype(np.float64))[0])
    strided = np.repeat(ohlc()[2][:100], 2)[::2]
    np.testing.assert_array_equal(indicators.bollinger_bands(strided)[1], talib.SMA(ohlc()[2][:100], 20))


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(min_value=60, max_value=3000))
def test_indicators_on_a_prefix_equal_the_prefix_of_the_full_series(rows: int) -> None:
    high, low, close = ohlc()
    np.testing.assert_array_equal(indicators.rsi(close[:rows]), indicators.rsi(close)[:rows])
    for got, want in zip(indicators.macd(close[:rows]), indicators.macd(close), strict=True):
        np.testing.assert_array_equal(got, want[:rows])
    for got, want in zip(indicators.bollinger_bands(close[:rows]), indicators.bollinger_bands(close), strict=True):
        np.testing.assert_array_equal(got, want[:rows])
    np.testing.assert_array_equal(indicators.atr(high[:rows], low[:rows], close[:rows]),
                                  indicators.atr(high, low, close)[:rows])


def test_exactly_the_minimum_rows_give_one_value() -> None:
    high, low, close = ohlc()
    assert np.count_nonzero(~np.isnan(indicators.rsi(close[:15], 14))) == 1
    assert np.count_nonzero(~np.isnan(indicators.macd(close[:34], 12, 26, 9)[2])) == 1
    assert np.count_nonzero(~np.isnan(indicators.bollinger_bands(close[:20], 20)[0])) == 1
    assert np.count_nonzero(~np.isnan(indicators.atr(high[:15], low[:15], close[:15], 14))) == 1


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: indicators.rsi(c[:14], 14), "rsi(period=14) needs at least 15 rows, got 14"),
        (lambda c: indicators.macd(c[:33]), "macd(fast=12, slow=26, signal=9) needs at least 34 rows, got 33"),
        (lambda c: indicators.bollinger_bands(c[:19], 20), "bollinger_bands(period=20) needs at least 20 rows, got 19"),
        (lambda c: indicators.atr(c[:14], c[:14], c[:14], 14), "atr(period=14) needs at least 15 rows, got 14"),
        (lambda c: indicators.rsi(c[:0]), "needs at least 15 rows, got 0"),
    ],
)
def test_too_few_rows_say_how_many_are_needed(call: object, message: str) -> None:
    with pytest.raises(IndicatorInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call(ohlc()[2])  # type: ignore[operator]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_infinite_prices_are_refused(bad: float) -> None:
    high, low, close = (column[:100].copy() for column in ohlc())
    close[57] = bad
    for call in (lambda: indicators.rsi(close), lambda: indicators.macd(close),
                 lambda: indicators.bollinger_bands(close), lambda: indicators.atr(high, low, close)):
        with pytest.raises(IndicatorInputError, match="close: 1 NaN or infinite value.*index 57"):
            call()
    high[3] = bad
    with pytest.raises(IndicatorInputError, match="high"):
        indicators.atr(high, low, ohlc()[2][:100])


def test_atr_refuses_columns_of_different_lengths() -> None:
    high, low, close = ohlc()
    with pytest.raises(IndicatorInputError, match="differ in length"):
        indicators.atr(high[:100], low[:99], close[:100])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: indicators.rsi(c, 1), "period must be at least 2, got 1"),
        (lambda c: indicators.rsi(c, 0), "period must be at least 2"),
        (lambda c: indicators.rsi(c, 14.0), "period must be an integer"),
        (lambda c: indicators.rsi(c, True), "period must be an integer"),
        (lambda c: indicators.atr(c, c, c, 1), "period must be at least 2"),
        (lambda c: indicators.bollinger_bands(c, 1), "period must be at least 2"),
        (lambda c: indicators.macd(c, 1, 26, 9), "fast must be at least 2"),
        (lambda c: indicators.macd(c, 12, 26, 1), "signal must be at least 2"),
        (lambda c: indicators.macd(c, 26, 26, 9), r"fast \(26\) must be below slow \(26\)"),
        (lambda c: indicators.macd(c, 30, 26, 9), r"fast \(30\) must be below slow \(26\)"),
        (lambda c: indicators.bollinger_bands(c, 20, 0.0), "stddev must be a positive finite number"),
        (lambda c: indicators.bollinger_bands(c, 20, -2.0), "stddev must be a positive finite number"),
        (lambda c: indicators.bollinger_bands(c, 20, float("nan")), "stddev must be a positive finite number"),
        (lambda c: indicators.bollinger_bands(c, 20, "2"), "stddev must be a number"),
    ],
)
def test_bad_periods_and_widths_are_refused(call: object, message: str) -> None:
    with pytest.raises(IndicatorInputError, match=message):
        call(ohlc()[2][:500])  # type: ignore[operator]


def test_non_numeric_and_two_dimensional_input_is_refused() -> None:
    with pytest.raises(IndicatorInputError, match="not numeric"):
        indicators.rsi(["a"] * 30)
    with pytest.raises(IndicatorInputError, match="one-dimensional"):
        indicators.rsi(np.ones((30, 2)))


def test_indicator_input_error_is_a_value_error() -> None:
    assert issubclass(IndicatorInputError, ValueError)


def test_crosses_fire_on_the_bar_that_reaches_the_level_and_never_next_to_nan() -> None:
    series = np.array([np.nan, 25.0, 29.0, 30.0, 31.0, 29.0, 28.0, np.nan, 35.0, 25.0, 25.0])
    assert np.flatnonzero(indicators.crossed_up(series, 30.0)).tolist() == [3]
    assert np.flatnonzero(indicators.crossed_down(series, 30.0)).tolist() == [5, 9]
    level = np.array([1.0, 1.0, 2.0, 2.0, 2.0])
    assert np.flatnonzero(indicators.crossed_up(np.array([0.0, 0.5, 2.0, 3.0, 1.0]), level)).tolist() == [2]
    assert indicators.crossed_up(np.array([]), 1.0).shape == (0,)
