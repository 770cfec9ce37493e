"""Backtester: the live strategy rules, risk sizing, fill model and P&L code run over historical candles. Pure.

What is shared with the live engine (nothing is re-implemented here):
* signals: the rule's `signals()` from `strategies.library.RULES`, evaluated once over the whole history
  (rules are causal, so bar t's signal equals what the live engine computes at bar t's close), and the
  per-bar action of `strategies.base.last_bar_action` (close before open; long before short; a signal to
  the other side while in a position is a reverse);
* sizing, limits and exit prices: `trading.risk.decide` for every entry (the account view is built from
  the backtest's own cash and position, the quote is the fill bar's open, `now` is that bar's open time);
* fills: the paper venue's fill model (`exchanges.fills`: taker slippage, tick and fee rounding) when a paper
  `Market` is given;
* P&L: `trading.pnl.apply_fill`, exact Decimal.

Timing (no look-ahead): a signal on candle t's close fills at candle t+1's open (the next *row*: missing
candles are never assumed away, so across a gap the fill is at the next existing candle's open); a signal
on the last candle is ignored. Stop-loss and take-profit are checked on every candle from the entry candle
on, against its low and high: if the candle's open is already beyond a level (a gap), the exit fills at
the open; else, when the candle touches both levels, the stop is taken (we cannot know which came first);
else at the level touched. A trade still open after the last candle is closed at its close ("end").
Money is Decimal; floats are read back with `Decimal(repr(x))`, i.e. the CSV's own digits. See
docs/backtesting.md for every assumption and the metric formulas.

Speed: the signals are computed once with numpy/TA-Lib and only the events are walked in Python (the next
signal found by bisecting the sorted signal candles, stop/take-profit hits by argmax over the span of one
trade), so the Python work is per trade, not per candle; the equity curve is float64, built with numpy.

Modules, by job: this one (the settings, a stored run's settings, `run`), `strategies.simulation` (the event
walk), `strategies.performance` (the metrics), `strategies.report` (JSON and HTML), `strategies.candles`
(the shared CSV read as columns: `candles_read_csv(path, form="columns")`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import numpy as np
import numpy.typing as npt

from exchanges.base import Market
from strategies.base import Candles, StrategyRule
from strategies.candles import candle_problems
from strategies.performance import backtest_metrics
from strategies.simulation import Simulation, Trade
from trading.domain import RiskLimits, StrategyRisk

__all__ = [
    "BacktestConfig",
    "BacktestResult",
    "Trade",
    "config_from_json",
    "config_problems",
    "run",
]

SIZINGS = ("all-in", "risk")
_ZERO = Decimal("0")
_ONE = Decimal("1")
_BPS = Decimal("10000")

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


# --------------------------------------------------------------------------------------------- values


@dataclass(frozen=True)
class BacktestConfig:
    """What to backtest and how: the rule and its params, cash, costs, sizing, exits and limits."""

    strategy: str  # a key of strategies.library.RULES
    params: Mapping[str, Any] = field(default_factory=dict)
    cash: Decimal = Decimal("10000")  # starting cash in quote
    fee: Decimal = Decimal("0.001")  # taker fee fraction, used when market is None
    slippage_bps: Decimal = Decimal("0")  # against the taker, in basis points of the price
    sizing: str = "all-in"  # "all-in" | "risk" (the strategy's sizing rule through trading.risk.decide)
    risk: StrategyRisk | None = None  # sizing rule + stop-loss/take-profit rules (both modes use its exits)
    limits: RiskLimits | None = None  # None = RiskLimits() (1x leverage, no other limit)
    market: Market | None = None  # a paper market (tick/lot rounding, its taker fee); None = frictionless
    allow_short: bool = False  # take short entries (sets the rule's allow_short param; that param alone does too)


@dataclass(frozen=True)
class BacktestResult:
    """Trades, metrics, and the per-candle equity at the close (float64, for charts and ratios only)."""

    trades: tuple[Trade, ...]
    metrics: dict[str, Any]
    equity_time: IntArray
    equity: FloatArray
    start_time: int
    end_time: int


# --------------------------------------------------------------------------------------------- stored runs


# Each number of a stored run's config: (lowest, whether the lowest is allowed, highest allowed or None, meaning).
CONFIG_NUMBERS: dict[str, tuple[Decimal, bool, Decimal | None, str]] = {
    "cash": (Decimal(0), False, None, "starting cash in quote, above 0"),
    "fee": (Decimal(0), True, Decimal("0.999999"), "the taker fee as a fraction of the notional, from 0 to below 1 "
                                                    "(0.001 is 0.1 %)"),
    "slippage_bps": (Decimal(0), True, Decimal(10000), "slippage in basis points, from 0 to 10000"),
}
CONFIG_FIELDS = {"cash", "fee", "slippage_bps", "sizing", "allow_short"}


def config_problems(config: Mapping[str, Any], *, fits: Callable[[Decimal], str | None] | None = None) -> list[str]:
    """Each problem of a stored run's config (JSON), naming its field ("fee: ..."); [] when it is good.

    `fits`, when given, says why a number does not fit where it is stored (None when it does).
    """
    problems = []
    unknown = set(config) - CONFIG_FIELDS
    if unknown:
        problems.append(f"unknown field(s) {', '.join(sorted(map(str, unknown)))}; "
                        f"allowed: {', '.join(sorted(CONFIG_FIELDS))}")
    for key, (lowest, lowest_ok, highest, meaning) in CONFIG_NUMBERS.items():
        if key not in config:
            continue
        raw = config[key]
        value = None
        if isinstance(raw, (str, int, float)) and not isinstance(raw, bool):
            try:
                value = Decimal(str(raw).strip())
            except ArithmeticError:
                value = None
        if value is None or not value.is_finite():
            problems.append(f"{key}: {raw!r} is not a decimal number; {meaning}")
            continue
        unfit = (fits(value) if fits is not None else None) or (
            meaning
            if value < lowest or (value == lowest and not lowest_ok) or (highest is not None and value > highest)
            else None)
        if unfit:
            problems.append(f"{key}: {unfit}")
    if "sizing" in config and config["sizing"] != "all-in":
        problems.append("sizing: stored runs use sizing all-in (risk sizing needs a strategy's risk settings)")
    if "allow_short" in config and not isinstance(config["allow_short"], bool) and config["allow_short"] not in (
            "true", "false"):
        problems.append(f"allow_short: true or false, not {config['allow_short']!r}")
    return problems


def config_from_json(kind: str, params: Mapping[str, Any], config: Mapping[str, Any], *,
                     fits: Callable[[Decimal], str | None] | None = None) -> BacktestConfig:
    """The BacktestConfig of a stored run (its kind, params and JSON config); ValueError naming each problem."""
    problems = config_problems(config, fits=fits)
    if problems:
        raise ValueError("; ".join(problems))
    values: dict[str, Any] = {k: Decimal(str(config[k]).strip()) for k in CONFIG_NUMBERS if k in config}
    if "sizing" in config:
        values["sizing"] = "all-in"
    if "allow_short" in config:
        values["allow_short"] = config["allow_short"] in (True, "true")  # "false" is a string, and truthy
    return BacktestConfig(strategy=kind, params=params, **values)


# --------------------------------------------------------------------------------------------- run


def run(
    candles: Candles, config: BacktestConfig, *, progress: Callable[[float], None] | None = None
) -> BacktestResult:
    """Backtest a strategy rule over candles; progress, when given, is called with the share done (0..1)."""
    rule = _rule(config.strategy)
    errors = rule.validate(config.params)
    if errors:
        listed = "; ".join(f"{name}: {', '.join(messages)}" for name, messages in sorted(errors.items()))
        raise ValueError(f"invalid params for {config.strategy}: {listed}")
    _check_config(config)
    problems = candle_problems(candles)
    if problems:
        raise ValueError("unusable candles: " + "; ".join(problems))
    values = dict(config.params)
    if config.allow_short and any(p.name == "allow_short" for p in rule.params):
        values["allow_short"] = True  # the rule emits its short signals only when its own param says so
    params = rule.resolve(values)
    signals = rule.signals(candles, params)
    allow_short = config.allow_short or bool(params.get("allow_short", False))
    sim = Simulation(candles, signals, cash=config.cash, fee=config.fee, slippage_bps=config.slippage_bps,
                     sizing=config.sizing, risk=config.risk, limits=config.limits, market=config.market,
                     allow_short=allow_short, progress=progress)
    sim.walk()
    equity = sim.equity()
    metrics = backtest_metrics(trades=sim.trades, equity=equity, time=sim.time, cash=config.cash, final=sim.cash,
                               bars_in_market=sim.bars_in_market, rejected=sim.rejected)
    return BacktestResult(trades=tuple(sim.trades), metrics=metrics, equity_time=sim.time, equity=equity,
                          start_time=int(sim.time[0]), end_time=int(sim.time[-1]))


def _rule(name: str) -> type[StrategyRule]:
    from strategies.library import RULES

    try:
        return RULES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(sorted(RULES))}") from None


def _check_config(config: BacktestConfig) -> None:
    """Fail fast on settings the run could not honour."""
    for name in ("cash", "fee", "slippage_bps"):
        value = getattr(config, name)
        if not isinstance(value, Decimal) or not value.is_finite():
            raise ValueError(f"{name} must be a finite Decimal, got {value!r}")
    if config.cash <= 0:
        raise ValueError(f"cash must be positive, got {config.cash}")
    if not _ZERO <= config.fee < _ONE:
        raise ValueError(f"fee must be in [0, 1), got {config.fee}")
    if not _ZERO <= config.slippage_bps < _BPS:
        raise ValueError(f"slippage_bps must be in [0, 10000), got {config.slippage_bps}")
    if config.sizing not in SIZINGS:
        raise ValueError(f"sizing must be one of {', '.join(SIZINGS)}, got {config.sizing!r}")
    if config.sizing == "risk" and config.risk is None:
        raise ValueError("risk sizing needs `risk` (the strategy's sizing rule and exits)")
