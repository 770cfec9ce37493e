"""The backtester's event walk: entries, exits, reverses and stop / take-profit hits over the candles. Pure.

`strategies.backtest.run` checks the settings and candles, computes the rule's signals and hands them here.
Sizing and exit levels come from `trading.risk.decide`, fills from the paper venue's fill model
(`exchanges.fills`), P&L from `trading.pnl`; the timing rules are in `strategies/backtest.py`'s docstring.
Only the events are walked in Python (the next signal found by bisecting the sorted signal candles,
stop/take-profit hits by argmax over the span of one trade); the equity curve is float64, built with numpy.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
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

import numpy as np
import numpy.typing as npt

from exchanges.base import Market, OrderType, Side, ms_to_datetime
from exchanges.fills import FEE_QUANTUM, round_half_up, slipped_price
from strategies.base import Candles, Signals
from strategies.candles import ATR_PERIOD
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

EXIT_REASONS = ("signal", "stop_loss", "take_profit", "end")
# Frictionless (no market) quantities are rounded down to this many significant digits: far below float
# precision, and it keeps every product and sum of the P&L code within its exact 50-digit context.
QTY_DIGITS = 20
DAY_MS = 86_400_000
BACKTEST_SYMBOL = "BACKTEST"
_TINY = Decimal("1e-30")  # tick and lot of the frictionless market: no rounding at the precision in play
_ZERO = Decimal("0")
_ONE = Decimal("1")
_BPS = Decimal("10000")
# Sums and products of money must be exact (like trading.pnl): a silent rounding raises instead.
_EXACT = Context(prec=50, traps=[InvalidOperation, DivisionByZero, Overflow, Inexact])
_QTY = Context(prec=QTY_DIGITS, rounding=ROUND_DOWN, traps=[InvalidOperation, DivisionByZero, Overflow])
_WIDE = Context(prec=50, traps=[InvalidOperation, DivisionByZero, Overflow])
_PAPER = Context()  # the paper venue prices and fees in the default decimal context: so do we, to match it

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


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


def _dec(value: float) -> Decimal:
    """A float from the candles as the Decimal of its shortest repr (the digits it was read from)."""
    return Decimal(float.__repr__(value))


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


class Simulation:
    """One backtest run: walks the signal and stop events, keeps cash, trades and the equity events."""

    def __init__(
        self,
        candles: Candles,
        signals: Signals,
        *,
        cash: Decimal,
        fee: Decimal,
        slippage_bps: Decimal,
        sizing: str,
        risk: StrategyRisk | None,
        limits: RiskLimits | None,
        market: Market | None,
        allow_short: bool,
        progress: Callable[[float], None] | None,
    ) -> None:
        """Set up a walk over checked candles and the rule's signals; settings as in `BacktestConfig`."""
        self.start_cash = cash
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

        self.market = market
        self.fee_rate = market.taker_fee if market is not None else fee
        self.bps = slippage_bps
        self.symbol = market.symbol if market is not None else BACKTEST_SYMBOL
        self.limits = limits or RiskLimits()
        if market is not None:
            self.rules = MarketRules.from_market(market)
        else:  # frictionless: no venue cap, the account's limit (RiskLimits.max_leverage) decides
            self.rules = MarketRules(symbol=self.symbol, lot_size=_TINY, min_qty=_ZERO, tick_size=_TINY,
                                     min_notional=_ZERO, max_leverage=self.limits.max_leverage)
        self.all_in = sizing == "all-in"
        # all-in passes its quantity with the intent, so the sizing rule is unused there (but must be valid)
        self.risk = risk or StrategyRisk(sizing=SizingRule(SizingMode.QUANTITY, _ONE))
        self.has_exits = any(
            r.mode is not ExitMode.NONE and r.value is not None for r in (self.risk.stop_loss, self.risk.take_profit)
        )
        # All-in on a frictionless market with no exits and no limits leaves decide nothing to size, round,
        # price or check (it would accept the formula's quantity as is), so that case skips the call.
        self.use_decide = not self.all_in or self.has_exits or limits is not None or market is not None
        uses_atr = ExitMode.ATR in (self.risk.stop_loss.mode, self.risk.take_profit.mode)
        self.atr = self._atr() if uses_atr else None
        self.cost_factor = _ONE + self.fee_rate

        self.cash = cash  # the balance while flat; each trade adds its net P&L
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
        now = ms_to_datetime(ms)
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

    # ----------------------------------------------------------------------------------------- equity

    def equity(self) -> FloatArray:
        """Equity at every candle's close: cash + signed qty x close of the state in force at that close."""
        n = self.n
        segment = np.zeros(n, dtype=np.int64)
        if self.event_bars:
            segment[np.asarray(self.event_bars, dtype=np.int64)] = np.arange(1, len(self.event_bars) + 1)
            np.maximum.accumulate(segment, out=segment)
        cash = np.asarray([float(self.start_cash), *self.event_cash], dtype=np.float64)
        qty = np.asarray([0.0, *self.event_qty], dtype=np.float64)
        equity = np.multiply(qty[segment], self.close)
        equity += cash[segment]
        return equity
