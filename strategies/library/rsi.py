"""RSI rule: trade the RSI crossing back through its oversold / overbought levels. Pure.

* enter long  when RSI crosses up through `oversold`:    RSI[t-1] < oversold <= RSI[t]
* exit long   when RSI crosses down through `overbought`: RSI[t-1] > overbought >= RSI[t]
* with `allow_short`, the mirror: enter short on the cross down through `overbought`, exit short on the cross
  up through `oversold`.

RSI is TA-Lib's (Wilder smoothing); NaN during its warm-up compares False, so nothing fires there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from strategies import indicators
from strategies.base import Candles, Param, Signals, StrategyRule


class RsiRule(StrategyRule):
    """Mean reversion on RSI crosses of the oversold and overbought levels."""

    name = "rsi"
    params = (
        Param("period", int, 14, minimum=2, maximum=200, help="RSI period in bars"),
        Param("oversold", float, 30.0, minimum=1, maximum=99, help="enter long on the cross up through this"),
        Param("overbought", float, 70.0, minimum=1, maximum=99, help="exit long on the cross down through this"),
        Param("allow_short", bool, False, help="also trade the mirrored short side"),
    )

    @classmethod
    def check(cls, params: Mapping[str, Any]) -> dict[str, list[str]]:
        """Require oversold below overbought."""
        if params["oversold"] >= params["overbought"]:
            return {"oversold": [f"must be below overbought ({params['overbought']})"]}
        return {}

    @classmethod
    def warmup(cls, params: Mapping[str, Any]) -> int:
        """RSI needs `period` bars of changes, and a cross needs the bar before."""
        return int(cls.resolve(params)["period"]) + 1

    @classmethod
    def signals(cls, candles: Candles, params: Mapping[str, Any]) -> Signals:
        """Per-bar RSI crosses (see the module docstring)."""
        p = cls.resolve(params)
        n = len(candles)
        if n <= cls.warmup(p):
            return Signals(*(np.zeros(n, dtype=np.bool_) for _ in range(4)))
        value = indicators.rsi(candles.close, p["period"])
        up = indicators.crossed_up(value, p["oversold"])
        down = indicators.crossed_down(value, p["overbought"])
        short = bool(p["allow_short"])
        return Signals(enter_long=up, exit_long=down, enter_short=down & short, exit_short=up & short)
