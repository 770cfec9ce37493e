"""A backtest's result as JSON-ready data and as a self-contained HTML report (inline SVG charts). Pure."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import numpy as np
import numpy.typing as npt

from exchanges.base import ms_to_datetime
from strategies.backtest import BacktestResult
from strategies.base import Candles

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


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
        markers.append((tr.entry_time, float(tr.entry_price), "entry-" + tr.side,
                        f"{_utc(tr.entry_time)} enter {what}"))
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
    return ms_to_datetime(ms).strftime("%Y-%m-%d %H:%M")


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
        path += (f" L{x_of(float(xs[-1])):.1f},{y_of(min(0.0, hi)):.1f}"
                 f" L{x_of(float(xs[0])):.1f},{y_of(min(0.0, hi)):.1f} Z")
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
