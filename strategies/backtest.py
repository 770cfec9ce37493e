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
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import (
    ROUND_DOWN,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
    localcontext,
)
from os import PathLike
from typing import Any

import numpy as np
import numpy.typing as npt

from exchanges.base import Market, OrderType, Side
from exchanges.fills import FEE_QUANTUM, round_half_up, slipped_price
from strategies.base import Candles, Signals, StrategyRule
from trading import pnl, risk
from trading.domain import (
    AccountView,
    Action,
    ExitMode,
    MarketRules,
    PositionView,
    Quote,
    RiskLimits,
    Rule,
    SignalIntent,
    SizingMode,
    SizingRule,
    StrategyRisk,
)

__all__ = [
    "BacktestConfig",
    "BacktestResult",
    "CsvError",
    "Trade",
    "load_csv",
    "result_to_html",
    "result_to_json",
    "run",
]

CSV_HEADER = ("timestamp", "open", "high", "low", "close", "volume")
SIZINGS = ("all-in", "risk")
EXIT_REASONS = ("signal", "stop_loss", "take_profit", "end")
# Frictionless (no market) quantities are rounded down to this many significant digits: far below float
# precision, and it keeps every product and sum of the P&L code within its exact 50-digit context.
QTY_DIGITS = 20
ATR_PERIOD = 14  # the live engine sends ATR(14) at the signal bar with ATR-multiple exits (strategies.marketdata)
YEAR_MS = 365 * 86_400_000  # crypto trades every day: annualize over 365 days (as vectorbt's default year)
DAY_MS = 86_400_000
BACKTEST_SYMBOL = "BACKTEST"
_TINY = Decimal("1e-30")  # tick and lot of the frictionless market: no rounding at the precision in play
_ZERO = Decimal("0")
_ONE = Decimal("1")
_BPS = Decimal("10000")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# Sums and products of money must be exact (like trading.pnl): a silent rounding raises instead.
_EXACT = Context(prec=50, traps=[InvalidOperation, DivisionByZero, Overflow, Inexact])
_QTY = Context(prec=QTY_DIGITS, rounding=ROUND_DOWN, traps=[InvalidOperation, DivisionByZero, Overflow])
_WIDE = Context(prec=50, traps=[InvalidOperation, DivisionByZero, Overflow])
_SHORT = Context(prec=QTY_DIGITS)  # for quotients that are only shown (average trade)
_PAPER = Context()  # the paper venue prices and fees in the default decimal context: so do we, to match it

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
class Trade:
    """One round trip: times are candle open times (epoch ms), money in quote, quantity in base."""

    entry_time: int
    exit_time: int
    side: str  # long | short
    quantity: Decimal
    entry_price: Decimal
    exit_price: Decimal
    fees: Decimal  # entry fee + exit fee
    pnl: Decimal  # net of fees
    exit_reason: str  # signal | stop_loss | take_profit | end


@dataclass(frozen=True)
class BacktestResult:
    """Trades, metrics, and the per-candle equity at the close (float64, for charts and ratios only)."""

    trades: tuple[Trade, ...]
    metrics: dict[str, Any]
    equity_time: IntArray
    equity: FloatArray
    start_time: int
    end_time: int


class CsvError(ValueError):
    """A candle file that does not follow the shared CSV format; the message names the bad lines."""


# --------------------------------------------------------------------------------------------- CSV


def load_csv(path: str | PathLike[str]) -> Candles:
    """Read the shared candle CSV (timestamp ms, open, high, low, close, volume); raise CsvError naming bad lines."""
    import pandas as pd  # only here: the backtest itself needs numpy alone

    with open(path, encoding="utf-8") as f:
        header = f.readline().strip()
    if tuple(h.strip() for h in header.split(",")) != CSV_HEADER:
        raise CsvError(f"{path}: line 1: header must be {','.join(CSV_HEADER)!r}, got {header!r}")
    dtypes = {"timestamp": np.int64, **{name: np.float64 for name in CSV_HEADER[1:]}}
    try:
        frame = pd.read_csv(path, dtype=dtypes, engine="c", skip_blank_lines=False)  # type: ignore[arg-type]
    except (ValueError, TypeError, pd.errors.ParserError):
        raise CsvError(_csv_errors(path)) from None
    if list(frame.columns) != list(CSV_HEADER):
        raise CsvError(_csv_errors(path))
    columns = [np.ascontiguousarray(frame[name].to_numpy(copy=True)) for name in CSV_HEADER]
    candles = Candles(*columns)
    problems = _candle_problems(candles)
    if problems:
        raise CsvError(f"{path}: " + "; ".join(problems))
    return candles


