"""The backtester: equal to a plain reference loop, golden numbers on real candles, no look-ahead, exact P&L."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_DOWN, Context, Decimal, localcontext
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exchanges.base import Side
from exchanges.fills import round_half_up, slipped_price
from exchanges.paper import DEFAULT_MARKETS
from strategies import backtest as bt
from strategies.base import Candles, Param, Signals, StrategyRule
from strategies.candles import candles_read_csv
from strategies.library import RULES
from strategies.report import result_to_json
from trading.domain import ExitMode, ExitRule, RiskLimits, SizingMode, SizingRule, StrategyRisk

ROOT = Path(__file__).resolve().parents[2]
ETH_1M = ROOT / "data" / "ETH_BTC-1m.csv"
FIXTURES = ROOT / "tests" / "fixtures"
MINUTE = 60_000
T0 = 1_600_000_000_000
XRP = next(m for m in DEFAULT_MARKETS if m.symbol == "XRP/USDT:USDT")
ETH_USD = next(m for m in DEFAULT_MARKETS if m.symbol == "ETH/USD")
Q8 = Decimal("0.00000001")


def risk(*, stop: str | None = None, take: str | None = None, sizing: str = "1",
         mode: SizingMode = SizingMode.RISK) -> StrategyRisk:
    return StrategyRisk(
        sizing=SizingRule(mode, Decimal(sizing)),
        stop_loss=ExitRule(ExitMode.PERCENT, Decimal(stop)) if stop else ExitRule(),
        take_profit=ExitRule(ExitMode.PERCENT, Decimal(take)) if take else ExitRule(),
    )


# --------------------------------------------------------------------------------------------- helpers


class ScriptedRule(StrategyRule):
    """Signals spelled out per candle: . none, L enter long, X exit long, S enter short, Y exit short,
    B = X+S (a cross down), C = L+Y (a cross up)."""

    name = "scripted"
    params = (Param("script", str, ""), Param("allow_short", bool, False))
    FLAGS: Mapping[str, str] = {".": "", "L": "L", "X": "X", "S": "S", "Y": "Y", "B": "XS", "C": "LY"}

    @classmethod
    def warmup(cls, params: Mapping[str, Any]) -> int:
        return 0

    @classmethod
    def signals(cls, candles: Candles, params: Mapping[str, Any]) -> Signals:
        script = cls.resolve(params)["script"].ljust(len(candles), ".")
        flags = [cls.FLAGS[ch] for ch in script[: len(candles)]]
        column = lambda f: np.array([f in x for x in flags], dtype=np.bool_)  # noqa: E731
        return Signals(column("L"), column("X"), column("S"), column("Y"))


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(RULES, ScriptedRule.name, ScriptedRule)


def candles(rows: Sequence[tuple[float, float, float, float]], times: Sequence[int] | None = None) -> Candles:
    """Candles from (open, high, low, close) rows, one minute apart unless times are given."""
    a = np.array(rows, dtype=np.float64).reshape(-1, 4)
    t = np.array(times if times is not None else [T0 + i * MINUTE for i in range(len(a))], dtype=np.int64)
    return Candles(t, a[:, 0].copy(), a[:, 1].copy(), a[:, 2].copy(), a[:, 3].copy(), np.ones(len(a)))


def scripted_run(rows: Sequence[tuple[float, float, float, float]], script: str, **config: Any) -> bt.BacktestResult:
    times = config.pop("times", None)
    allow_short = config.pop("allow_short", False)
    return bt.run(candles(rows, times), bt.BacktestConfig("scripted", params={"script": script},
                                                          allow_short=allow_short, **config))


FLAT = (100.0, 100.5, 99.5, 100.0)


# --------------------------------------------------------------------------------------------- reference loop


def reference_all_in(data: Candles, signals: Signals, *, cash: Decimal, fee: Decimal) -> list[bt.Trade]:
    """The spec as a plain loop: bar by bar, long only, next-open fills, all-in with the fee included."""
    dec = lambda x: Decimal(repr(float(x)))  # noqa: E731
    qty_context = Context(prec=20, rounding=ROUND_DOWN)  # the documented 20 significant digits, rounded down
    trades: list[bt.Trade] = []
    position: tuple[int, Decimal, Decimal, Decimal] | None = None  # entry bar, qty, entry price, entry fee
    pending = None
    n = len(data)

    def close(bar: int, price: Decimal, reason: str) -> None:
        nonlocal cash, position
        assert position is not None
        entry_bar, qty, entry_price, entry_fee = position
        fees = entry_fee + qty * price * fee
        pnl = (price - entry_price) * qty - fees
        trades.append(bt.Trade(int(data.time[entry_bar]), int(data.time[bar]), "long", qty, entry_price, price,
                               fees, pnl, reason))
        cash += pnl
        position = None

    with localcontext(Context(prec=200)):  # every product and sum here is exact
        for t in range(n):
            price = dec(data.open[t])
            if pending == "buy":
                qty = qty_context.divide(cash, price * (1 + fee))
                position = (t, qty, price, qty * price * fee)
            elif pending == "sell":
                close(t, price, "signal")
            pending = None
            if t == n - 1:
                break  # a signal on the last candle cannot fill
            if position is not None and signals.exit_long[t]:
                pending = "sell"
            elif position is None and signals.enter_long[t]:
                pending = "buy"
        if position is not None:
            close(n - 1, dec(data.close[n - 1]), "end")
    return trades


def test_rsi_backtest_equals_the_reference_loop_trade_for_trade() -> None:
    data = candles_read_csv(ETH_1M, form="columns")
    rule = RULES["rsi"]
    expected = reference_all_in(data, rule.signals(data, rule.resolve({})), cash=Decimal("10000"),
                                fee=Decimal("0.001"))
    result = bt.run(data, bt.BacktestConfig("rsi"))
    assert len(expected) >= 10
    assert list(result.trades) == expected  # every field, exact Decimal
    with localcontext(Context(prec=200)):
        assert result.metrics["final_equity"] == Decimal("10000") + sum(t.pnl for t in expected)


def test_rsi_with_other_params_equals_the_reference_loop() -> None:
    data = candles_read_csv(ETH_1M, form="columns")
    params = {"period": 9, "oversold": 25.0, "overbought": 65.0}
    signals = RULES["rsi"].signals(data, RULES["rsi"].resolve(params))
    expected = reference_all_in(data, signals, cash=Decimal("2500"), fee=Decimal("0.00075"))
    result = bt.run(data, bt.BacktestConfig("rsi", params=params, cash=Decimal("2500"), fee=Decimal("0.00075")))
    assert list(result.trades) == expected


def test_going_through_decide_changes_nothing_for_plain_all_in() -> None:
    # all-in without market, exits or limits skips trading.risk.decide; with limits given it is called
    data = candles_read_csv(ETH_1M, form="columns")
    plain = bt.run(data, bt.BacktestConfig("rsi"))
    decided = bt.run(data, bt.BacktestConfig("rsi", limits=RiskLimits()))
    assert decided.trades == plain.trades
    assert decided.metrics == plain.metrics


# --------------------------------------------------------------------------------------------- golden numbers


@dataclass(frozen=True)
class Golden:
    trades: int
    final_equity: str  # to 1e-8
    fees_paid: str  # to 1e-8
    first: tuple[Any, ...]  # entry ms, exit ms, side, quantity, entry price, exit price, pnl to 1e-8, reason
    last: tuple[Any, ...]


# Printed once, checked by hand: e.g. rsi/eth first trade 104127.69 x 0.09593999 = 9990.01 (x 1.001 = the
# 10000 cash), gross (0.09649959 - 0.09593999) x qty = 58.27, fees 9.99 + 10.05; rsi/xrp first trade: open
# 1.1921 slipped 2 bps up to the tick = 1.1924, stop 2% under the open rounded up to 1.1683, 1% of 1000 at
# risk -> 10 / 0.0238 = 420 XRP, the stop fill 1.1683 slipped down = 1.1680.
GOLDEN: dict[tuple[str, str], Golden] = {
    ("rsi", "eth"): Golden(
        trades=15, final_equity="10768.34594365", fees_paid="297.58007082",
        first=(1515564900000, 1515594600000, 'long', '104127.69471843795282', '0.09593999', '0.09649959', '38.23156813', 'signal'),
        last=(1517252400000, 1517287800000, 'long', '103237.87207289367989', '0.10442464', '0.10441057000000001', '-23.01225955', 'end'),
    ),
    ("rsi", "xrp"): Golden(
        trades=20, final_equity="998.09712950", fees_paid="9.87027050",
        first=(1636986600000, 1637010000000, 'long', '420', '1.1924', '1.1680', '-10.74368400', 'stop_loss'),
        last=(1637523000000, 1637533800000, 'long', '466', '1.0715', '1.0710', '-0.73220250', 'end'),
    ),
    ("macd", "eth"): Golden(
        trades=299, final_equity="4871.45238465", fees_paid="4199.10743320",
        first=(1515570900000, 1515571200000, 'long', '105450.83130332758801', '0.09473619', '0.09448198000000001', '-46.75986915', 'signal'),
        last=(1517286000000, 1517287800000, 'long', '46703.400942710179181', '0.10359999', '0.10441057000000001', '28.14204215', 'end'),
    ),
    ("macd", "xrp"): Golden(
        trades=86, final_equity="931.97033700", fees_paid="41.45546300",
        first=(1636945800000, 1636949100000, 'short', '414', '1.2068', '1.2109', '-2.19786390', 'signal'),
        last=(1637532300000, 1637533800000, 'short', '435', '1.0738', '1.0716', '0.49037550', 'end'),
    ),
    ("bollinger", "eth"): Golden(
        trades=114, final_equity="8421.83237035", fees_paid="2023.59873959",
        first=(1515569400000, 1515573600000, 'long', '105268.78698244731676', '0.09490002', '0.09499999', '-9.46682307', 'signal'),
        last=(1517283300000, 1517286300000, 'long', '81279.053661542826775', '0.1030002', '0.10371999', '41.70182862', 'signal'),
    ),
    ("bollinger", "xrp"): Golden(
        trades=77, final_equity="976.24718575", fees_paid="38.29751425",
        first=(1636944600000, 1636945800000, 'short', '414', '1.2092', '1.2074', '0.24496380', 'signal'),
        last=(1637528700000, 1637531700000, 'short', '456', '1.0744', '1.0742', '-0.39868080', 'signal'),
    ),
    ("combo", "eth"): Golden(
        trades=14, final_equity="11102.36230166", fees_paid="291.71462402",
        first=(1515569100000, 1515594300000, 'long', '106002.65133704321030', '0.09424302', '0.09720000000000001', '293.15425225', 'signal'),
        last=(1517251800000, 1517287800000, 'long', '106440.14085388636734', '0.10445998000000001', '0.10441057000000001', '-27.49141812', 'end'),
    ),
    ("combo", "xrp"): Golden(
        trades=16, final_equity="933.63025615", fees_paid="7.53584385",
        first=(1636986300000, 1637020800000, 'long', '421', '1.1884', '1.1641', '-10.72550125', 'stop_loss'),
        last=(1637522700000, 1637533800000, 'long', '437', '1.0677', '1.0710', '0.97479405', 'end'),
    ),
}  # fmt: skip


def golden_config(rule: str, file: str) -> tuple[Path, bt.BacktestConfig]:
    """eth: ETH/BTC 5m spot, frictionless all-in long only at 0.1%; xrp: XRP perp paper market, 2 bps slippage,
    longs and shorts sized by the live risk check (1% of equity at a 2% stop, 4% take-profit)."""
    params: dict[str, Any] = {"rules": ["rsi", "bollinger"]} if rule == "combo" else {}
    if file == "eth":
        return FIXTURES / "ETH_BTC-5m.csv", bt.BacktestConfig(rule, params=params)
    return FIXTURES / "XRP_USDT_USDT-5m-futures.csv", bt.BacktestConfig(
        rule, params=params, cash=Decimal("1000"), market=XRP, slippage_bps=Decimal("2"), allow_short=True,
        sizing="risk", risk=risk(stop="2", take="4"))


def summary(trade: bt.Trade) -> tuple[Any, ...]:
    return (trade.entry_time, trade.exit_time, trade.side, str(trade.quantity), str(trade.entry_price),
            str(trade.exit_price), str(trade.pnl.quantize(Q8)), trade.exit_reason)


@pytest.mark.parametrize(("rule", "file"), sorted(GOLDEN))
def test_golden_numbers_on_real_candles(rule: str, file: str) -> None:
    path, config = golden_config(rule, file)
    result = bt.run(candles_read_csv(path, form="columns"), config)
    golden = GOLDEN[(rule, file)]
    assert (len(result.trades), str(result.metrics["final_equity"].quantize(Q8)),
            str(result.metrics["fees_paid"].quantize(Q8))) == (golden.trades, golden.final_equity, golden.fees_paid)
    assert summary(result.trades[0]) == golden.first
    assert summary(result.trades[-1]) == golden.last
    assert result.metrics["total_return"] == pytest.approx(float(Decimal(golden.final_equity) / config.cash - 1))


# --------------------------------------------------------------------------------------------- no look-ahead


def test_a_signal_on_the_last_candle_makes_no_trade(scripted: None) -> None:
    result = scripted_run([FLAT] * 5, "....L")
    assert result.trades == ()
    assert result.metrics["trades"] == 0
    assert result.metrics["final_equity"] == Decimal("10000")


def test_an_exit_signal_on_the_last_candle_is_ignored_and_the_trade_ends_at_the_close(scripted: None) -> None:
    rows = [FLAT, FLAT, (101.0, 102.0, 100.0, 101.5), (102.0, 103.0, 101.0, 102.5)]
    (trade,) = scripted_run(rows, "L..X", fee=Decimal("0")).trades
    assert (trade.entry_time, trade.exit_time, trade.exit_reason) == (T0 + MINUTE, T0 + 3 * MINUTE, "end")
    assert (trade.entry_price, trade.exit_price) == (Decimal("100.0"), Decimal("102.5"))


def test_an_entry_fills_at_the_next_rows_open_across_a_gap(scripted: None) -> None:
    times = [T0, T0 + MINUTE, T0 + 2 * MINUTE, T0 + 9 * MINUTE, T0 + 10 * MINUTE, T0 + 11 * MINUTE]
    rows = [FLAT, FLAT, FLAT, (104.0, 105.0, 103.0, 104.5), (105.0, 106.0, 104.0, 105.5), FLAT]
    (trade,) = scripted_run(rows, "..L.X.", times=times).trades
    assert trade.entry_time == T0 + 9 * MINUTE  # the next row, seven minutes later: the gap is not filled in
    assert trade.entry_price == Decimal("104.0")
    assert (trade.exit_time, trade.exit_price, trade.exit_reason) == (T0 + 11 * MINUTE, Decimal("100.0"), "signal")


def test_signals_fill_at_the_next_open_not_at_their_own_close(scripted: None) -> None:
    rows = [(10.0, 11.0, 9.0, 10.5), (11.0, 12.0, 10.0, 11.5), (12.0, 13.0, 11.0, 12.5), (13.0, 14.0, 12.0, 13.5)]
    (trade,) = scripted_run(rows, "L.X.", fee=Decimal("0")).trades
    assert (trade.entry_price, trade.exit_price) == (Decimal("11.0"), Decimal("13.0"))
    assert trade.pnl == (Decimal("13.0") - Decimal("11.0")) * trade.quantity


def test_stop_and_take_profit_touched_in_one_candle_take_the_stop(scripted: None) -> None:
    rows = [FLAT, FLAT, (100.0, 105.0, 97.0, 101.0), FLAT]  # entry 100: stop 98, take-profit 104
    (trade,) = scripted_run(rows, "L...", risk=risk(stop="2", take="4")).trades
    assert (trade.exit_time, trade.exit_price, trade.exit_reason) == (T0 + 2 * MINUTE, Decimal("98"), "stop_loss")


def test_an_open_gapping_through_the_stop_fills_at_the_open(scripted: None) -> None:
    rows = [FLAT, FLAT, (95.0, 96.0, 94.0, 95.5), FLAT]
    (trade,) = scripted_run(rows, "L...", risk=risk(stop="2", take="4")).trades
    assert (trade.exit_price, trade.exit_reason) == (Decimal("95.0"), "stop_loss")


def test_an_open_gapping_through_the_take_profit_fills_at_the_open(scripted: None) -> None:
    rows = [FLAT, FLAT, (106.0, 107.0, 90.0, 100.0), FLAT]  # it also touches the stop later: the open came first
    (trade,) = scripted_run(rows, "L...", risk=risk(stop="2", take="4")).trades
    assert (trade.exit_price, trade.exit_reason) == (Decimal("106.0"), "take_profit")


def test_a_take_profit_inside_a_candle_fills_at_its_level(scripted: None) -> None:
    rows = [FLAT, FLAT, (101.0, 104.5, 100.5, 104.0), FLAT]
    (trade,) = scripted_run(rows, "L...", risk=risk(stop="2", take="4"), fee=Decimal("0")).trades
    assert (trade.exit_price, trade.exit_reason) == (Decimal("104"), "take_profit")
    assert trade.pnl == 4 * trade.quantity


def test_the_entry_candle_itself_can_stop_out(scripted: None) -> None:
    rows = [FLAT, (100.0, 100.5, 97.5, 99.0), FLAT]
    (trade,) = scripted_run(rows, "L..", risk=risk(stop="2")).trades
    assert trade.entry_time == trade.exit_time == T0 + MINUTE
    assert (trade.exit_price, trade.exit_reason) == (Decimal("98"), "stop_loss")


def test_stops_are_watched_up_to_the_exit_signals_candle_only(scripted: None) -> None:
    # exit signal on candle 2; candle 3 opens at 100 (the exit) and then drops through the stop: not a stop-out
    rows = [FLAT, FLAT, FLAT, (100.0, 100.2, 90.0, 91.0), FLAT]
    (trade,) = scripted_run(rows, "L.X..", risk=risk(stop="2")).trades
    assert (trade.exit_time, trade.exit_price, trade.exit_reason) == (T0 + 3 * MINUTE, Decimal("100.0"), "signal")


def test_after_a_stop_the_same_candles_close_can_signal_a_new_entry(scripted: None) -> None:
    rows = [FLAT, FLAT, (99.0, 99.5, 97.0, 98.5), (98.0, 99.0, 97.9, 98.5), FLAT]
    first, second = scripted_run(rows, "L.L..", risk=risk(stop="2")).trades
    assert (first.exit_time, first.exit_reason) == (T0 + 2 * MINUTE, "stop_loss")
    assert (second.entry_time, second.entry_price) == (T0 + 3 * MINUTE, Decimal("98.0"))


def test_levels_are_compared_exactly_not_as_floats(scripted: None) -> None:
    # stop = 100 x (1 - 2.00000000000000001%) = 97.999999999999999999, which rounds to the float 98.0
    rows = [FLAT, FLAT, (99.0, 99.5, 98.0, 98.5), FLAT]
    tight = StrategyRisk(sizing=SizingRule(SizingMode.RISK, Decimal("1")),
                         stop_loss=ExitRule(ExitMode.PERCENT, Decimal("2.00000000000000001")))
    (trade,) = scripted_run(rows, "L...", risk=tight).trades
    assert trade.exit_reason == "end"  # the low 98.0 never reached the stop just below it


def test_a_short_is_reversed_into_a_long_at_one_open(scripted: None) -> None:
    rows = [FLAT, (100.0, 101.0, 99.0, 99.0), (98.0, 99.0, 97.0, 98.0), (97.0, 98.0, 96.0, 97.5), FLAT]
    short, long = scripted_run(rows, "S.L..", allow_short=True, fee=Decimal("0")).trades
    assert (short.side, short.entry_price, short.exit_price, short.exit_reason) == (
        "short", Decimal("100.0"), Decimal("97.0"), "signal")
    assert short.pnl == 3 * short.quantity
    assert (long.side, long.entry_time, long.entry_price, long.exit_reason) == (
        "long", T0 + 3 * MINUTE, Decimal("97.0"), "end")
    assert long.quantity == Context(prec=20, rounding=ROUND_DOWN).divide(Decimal("10000") + short.pnl, Decimal("97"))


def test_shorts_are_ignored_unless_allowed(scripted: None) -> None:
    assert scripted_run([FLAT] * 4, "S.Y.").trades == ()


def test_a_short_stop_is_above_the_entry(scripted: None) -> None:
    rows = [FLAT, FLAT, (101.0, 103.0, 100.5, 102.0), FLAT]
    (trade,) = scripted_run(rows, "S...", allow_short=True, risk=risk(stop="2")).trades
    assert (trade.side, trade.exit_price, trade.exit_reason) == ("short", Decimal("102"), "stop_loss")


# --------------------------------------------------------------------------------------------- sizing and fills


def test_risk_sizing_uses_the_live_risk_check(scripted: None) -> None:
    rows = [FLAT, FLAT, (99.0, 99.5, 97.0, 98.0), FLAT]
    (trade,) = scripted_run(rows, "L...", sizing="risk", risk=risk(stop="2"), fee=Decimal("0")).trades
    assert trade.quantity == 50  # 1% of 10000 over the 2-point stop distance
    assert trade.pnl == -100


def test_entries_the_risk_check_rejects_are_counted(scripted: None) -> None:
    # 5% at risk with a 1% stop is 5x equity: over the default 1x leverage cap
    result = scripted_run([FLAT] * 4, "L...", sizing="risk", risk=risk(stop="1", sizing="5"))
    assert result.trades == ()
    assert result.metrics["rejected_entries"] == {"max_leverage": 1}
    allowed = scripted_run([FLAT] * 4, "L...", sizing="risk", risk=risk(stop="1", sizing="5"),
                           limits=RiskLimits(max_leverage=Decimal("5")))
    assert len(allowed.trades) == 1


def test_a_paper_market_fills_like_the_paper_venue(scripted: None) -> None:
    rows = [FLAT, (2000.123, 2010.0, 1990.0, 2005.0), (2005.0, 2006.0, 2001.0, 2003.0), (2004.987, 2006, 2003, 2005)]
    bps = Decimal("7")
    (trade,) = scripted_run(rows, "L.X.", market=ETH_USD, slippage_bps=bps, cash=Decimal("5000")).trades
    entry = slipped_price(ETH_USD, Side.BUY, Decimal("2000.123"), bps)
    exit_ = slipped_price(ETH_USD, Side.SELL, Decimal("2004.987"), bps)
    qty = ETH_USD.round_qty(Decimal("5000") / (entry * (1 + ETH_USD.taker_fee)))
    fees = (round_half_up(qty * entry * ETH_USD.taker_fee, Q8) + round_half_up(qty * exit_ * ETH_USD.taker_fee, Q8))
    assert (trade.entry_price, trade.exit_price, trade.quantity, trade.fees) == (entry, exit_, qty, fees)
    assert trade.pnl == (exit_ - entry) * qty - fees


def test_an_entry_below_the_markets_minimum_is_rejected(scripted: None) -> None:
    result = scripted_run([FLAT] * 4, "L...", market=ETH_USD, cash=Decimal("0.005"))
    assert result.trades == ()
    assert result.metrics["rejected_entries"] == {"min_size": 1}


def test_frictionless_slippage_moves_both_fills_against_us(scripted: None) -> None:
    rows = [FLAT, FLAT, FLAT, FLAT]
    (trade,) = scripted_run(rows, "L.X.", slippage_bps=Decimal("10"), fee=Decimal("0")).trades
    assert (trade.entry_price, trade.exit_price) == (Decimal("100.1"), Decimal("99.9"))


# --------------------------------------------------------------------------------------------- invariants


@st.composite
def series(draw: st.DrawFn) -> tuple[list[tuple[float, float, float, float]], str]:
    n = draw(st.integers(min_value=2, max_value=40))
    cents = st.integers(min_value=100, max_value=100_000)
    rows = []
    for _ in range(n):
        o, c = draw(cents), draw(cents)
        up, down = draw(st.integers(0, 3000)), draw(st.integers(0, 3000))
        high, low = max(o, c) + up, max(1, min(o, c) - down)
        rows.append((o / 100, high / 100, low / 100, c / 100))
    script = "".join(draw(st.lists(st.sampled_from(".....LXSYBC"), min_size=n, max_size=n)))
    return rows, script


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=series(),
    allow_short=st.booleans(),
    stop=st.sampled_from([None, "0.5", "3"]),
    take=st.sampled_from([None, "1", "7"]),
    sizing=st.sampled_from(["all-in", "risk"]),
    market=st.sampled_from([None, ETH_USD]),
    bps=st.sampled_from(["0", "3"]),
)
def test_trade_pnl_adds_up_to_the_final_equity_exactly(
    scripted: None, data: tuple[list[tuple[float, float, float, float]], str], allow_short: bool,
    stop: str | None, take: str | None, sizing: str, market: Any, bps: str,
) -> None:
    rows, script = data
    if sizing == "risk" and stop is None:
        stop = "1"
    exits = risk(stop=stop, take=take) if stop or take else None
    result = scripted_run(rows, script, allow_short=allow_short, sizing=sizing, risk=exits, market=market,
                          slippage_bps=Decimal(bps), limits=RiskLimits(max_leverage=Decimal("100")))
    with localcontext(Context(prec=200)):
        assert sum((t.pnl for t in result.trades), Decimal(0)) == result.metrics["final_equity"] - Decimal("10000")
        for t in result.trades:
            sign = 1 if t.side == "long" else -1
            assert t.pnl == (t.exit_price - t.entry_price) * t.quantity * sign - t.fees
            assert t.quantity > 0 and t.fees >= 0
    times = [(t.entry_time, t.exit_time) for t in result.trades]
    assert all(a <= b for a, b in times)
    assert all(prev[1] <= nxt[0] for prev, nxt in zip(times, times[1:]))  # one position at a time
    assert result.equity[-1] == pytest.approx(float(result.metrics["final_equity"]), rel=1e-12)
    assert len(result.equity) == len(rows)


# --------------------------------------------------------------------------------------------- input and output


def test_params_are_validated_with_the_rule() -> None:
    data = candles_read_csv(FIXTURES / "XRP_USDT_USDT-5m-futures.csv", form="columns")
    with pytest.raises(ValueError, match=r"invalid params for rsi: overbought: must be a float; period: must be at"):
        bt.run(data, bt.BacktestConfig("rsi", params={"period": 1, "overbought": "high"}))
    with pytest.raises(ValueError, match=r"invalid params for rsi: oversold: must be below overbought"):
        bt.run(data, bt.BacktestConfig("rsi", params={"oversold": 80.0}))
    with pytest.raises(ValueError, match="unknown strategy 'nope'; known: .*rsi"):
        bt.run(data, bt.BacktestConfig("nope"))
    with pytest.raises(ValueError, match="risk sizing needs"):
        bt.run(data, bt.BacktestConfig("rsi", sizing="risk"))


def test_progress_is_reported_up_to_one() -> None:
    seen: list[float] = []
    bt.run(candles_read_csv(ETH_1M, form="columns"), bt.BacktestConfig("rsi"), progress=seen.append)
    assert seen[-1] == 1.0 and len(seen) > 5
    assert seen == sorted(seen)


def test_result_to_json_keeps_decimals_as_strings() -> None:
    result = bt.run(candles_read_csv(FIXTURES / "ETH_BTC-5m.csv", form="columns"), bt.BacktestConfig("rsi"))
    data = json.loads(json.dumps(result_to_json(result)))
    trade = data["trades"][0]
    assert trade == {
        "entry_time": 1515564900000, "exit_time": 1515594600000, "side": "long",
        "quantity": "104127.69471843795282", "entry_price": "0.09593999", "exit_price": "0.09649959",
        "fees": str(result.trades[0].fees), "pnl": str(result.trades[0].pnl), "exit_reason": "signal",
    }
    assert Decimal(data["metrics"]["final_equity"]) == result.metrics["final_equity"]


def test_metrics_follow_the_documented_formulas(scripted: None) -> None:
    rows = [FLAT, (100.0, 111.0, 99.0, 110.0), (110.0, 111.0, 98.0, 99.0), (99.0, 100.0, 98.0, 99.0)]
    result = scripted_run(rows, "L.X.", fee=Decimal("0"))
    m = result.metrics
    equity = [10000.0, 11000.0, 9900.0, 9900.0]  # entry at 100 with 100 units; exit at the open of candle 3
    assert list(result.equity) == pytest.approx(equity)
    assert m["max_drawdown"] == pytest.approx(1 - 9900 / 11000)
    returns = np.diff([10000.0, *equity]) / np.array([10000.0, *equity])[:-1]
    scale = np.sqrt(365 * 1440)
    assert m["sharpe"] == pytest.approx(returns.mean() / returns.std(ddof=1) * scale)
    assert m["sortino"] == pytest.approx(returns.mean() / np.sqrt(np.mean(np.minimum(returns, 0) ** 2)) * scale)
    assert m["total_return"] == pytest.approx(-0.01)
    assert m["exposure_time"] == pytest.approx(2 / 4)  # candles 1 and 2; the exit fills at candle 3's open
    assert (m["trades"], m["wins"], m["losses"], m["win_rate"]) == (1, 0, 1, 0.0)
    assert m["bar_ms"] == MINUTE
    assert m["cagr"] == pytest.approx(0.99 ** (365 * 1440 / 4) - 1)


# --------------------------------------------------------------------------------------------- command


def test_the_command_writes_json_and_an_offline_html_report(tmp_path: Path) -> None:
    from django.core.management import call_command

    out, html = tmp_path / "result.json", tmp_path / "report.html"
    call_command("backtest", "--strategy", "rsi", "--data", str(ETH_1M), "--params", '{"period": 14}',
                 "--fee", "0.001", "--slippage-bps", "0", "--cash", "10000", "--sizing", "all-in",
                 "--stop-loss", "2", "--json", str(out), "--html", str(html), "--quiet-progress")
    data = json.loads(out.read_text())
    assert set(data) == {"config", "start_time", "end_time", "metrics", "trades"}
    for key in ("total_return", "cagr", "max_drawdown", "sharpe", "sortino", "win_rate", "profit_factor",
                "exposure_time", "trades", "average_trade", "fees_paid"):
        assert key in data["metrics"]
    assert data["trades"] and data["metrics"]["trades"] == len(data["trades"])
    for trade in data["trades"]:
        assert set(trade) >= {"entry_time", "exit_time", "side", "quantity", "entry_price", "exit_price", "fees", "pnl"}
        assert isinstance(trade["entry_time"], int) and isinstance(trade["exit_time"], int)
        assert trade["side"] in ("long", "short")
        for key in ("quantity", "entry_price", "exit_price", "fees", "pnl"):
            Decimal(trade[key])
    page = html.read_text()
    assert "<svg" in page
    assert not re.search(r"https?://", page)
    assert "<script src" not in page and "<link" not in page


def test_the_command_reports_bad_input(tmp_path: Path) -> None:
    from django.core.management import call_command
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="invalid params for rsi"):
        call_command("backtest", "--strategy", "rsi", "--data", str(ETH_1M), "--params", '{"period": 0}',
                     "--quiet-progress")
    with pytest.raises(CommandError, match="needs --stop-loss"):
        call_command("backtest", "--strategy", "rsi", "--data", str(ETH_1M), "--sizing", "risk")
    with pytest.raises(CommandError, match="cannot read"):
        call_command("backtest", "--strategy", "rsi", "--data", str(tmp_path / "missing.csv"))
