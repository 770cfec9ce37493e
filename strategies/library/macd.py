"""MACD rule: trade the MACD line crossing its signal line. Pure.

* enter long  when MACD crosses above its signal line: macd[t-1] < signal[t-1] and macd[t] >= signal[t]
* exit long   when MACD crosses below its signal line: macd[t-1] > signal[t-1] and macd[t] <= signal[t]
* with `allow_short`, the mirror: enter short on the cross below, exit short on the cross above.

`zero_filter` keeps only the crosses that happen on the far side of the zero line: a long entry needs
MACD < 0 at the crossing bar (a turn up from a down-trend, the classic reversal reading) and a short entry
needs MACD > 0. Exits are never filtered, so a position can always be closed.

MACD is TA-Lib's (EMAs of `fast` and `slow` bars, signal = EMA of MACD over `signal` bars).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from strategies import indicators
from strategies.base import Candles, Param, Signals, StrategyRule


class MacdRule(StrategyRule):
    """Trend following on MACD / signal-line crosses."""

    name = "macd"
    params = (
        Param("fast", int, 12, minimum=2, maximum=100, help="fast EMA period in bars"),
        Param("slow", int, 26, minimum=3, maximum=300, help="slow EMA period in bars"),
        Param("signal", int, 9, minimum=2, maximum=100, help="signal-line EMA period in bars"),
        Param("zero_filter", bool, False, help="enter long only below the zero line (short only above)"),
        Param("allow_short", bool, False, help="also trade the mirrored short side"),
    )

    @classmethod
    def check(cls, params: Mapping[str, Any]) -> dict[str, list[str]]:
        """Require the fast EMA to be shorter than the slow one."""
        if params["fast"] >= params["slow"]:
            return {"fast": [f"must be below slow ({params['slow']})"]}
        return {}

    @classmethod
    def warmup(cls, params: Mapping[str, Any]) -> int:
        """The signal line is first defined at bar slow + signal - 2, and a cross needs the bar before."""
        p = cls.resolve(params)
        return int(p["slow"]) + int(p["signal"]) - 1

    @classmethod
    def signals(cls, candles: Candles, params: Mapping[str, Any]) -> Signals:
        """Per-bar MACD / signal crosses (see the module docstring)."""
        p = cls.resolve(params)
        n = len(candles)
        if n <= cls.warmup(p):
            return Signals(*(np.zeros(n, dtype=np.bool_) for _ in range(4)))
        line, signal_line, _ = indicators.macd(candles.close, p["fast"], p["slow"], p["signal"])
        up = indicators.crossed_up(line, signal_line)
        down = indicators.crossed_down(line, signal_line)
        short = bool(p["allow_short"])
        enter_long, enter_short = up, down & short
        if p["zero_filter"]:
            enter_long = enter_long & (line < 0)
            enter_short = enter_short & (line > 0)
        return Signals(enter_long=enter_long, exit_long=down, enter_short=enter_short, exit_short=up & short)