def _csv_errors(path: str | PathLike[str], limit: int = 10) -> str:
    """Scan a file the fast parser refused and name its bad lines (1-based, header = line 1)."""
    bad: list[str] = []
    count = 0
    with open(path, encoding="utf-8") as f:
        next(f, None)
        for number, line in enumerate(f, start=2):
            fields = line.rstrip("\r\n").split(",")
            problem = ""
            if len(fields) != len(CSV_HEADER):
                problem = f"expected {len(CSV_HEADER)} fields, got {len(fields)}"
            else:
                try:
                    int(fields[0])
                    for value in fields[1:]:
                        float(value)
                except ValueError as exc:
                    problem = str(exc)
            if problem:
                count += 1
                if len(bad) < limit:
                    bad.append(f"line {number}: {problem}")
    if not bad:
        return f"{path}: unreadable CSV"
    more = f" (and {count - len(bad)} more)" if count > len(bad) else ""
    return f"{path}: {count} bad line(s): " + "; ".join(bad) + more


def _lines(mask: npt.NDArray[np.bool_], limit: int = 10) -> str:
    """Name the CSV lines (row index + 2) where mask is True."""
    rows = np.flatnonzero(mask)
    listed = ", ".join(str(int(r) + 2) for r in rows[:limit])
    more = f" and {rows.size - limit} more" if rows.size > limit else ""
    return f"line(s) {listed}{more}"


def _candle_problems(candles: Candles) -> list[str]:
    """Describe what makes candles unusable: lengths, non-finite or non-positive prices, OHLC order, time order."""
    n = len(candles)
    columns = {"open": candles.open, "high": candles.high, "low": candles.low, "close": candles.close,
               "volume": candles.volume}
    if n == 0:
        return ["no candles"]
    if any(len(c) != n for c in columns.values()):
        return [f"columns differ in length: {dict((k, len(v)) for k, v in columns.items())}"]
    # Cheap whole-column tests first (a sum is NaN or infinite when any value is); lines only on failure.
    problems: list[str] = []
    for name, values in columns.items():
        if not math.isfinite(float(np.sum(values))):
            problems.append(f"{name} is missing or not finite at {_lines(~np.isfinite(values))}")
    if problems:
        return problems
    low, high = candles.low, candles.high
    body_low = np.minimum(candles.open, candles.close)
    if (low > body_low).any():
        problems.append(f"low above open or close at {_lines(low > body_low)}")
    body_high = np.maximum(candles.open, candles.close, out=body_low)
    if (high < body_high).any():
        problems.append(f"high below open or close at {_lines(high < body_high)}")
    if problems or float(low.min()) <= 0:  # once ordered, a positive low makes every price positive
        bad = (low <= 0) | (candles.open <= 0) | (candles.close <= 0) | (high <= 0)
        if bad.any():
            problems.append(f"prices must be positive at {_lines(bad)}")
    if float(candles.volume.min()) < 0:
        problems.append(f"volume must not be negative at {_lines(candles.volume < 0)}")
    time = candles.time
    if n > 1 and (time[1:] <= time[:-1]).any():
        unsorted = np.zeros(n, dtype=np.bool_)
        unsorted[1:] = time[1:] <= time[:-1]
        problems.append(f"timestamps must be sorted and unique: not after the previous row at {_lines(unsorted)}")
    return problems


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
    problems = _candle_problems(candles)
    if problems:
        raise ValueError("unusable candles: " + "; ".join(problems))
    values = dict(config.params)
    if config.allow_short and any(p.name == "allow_short" for p in rule.params):
        values["allow_short"] = True  # the rule emits its short signals only when its own param says so
    params = rule.resolve(values)
    signals = rule.signals(candles, params)
    allow_short = config.allow_short or bool(params.get("allow_short", False))
    sim = _Simulation(candles, config, signals, allow_short=allow_short, progress=progress)
    sim.walk()
    return sim.result()


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


def _dec(value: float) -> Decimal:
    """A float from the candles as the Decimal of its shortest repr (the digits it was read from)."""
    return Decimal(float.__repr__(value))


