"""Paper-vs-backtest parity: replay candles through the paper engine and backtest the same candles; diff trades.

The paper side is the real thing: a fresh paper account and strategy (created through the trading services),
the candles replayed with `replay.replay_step` (candle t closes, t+1's open becomes the price, the
strategy evaluates t through `services.strategy_evaluate`), and the signals processed by the engine, inline or
by real Celery workers (the replay then waits until each signal is settled before the next candle). Paper
trades are rebuilt from the Fill rows (entry fills -> exit fills); a fill's time is the open of the candle
after the one its signal was evaluated on.

The backtest side is `strategies.backtest.run` on the same candles with the strategy's own sizing and exits
(`sizing="risk"`: every entry goes through `trading.risk.decide` with the engine's StrategyRisk), the
account's limits and slippage, and the paper venue's market (tick, lot, taker fee).

Both sides must agree to the last digit on every trade: entry/exit candle, side, quantity, prices, fees,
P&L. A backtest trade closed at the end of the data ("end") is compared with the still-open paper trade on its
entry only. Known limit: stop-loss / take-profit exits differ by design (the replayed feed only shows opens;
the backtester checks every candle's low and high), so parity is exact for signal exits.
"""

from __future__ import annotations

import bisect
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.utils import timezone

from exchanges.base import VenueCandle, datetime_to_ms, ms_to_datetime
from strategies import backtest
from strategies.models import Candle
from strategies.replay import Dispatch, replay_pairs, replay_step
from strategies.selectors import candles_from_rows
from strategies.services import CandleImportError, candles_import
from trading import services as trading_services
from trading.connectors import connector_for
from trading.decision import account_limits, strategy_risk
from trading.fields import tidy
from trading.models import Fill, PriceFeed, Signal, Strategy, VenueAccount

FIELDS = ("entry_time", "exit_time", "side", "quantity", "entry_price", "exit_price", "fees", "pnl")
ENTRY_FIELDS = ("entry_time", "side", "quantity", "entry_price")
_SETTLED = (Signal.Status.EXECUTED, Signal.Status.REJECTED, Signal.Status.IGNORED, Signal.Status.FAILED)
ACTOR = "parity"


class ParityError(Exception):
    """The comparison cannot run as asked (bad candles, a store that disagrees, a signal that never settled)."""


@dataclass(frozen=True)
class TradeRow:
    """One round trip on either side; times are candle open times (epoch ms); exit_* None while open."""

    entry_time: int
    exit_time: int | None
    side: str
    quantity: Decimal
    entry_price: Decimal
    exit_price: Decimal | None
    fees: Decimal
    pnl: Decimal | None
    exit_reason: str  # signal | stop_loss | take_profit | end | open

    @property
    def closed(self) -> bool:
        return self.exit_reason not in ("end", "open")


@dataclass(frozen=True)
class Difference:
    trade: int  # 1-based trade number
    field: str
    paper: object
    backtest: object

    def __str__(self) -> str:
        return f"trade {self.trade}: {self.field} paper={self.paper} backtest={self.backtest}"


@dataclass
class ParityReport:
    strategy_id: int
    candles: int
    paper: list[TradeRow]
    backtest: list[TradeRow]
    differences: list[Difference] = field(default_factory=list)
    signals: int = 0

    @property
    def compared(self) -> int:
        return min(len(self.paper), len(self.backtest))


# --------------------------------------------------------------------------------------------- running


Waiter = Callable[[Sequence[int]], None]


def signals_wait(signal_ids: Sequence[int], *, timeout: float = 60.0, every: float = 0.02) -> None:
    """Block until every given signal is settled (executed, rejected, ignored or failed) by the workers."""
    deadline = time.monotonic() + timeout
    pending = list(signal_ids)
    while pending:
        settled = set(Signal.objects.filter(pk__in=pending, status__in=_SETTLED).values_list("pk", flat=True))
        pending = [pk for pk in pending if pk not in settled]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise ParityError(f"signal(s) {pending} not settled after {timeout:.0f} s: are workers running?")
        time.sleep(every)


