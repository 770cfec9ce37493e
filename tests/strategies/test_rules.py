"""Each rule's signals equal a plain reference loop over real candles, are causal, and its params are validated."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import talib

from strategies.base import Candles, Signals, StrategyRule, last_bar_action
from strategies.candles import candles_read_csv
from strategies.library import RULES, BollingerRule, ComboRule, MacdRule, RsiRule

CSV = Path(__file__).resolve().parents[2] / "data" / "ETH_BTC-1m.csv"
Reference = dict[str, list[bool]]


@functools.cache
def candles() -> Candles:
    """The bundled ETH/BTC 1m candles (14,397 rows, one missing minute)."""
    return candles_read_csv(CSV, form="columns")


def closes_only(close: list[float]) -> Candles:
    """Candles whose every price is the close (one-minute bars)."""
    prices = np.asarray(close, dtype=np.float64)
    time = np.arange(len(prices), dtype=np.int64) * 60_000
    return Candles(time, prices, prices, prices, prices, np.ones_like(prices))


def empty_reference(n: int) -> Reference:
    return {k: [False] * n for k in ("enter_long", "exit_long", "enter_short", "exit_short")}


def assert_signals_equal(signals: Signals, expected: Reference, *, n: int) -> None:
    for key, want in expected.items():
        got = getattr(signals, key)
        assert got.dtype == np.bool_ and got.shape == (n,), key
        assert got.tolist() == want, f"{key}: first difference at bar {np.flatnonzero(got != np.array(want))[:1]}"


# --------------------------------------------------------------------------------------------- reference loops


def rsi_reference(c: Candles, p: Mapping[str, Any]) -> Reference:
    value = talib.RSI(c.close, timeperiod=p["period"]).tolist()
    out = empty_reference(len(c))
    for t in range(1, len(c)):
        up = value[t - 1] < p["oversold"] <= value[t]
        down = value[t - 1] > p["overbought"] >= value[t]
        out["enter_long"][t], out["exit_long"][t] = up, down
        if p["allow_short"]:
            out["enter_short"][t], out["exit_short"][t] = down, up
    return out


def macd_reference(c: Candles, p: Mapping[str, Any]) -> Reference:
    line, signal, _ = (a.tolist() for a in talib.MACD(c.close, p["fast"], p["slow"], p["signal"]))
    out = empty_reference(len(c))
    for t in range(1, len(c)):
        above = line[t - 1] < signal[t - 1] and line[t] >= signal[t]
        below = line[t - 1] > signal[t - 1] and line[t] <= signal[t]
        out["enter_long"][t] = above and (line[t] < 0 or not p["zero_filter"])
        out["exit_long"][t] = below
        if p["allow_short"]:
            out["enter_short"][t] = below and (line[t] > 0 or not p["zero_filter"])
            out["exit_short"][t] = above
    return out


def bollinger_reference(c: Candles, p: Mapping[str, Any]) -> Reference:
    upper, middle, lower = (a.tolist() for a in talib.BBANDS(c.close, p["period"], p["stddev"], p["stddev"], 0))
    close = c.close.tolist()
    far = p["exit_at"] == "upper"
    out = empty_reference(len(c))
    for t in range(p["period"], len(c)):
        up_level, down_level = (upper, lower) if far else (middle, middle)
        if p["mode"] == "mean_reversion":
            enter_long = close[t - 1] < lower[t - 1] and close[t] >= lower[t]
            exit_long = close[t] >= up_level[t]
            enter_short = close[t - 1] > upper[t - 1] and close[t] <= upper[t]
            exit_short = close[t] <= down_level[t]
        else:
            enter_long = close[t - 1] < upper[t - 1] and close[t] >= upper[t]
            exit_long = close[t - 1] > up_level[t - 1] and close[t] <= up_level[t]
            enter_short = close[t - 1] > lower[t - 1] and close[t] <= lower[t]
            exit_short = close[t - 1] < down_level[t - 1] and close[t] >= down_level[t]
        out["enter_long"][t], out["exit_long"][t] = enter_long, exit_long
        if p["allow_short"]:
            out["enter_short"][t], out["exit_short"][t] = enter_short, exit_short
    return out


def combo_reference(c: Candles, p: Mapping[str, Any]) -> Reference:
    close = c.close.tolist()
    rsi = talib.RSI(c.close, p["rsi"]["period"]).tolist()
    b = p["bollinger"]
    upper, middle, lower = (a.tolist() for a in talib.BBANDS(c.close, b["period"], b["stddev"], b["stddev"], 0))
    m = p["macd"]
    line, _, hist = (a.tolist() for a in talib.MACD(c.close, m["fast"], m["slow"], m["signal"]))
    far = b["exit_at"] == "upper"

    def conditions(t: int) -> dict[str, tuple[bool, bool, bool, bool]] | None:
        """Per sub-rule (long entry, long exit, short entry, short exit) at bar t; None while undefined."""
        needed = {"rsi": (rsi[t],), "bollinger": (middle[t],), "macd": (hist[t], hist[t - 1])}
        if t < 1 or any(math.isnan(v) for r in p["rules"] for v in needed[r]):
            return None
        low, high = rsi[t] < p["rsi"]["oversold"], rsi[t] > p["rsi"]["overbought"]
        long_level, short_level = (upper[t], lower[t]) if far else (middle[t], middle[t])
        if b["mode"] == "mean_reversion":
            band = (close[t] < lower[t], close[t] > long_level, close[t] > upper[t], close[t] < short_level)
        else:
            band = (close[t] > upper[t], close[t] < long_level, close[t] < lower[t], close[t] > short_level)
        rising, falling = hist[t] > hist[t - 1], hist[t] < hist[t - 1]
        zero = m["zero_filter"]
        macd = (rising and (line[t] < 0 or not zero), falling, falling and (line[t] > 0 or not zero), rising)
        return {"rsi": (low, high, high, low), "bollinger": band, "macd": macd}

    join = all if p["combine"] == "all" else any
    combined = []
    for t in range(len(c)):
        parts = conditions(t)
        combined.append(None if parts is None else [join(parts[r][i] for r in p["rules"]) for i in range(4)])
    out = empty_reference(len(c))
    for t in range(1, len(c)):
        if combined[t] is None or combined[t - 1] is None:
            continue
        for i, key in enumerate(out):
            if key.endswith("short") and not p["allow_short"]:
                continue
            out[key][t] = combined[t][i] and not combined[t - 1][i]
    return out


CASES: list[tuple[type[StrategyRule], dict[str, Any], Callable[[Candles, Mapping[str, Any]], Reference]]] = [
    (RsiRule, {}, rsi_reference),
    (RsiRule, {"allow_short": True}, rsi_reference),
    (RsiRule, {"period": 7, "oversold": 20, "overbought": 80.5, "allow_short": True}, rsi_reference),
    (RsiRule, {"period": 200, "oversold": 48, "overbought": 52}, rsi_reference),
    (MacdRule, {}, macd_reference),
    (MacdRule, {"allow_short": True}, macd_reference),
    (MacdRule, {"zero_filter": True, "allow_short": True}, macd_reference),
    (MacdRule, {"fast": 5, "slow": 35, "signal": 5, "zero_filter": True}, macd_reference),
    (BollingerRule, {}, bollinger_reference),
    (BollingerRule, {"allow_short": True}, bollinger_reference),
    (BollingerRule, {"exit_at": "upper", "allow_short": True}, bollinger_reference),
    (BollingerRule, {"mode": "breakout", "allow_short": True}, bollinger_reference),
    (BollingerRule, {"mode": "breakout", "exit_at": "upper", "period": 50, "stddev": 1.5,
                     "allow_short": True}, bollinger_reference),
    (ComboRule, {}, combo_reference),
    (ComboRule, {"rules": ["rsi", "macd"], "allow_short": True}, combo_reference),
    (ComboRule, {"rules": ["rsi", "bollinger"], "rsi": {"period": 7}, "allow_short": True}, combo_reference),
    (ComboRule, {"rules": ["bollinger", "macd"], "combine": "any", "allow_short": True,
                 "bollinger": {"mode": "breakout", "exit_at": "upper"}, "macd": {"zero_filter": True}},
     combo_reference),
    (ComboRule, {"rules": ["macd", "rsi", "bollinger"], "combine": "any", "rsi": {"oversold": 25},
                 "macd": {"fast": 8, "slow": 60, "signal": 20}}, combo_reference),
]


def case_id(case: tuple[type[StrategyRule], dict[str, Any], Any]) -> str:
    return f"{case[0].name}-{case[1]}"


# --------------------------------------------------------------------------------------------- semantics


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_signals_equal_the_reference_loop_on_real_candles(case: tuple[Any, ...]) -> None:
    rule, params, reference = case
    assert rule.validate(params) == {}
    resolved = rule.resolve(params)
    signals = rule.signals(candles(), params)
    assert_signals_equal(signals, reference(candles(), resolved), n=len(candles()))
    if rule is not ComboRule or resolved["combine"] == "any":
        assert signals.enter_long.any() and signals.exit_long.any(), "the case exercises the rule"
    if resolved["allow_short"] and rule is not ComboRule:
        assert signals.enter_short.any() and signals.exit_short.any()


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_nothing_fires_before_the_warmup(case: tuple[Any, ...]) -> None:
    rule, params, _ = case
    warmup = rule.warmup(params)
    signals = rule.signals(candles(), params)
    for key in ("enter_long", "exit_long", "enter_short", "exit_short"):
        assert not getattr(signals, key)[:warmup].any(), key


@pytest.mark.parametrize(
    ("rule", "params", "first_defined"),
    [
        (RsiRule, {"period": 14}, lambda c: talib.RSI(c, 14)),
        (MacdRule, {"fast": 12, "slow": 26, "signal": 9}, lambda c: talib.MACD(c, 12, 26, 9)[1]),
        (BollingerRule, {"period": 20}, lambda c: talib.BBANDS(c, 20)[1]),
    ],
)
def test_warmup_is_one_bar_after_the_indicator_is_first_defined(
    rule: type[StrategyRule], params: dict[str, Any], first_defined: Callable[[np.ndarray], np.ndarray]
) -> None:
    values = first_defined(candles().close)
    assert rule.warmup(params) == int(np.argmax(~np.isnan(values))) + 1


def test_combo_warmup_waits_for_the_slowest_sub_rule() -> None:
    assert ComboRule.warmup({}) == 26 + 9 - 1 + 1  # the MACD histogram and the bar before it, then a transition
    assert ComboRule.warmup({"rules": ["rsi"], "rsi": {"period": 50}}) == 51
    assert ComboRule.warmup({"rules": ["rsi", "bollinger"], "bollinger": {"period": 100}}) == 100


@pytest.mark.parametrize("rule", list(RULES.values()), ids=lambda r: r.name)
def test_too_few_candles_give_no_signals_and_no_error(rule: type[StrategyRule]) -> None:
    warmup = rule.warmup({"allow_short": True})
    for n in (0, 1, 2, warmup - 1, warmup, warmup + 1, warmup + 2):
        signals = rule.signals(candles().head(n), {"allow_short": True})
        for key in ("enter_long", "exit_long", "enter_short", "exit_short"):
            array = getattr(signals, key)
            assert array.shape == (n,) and array.dtype == np.bool_ and not array[:warmup].any()


def test_shorts_stay_off_unless_allowed() -> None:
    for rule in RULES.values():
        signals = rule.signals(candles(), {"rules": ["rsi"], "combine": "any"} if rule is ComboRule else {})
        assert not signals.enter_short.any() and not signals.exit_short.any(), rule.name


def test_short_side_mirrors_the_long_side() -> None:
    c = candles()
    rsi = RsiRule.signals(c, {"allow_short": True})
    assert (rsi.enter_short == rsi.exit_long).all() and (rsi.exit_short == rsi.enter_long).all()
    macd = MacdRule.signals(c, {"allow_short": True})
    assert (macd.enter_short == macd.exit_long).all() and (macd.exit_short == macd.enter_long).all()
    # Bollinger on the negated series swaps the bands: the short side of x is the long side of -x.
    flipped = Candles(c.time, -c.open, -c.low, -c.high, -c.close, c.volume)
    for params in ({"allow_short": True}, {"mode": "breakout", "exit_at": "upper", "allow_short": True}):
        ours, mirror = BollingerRule.signals(c, params), BollingerRule.signals(flipped, params)
        assert (ours.enter_short == mirror.enter_long).all() and (ours.exit_short == mirror.exit_long).all()
        assert ours.enter_short.sum() > 0


def test_zero_filter_keeps_only_long_crosses_below_zero() -> None:
    c = candles()
    plain, filtered = MacdRule.signals(c, {}), MacdRule.signals(c, {"zero_filter": True})
    line = talib.MACD(c.close)[0]
    assert (filtered.enter_long == (plain.enter_long & (line < 0))).all()
    assert 0 < filtered.enter_long.sum() < plain.enter_long.sum()
    assert (filtered.exit_long == plain.exit_long).all()


# --------------------------------------------------------------------------------------------- combo example


def crash_then_slowing() -> list[float]:
    """80 calm bars, an accelerating crash (bars 80-86), a slower decline (87-93), then a recovery."""
    calm = [100 + 0.3 * math.sin(i * 2 * math.pi / 7) for i in range(80)]
    prices = calm[:]
    for drop in (0.5, 1, 1.5, 2, 2.5, 3, 3, 1.5, 1, 1, 1, 1, 1, 1):
        prices.append(prices[-1] - drop)
    for _ in range(10):
        prices.append(prices[-1] + 0.8)
    return prices


def test_combo_example_fires_when_the_macd_histogram_turns_up_in_an_oversold_crash() -> None:
    c = closes_only(crash_then_slowing())
    params = {"rules": ["rsi", "bollinger", "macd"], "combine": "all", "bollinger": {"stddev": 1.5}}
    # What the construction gives: RSI < 30 and close < lower band from bar 82 (the crash), while the MACD
    # histogram keeps falling until the decline slows; it first rises at bar 90, still oversold and below the band.
    hist = talib.MACD(c.close)[2]
    assert np.flatnonzero(hist[82:] > hist[81:-1])[0] + 82 == 90
    signals = ComboRule.signals(c, params)
    assert np.flatnonzero(signals.enter_long).tolist() == [90]
    two = ComboRule.signals(c, {"rules": ["rsi", "bollinger"], "bollinger": {"stddev": 1.5}})
    assert np.flatnonzero(two.enter_long).tolist() == [82]
    # With the default 2-deviation bands the close is back inside the band by bar 90: the three never align.
    assert not ComboRule.signals(c, {**params, "bollinger": {}}).enter_long.any()


def test_combo_fires_once_while_the_condition_holds() -> None:
    c = candles()
    signals = ComboRule.signals(c, {"rules": ["rsi"]})
    rsi = talib.RSI(c.close, 14)
    oversold = rsi < 30
    runs = int((oversold[1:] & ~oversold[:-1]).sum())
    assert signals.enter_long.sum() == runs > 0
    assert not (signals.enter_long[1:] & signals.enter_long[:-1]).any()


# --------------------------------------------------------------------------------------------- causality


@pytest.mark.parametrize(
    "case",
    [
        (RsiRule, {"allow_short": True}),
        (MacdRule, {"zero_filter": True, "allow_short": True}),
        (BollingerRule, {"allow_short": True}),
        (BollingerRule, {"mode": "breakout", "allow_short": True}),
        (ComboRule, {"rules": ["rsi", "bollinger", "macd"], "combine": "any", "allow_short": True}),
    ],
    ids=lambda case: f"{case[0].name}-{case[1]}",
)
def test_last_bar_on_the_head_equals_the_full_series_bar(case: tuple[type[StrategyRule], dict[str, Any]]) -> None:
    rule, params = case
    c = candles()
    full = rule.signals(c, params)
    keys = ("enter_long", "exit_long", "enter_short", "exit_short")
    firing = np.flatnonzero(np.logical_or.reduce([getattr(full, k) for k in keys]))
    rng = np.random.default_rng(7)
    bars = sorted({*rng.choice(firing, size=min(60, len(firing)), replace=False).tolist(),
                   *rng.integers(0, len(c), size=40).tolist(), rule.warmup(params), len(c) - 1})
    for t in bars:
        head = rule.signals(c.head(t + 1), params)
        truncated = Signals(*(getattr(full, k)[: t + 1] for k in keys))
        for k in keys:
            assert (getattr(head, k) == getattr(truncated, k)).all(), (t, k)
        for position in (-1, 0, 1):
            assert last_bar_action(head, position=position, allow_short=True) == last_bar_action(
                truncated, position=position, allow_short=True)
    assert any(last_bar_action(rule.signals(c.head(t + 1), params), position=0, allow_short=True)
               for t in firing[:50])


# --------------------------------------------------------------------------------------------- params


def test_registry_holds_the_four_rules_by_name() -> None:
    assert set(RULES) == {"rsi", "macd", "bollinger", "combo"}
    assert all(rule.name == name for name, rule in RULES.items())


@pytest.mark.parametrize("rule", list(RULES.values()), ids=lambda r: r.name)
def test_declared_defaults_are_valid_and_resolve_round_trips(rule: type[StrategyRule]) -> None:
    assert rule.validate({}) == {}
    resolved = rule.resolve({})
    assert rule.validate(resolved) == {}
    assert set(resolved) == {p.name for p in rule.params}


@pytest.mark.parametrize(
    ("rule", "values"),
    [
        (RsiRule, {"period": 2, "oversold": 1, "overbought": 99}),
        (RsiRule, {"period": 200, "oversold": 49.5, "overbought": 50}),
        (MacdRule, {"fast": 2, "slow": 3, "signal": 2, "zero_filter": True}),
        (MacdRule, {"fast": 100, "slow": 300, "signal": 100}),
        (BollingerRule, {"period": 2, "stddev": 0.1, "mode": "breakout", "exit_at": "upper"}),
        (BollingerRule, {"period": 200, "stddev": 10}),
        (ComboRule, {"rules": ["macd"], "combine": "any", "macd": {"fast": 3, "slow": 4}}),
        (ComboRule, {"rules": ("rsi", "bollinger"), "rsi": {"oversold": 20}, "bollinger": {"mode": "breakout"}}),
        (ComboRule, {"rules": ["rsi"], "macd": {"fast": 5}}),
    ],
)
def test_params_at_the_edges_of_their_ranges_are_accepted(rule: type[StrategyRule], values: dict[str, Any]) -> None:
    assert rule.validate(values) == {}


@pytest.mark.parametrize(
    ("rule", "values", "field"),
    [
        (RsiRule, {"period": "14"}, "period"),
        (RsiRule, {"period": 14.0}, "period"),
        (RsiRule, {"period": True}, "period"),
        (RsiRule, {"period": 1}, "period"),
        (RsiRule, {"period": 201}, "period"),
        (RsiRule, {"oversold": 0.5}, "oversold"),
        (RsiRule, {"oversold": float("nan")}, "oversold"),
        (RsiRule, {"overbought": 100}, "overbought"),
        (RsiRule, {"overbought": "70"}, "overbought"),
        (RsiRule, {"allow_short": "yes"}, "allow_short"),
        (RsiRule, {"allow_short": 1}, "allow_short"),
        (RsiRule, {"speed": 3}, "speed"),
        (RsiRule, {"oversold": 70, "overbought": 30}, "oversold"),
        (RsiRule, {"oversold": 50, "overbought": 50}, "oversold"),
        (RsiRule, {"oversold": 75}, "oversold"),
        (MacdRule, {"fast": 1}, "fast"),
        (MacdRule, {"fast": 101}, "fast"),
        (MacdRule, {"slow": 2}, "slow"),
        (MacdRule, {"slow": 301}, "slow"),
        (MacdRule, {"signal": 1}, "signal"),
        (MacdRule, {"signal": "9"}, "signal"),
        (MacdRule, {"zero_filter": 0}, "zero_filter"),
        (MacdRule, {"allow_short": None}, "allow_short"),
        (MacdRule, {"fast": 26, "slow": 26}, "fast"),
        (MacdRule, {"fast": 30}, "fast"),
        (MacdRule, {"histogram": 3}, "histogram"),
        (BollingerRule, {"period": 1}, "period"),
        (BollingerRule, {"period": 20.5}, "period"),
        (BollingerRule, {"stddev": 0.05}, "stddev"),
        (BollingerRule, {"stddev": 11}, "stddev"),
        (BollingerRule, {"stddev": "2"}, "stddev"),
        (BollingerRule, {"stddev": float("inf")}, "stddev"),
        (BollingerRule, {"mode": "trend"}, "mode"),
        (BollingerRule, {"mode": 1}, "mode"),
        (BollingerRule, {"exit_at": "lower"}, "exit_at"),
        (BollingerRule, {"allow_short": "false"}, "allow_short"),
        (BollingerRule, {"width": 2}, "width"),
        (ComboRule, {"rules": "rsi"}, "rules"),
        (ComboRule, {"rules": []}, "rules"),
        (ComboRule, {"rules": ["rsi", "ichimoku"]}, "rules"),
        (ComboRule, {"rules": ["rsi", "rsi"]}, "rules"),
        (ComboRule, {"rules": [1]}, "rules"),
        (ComboRule, {"rules": ["combo"]}, "rules"),
        (ComboRule, {"combine": "most"}, "combine"),
        (ComboRule, {"combine": True}, "combine"),
        (ComboRule, {"allow_short": 1}, "allow_short"),
        (ComboRule, {"weights": [1, 2]}, "weights"),
        (ComboRule, {"rsi": {"period": 1}}, "rsi.period"),
        (ComboRule, {"rsi": {"oversold": 80}}, "rsi.oversold"),
        (ComboRule, {"rsi": {"bogus": 1}}, "rsi.bogus"),
        (ComboRule, {"rsi": {"allow_short": True}}, "rsi.allow_short"),
        (ComboRule, {"macd": {"fast": 30}}, "macd.fast"),
        (ComboRule, {"macd": {"signal": 0}}, "macd.signal"),
        (ComboRule, {"bollinger": {"mode": "x"}}, "bollinger.mode"),
        (ComboRule, {"bollinger": {"stddev": 0}}, "bollinger.stddev"),
        (ComboRule, {"bollinger": []}, "bollinger"),
        (ComboRule, {"macd": "fast=3"}, "macd"),
    ],
)
def test_invalid_params_are_refused_on_their_field(rule: type[StrategyRule], values: dict[str, Any],
                                                   field: str) -> None:
    errors = rule.validate(values)
    assert set(errors) == {field}
    assert all(isinstance(m, str) and m for m in errors[field])


def test_combo_reports_every_bad_field_at_once() -> None:
    errors = ComboRule.validate({"rules": ["rsi", "x"], "combine": "none", "rsi": {"period": 0}, "macd": 3})
    assert set(errors) == {"rules", "combine", "rsi.period", "macd"}
