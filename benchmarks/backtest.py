"""Backtest speed: our backtester vs vectorbt and backtesting.py on the same RSI trades, in one run.

    python benchmarks/backtest.py [--sizes 100000,1000000] [--repeats 7] [--rounds 3] [--bt-repeats 3]
                                  [--bench-python PATH] [--json OUT]

Data: one deterministic 1-minute series made by `benchmarks/make_long_series.py` (a copy of the team's
script: block bootstrap of data/ETH_BTC-1m.csv, seed 42, gap-free) written as the shared CSV format; the
100k file is the first 100,000 rows of the 1M one. Every engine reads the same CSV (loading is not timed).

Strategy: RSI(14), enter long when it crosses up through 30, exit when it crosses down through 70 (the
library's `rsi` rule: every engine computes its signals with that rule, i.e. TA-Lib's RSI, inside the timed
part). Fills at the next candle's open, 0.1% fee per fill, all-in (cash / (price x (1 + fee))), no slippage,
long only, 10,000 starting cash.

* ours: `strategies.backtest.run(candles, BacktestConfig("rsi"))`: signals, the event walk in Decimal, the
  equity curve and all metrics.
* vectorbt: `Portfolio.from_signals(close=close, entries=enter shifted one bar, exits=exit shifted one bar,
  price=open, fees=0.001, size=inf, init_cash=10000)`, then its trade records and the same metrics (total
  return, max drawdown, Sharpe, Sortino, win rate, profit factor). Reported warm: the first call (numba JIT
  compilation) is timed apart as "cold". Its simulation alone (from_signals + trade records on precomputed
  signals) is reported too.
* backtesting.py: a Strategy whose next() buys / closes on the precomputed signals (orders fill at the next
  open), `FractionalBacktest(fractional_unit=2**-30, commission=0.001)` and `buy(size=1 - 2**-40)` so that
  its whole-unit sizing can hold fractional quantities (prices are scaled by a power of two: exact).

Each engine runs in its own subprocesses (so one's memory and JIT state never touch another's): ours and
vectorbt alternate over --rounds fresh processes of --repeats timed runs each, backtesting.py runs once with
--bt-repeats; times are the medians (and minimums) of all timed runs. Peak memory of ours: tracemalloc's peak
during one run() (Python and numpy allocations) and
the process's peak RSS increase over the run (VmHWM reset through /proc/self/clear_refs, Linux).

Trade lists are compared trade by trade against ours: entry and exit candle index and side identical, entry
and exit prices equal (as floats), P&L within 1e-9 relative. A trade still open at the end is compared on its
entry only (we close it at the last close as "end"; vectorbt keeps it open; backtesting.py drops it).

vectorbt and backtesting.py are benchmark-only: `pip install -r benchmarks/requirements.txt`, into this venv or
a separate one given with --bench-python (see docs/benchmarks.md). The last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CASH = 10_000.0
FEE = 0.001
TARGET_VS_VECTORBT = 1.0  # ours / vectorbt (warm) at 1M candles: at most this
TARGET_VS_BACKTESTING = 30.0  # backtesting.py / ours at 1M candles: at least this
TARGET_MEMORY_MB = 400.0
PNL_RELATIVE = 1e-9


# --------------------------------------------------------------------------------------------- workers


def _read(path: str) -> dict[str, np.ndarray]:
    from strategies.candles import candles_read_csv  # the one reader of the shared CSV, ours too

    candles = candles_read_csv(path, form="columns")
    return {"timestamp": candles.time, "open": candles.open, "high": candles.high, "low": candles.low,
            "close": candles.close, "volume": candles.volume}


def _candles(cols: dict[str, np.ndarray]) -> Any:
    from strategies.base import Candles

    return Candles(cols["timestamp"], cols["open"], cols["high"], cols["low"], cols["close"], cols["volume"])


def _rsi_signals(candles: Any) -> Any:
    from strategies.library.rsi import RsiRule

    return RsiRule.signals(candles, RsiRule.resolve({}))


def _timed(fn: Any, repeats: int) -> tuple[list[float], Any]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return times, out


def _hwm_reset() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def worker_ours(path: str, repeats: int) -> dict[str, Any]:
    import tracemalloc

    from strategies.backtest import BacktestConfig, run
    from strategies.candles import candles_read_csv

    candles = candles_read_csv(path, form="columns")
    config = BacktestConfig("rsi", cash=Decimal("10000"), fee=Decimal("0.001"))
    run(candles.head(1000), config)  # imports (rule library, TA-Lib) happen here, outside the measurements

    _trim()  # give the loader's freed memory back first, so the baseline is what is really held
    rss_before = _status_kb("VmRSS")  # the first full run, in a fresh process: its peak RSS over the baseline
    reset = _hwm_reset()
    cold_start = time.perf_counter()
    run(candles, config)
    cold = time.perf_counter() - cold_start
    rss_peak = _status_kb("VmHWM")
    tracemalloc.start()
    run(candles, config)
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    times, result = _timed(lambda: run(candles, config), repeats)

    index = candles.time
    trades = [
        {"entry": int(np.searchsorted(index, t.entry_time)), "exit": int(np.searchsorted(index, t.exit_time)),
         "side": t.side, "entry_price": float(t.entry_price), "exit_price": float(t.exit_price),
         "pnl": float(t.pnl), "open": t.exit_reason == "end"}
        for t in result.trades
    ]
    return {"times": times, "cold": cold, "trades": trades, "final_equity": float(result.metrics["final_equity"]),
            "tracemalloc_peak_mb": traced_peak / 2**20,
            "rss_peak_delta_mb": (rss_peak - rss_before) / 1024 if reset else None}


def worker_vectorbt(path: str, repeats: int) -> dict[str, Any]:
    import vectorbt as vbt

    cols = _read(path)
    candles = _candles(cols)
    open_, close = cols["open"], cols["close"]

    def simulate(enter: np.ndarray, exit_: np.ndarray) -> Any:
        entries = np.zeros_like(enter)
        exits = np.zeros_like(exit_)
        entries[1:], exits[1:] = enter[:-1], exit_[:-1]  # the signal on t's close acts at t+1's open
        return vbt.Portfolio.from_signals(close=close, entries=entries, exits=exits, price=open_, fees=FEE,
                                          size=np.inf, init_cash=CASH, freq="1min")

    def full() -> tuple[Any, Any]:
        signals = _rsi_signals(candles)
        portfolio = simulate(signals.enter_long, signals.exit_long)
        records = portfolio.trades.records_arr
        trades = portfolio.trades
        metrics = (portfolio.total_return(), portfolio.max_drawdown(), portfolio.sharpe_ratio(),
                   portfolio.sortino_ratio(), trades.win_rate(), trades.profit_factor(), trades.count())
        return portfolio, (records, metrics)

    cold_start = time.perf_counter()
    full()  # numba compiles here
    cold = time.perf_counter() - cold_start
    times, (portfolio, (records, _)) = _timed(full, repeats)
    signals = _rsi_signals(candles)
    sim_times, _ = _timed(lambda: simulate(signals.enter_long, signals.exit_long).trades.records_arr, repeats)
    # A trade record's prices are size-weighted averages (float rounding); the orders carry the fill prices.
    fills = {int(o["idx"]): float(o["price"]) for o in portfolio.orders.records_arr}
    trades = [
        {"entry": int(r["entry_idx"]), "exit": int(r["exit_idx"]), "side": "long" if r["direction"] == 0 else "short",
         "entry_price": fills[int(r["entry_idx"])], "pnl": float(r["pnl"]), "open": int(r["status"]) == 0,
         "exit_price": fills.get(int(r["exit_idx"]), float(r["exit_price"])) if int(r["status"]) else float("nan")}
        for r in records
    ]
    return {"times": times, "cold": cold, "sim_times": sim_times, "trades": trades,
            "final_equity": float(portfolio.final_value()), "version": vbt.__version__}


def worker_backtesting(path: str, repeats: int) -> dict[str, Any]:
    import warnings

    import backtesting
    import pandas as pd
    from backtesting import Strategy
    from backtesting.lib import FractionalBacktest

    cols = _read(path)
    candles = _candles(cols)
    frame = pd.DataFrame(
        {"Open": cols["open"], "High": cols["high"], "Low": cols["low"], "Close": cols["close"],
         "Volume": cols["volume"]},
        index=pd.to_datetime(cols["timestamp"], unit="ms", utc=True).tz_localize(None),
    )
    size = 1 - 2**-40
    plan: dict[str, np.ndarray] = {}

    class Rsi(Strategy):  # type: ignore[misc]
        def init(self) -> None:
            self.enter, self.exit = plan["enter"], plan["exit"]

        def next(self) -> None:
            i = len(self.data) - 1
            if not self.position:
                if self.enter[i]:
                    self.buy(size=size)
            elif self.exit[i]:
                self.position.close()

    def full() -> Any:
        signals = _rsi_signals(candles)
        plan["enter"], plan["exit"] = signals.enter_long, signals.exit_long
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            engine = FractionalBacktest(frame, Rsi, cash=CASH, commission=FEE, fractional_unit=2**-30)
            return engine.run()

    times, stats = _timed(full, repeats)
    table = stats["_trades"]
    trades = [
        {"entry": int(r.EntryBar), "exit": int(r.ExitBar), "side": "long" if r.Size > 0 else "short",
         "entry_price": float(r.EntryPrice), "exit_price": float(r.ExitPrice), "pnl": float(r.PnL), "open": False}
        for r in table.itertuples()
    ]
    unit = 2**-30
    for t in stats["_strategy"].trades:  # still open at the end: not in the stats table
        trades.append({"entry": int(t.entry_bar), "exit": len(frame) - 1, "side": "long" if t.size > 0 else "short",
                       "entry_price": float(t.entry_price) / unit, "exit_price": float("nan"), "pnl": float("nan"),
                       "open": True})
    return {"times": times, "cold": None, "trades": trades, "final_equity": float(stats["Equity Final [$]"]),
            "version": backtesting.__version__}


WORKERS = {"ours": worker_ours, "vectorbt": worker_vectorbt, "backtesting": worker_backtesting}


# --------------------------------------------------------------------------------------------- driver


def compare(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> dict[str, Any]:
    """Trade-by-trade comparison against ours (closed trades fully, a trade open at the end on its entry)."""
    problems: list[str] = []
    worst = 0.0
    if len(ours) != len(theirs):
        problems.append(f"{len(ours)} trades vs {len(theirs)}")
    for k, (a, b) in enumerate(zip(ours, theirs)):
        if (a["entry"], a["side"], a["entry_price"]) != (b["entry"], b["side"], b["entry_price"]):
            problems.append(f"trade {k}: entry {a['entry']} {a['side']} @ {a['entry_price']!r} vs "
                            f"{b['entry']} {b['side']} @ {b['entry_price']!r}")
        if a["open"] or b["open"]:
            if a["open"] != b["open"]:
                problems.append(f"trade {k}: open at the end on one side only")
            continue
        if (a["exit"], a["exit_price"]) != (b["exit"], b["exit_price"]):
            problems.append(f"trade {k}: exit {a['exit']} @ {a['exit_price']!r} vs {b['exit']} @ {b['exit_price']!r}")
        relative = abs(a["pnl"] - b["pnl"]) / max(abs(a["pnl"]), 1e-300)
        worst = max(worst, relative)
        if relative > PNL_RELATIVE:
            problems.append(f"trade {k}: pnl {a['pnl']!r} vs {b['pnl']!r} (relative {relative:.2e})")
    return {"identical": not problems, "trades": len(ours), "max_pnl_relative_diff": worst, "problems": problems[:10]}


def make_data(sizes: list[int], folder: Path) -> dict[int, str]:
    """Write the series' first N rows for every N as CSV files; return their paths."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import make_long_series as mls

    cols = mls.make_series(rows=max(sizes), source=str(ROOT / "data" / "ETH_BTC-1m.csv"))
    paths = {}
    for n in sorted(sizes):
        path = folder / f"long_{n}.csv"
        digest = mls.write_csv({k: v[:n] for k, v in cols.items()}, str(path))
        print(f"data: {n:,} rows -> {path} (sha256 {digest[:16]}...)", file=sys.stderr)
        paths[n] = str(path)
    return paths


