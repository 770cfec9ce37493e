"""Bollinger rule: mean reversion back inside the bands, or breakout through them. Pure.

Bands are TA-Lib's BBANDS: middle = SMA(close, period), upper/lower = middle +/- stddev population deviations.
`exit_at` picks the exit level: "middle" is the middle band, "upper" the far band (the upper band for a long,
the lower band for a short).

mean_reversion
* enter long  when the close comes back inside the lower band: close[t-1] < lower[t-1] and close[t] >= lower[t]
* exit long   while close >= the exit level (middle, or upper with exit_at="upper")
* short (allow_short): enter when close[t-1] > upper[t-1] and close[t] <= upper[t];
  exit while close <= the exit level (middle, or lower with exit_at="upper")

breakout
* enter long  when the close crosses above the upper band: close[t-1] < upper[t-1] and close[t] >= upper[t]
* exit long   when the close crosses back below the exit level: close[t-1] > level[t-1] and close[t] <= level[t]
* short (allow_short): enter when close[t-1] > lower[t-1] and close[t] <= lower[t]; exit on the cross back up
  through the exit level (middle, or lower with exit_at="upper")

Nothing fires before `warmup` bars (the bands need `period` closes and a cross needs the bar before).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from strategies import indicators
from strategies.base import Candles, Param, Signals, StrategyRule


class BollingerRule(StrategyRule):
    """Bollinger-band mean reversion or breakout."""

    name = "bollinger"
    params = (
        Param("period", int, 20, minimum=2, maximum=200, help="moving-average period in bars"),
        Param("stddev", float, 2.0, minimum=0.1, maximum=10, help="band width in standard deviations"),
        Param("mode", str, "mean_reversion", choices=("mean_reversion", "breakout")),
        Param("exit_at", str, "middle", choices=("middle", "upper"), help="middle band, or the far band"),
        Param("allow_short", bool, False, help="also trade the mirrored short side"),
    )

    @classmethod
    def warmup(cls, params: Mapping[str, Any]) -> int:
        """The bands are first defined at bar period - 1, and a cross needs the bar before."""
        return int(cls.resolve(params)["period"])

    @classmethod
    def signals(cls, candles: Candles, params: Mapping[str, Any]) -> Signals:
        """Per-bar band signals (see the module docstring)."""
        p = cls.resolve(params)
        n = len(candles)
        warmup = cls.warmup(p)
        if n <= warmup:
            return Signals(*(np.zeros(n, dtype=np.bool_) for _ in range(4)))
        close = candles.close
        upper, middle, lower = indicators.bollinger_bands(close, p["period"], p["stddev"])
        far = p["exit_at"] == "upper"
        long_exit_level, short_exit_level = (upper, lower) if far else (middle, middle)
        if p["mode"] == "breakout":
            enter_long = indicators.crossed_up(close, upper)
            exit_long = indicators.crossed_down(close, long_exit_level)
            enter_short = indicators.crossed_down(close, lower)
            exit_short = indicators.crossed_up(close, short_exit_level)
        else:
            enter_long = indicators.crossed_up(close, lower)
            exit_long = close >= long_exit_level
            enter_short = indicators.crossed_down(close, upper)
            exit_short = close <= short_exit_level
            # The level exits are states, not crosses: keep them quiet during the warm-up like the rest.
            exit_long[:warmup] = False
            exit_short[:warmup] = False
        short = bool(p["allow_short"])
        return Signals(enter_long=enter_long, exit_long=exit_long, enter_short=enter_short & short,
                       exit_short=exit_short & short)
