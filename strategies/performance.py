"""A backtest's performance: trade statistics in exact Decimal money, curve statistics as float ratios. Pure.

Formulas in docs/backtesting.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from decimal import Context, Decimal, DivisionByZero, InvalidOperation, Overflow
from typing import Any

import numpy as np
import numpy.typing as npt

from strategies.simulation import EXIT_REASONS, QTY_DIGITS, Trade

YEAR_MS = 365 * 86_400_000  # crypto trades every day: annualize over 365 days (as vectorbt's default year)
_ZERO = Decimal("0")
_WIDE = Context(prec=50, traps=[InvalidOperation, DivisionByZero, Overflow])
_SHORT = Context(prec=QTY_DIGITS)  # for quotients that are only shown (average trade)


def backtest_metrics(
    *,
    trades: Sequence[Trade],
    equity: npt.NDArray[np.float64],
    time: npt.NDArray[np.int64],
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
