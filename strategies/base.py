"""The strategy-rule interface: declared parameters, and signals computed from candles. Pure (numpy only).

A rule is evaluated the same way in the backtest (once over the whole history) and live (over every stored
candle up to the last closed one, looking at that last bar): indicators are causal, so bar t's signal is the
same either way.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Candles:
    """OHLCV columns of one market and timeframe, oldest first; time = candle open, epoch ms UTC."""

    time: npt.NDArray[np.int64]
    open: FloatArray
    high: FloatArray
    low: FloatArray
    close: FloatArray
    volume: FloatArray

    def __len__(self) -> int:
        return int(self.time.shape[0])

    def head(self, n: int) -> Candles:
        """The first n candles."""
        return Candles(self.time[:n], self.open[:n], self.high[:n], self.low[:n], self.close[:n], self.volume[:n])


@dataclass(frozen=True)
class Param:
    """A declared parameter: type, default and allowed range or choices."""

    name: str
    type: type  # int, float, bool or str
    default: Any
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[Any, ...] = ()
    help: str = ""


@dataclass(frozen=True)
class Signals:
    """Per-bar decisions at the bar's close (True where the rule fires)."""

    enter_long: BoolArray
    exit_long: BoolArray
    enter_short: BoolArray
    exit_short: BoolArray


class StrategyRule(abc.ABC):
    """One strategy's rules. Subclasses declare `name` and `params` and implement `signals`."""

    name: ClassVar[str]
    params: ClassVar[tuple[Param, ...]]

    @classmethod
    def validate(cls, values: Mapping[str, Any]) -> dict[str, list[str]]:
        """Check params against the declarations (type, range, unknown names); errors per param name."""
        errors: dict[str, list[str]] = {}
        declared = {p.name: p for p in cls.params}
        for key in values:
            if key not in declared:
                errors.setdefault(key, []).append(f"unknown parameter; known: {', '.join(declared)}")
        for p in cls.params:
            if p.name not in values:
                continue
            value = values[p.name]
            if p.type is bool:
                ok = isinstance(value, bool)
            elif p.type is int:
                ok = isinstance(value, int) and not isinstance(value, bool)
            elif p.type is float:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))
            else:
                ok = isinstance(value, str)
            if not ok:
                errors.setdefault(p.name, []).append(f"must be a {p.type.__name__}")
                continue
            if p.choices and value not in p.choices:
                errors.setdefault(p.name, []).append(f"must be one of {', '.join(map(str, p.choices))}")
            if p.minimum is not None and value < p.minimum:
                errors.setdefault(p.name, []).append(f"must be at least {p.minimum}")
            if p.maximum is not None and value > p.maximum:
                errors.setdefault(p.name, []).append(f"must be at most {p.maximum}")
        if not errors:
            errors.update(cls.check(cls.resolve(values)))
        return errors

    @classmethod
    def resolve(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        """Declared defaults overlaid with the given values."""
        return {p.name: values.get(p.name, p.default) for p in cls.params}

    @classmethod
    def check(cls, params: Mapping[str, Any]) -> dict[str, list[str]]:
        """Cross-parameter checks (e.g. fast < slow); override where needed."""
        return {}

    @classmethod
    @abc.abstractmethod
    def warmup(cls, params: Mapping[str, Any]) -> int:
        """Bars needed before the first signal can fire."""

    @classmethod
    @abc.abstractmethod
    def signals(cls, candles: Candles, params: Mapping[str, Any]) -> Signals:
        """Compute per-bar signals over all candles (causal: bar t uses bars <= t only)."""


def last_bar_action(signals: Signals, *, position: int, allow_short: bool) -> str | None:
    """The engine action for the last bar given the current position sign (-1, 0, +1), or None."""
    i = -1
    if position > 0 and signals.exit_long[i]:
        return "close"
    if position < 0 and signals.exit_short[i]:
        return "close"
    if position <= 0 and signals.enter_long[i]:
        return "open_long"
    if allow_short and position >= 0 and signals.enter_short[i]:
        return "open_short"
    return None


def rule_names(rules: Sequence[type[StrategyRule]]) -> list[str]:
    """Names of the given rules."""
    return [r.name for r in rules]
