"""Combo rule: several indicator conditions combined with all/any, firing when the combination turns true. Pure.

Params: `rules` (a non-empty list of distinct names among rsi, bollinger, macd), `combine` ("all" or "any"),
one optional param object per sub-rule (`rsi`, `bollinger`, `macd`: that rule's own params, validated by
that rule, errors keyed `rsi.period` and so on), and `allow_short`. Sub-rule objects may not set
`allow_short` (the combo's own flag decides); an object for a rule missing from `rules` is validated but unused.

Each sub-rule contributes per-bar *conditions* (states, not cross events), with its own params:

| rule      | long entry                  | long exit                         | short entry / short exit |
|-----------|-----------------------------|-----------------------------------|--------------------------|
| rsi       | RSI < oversold              | RSI > overbought                  | RSI > overbought / RSI < oversold |
| bollinger | close < lower (mean_reversion), close > upper (breakout) | close > exit level (mean_reversion), close < exit level (breakout) | the mirror, exit level = middle or the far band |
| macd      | histogram turning up: hist[t] > hist[t-1] (and MACD < 0 with zero_filter) | hist[t] < hist[t-1] | hist turning down (and MACD > 0 with zero_filter) / turning up |

The sub-conditions are combined per bar with all/any into C (long entry), X (long exit), S (short entry),
Y (short exit). A signal fires on the transition only: enter_long[t] = C[t] and not C[t-1], likewise for the
other three, so a condition that stays true fires once. Both bars t-1 and t must have every indicator
defined, so nothing fires before `warmup` bars.

The default (rules rsi+bollinger+macd, combine all) is "RSI oversold and close below the lower band with the
MACD histogram turning up".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from strategies import indicators
from strategies.base import BoolArray, Candles, Param, Signals, StrategyRule
from strategies.library.bollinger import BollingerRule
from strategies.library.macd import MacdRule
from strategies.library.rsi import RsiRule

SUB_RULES: dict[str, type[StrategyRule]] = {r.name: r for r in (RsiRule, BollingerRule, MacdRule)}


class ComboRule(StrategyRule):
    """All/any of the RSI, Bollinger and MACD conditions, firing when the combination turns true."""

    name = "combo"
    params = (
        Param("rules", list, ("rsi", "bollinger", "macd"), choices=tuple(SUB_RULES),
              help="the sub-rules whose conditions are combined"),
        Param("combine", str, "all", choices=("all", "any"), help="all conditions, or any of them"),
        Param("rsi", dict, {}, help="params of the rsi conditions"),
        Param("bollinger", dict, {}, help="params of the bollinger conditions"),
        Param("macd", dict, {}, help="params of the macd conditions"),
        Param("allow_short", bool, False, help="also trade the mirrored short side"),
    )

    @classmethod
    def validate(cls, values: Mapping[str, Any]) -> dict[str, list[str]]:
        """Check the scalar params as declared, the rule list, and each sub-rule's object with its own rule."""
        structured = {"rules", *SUB_RULES}
        errors = super().validate({k: v for k, v in values.items() if k not in structured})
        if "rules" in values:
            errors.update(_rules_errors(values["rules"]))
        for name, rule in SUB_RULES.items():
            if name not in values:
                continue
            sub = values[name]
            if not isinstance(sub, Mapping):
                errors.setdefault(name, []).append("must be an object of that rule's params")
                continue
            if "allow_short" in sub:
                errors.setdefault(f"{name}.allow_short", []).append("set allow_short on the combo itself")
            for field, messages in rule.validate({k: v for k, v in sub.items() if k != "allow_short"}).items():
                errors.setdefault(f"{name}.{field}", []).extend(messages)
        return errors

    @classmethod
    def resolve(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        """Declared defaults overlaid with the given values; sub-rule objects resolved by their own rule."""
        resolved = super().resolve(values)
        resolved["rules"] = tuple(resolved["rules"])
        for name, rule in SUB_RULES.items():
            sub = rule.resolve(resolved[name])
            sub.pop("allow_short", None)
            resolved[name] = sub
        return resolved

    @classmethod
    def warmup(cls, params: Mapping[str, Any]) -> int:
        """One bar after the slowest sub-condition is first defined (the transition needs the bar before)."""
        p = cls.resolve(params)
        return max(_defined_from(name, p[name]) for name in p["rules"]) + 1

    @classmethod
    def signals(cls, candles: Candles, params: Mapping[str, Any]) -> Signals:
        """Per-bar transitions of the combined conditions (see the module docstring)."""
        p = cls.resolve(params)
        n = len(candles)
        if n <= cls.warmup(p):
            return Signals(*(np.zeros(n, dtype=np.bool_) for _ in range(4)))
        parts = [_conditions(name, candles, p[name]) for name in p["rules"]]
        reduce = np.logical_and.reduce if p["combine"] == "all" else np.logical_or.reduce
        defined = np.logical_and.reduce([part[0] for part in parts])
        combined = [reduce([part[i] for part in parts]) for i in range(1, 5)]
        enter_long, exit_long, enter_short, exit_short = (_turned_true(c, defined) for c in combined)
        short = bool(p["allow_short"])
        return Signals(enter_long=enter_long, exit_long=exit_long, enter_short=enter_short & short,
                       exit_short=exit_short & short)


def _rules_errors(value: Any) -> dict[str, list[str]]:
    """Check the `rules` list: non-empty, known names, no repeats."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        return {"rules": ["must be a list of rule names"]}
    if not value:
        return {"rules": [f"name at least one of {', '.join(SUB_RULES)}"]}
    messages = [f"unknown rule {v!r}; one of {', '.join(SUB_RULES)}" for v in value if v not in SUB_RULES]
    if len(set(value)) != len(value):
        messages.append("each rule may appear once")
    return {"rules": messages} if messages else {}


def _defined_from(name: str, p: Mapping[str, Any]) -> int:
    """The first bar at which a sub-rule's conditions are defined."""
    if name == "rsi":
        return int(p["period"])
    if name == "bollinger":
        return int(p["period"]) - 1
    return int(p["slow"]) + int(p["signal"]) - 1  # macd: the histogram and the bar before it


def _conditions(name: str, candles: Candles, p: Mapping[str, Any]) -> tuple[BoolArray, ...]:
    """(defined, long entry, long exit, short entry, short exit) per bar for one sub-rule."""
    close = candles.close
    if name == "rsi":
        value = indicators.rsi(close, p["period"])
        low, high = value < p["oversold"], value > p["overbought"]
        return ~np.isnan(value), low, high, high, low
    if name == "bollinger":
        upper, middle, lower = indicators.bollinger_bands(close, p["period"], p["stddev"])
        far = p["exit_at"] == "upper"
        long_level, short_level = (upper, lower) if far else (middle, middle)
        defined = ~np.isnan(middle)
        if p["mode"] == "breakout":
            return defined, close > upper, close < long_level, close < lower, close > short_level
        return defined, close < lower, close > long_level, close > upper, close < short_level
    line, _, hist = indicators.macd(close, p["fast"], p["slow"], p["signal"])
    previous = np.concatenate(([np.nan], hist[:-1]))
    rising, falling = hist > previous, hist < previous
    enter_long, enter_short = rising, falling
    if p["zero_filter"]:
        enter_long, enter_short = rising & (line < 0), falling & (line > 0)
    return ~np.isnan(previous) & ~np.isnan(hist), enter_long, falling, enter_short, rising


def _turned_true(condition: BoolArray, defined: BoolArray) -> BoolArray:
    """Bars where a defined condition holds and did not hold on the defined bar before."""
    out = np.zeros(condition.shape, dtype=np.bool_)
    out[1:] = condition[1:] & ~condition[:-1] & defined[1:] & defined[:-1]
    return out