def paper_backtest_compare(
    *,
    kind: str,
    params: Mapping[str, Any],
    rows: Sequence[VenueCandle],
    symbol: str,
    timeframe: str,
    venue: str = "demo",
    cash: Decimal = Decimal("1"),
    slippage_bps: Decimal = Decimal("5"),
    sizing_value: Decimal = Decimal("1"),
    workers: bool = False,
    clear_store: bool = False,
    progress: Callable[[int, int], None] | None = None,
    lines: Sequence[int] = (),
) -> ParityReport:
    """Replay rows through a fresh paper strategy and backtest the same rows; return both trade lists and diffs.

    With workers=True the signals are processed by Celery workers (the replay waits for each to settle);
    else inline. clear_store=True first deletes the market's stored candles (only inside a transaction the
    caller rolls back): live evaluation must see exactly the replayed candles, as the backtest does. `lines`: each
    row's line in its file, to name a row the store disagrees with.
    """
    if len(rows) < 2:
        raise ParityError("need at least 2 candles")
    if venue != PriceFeed.DEMO:  # the replay prices the demo feed, and the parity account reads that feed's candles
        raise ParityError(f"the paper account replays on the demo feed: its candles are stored under 'demo', not "
                          f"{venue!r}")
    market_rows = Candle.objects.filter(venue=venue, symbol=symbol, timeframe=timeframe)
    if clear_store:
        market_rows.delete()
    elif market_rows.filter(open_time__lt=rows[0].open_time).exists():
        raise ParityError(f"the store holds {venue} {symbol} {timeframe} candles before the first replayed one: "
                          "live indicators would warm up on them and the backtest would not; use a scratch "
                          "database (or the command's default, which rolls back)")
    try:
        candles_import(venue=venue, symbol=symbol, timeframe=timeframe, rows=rows, lines=lines, by=ACTOR)
    except CandleImportError as exc:
        raise ParityError(f"the store disagrees with the replayed candles: {exc}") from exc

    strategy = _strategy_create(kind=kind, params=params, symbol=symbol, timeframe=timeframe, cash=cash,
                                slippage_bps=slippage_bps, sizing_value=sizing_value)
    has_exits = strategy.stop_loss_mode != "none" or strategy.take_profit_mode != "none"
    next_ms = {datetime_to_ms(a.open_time): datetime_to_ms(b.open_time) for a, b in zip(rows, rows[1:])}
    steps: list[tuple[datetime, int]] = []  # (step clock, candle its fills belong to)
    signals = 0
    for index, (candle, following) in enumerate(replay_pairs(rows)):
        now = timezone.now()
        if following is not None:
            steps.append((now, datetime_to_ms(following.open_time)))
        result = replay_step(venue=venue, symbol=symbol, timeframe=timeframe, candle=candle, next_candle=following,
                             dispatch=Dispatch.WORKER_SIGNALS if workers else Dispatch.INLINE,
                             strategy_ids=[strategy.pk], monitor=has_exits, now=now)
        signals += len(result.signal_ids)
        if workers and result.signal_ids:
            signals_wait(result.signal_ids)
        if progress is not None:
            progress(index + 1, len(rows))

    paper = paper_trades(strategy, next_ms=next_ms, steps=steps)
    tested = backtest_trades(strategy, rows)
    report = ParityReport(strategy.pk, len(rows), paper, tested, signals=signals)
    report.differences = trades_diff(paper, tested)
    return report


def _strategy_create(*, kind: str, params: Mapping[str, Any], symbol: str, timeframe: str, cash: Decimal,
                     slippage_bps: Decimal, sizing_value: Decimal) -> Strategy:
    """A fresh paper account in the market's quote currency and an active strategy on it."""
    from exchanges.paper import DEFAULT_MARKETS

    market = next((m for m in DEFAULT_MARKETS if m.symbol == symbol), None)
    if market is None:
        raise ParityError(f"{symbol} is not a paper market ({', '.join(m.symbol for m in DEFAULT_MARKETS)})")
    tag = uuid.uuid4().hex[:10]
    account = trading_services.account_create(data={
        "name": f"parity-{tag}", "venue": "paper", "network": "paper", "quote_asset": market.quote,
        "paper_initial_cash": str(cash), "paper_slippage_bps": str(slippage_bps), "max_leverage": "1",
    }, by=ACTOR)
    strategy = trading_services.strategy_create(data={
        "name": f"parity {kind}", "slug": f"parity-{tag}", "kind": kind, "params": dict(params), "symbol": symbol,
        "timeframe": timeframe, "account": account, "mode": "paper", "sizing_mode": "quantity",
        "sizing_value": str(sizing_value),
    }, by=ACTOR)
    return trading_services.strategy_start(strategy=strategy, by=ACTOR)


# --------------------------------------------------------------------------------------------- both sides


def paper_trades(strategy: Strategy, *, next_ms: Mapping[int, int],
                 steps: Sequence[tuple[datetime, int]] = ()) -> list[TradeRow]:
    """Rebuild a strategy's round trips from its Fill rows (entries until flat = one trade)."""
    step_times = [s[0] for s in steps]

    def candle_of(fill: Fill) -> int:
        signal = fill.order.signal
        candle = (signal.payload or {}).get("candle_ms") if signal is not None else None
        if candle is not None and int(candle) in next_ms:
            return next_ms[int(candle)]  # filled at the open of the candle after the evaluated one
        k = bisect.bisect_right(step_times, fill.time) - 1  # a monitor exit: the step whose price it took
        if k < 0:
            raise ParityError(f"fill {fill.pk} happened before the replay")
        return steps[k][1]

    trades: list[TradeRow] = []
    position = Decimal(0)
    current: dict[str, Any] | None = None
    for fill in Fill.objects.filter(strategy=strategy).select_related("order__signal").order_by("pk"):
        signed = fill.quantity if fill.side == "buy" else -fill.quantity
        if position == 0:
            current = {"entry_time": candle_of(fill), "side": "long" if signed > 0 else "short",
                       "qty": Decimal(0), "cost": Decimal(0), "exit_qty": Decimal(0), "exit_value": Decimal(0),
                       "fees": Decimal(0), "realized": Decimal(0), "exit_time": None, "reason": "open"}
        assert current is not None
        if (signed > 0) == (current["side"] == "long"):
            current["qty"] += fill.quantity
            current["cost"] += fill.quantity * fill.price
        else:
            current["exit_qty"] += fill.quantity
            current["exit_value"] += fill.quantity * fill.price
            current["realized"] += fill.realized_pnl
            current["exit_time"] = candle_of(fill)
            purpose = fill.order.purpose
            current["reason"] = purpose if purpose in ("stop_loss", "take_profit") else "signal"
        current["fees"] += fill.fee
        position += signed
        if position == 0:
            trades.append(_paper_row(current, closed=True))
            current = None
    if current is not None:
        trades.append(_paper_row(current, closed=False))
    return trades