def _ms_to_datetime(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


@dataclass(frozen=True)
class _Position:
    """The open trade."""

    side: Side  # BUY = long, SELL = short
    bar: int  # entry candle
    quantity: Decimal
    price: Decimal  # entry fill price
    fee: Decimal  # entry fee
    state: pnl.PositionState
    stop: Decimal | None
    take: Decimal | None


@dataclass(frozen=True)
class _Exit:
    bar: int
    price: Decimal  # before slippage
    reason: str


class _Simulation:
    """One backtest run: walks the signal and stop events, keeps cash, trades and the equity events."""

    def __init__(
        self,
        candles: Candles,
        config: BacktestConfig,
        signals: Signals,
        *,
        allow_short: bool,
        progress: Callable[[float], None] | None,
    ) -> None:
        self.config = config
        self.n = n = len(candles)
        self.time = candles.time
        self.open, self.high, self.low, self.close = candles.open, candles.high, candles.low, candles.close
        for name in ("enter_long", "exit_long", "enter_short", "exit_short"):
            if len(getattr(signals, name)) != n:
                raise ValueError(f"the rule returned {len(getattr(signals, name))} {name} values for {n} candles")
        enter_long = np.asarray(signals.enter_long, dtype=np.bool_)
        exit_long = np.asarray(signals.exit_long, dtype=np.bool_)
        exit_short = np.asarray(signals.exit_short, dtype=np.bool_)
        # The candles where each state has something to do, as sorted lists (bisect is the cheapest lookup).
        # last_bar_action: flat -> long first, then short; long -> close, else reverse; short likewise.
        if allow_short:
            enter_short = np.asarray(signals.enter_short, dtype=np.bool_)
            self.flat_events: list[int] = np.flatnonzero(enter_long | enter_short).tolist()
            self.long_events: list[int] = np.flatnonzero(exit_long | enter_short).tolist()
            self.short_events: list[int] = np.flatnonzero(exit_short | enter_long).tolist()
        else:
            self.flat_events = np.flatnonzero(enter_long).tolist()
            self.long_events = np.flatnonzero(exit_long).tolist()
            self.short_events = []
        self.enter_long, self.exit_long, self.exit_short = enter_long, exit_long, exit_short
        self.progress = progress

        market = config.market
        self.market = market
        self.fee_rate = market.taker_fee if market is not None else config.fee
        self.bps = config.slippage_bps
        self.symbol = market.symbol if market is not None else BACKTEST_SYMBOL
        self.limits = config.limits or RiskLimits()
        self.rules = MarketRules(
            symbol=self.symbol,
            lot_size=market.lot_size if market is not None else _TINY,
            min_qty=market.min_qty if market is not None else _ZERO,
            tick_size=market.tick_size if market is not None else _TINY,
            min_notional=market.min_notional if market is not None else _ZERO,
            # frictionless: no venue cap, the account's limit (RiskLimits.max_leverage) decides
            max_leverage=market.max_leverage if market is not None else self.limits.max_leverage,
        )
        self.all_in = config.sizing == "all-in"
        # all-in passes its quantity with the intent, so the sizing rule is unused there (but must be valid)
        self.risk = config.risk or StrategyRisk(sizing=SizingRule(SizingMode.QUANTITY, _ONE))
        self.has_exits = any(
            r.mode is not ExitMode.NONE and r.value is not None for r in (self.risk.stop_loss, self.risk.take_profit)
        )
        # All-in on a frictionless market with no exits and no limits leaves decide nothing to size, round,
        # price or check (it would accept the formula's quantity as is), so that case skips the call.
        self.use_decide = not self.all_in or self.has_exits or config.limits is not None or market is not None
        uses_atr = ExitMode.ATR in (self.risk.stop_loss.mode, self.risk.take_profit.mode)
        self.atr = self._atr() if uses_atr else None
        self.cost_factor = _ONE + self.fee_rate

        self.cash = config.cash  # the balance while flat; each trade adds its net P&L
        self.position: _Position | None = None
        self.trades: list[Trade] = []
        self.rejected: dict[str, int] = {}
        self.day = -1
        self.day_equity = self.cash
        self.bars_in_market = 0
        # equity events: from this candle's close on, equity = cash + signed qty x close
        self.event_bars: list[int] = []
        self.event_cash: list[float] = []
        self.event_qty: list[float] = []
        self.reported = 0.0

    # ----------------------------------------------------------------------------------------- walk

    def walk(self) -> None:
        """Trade every entry, exit, reverse and stop/take-profit hit in time order."""
        n = self.n
        flat_events, long_events, short_events = self.flat_events, self.long_events, self.short_events
        bar = 0  # the first candle whose close-time signal is still to be acted on
        while bar < n:
            position = self.position
            if position is None:
                k = bisect_left(flat_events, bar)
                if k == len(flat_events) or flat_events[k] >= n - 1:
                    break  # no more entries (a signal on the last candle cannot fill)
                signal = flat_events[k]
                self._enter(side=Side.BUY if self.enter_long[signal] else Side.SELL, signal=signal)
                bar = signal + 1
            else:
                long = position.side is Side.BUY
                events = long_events if long else short_events
                k = bisect_left(events, bar)
                signal = events[k] if k < len(events) else n
                last = min(signal, n - 1)  # stops are watched up to the signal candle (its exit fills after it)
                hit = self._first_hit(position, bar, last) if self.has_exits else None
                if hit is not None:
                    self._close(hit)
                    bar = hit.bar  # flat from inside this candle on: its close may signal again
                elif signal >= n - 1:
                    break  # closed at the end, below
                elif (self.exit_long if long else self.exit_short)[signal]:
                    self._close(_Exit(signal + 1, _dec(self.open[signal + 1]), "signal"))
                    bar = signal + 1
                else:
                    self._enter(side=position.side.opposite, signal=signal)  # a reverse: all or nothing
                    bar = signal + 1
            if self.progress is not None and bar - self.reported * n >= n / 100:
                self.reported = bar / n
                self.progress(min(self.reported, 1.0))
        if self.position is not None:
            self._close(_Exit(n - 1, _dec(self.close[n - 1]), "end"))
        if self.progress is not None:
            self.progress(1.0)

    # ----------------------------------------------------------------------------------------- entries

    def _enter(self, *, side: Side, signal: int) -> None:
        """Enter at the next candle's open: all-in or the strategy's sizing, checked by trading.risk.decide."""
        fill_bar = signal + 1
        quote = _dec(self.open[fill_bar])
        price = self._fill_price(side, quote)
        held = self.position
        quantity: Decimal | None = None
        if self.all_in:
            cash = self.cash
            if held is not None:  # a reverse invests what its exit leg leaves
                exit_state = self._exit_state(held, self._fill_price(side, quote))
                cash = _EXACT.add(cash, exit_state.net_realized)
            if cash <= 0:  # as decide: no exposure without positive equity
                self.rejected[Rule.LEVERAGE] = self.rejected.get(Rule.LEVERAGE, 0) + 1
                return
            quantity = self._all_in_quantity(cash, price)
            if quantity is None:
                self.rejected[Rule.MIN_SIZE] = self.rejected.get(Rule.MIN_SIZE, 0) + 1
                return
        stop = take = None
        if self.use_decide:
            decided = self._decide(side=side, signal=signal, quote=quote, quantity=quantity)
            if decided is None:
                return
            quantity, stop, take = decided
        assert quantity is not None
        if held is not None:
            self._close(_Exit(fill_bar, quote, "signal"))
        fee = self._fee(quantity, price)
        state, _ = pnl.apply_fill(pnl.EMPTY, side=side, quantity=quantity, price=price, fee=fee)
        self.position = _Position(side, fill_bar, quantity, price, fee, state, stop, take)
        signed = quantity if side is Side.BUY else -quantity
        cash_after = _EXACT.subtract(_EXACT.subtract(self.cash, _EXACT.multiply(signed, price)), fee)
        self._event(fill_bar, float(cash_after), float(signed))

    def _decide(
        self, *, side: Side, signal: int, quote: Decimal, quantity: Decimal | None
    ) -> tuple[Decimal, Decimal | None, Decimal | None] | None:
        """Ask the live risk check for the entry; return (quantity, stop, take-profit), or None when rejected."""
        fill_bar = signal + 1
        ms = int(self.time[fill_bar])
        now = _ms_to_datetime(ms)
        held = self.position
        equity = self.cash
        positions: tuple[PositionView, ...] = ()
        if held is not None:
            with localcontext(_EXACT):
                equity = self.cash + pnl.unrealized(held.state, quote) - held.fee
            positions = (PositionView(0, self.symbol, held.side.sign * held.quantity, quote),)
        day = ms // DAY_MS
        if day != self.day:  # like the live account: today's P&L counts from the first decision of the day
            self.day, self.day_equity = day, equity
        decision = risk.decide(
            intent=SignalIntent(
                action=Action.OPEN_LONG if side is Side.BUY else Action.OPEN_SHORT,
                symbol=self.symbol,
                quantity=quantity,
                order_type=OrderType.MARKET,
            ),
            strategy_id=0,
            account=AccountView(equity=equity, positions=positions, pending=(),
                                pnl_today=_WIDE.subtract(equity, self.day_equity)),
            market=self.rules,
            quote=Quote(quote, now),
            atr=self._atr_at(signal),
            risk=self.risk,
            limits=self.limits,
            now=now,
        )
        if not decision.accepted:
            self.rejected[decision.rule] = self.rejected.get(decision.rule, 0) + 1
            return None
        qty, stop, take = decision.orders[-1].quantity, decision.stop_loss, decision.take_profit
        if self.market is None:
            # frictionless: QTY_DIGITS significant digits (rounded down); levels without the 1e-30 tick's zeros
            qty = _QTY.plus(qty)
            stop = None if stop is None else stop.normalize(_WIDE)
            take = None if take is None else take.normalize(_WIDE)
        return qty, stop, take

    def _all_in_quantity(self, cash: Decimal, price: Decimal) -> Decimal | None:
        """All of cash with the fee included: cash / (price x (1 + fee)), floored to the lot (or QTY_DIGITS)."""
        qty = _QTY.divide(cash, _WIDE.multiply(price, self.cost_factor))
        if self.market is not None:
            with localcontext(_PAPER):
                qty = self.market.round_qty(qty)
        return qty if qty > 0 else None

    def _fill_price(self, side: Side, price: Decimal) -> Decimal:
        """The taker's price: the paper venue's slippage and tick rounding, or plain slippage when frictionless."""
        if self.market is not None:
            with localcontext(_PAPER):
                return slipped_price(self.market, side, price, self.bps)
        if not self.bps:
            return price
        return _WIDE.multiply(price, _ONE + side.sign * self.bps / _BPS)

    def _fee(self, quantity: Decimal, price: Decimal) -> Decimal:
        """The taker fee: rounded half-up to the paper venue's fee step on a market, exact when frictionless."""
        if self.market is not None:
            with localcontext(_PAPER):
                return round_half_up(quantity * price * self.fee_rate, FEE_QUANTUM)
        return _EXACT.multiply(_EXACT.multiply(quantity, price), self.fee_rate)

    def _exit_state(self, position: _Position, price: Decimal) -> pnl.PositionState:
        """The position after closing all of it at price (fee included)."""
        fee = self._fee(position.quantity, price)
        state, _ = pnl.apply_fill(position.state, side=position.side.opposite, quantity=position.quantity,
                                  price=price, fee=fee)
        return state

    def _atr(self) -> FloatArray:
        from strategies import indicators

        if self.n <= ATR_PERIOD:
            return np.full(self.n, np.nan)
        return indicators.atr(self.high, self.low, self.close, ATR_PERIOD)

    def _atr_at(self, signal: int) -> Decimal | None:
        """ATR(14) at the signal candle, as the live engine sends it with ATR-multiple exits."""
        if self.atr is None:
            return None
        value = float(self.atr[signal])
        return _dec(value) if math.isfinite(value) and value > 0 else None

    # ----------------------------------------------------------------------------------------- exits

    def _first_hit(self, position: _Position, start: int, end: int) -> _Exit | None:
        """The first stop-loss or take-profit hit in candles start..end (inclusive), or None."""
        long = position.side is Side.BUY
        stop, take = position.stop, position.take
        stop_bar = take_bar = None
        if stop is not None:
            stop_bar = self._first_touch(self.low if long else self.high, stop, start, end, below=long)
            if stop_bar is not None:
                end = stop_bar
        if take is not None:
            take_bar = self._first_touch(self.high if long else self.low, take, start, end, below=not long)
        if stop_bar is None and take_bar is None:
            return None
        bar = min(b for b in (stop_bar, take_bar) if b is not None)
        opening = _dec(self.open[bar])
        if bar > position.bar:  # the entry candle opened at the entry price, so it cannot gap
            if stop_bar == bar and stop is not None and (opening <= stop if long else opening >= stop):
                return _Exit(bar, opening, "stop_loss")
            if take_bar == bar and take is not None and (opening >= take if long else opening <= take):
                return _Exit(bar, opening, "take_profit")
        if stop_bar == bar and stop is not None:
            return _Exit(bar, stop, "stop_loss")  # touched both: the stop is taken first
        assert take is not None
        return _Exit(bar, take, "take_profit")

    @staticmethod
    def _first_touch(values: FloatArray, level: Decimal, start: int, end: int, *, below: bool) -> int | None:
        """First candle in start..end whose value is at or beyond level (<= when below), compared exactly."""
        # float(level) can only round onto a value, never past it, so the float test finds every true touch;
        # each candidate is confirmed in Decimal to drop the rare one that equals the level only as a float.
        bound = float(level)
        while start <= end:
            window = values[start : end + 1]
            mask = window <= bound if below else window >= bound
            k = int(mask.argmax())
            if not mask[k]:
                return None
            bar = start + k
            value = _dec(values[bar])
            if (value <= level) if below else (value >= level):
                return bar
            start = bar + 1
        return None

    def _close(self, exit_: _Exit) -> None:
        """Close the whole open position at an exit price (slipped against us) and record the trade."""
        position = self.position
        assert position is not None
        price = self._fill_price(position.side.opposite, exit_.price)
        state = self._exit_state(position, price)
        net = state.net_realized
        self.cash = _EXACT.add(self.cash, net)
        self.trades.append(
            Trade(
                entry_time=int(self.time[position.bar]),
                exit_time=int(self.time[exit_.bar]),
                side="long" if position.side is Side.BUY else "short",
                quantity=position.quantity,
                entry_price=position.price,
                exit_price=price,
                fees=state.fees,
                pnl=net,
                exit_reason=exit_.reason,
            )
        )
        # candles touched while in the market: the entry candle up to the candle before a signal exit's
        # open fill, or up to the stop / take-profit / last candle
        last = exit_.bar - 1 if exit_.reason == "signal" else exit_.bar
        self.bars_in_market += last - position.bar + 1
        self.position = None
        self._event(exit_.bar, float(self.cash), 0.0)

    def _event(self, bar: int, cash: float, qty: float) -> None:
        if self.event_bars and self.event_bars[-1] == bar:  # several fills in one candle: the last state holds
            self.event_cash[-1], self.event_qty[-1] = cash, qty
            return
        self.event_bars.append(bar)
        self.event_cash.append(cash)
        self.event_qty.append(qty)

    # ----------------------------------------------------------------------------------------- result

    def result(self) -> BacktestResult:
        """The trades, the equity curve at each close, and the metrics."""
        equity = self._equity()
        metrics = _metrics(
            trades=self.trades,
            equity=equity,
            time=self.time,
            cash=self.config.cash,
            final=self.cash,
            bars_in_market=self.bars_in_market,
            rejected=self.rejected,
        )
        return BacktestResult(
            trades=tuple(self.trades),
            metrics=metrics,
            equity_time=self.time,
            equity=equity,
            start_time=int(self.time[0]),
            end_time=int(self.time[-1]),
        )

    def _equity(self) -> FloatArray:
        """Equity at every candle's close: cash + signed qty x close of the state in force at that close."""
        n = self.n
        segment = np.zeros(n, dtype=np.int64)
        if self.event_bars:
            segment[np.asarray(self.event_bars, dtype=np.int64)] = np.arange(1, len(self.event_bars) + 1)
            np.maximum.accumulate(segment, out=segment)
        cash = np.asarray([float(self.config.cash), *self.event_cash], dtype=np.float64)
        qty = np.asarray([0.0, *self.event_qty], dtype=np.float64)
        equity = np.multiply(qty[segment], self.close)
        equity += cash[segment]
        return equity


# --------------------------------------------------------------------------------------------- metrics


def _metrics(
    *,
    trades: list[Trade],
    equity: FloatArray,
    time: IntArray,
    cash: Decimal,
    final: Decimal,
    bars_in_market: int,
    rejected: Mapping[str, int],
) -> dict[str, Any]:
    """Trade statistics (Decimal money) and curve statistics (float ratios); formulas in docs/backtesting.md."""
    n = int(equity.shape[0])
    bar_ms = int(np.median(np.diff(time))) if n > 1 else 0
    bars_per_year = YEAR_MS / bar_ms if bar_ms > 0 else math.nan
    net = _WIDE.subtract(final, cash)
    fees = gross_profit = gross_loss = _ZERO
    wins = losses = 0
    returns = 0.0  # sum of each trade's net P&L over its entry notional
    reasons = dict.fromkeys(EXIT_REASONS, 0)
    for t in trades:
        reasons[t.exit_reason] += 1
        fees = _WIDE.add(fees, t.fees)
        if t.pnl > 0:
            wins += 1
            gross_profit = _WIDE.add(gross_profit, t.pnl)
        elif t.pnl < 0:
            losses += 1
            gross_loss = _WIDE.subtract(gross_loss, t.pnl)
        returns += float(t.pnl) / (float(t.quantity) * float(t.entry_price))
    average = _SHORT.divide(net, len(trades)) if trades else None
    total_return = float(_WIDE.divide(final, cash) - 1)

    curve = np.empty(n + 1, dtype=np.float64)  # the starting cash, then the equity at each close
    curve[0] = float(cash)
    curve[1:] = equity
    work = np.empty(n + 1, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        peak = np.maximum.accumulate(curve)
        np.divide(curve, peak, out=work)
        max_drawdown = 1.0 - float(work.min())
        bar_returns = np.divide(curve[1:], curve[:-1], out=work[:n])
        bar_returns -= 1.0
        mean = float(bar_returns.sum()) / n
        deviation = np.subtract(bar_returns, mean, out=peak[:n])
        std = math.sqrt(float(np.dot(deviation, deviation)) / (n - 1)) if n > 1 else math.nan
        np.minimum(bar_returns, 0.0, out=bar_returns)
        downside = math.sqrt(float(np.dot(bar_returns, bar_returns)) / n)
    scale = math.sqrt(bars_per_year) if bars_per_year == bars_per_year else math.nan
    sharpe = mean / std * scale if std > 0 else math.nan
    sortino = mean / downside * scale if downside > 0 else math.nan
    span_ms = int(time[-1] - time[0]) + bar_ms
    years = span_ms / YEAR_MS
    ratio = float(_WIDE.divide(final, cash))
    cagr = math.nan
    if years > 0 and ratio > 0:
        growth = math.log(ratio) / years  # a few days' return compounds past any float: report inf then
        cagr = math.expm1(growth) if growth < 700 else math.inf
    if gross_loss > 0:
        profit_factor = float(_WIDE.divide(gross_profit, gross_loss))
    else:
        profit_factor = math.inf if gross_profit > 0 else math.nan
    return {
        "candles": n,
        "bar_ms": bar_ms,
        "start_equity": cash,
        "final_equity": final,
        "net_profit": net,
        "total_return": total_return,
        "cagr": cagr,
        "max_drawdown": max_drawdown,
        "sharpe": sharpe,
        "sortino": sortino,
        "trades": len(trades),
        "wins": wins,
        "losses": losses,
        "win_rate": wins / len(trades) if trades else math.nan,
        "profit_factor": profit_factor,
        "average_trade": average,
        "average_trade_return": returns / len(trades) if trades else math.nan,
        "best_trade": max((t.pnl for t in trades), default=None),
        "worst_trade": min((t.pnl for t in trades), default=None),
        "fees_paid": fees,
        "exposure_time": bars_in_market / n if n else 0.0,
        "exit_reasons": reasons,
        "rejected_entries": dict(sorted(rejected.items())),
    }


# --------------------------------------------------------------------------------------------- JSON


def result_to_json(result: BacktestResult) -> dict[str, Any]:
    """The result as JSON-ready data: Decimals as strings, times in epoch ms, non-finite ratios as null."""
    return {
        "start_time": result.start_time,
        "end_time": result.end_time,
        "metrics": {key: _json_value(value) for key, value in result.metrics.items()},
        "trades": [
            {
                "entry_time": t.entry_time,
                "exit_time": t.exit_time,
                "side": t.side,
                "quantity": str(t.quantity),
                "entry_price": str(t.entry_price),
                "exit_price": str(t.exit_price),
                "fees": str(t.fees),
                "pnl": str(t.pnl),
                "exit_reason": t.exit_reason,
            }
            for t in result.trades
        ],
    }


def _json_value(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    return value


# --------------------------------------------------------------------------------------------- HTML


def result_to_html(result: BacktestResult, candles: Candles, *, title: str = "Backtest", points: int = 1000) -> str:
    """A self-contained HTML report: price with trade markers, equity and drawdown as inline SVG, metrics, trades.

    Long series are downsampled to the min and max of `points` buckets, so every spike stays visible.
    """
    from html import escape

    time, close = candles.time, candles.close
    equity = result.equity
    peak = np.maximum.accumulate(np.maximum(equity, float(result.metrics["start_equity"])))
    drawdown = np.divide(equity, peak, out=np.zeros_like(equity), where=peak > 0) - 1.0
    t0 = int(time[0])
    t1 = max(int(time[-1]), t0 + 1)

    shown = result.trades
    if len(shown) > points:  # markers for an even sample of the trades
        step = len(shown) / points
        shown = tuple(shown[int(i * step)] for i in range(points))
    markers: list[tuple[int, float, str, str]] = []
    for tr in shown:
        what = f"{tr.side} {tr.quantity} @ {tr.entry_price}"
        markers.append((tr.entry_time, float(tr.entry_price), "entry-" + tr.side, f"{_utc(tr.entry_time)} enter {what}"))
        markers.append((tr.exit_time, float(tr.exit_price), "exit",
                        f"{_utc(tr.exit_time)} exit ({tr.exit_reason}) @ {tr.exit_price}, P&L {tr.pnl}"))

    charts = [
        _svg_chart("Price (close) with entries and exits", time, close, t0, t1, height=300, points=points,
                   markers=markers, css="price"),
        _svg_chart("Equity at each close", time, equity, t0, t1, height=200, points=points, css="equity"),
        _svg_chart("Drawdown from the running peak", time, drawdown, t0, t1, height=140, points=points,
                   css="drawdown", percent=True, fill=True),
    ]
    metric_rows = "".join(
        f"<tr><th>{escape(k)}</th><td>{escape(_fmt_metric(v))}</td></tr>" for k, v in result.metrics.items()
    )
    listed = result.trades if len(result.trades) <= 200 else (*result.trades[:100], None, *result.trades[-100:])
    trade_rows = "".join(
        "<tr><td colspan='9'>…</td></tr>" if tr is None else
        "<tr>" + "".join(f"<td>{escape(str(v))}</td>" for v in (
            _utc(tr.entry_time), _utc(tr.exit_time), tr.side, tr.quantity, tr.entry_price, tr.exit_price,
            tr.fees, tr.pnl, tr.exit_reason)) + "</tr>"
        for tr in listed
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 24px; color: #222; }}
h1 {{ font-size: 20px; }} h2 {{ font-size: 15px; margin: 18px 0 4px; }}
svg {{ background: #fafafa; border: 1px solid #ddd; display: block; width: 100%; max-width: 1100px; height: auto; }}
svg text {{ font: 11px system-ui, sans-serif; fill: #555; }}
.line {{ fill: none; stroke-width: 1; }} .grid {{ stroke: #e4e4e4; }}
.price {{ stroke: #345; }} .equity {{ stroke: #1565c0; }} .drawdown {{ stroke: #c62828; fill: #ef9a9a; }}
.entry-long {{ fill: #2e7d32; }} .entry-short {{ fill: #6a1b9a; }} .exit {{ fill: #d84315; }}
table {{ border-collapse: collapse; margin-top: 8px; }} td, th {{ border: 1px solid #ddd; padding: 2px 8px; text-align: right; }}
th {{ text-align: left; background: #f3f3f3; }}
</style></head><body>
<h1>{escape(title)}</h1>
<p>{escape(_utc(result.start_time))} to {escape(_utc(result.end_time))} UTC, {len(candles)} candles, {len(result.trades)} trades.
Markers: green triangle = long entry, purple triangle = short entry, orange dot = exit (hover for details).</p>
{''.join(charts)}
<h2>Metrics</h2><table>{metric_rows}</table>
<h2>Trades</h2><table><tr><th>entry (UTC)</th><th>exit (UTC)</th><th>side</th><th>quantity</th><th>entry price</th>
<th>exit price</th><th>fees</th><th>P&amp;L</th><th>exit reason</th></tr>{trade_rows}</table>
</body></html>
"""


def _utc(ms: int) -> str:
    return _ms_to_datetime(ms).strftime("%Y-%m-%d %H:%M")


def _fmt_metric(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else "n/a"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items()) or "none"
    return "n/a" if value is None else str(value)


def _envelope(values: FloatArray, buckets: int) -> IntArray:
    """Indices of the min and max of each of `buckets` equal runs (all indices when short), in order."""
    n = int(values.shape[0])
    if n <= 2 * buckets:
        return np.arange(n, dtype=np.int64)
    size = -(-n // buckets)
    padded = np.empty(size * buckets, dtype=np.float64)
    padded[:n] = values
    padded[n:] = values[-1]  # repeats of the last value: their indices are clipped to it below
    body = padded.reshape(buckets, size)
    base = np.arange(buckets, dtype=np.int64) * size
    picks = [base + body.argmin(axis=1), base + body.argmax(axis=1), np.array([0, n - 1], dtype=np.int64)]
    return np.unique(np.minimum(np.concatenate(picks), n - 1))


def _svg_chart(
    label: str,
    time: IntArray,
    values: FloatArray,
    t0: int,
    t1: int,
    *,
    height: int,
    points: int,
    css: str,
    markers: list[tuple[int, float, str, str]] | None = None,
    percent: bool = False,
    fill: bool = False,
) -> str:
    """One inline SVG line chart over time with a few axis labels and optional point markers."""
    from html import escape

    width, left, right, top, bottom = 1100, 70, 10, 10, 22
    keep = _envelope(values, points)
    xs, ys = time[keep], values[keep]
    finite = np.isfinite(ys)
    lo = float(ys[finite].min()) if finite.any() else 0.0
    hi = float(ys[finite].max()) if finite.any() else 1.0
    if markers:
        lo, hi = min([lo] + [m[1] for m in markers]), max([hi] + [m[1] for m in markers])
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0) * 0.01
    span_x, span_y = width - left - right, height - top - bottom

    def x_of(t: float) -> float:
        return left + (t - t0) / (t1 - t0) * span_x

    def y_of(v: float) -> float:
        return top + (hi - v) / (hi - lo) * span_y

    path = " ".join(
        f"{'M' if i == 0 else 'L'}{x_of(float(t)):.1f},{y_of(float(v)):.1f}"
        for i, (t, v) in enumerate(zip(xs.tolist(), np.where(finite, ys, lo).tolist(), strict=True))
    )
    if fill and path:
        path += f" L{x_of(float(xs[-1])):.1f},{y_of(min(0.0, hi)):.1f} L{x_of(float(xs[0])):.1f},{y_of(min(0.0, hi)):.1f} Z"
    parts = [f"<h2>{escape(label)}</h2>", f"<svg width='{width}' height='{height}' viewBox='0 0 {width} {height}'>"]
    for k in range(5):
        v = lo + (hi - lo) * k / 4
        y = y_of(v)
        text = f"{v * 100:.2f}%" if percent else f"{v:.6g}"
        parts.append(f"<line class='grid' x1='{left}' x2='{width - right}' y1='{y:.1f}' y2='{y:.1f}'/>"
                     f"<text x='{left - 4}' y='{y + 4:.1f}' text-anchor='end'>{text}</text>")
        t = t0 + (t1 - t0) * k / 4
        anchor = ("start", "middle", "middle", "middle", "end")[k]
        parts.append(f"<text x='{x_of(t):.1f}' y='{height - 6}' text-anchor='{anchor}'>{_utc(int(t))}</text>")
    opacity = " style='fill-opacity:0.5'" if fill else ""
    parts.append(f"<path class='line {css}' d='{path}'{opacity}/>")
    for t, v, kind, tip in markers or []:
        x, y = x_of(t), y_of(v)
        if kind == "exit":
            shape = f"<circle class='exit' cx='{x:.1f}' cy='{y:.1f}' r='3'>"
        elif kind == "entry-long":
            shape = f"<path class='{kind}' d='M{x:.1f},{y - 5:.1f} l4,8 h-8 z'>"
        else:
            shape = f"<path class='{kind}' d='M{x:.1f},{y + 5:.1f} l4,-8 h-8 z'>"
        parts.append(shape + f"<title>{escape(tip)}</title>" + ("</circle>" if kind == "exit" else "</path>"))
    parts.append("</svg>")
    return "\n".join(parts)