def run_worker(python: str, engine: str, path: str, repeats: int) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        out = tmp.name
    try:
        command = [python, str(Path(__file__).resolve()), "--worker", engine, "--data", path,
                   "--repeats", str(repeats), "--out", out]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
        if done.returncode != 0:
            raise RuntimeError(f"{engine} worker failed ({python}):\n{done.stderr[-3000:]}")
        return json.loads(Path(out).read_text())
    finally:
        os.unlink(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100000,1000000", help="candle counts, comma separated")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs of ours and vectorbt per round")
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes of ours and vectorbt per size")
    parser.add_argument("--bt-repeats", type=int, default=3, help="timed runs of backtesting.py per size")
    parser.add_argument("--bench-python", default=os.environ.get("BENCH_PYTHON", sys.executable),
                        help="interpreter with vectorbt and backtesting installed (default: this one)")
    parser.add_argument("--skip-backtesting", action="store_true", help="leave backtesting.py out (slow)")
    parser.add_argument("--data-dir", default=None, help="where to write the CSVs (default: a temp folder)")
    parser.add_argument("--json", dest="json_out", default=None, help="also write the results here")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        Path(args.out).write_text(json.dumps(WORKERS[args.worker](args.data, args.repeats)))
        return 0

    sizes = [int(s) for s in args.sizes.split(",")]
    folder = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="bench-backtest-"))
    folder.mkdir(parents=True, exist_ok=True)
    paths = make_data(sizes, folder)
    engines = ["ours", "vectorbt"] + ([] if args.skip_backtesting else ["backtesting"])
    report: dict[str, Any] = {"machine": f"{platform.machine()}, {os.cpu_count()} cpu, Python "
                                         f"{platform.python_version()}", "load_before": os.getloadavg(),
                              "sizes": {}}
    for n in sizes:
        results: dict[str, dict[str, Any]] = {}
        # ours and vectorbt alternate over several rounds (a fresh process each), so that a burst of load on
        # the machine does not fall on one engine only; all their timed runs are pooled.
        for round_ in range(args.rounds):
            for engine in engines:
                if engine == "backtesting" and round_ > 0:
                    continue
                python = sys.executable if engine == "ours" else args.bench_python
                repeats = args.bt_repeats if engine == "backtesting" else args.repeats
                print(f"{n:>9,} candles: {engine} x{repeats} (round {round_ + 1})", file=sys.stderr, flush=True)
                out = run_worker(python, engine, paths[n], repeats)
                if engine not in results:
                    results[engine] = out
                else:
                    for key in ("times", "sim_times"):
                        if key in out:
                            results[engine][key] += out[key]
                    for key in ("tracemalloc_peak_mb", "rss_peak_delta_mb"):
                        if out.get(key) is not None:
                            results[engine][key] = max(results[engine][key] or 0, out[key])
        ours = results["ours"]
        row: dict[str, Any] = {
            "ours_s": statistics.median(ours["times"]),
            "ours_min_s": min(ours["times"]),
            "ours_cold_s": ours["cold"],
            "ours_tracemalloc_peak_mb": ours["tracemalloc_peak_mb"],
            "ours_rss_peak_delta_mb": ours["rss_peak_delta_mb"],
            "trades": len(ours["trades"]),
            "ours_final_equity": ours["final_equity"],
        }
        vbt = results["vectorbt"]
        row.update({
            "vectorbt_s": statistics.median(vbt["times"]),
            "vectorbt_min_s": min(vbt["times"]),
            "vectorbt_cold_s": vbt["cold"],
            "vectorbt_sim_only_s": statistics.median(vbt["sim_times"]),
            "vectorbt_version": vbt["version"],
            "vectorbt_final_equity": vbt["final_equity"],
            "ours_over_vectorbt": statistics.median(ours["times"]) / statistics.median(vbt["times"]),
            "ours_over_vectorbt_sim_only": statistics.median(ours["times"]) / statistics.median(vbt["sim_times"]),
            "vectorbt_trades": compare(ours["trades"], vbt["trades"]),
        })
        if "backtesting" in results:
            btp = results["backtesting"]
            row.update({
                "backtesting_s": statistics.median(btp["times"]),
                "backtesting_min_s": min(btp["times"]),
                "backtesting_version": btp["version"],
                "backtesting_final_equity": btp["final_equity"],
                "backtesting_over_ours": statistics.median(btp["times"]) / statistics.median(ours["times"]),
                "backtesting_trades": compare(ours["trades"], btp["trades"]),
            })
        report["sizes"][str(n)] = row
        _print_row(n, row)

    largest = report["sizes"][str(max(sizes))]
    checks = {
        "ours <= vectorbt (warm)": largest["ours_over_vectorbt"] <= TARGET_VS_VECTORBT,
        f"backtesting.py >= {TARGET_VS_BACKTESTING:g}x ours": largest.get("backtesting_over_ours", 0)
        >= TARGET_VS_BACKTESTING,
        f"peak memory <= {TARGET_MEMORY_MB:g} MB": max(largest["ours_tracemalloc_peak_mb"],
                                                         largest["ours_rss_peak_delta_mb"] or 0) <= TARGET_MEMORY_MB,
        "trades identical": largest["vectorbt_trades"]["identical"]
        and largest.get("backtesting_trades", {"identical": True})["identical"],
    }
    report["targets_at_largest"] = checks
    report["load_after"] = os.getloadavg()
    print(f"load average (1, 5, 15 min): before {report['load_before']}, after {report['load_after']}")
    for name, ok in checks.items():
        print(f"target {name}: {'met' if ok else 'MISSED'}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report))
    return 0


def _print_row(n: int, row: dict[str, Any]) -> None:
    print(f"\n{n:,} candles, {row['trades']} trades")
    print(f"  ours            {row['ours_s'] * 1e3:9.1f} ms (min {row['ours_min_s'] * 1e3:.1f}; "
          f"first call {row['ours_cold_s'] * 1e3:.1f} ms)  "
          f"peak memory: tracemalloc {row['ours_tracemalloc_peak_mb']:.1f} MB, RSS +{row['ours_rss_peak_delta_mb']} MB")
    print(f"  vectorbt        {row['vectorbt_s'] * 1e3:9.1f} ms warm (min {row['vectorbt_min_s'] * 1e3:.1f}; "
          f"cold {row['vectorbt_cold_s']:.1f} s; "
          f"simulation only {row['vectorbt_sim_only_s'] * 1e3:.1f} ms)   ours/vectorbt = "
          f"{row['ours_over_vectorbt']:.2f} (vs simulation only {row['ours_over_vectorbt_sim_only']:.2f})")
    vt = row["vectorbt_trades"]
    print(f"    trades identical: {vt['identical']} (max P&L relative diff {vt['max_pnl_relative_diff']:.1e})"
          + (f" {vt['problems']}" if vt["problems"] else ""))
    if "backtesting_s" in row:
        print(f"  backtesting.py  {row['backtesting_s'] * 1e3:9.1f} ms (min {row['backtesting_min_s'] * 1e3:.1f})   "
              f"backtesting.py/ours = "
              f"{row['backtesting_over_ours']:.0f}x")
        bt = row["backtesting_trades"]
        print(f"    trades identical: {bt['identical']} (max P&L relative diff {bt['max_pnl_relative_diff']:.1e})"
              + (f" {bt['problems']}" if bt["problems"] else ""))
    print(f"  final equity: ours {row['ours_final_equity']:.6f}, vectorbt {row['vectorbt_final_equity']:.6f}"
          + (f", backtesting.py {row['backtesting_final_equity']:.6f}" if "backtesting_final_equity" in row else ""))


if __name__ == "__main__":
    sys.exit(main())