def _paper_row(t: Mapping[str, Any], *, closed: bool) -> TradeRow:
    return TradeRow(
        entry_time=t["entry_time"],
        exit_time=t["exit_time"] if closed else None,
        side=t["side"],
        quantity=t["qty"],
        entry_price=t["cost"] / t["qty"],
        exit_price=t["exit_value"] / t["exit_qty"] if closed else None,
        fees=t["fees"],
        pnl=t["realized"] - t["fees"] if closed else None,
        exit_reason=t["reason"] if closed else "open",
    )


def backtest_config(strategy: Strategy) -> backtest.BacktestConfig:
    """The backtest settings that mirror a paper strategy: its sizing and exits, account limits and costs."""
    account: VenueAccount = strategy.account
    return backtest.BacktestConfig(
        strategy=strategy.kind,
        params=dict(strategy.params),
        cash=account.paper_initial_cash,
        slippage_bps=account.paper_slippage_bps,
        sizing="risk",
        risk=strategy_risk(strategy),
        limits=account_limits(account),
        market=connector_for(account).market(strategy.symbol),
    )


def backtest_trades(strategy: Strategy, rows: Sequence[VenueCandle]) -> list[TradeRow]:
    """Backtest the strategy on the rows (as the store's floats) and return its trades."""
    candles = candles_from_rows([(r.open_time, r.open, r.high, r.low, r.close, r.volume) for r in rows])
    result = backtest.run(candles, backtest_config(strategy))
    return [TradeRow(t.entry_time, t.exit_time, t.side, t.quantity, t.entry_price, t.exit_price, t.fees, t.pnl,
                     t.exit_reason) for t in result.trades]


def trades_diff(paper: Sequence[TradeRow], tested: Sequence[TradeRow]) -> list[Difference]:
    """Field-by-field differences of the n-th paper and backtest trades; a trade on one side only is one too."""
    differences: list[Difference] = []
    for number, (p, b) in enumerate(zip(paper, tested), start=1):
        fields = FIELDS if p.closed and b.closed else ENTRY_FIELDS
        for name in fields:
            if getattr(p, name) != getattr(b, name):
                differences.append(Difference(number, name, getattr(p, name), getattr(b, name)))
        if p.closed != b.closed:
            differences.append(Difference(number, "exit_reason", p.exit_reason, b.exit_reason))
    for number in range(len(tested) + 1, len(paper) + 1):
        differences.append(Difference(number, "trade", "present", "missing"))
    for number in range(len(paper) + 1, len(tested) + 1):
        differences.append(Difference(number, "trade", "missing", "present"))
    return differences


def report_lines(report: ParityReport) -> list[str]:
    """A trade-by-trade table of both sides, the differences, and the summary line `differences: N`."""
    def when(ms: int | None) -> str:
        return "-" if ms is None else f"{ms_to_datetime(ms):%Y-%m-%d %H:%M}"

    def num(value: Decimal | None) -> str:
        return "-" if value is None else str(tidy(value))

    lines = [f"{'#':>3} {'run':<8} {'entry':<16} {'exit':<16} {'side':<5} {'qty':>8} {'entry price':>12} "
             f"{'exit price':>12} {'fees':>12} {'pnl':>13} reason"]
    for number in range(1, max(len(report.paper), len(report.backtest)) + 1):
        for label, trades in (("paper", report.paper), ("backtest", report.backtest)):
            if number > len(trades):
                lines.append(f"{number:>3} {label:<8} (none)")
                continue
            t = trades[number - 1]
            lines.append(f"{number:>3} {label:<8} {when(t.entry_time):<16} {when(t.exit_time):<16} "
                         f"{t.side:<5} {num(t.quantity):>8} {num(t.entry_price):>12} {num(t.exit_price):>12} "
                         f"{num(t.fees):>12} {num(t.pnl):>13} {t.exit_reason}")
    lines.extend(str(d) for d in report.differences)
    lines.append(f"candles: {report.candles}  signals: {report.signals}  trades compared: {report.compared} "
                 f"(paper {len(report.paper)}, backtest {len(report.backtest)})")
    lines.append(f"differences: {len(report.differences)}")
    return lines
