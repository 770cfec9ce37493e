from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Context, Decimal, Inexact, InvalidOperation, localcontext

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exchanges.base import OrderType, Side
from trading.domain import (
    AccountView,
    Action,
    Decision,
    ExitMode,
    ExitRule,
    MarketRules,
    OrderIntent,
    PendingOrder,
    PositionView,
    Quote,
    RiskLimits,
    Rule,
    SignalIntent,
    SizingMode,
    SizingRule,
    StrategyRisk,
)
from trading.risk import decide

D = Decimal
NOW = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
BTC = "BTC-USD"
ETH = "ETH-USD"
MARKET = MarketRules(
    symbol=BTC,
    lot_size=D("0.001"),
    min_qty=D("0.001"),
    tick_size=D("0.5"),
    min_notional=D("10"),
    max_leverage=D("5"),
)
FIXED = StrategyRisk(sizing=SizingRule(mode=SizingMode.QUANTITY, value=D("0.1")))
OPEN = RiskLimits(max_leverage=D("5"))
EXACT = Context(prec=80, traps=[Inexact, InvalidOperation])


def position(qty: str, *, strategy_id: int = 1, symbol: str = BTC, mark: str = "30000") -> PositionView:
    return PositionView(strategy_id=strategy_id, symbol=symbol, quantity=D(qty), mark_price=D(mark))


def pending(
    qty: str,
    *,
    strategy_id: int = 1,
    symbol: str = BTC,
    side: Side = Side.BUY,
    price: str = "30000",
    reduce_only: bool = False,
) -> PendingOrder:
    return PendingOrder(
        strategy_id=strategy_id, symbol=symbol, side=side, quantity=D(qty), price=D(price), reduce_only=reduce_only
    )


def account(
    *,
    equity: str = "10000",
    positions: Sequence[PositionView] = (),
    orders: Sequence[PendingOrder] = (),
    pnl_today: str = "0",
    kill_switch: bool = False,
) -> AccountView:
    return AccountView(
        equity=D(equity),
        positions=tuple(positions),
        pending=tuple(orders),
        pnl_today=D(pnl_today),
        kill_switch=kill_switch,
    )


def run(
    intent: SignalIntent,
    *,
    strategy_id: int = 1,
    acct: AccountView | None = None,
    market: MarketRules = MARKET,
    price: str = "30000",
    age: int = 5,
    atr: Decimal | None = None,
    risk: StrategyRisk = FIXED,
    limits: RiskLimits = OPEN,
) -> Decision:
    return decide(
        intent=intent,
        strategy_id=strategy_id,
        account=acct if acct is not None else account(),
        market=market,
        quote=Quote(price=D(price), time=NOW - timedelta(seconds=age)),
        atr=atr,
        risk=risk,
        limits=limits,
        now=NOW,
    )


def signal(action: Action, **fields: object) -> SignalIntent:
    return SignalIntent(action=action, symbol=fields.pop("symbol", BTC), **fields)  # type: ignore[arg-type]


def entry(side: Side, qty: str, price: str = "30000", order_type: OrderType = OrderType.MARKET) -> OrderIntent:
    return OrderIntent(
        side=side, quantity=D(qty), order_type=order_type, price=D(price), reduce_only=False, purpose="entry"
    )


def exit_(side: Side, qty: str, price: str = "30000", order_type: OrderType = OrderType.MARKET) -> OrderIntent:
    return OrderIntent(
        side=side, quantity=D(qty), order_type=order_type, price=D(price), reduce_only=True, purpose="exit"
    )


def sized(mode: SizingMode, value: str, **exits: ExitRule) -> StrategyRisk:
    return StrategyRisk(sizing=SizingRule(mode=mode, value=D(value)), **exits)  # type: ignore[arg-type]


def assert_rejected(decision: Decision, rule: str, *fragments: str) -> None:
    assert decision.accepted is False, decision
    assert decision.rule == rule, decision.detail
    assert decision.orders == ()
    for fragment in fragments:
        assert fragment in decision.detail


# --- actions -----------------------------------------------------------------------------------


def test_open_long_when_flat_buys_the_sized_quantity() -> None:
    decision = run(signal(Action.OPEN_LONG))

    assert decision.accepted is True
    assert decision.rule == Rule.OK
    assert decision.orders == (entry(Side.BUY, "0.1"),)
    assert decision.leverage == D("1")
    assert decision.detail


def test_open_short_while_long_closes_the_long_first_then_enters() -> None:
    decision = run(signal(Action.OPEN_SHORT), acct=account(positions=[position("0.5")]))

    assert decision.orders == (exit_(Side.SELL, "0.5"), entry(Side.SELL, "0.1"))


def test_open_long_while_long_adds_to_the_position() -> None:
    decision = run(signal(Action.OPEN_LONG), acct=account(positions=[position("0.2")]))

    assert decision.orders == (entry(Side.BUY, "0.1"),)


def test_close_sells_the_whole_long_reduce_only_without_stops_or_leverage() -> None:
    decision = run(signal(Action.CLOSE), acct=account(positions=[position("0.3"), position("0.2")]))

    assert decision.accepted is True
    assert decision.orders == (exit_(Side.BUY.opposite, "0.5"),)
    assert decision.stop_loss is None and decision.take_profit is None and decision.leverage is None


def test_close_buys_back_a_short() -> None:
    decision = run(signal(Action.CLOSE), acct=account(positions=[position("-0.25")]))

    assert decision.orders == (exit_(Side.BUY, "0.25"),)


def test_close_when_flat_is_nothing_to_do() -> None:
    decision = run(signal(Action.CLOSE))

    assert_rejected(decision, Rule.NOTHING_TO_DO, BTC)


def test_position_counts_only_this_strategy_and_symbol_not_pending_orders() -> None:
    acct = account(
        positions=[position("1", strategy_id=2), position("1", symbol=ETH, mark="2000")],
        orders=[pending("0.5")],
    )

    assert_rejected(run(signal(Action.CLOSE), acct=acct), Rule.NOTHING_TO_DO)


def test_reverse_closes_the_position_and_sizes_the_new_side_afresh() -> None:
    decision = run(signal(Action.REVERSE), acct=account(positions=[position("0.5")]))

    assert decision.orders == (exit_(Side.SELL, "0.5"), entry(Side.SELL, "0.1"))


def test_reverse_with_an_explicit_quantity_enters_that_quantity() -> None:
    decision = run(signal(Action.REVERSE, quantity=D("0.5")), acct=account(positions=[position("-0.5")]))

    assert decision.orders == (exit_(Side.BUY, "0.5"), entry(Side.BUY, "0.5"))


def test_reverse_when_flat_is_nothing_to_do() -> None:
    assert_rejected(run(signal(Action.REVERSE)), Rule.NOTHING_TO_DO)


def test_limit_signal_sends_every_leg_at_the_limit_price() -> None:
    intent = signal(Action.OPEN_SHORT, order_type=OrderType.LIMIT, price=D("31000"))

    decision = run(intent, acct=account(positions=[position("0.2")]))

    assert decision.orders == (
        exit_(Side.SELL, "0.2", "31000", OrderType.LIMIT),
        entry(Side.SELL, "0.1", "31000", OrderType.LIMIT),
    )


@pytest.mark.parametrize(
    ("current", "target", "expected"),
    [
        ("0", "0.3", [entry(Side.BUY, "0.3")]),  # open from flat
        ("0.1", "0.3", [entry(Side.BUY, "0.2")]),  # grow a long
        ("-0.1", "-0.35", [entry(Side.SELL, "0.25")]),  # grow a short
        ("0.3", "0.1", [exit_(Side.SELL, "0.2")]),  # shrink toward zero
        ("-0.3", "-0.1", [exit_(Side.BUY, "0.2")]),
        ("0.3", "0", [exit_(Side.SELL, "0.3")]),  # flatten
        ("0.3", "-0.2", [exit_(Side.SELL, "0.3"), entry(Side.SELL, "0.2")]),  # cross zero
        ("-0.3", "0.2", [exit_(Side.BUY, "0.3"), entry(Side.BUY, "0.2")]),
    ],
)
def test_target_trades_the_difference(current: str, target: str, expected: list[OrderIntent]) -> None:
    acct = account(positions=[position(current)] if current != "0" else [])

    decision = run(signal(Action.TARGET, target=D(target)), acct=acct)

    assert decision.accepted is True, decision.detail
    assert list(decision.orders) == expected


def test_target_equal_to_the_position_is_nothing_to_do() -> None:
    decision = run(signal(Action.TARGET, target=D("0.3")), acct=account(positions=[position("0.3")]))

    assert_rejected(decision, Rule.NOTHING_TO_DO, "already at the target 0.3")


def test_target_of_zero_when_flat_is_nothing_to_do() -> None:
    assert_rejected(run(signal(Action.TARGET, target=D("0"))), Rule.NOTHING_TO_DO)


def test_target_partial_exit_is_floored_to_the_lot_and_checked_for_minimum_size() -> None:
    acct = account(positions=[position("0.3")])

    floored = run(signal(Action.TARGET, target=D("0.1005")), acct=acct)
    tiny = run(signal(Action.TARGET, target=D("0.2995")), acct=acct)

    assert floored.orders == (exit_(Side.SELL, "0.199"),)
    assert_rejected(tiny, Rule.MIN_SIZE, "0.0005")


def test_target_ignores_the_sizing_rule_and_needs_no_stop() -> None:
    risk = sized(SizingMode.RISK, "1")

    decision = run(signal(Action.TARGET, target=D("0.05")), risk=risk)

    assert decision.orders == (entry(Side.BUY, "0.05"),)


# --- sizing --------------------------------------------------------------------------------------


def test_quantity_sizing_floors_to_the_lot_size() -> None:
    decision = run(signal(Action.OPEN_LONG), risk=sized(SizingMode.QUANTITY, "0.1239"))

    assert decision.orders == (entry(Side.BUY, "0.123"),)


def test_notional_sizing_divides_by_the_entry_price() -> None:
    decision = run(signal(Action.OPEN_LONG), risk=sized(SizingMode.NOTIONAL, "1000"))

    assert decision.orders[0].quantity == D("0.033")  # 1000 / 30000 = 0.0333…


def test_notional_sizing_of_a_limit_order_uses_the_limit_price() -> None:
    intent = signal(Action.OPEN_LONG, order_type=OrderType.LIMIT, price=D("29000"))

    decision = run(intent, risk=sized(SizingMode.NOTIONAL, "1000"))

    assert decision.orders == (entry(Side.BUY, "0.034", "29000", OrderType.LIMIT),)  # 0.03448…


def test_risk_sizing_risks_the_percentage_of_equity_to_the_stop() -> None:
    risk = sized(SizingMode.RISK, "1", stop_loss=ExitRule(mode=ExitMode.PERCENT, value=D("2")))

    decision = run(signal(Action.OPEN_LONG), risk=risk)

    # 1% of 10000 = 100 at risk over 30000 - 29400 = 600 per BTC → 0.1666…
    assert decision.stop_loss == D("29400")
    assert decision.orders == (entry(Side.BUY, "0.166"),)


def test_risk_sizing_uses_an_explicit_stop() -> None:
    decision = run(signal(Action.OPEN_SHORT, stop_loss=D("30250")), risk=sized(SizingMode.RISK, "0.5"))

    # 0.5% of 10000 = 50 over 250 → 0.2
    assert decision.orders == (entry(Side.SELL, "0.2"),)
    assert decision.stop_loss == D("30250")


def test_explicit_quantity_overrides_the_sizing_rule() -> None:
    decision = run(signal(Action.OPEN_LONG, quantity=D("0.2567")), risk=sized(SizingMode.NOTIONAL, "1000"))

    assert decision.orders == (entry(Side.BUY, "0.256"),)


def test_risk_sizing_without_a_stop_is_rejected() -> None:
    decision = run(signal(Action.OPEN_LONG), risk=sized(SizingMode.RISK, "1"))

    assert_rejected(decision, Rule.NO_STOP, "1% of equity")


def test_risk_sizing_with_an_explicit_quantity_needs_no_stop() -> None:
    decision = run(signal(Action.OPEN_LONG, quantity=D("0.1")), risk=sized(SizingMode.RISK, "1"))

    assert decision.accepted is True


def test_size_below_the_lot_or_minimum_quantity_is_rejected() -> None:
    market = replace(MARKET, min_qty=D("0.01"))

    assert_rejected(run(signal(Action.OPEN_LONG, quantity=D("0.0009"))), Rule.MIN_SIZE, "0.0009", "rounds to 0")
    assert_rejected(run(signal(Action.OPEN_LONG, quantity=D("0.009")), market=market), Rule.MIN_SIZE, "0.01")


def test_notional_below_the_market_minimum_is_rejected() -> None:
    market = replace(MARKET, min_notional=D("50"))

    decision = run(signal(Action.OPEN_LONG, quantity=D("0.001")), market=market)

    assert_rejected(decision, Rule.MIN_SIZE, "notional 30", "minimum 50")


# --- stop-loss and take-profit -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "stop", "take"),
    [(Action.OPEN_LONG, "29400", "31500"), (Action.OPEN_SHORT, "30600", "28500")],
)
def test_percent_exits_sit_on_either_side_of_the_entry(action: Action, stop: str, take: str) -> None:
    risk = replace(
        FIXED,
        stop_loss=ExitRule(mode=ExitMode.PERCENT, value=D("2")),
        take_profit=ExitRule(mode=ExitMode.PERCENT, value=D("5")),
    )

    decision = run(signal(action), risk=risk)

    assert (decision.stop_loss, decision.take_profit) == (D(stop), D(take))


@pytest.mark.parametrize(
    ("action", "stop", "take"),
    [(Action.OPEN_LONG, "29000", "32000"), (Action.OPEN_SHORT, "31000", "28000")],
)
def test_price_exits_are_used_as_given(action: Action, stop: str, take: str) -> None:
    risk = replace(
        FIXED,
        stop_loss=ExitRule(mode=ExitMode.PRICE, value=D(stop)),
        take_profit=ExitRule(mode=ExitMode.PRICE, value=D(take)),
    )

    decision = run(signal(action), risk=risk)

    assert (decision.stop_loss, decision.take_profit) == (D(stop), D(take))


@pytest.mark.parametrize(
    ("action", "stop", "take"),
    [
        # long: stop 30000 - 2×250.3 = 29499.4 → 29499.5, take 30000 + 3×250.3 = 30750.9 → 30750.5
        (Action.OPEN_LONG, "29499.5", "30750.5"),
        # short: stop 30500.6 → 30500.5, take 29249.1 → 29249.5
        (Action.OPEN_SHORT, "30500.5", "29249.5"),
    ],
)
def test_atr_exits_are_rounded_to_the_tick_toward_the_entry(action: Action, stop: str, take: str) -> None:
    risk = replace(
        FIXED,
        stop_loss=ExitRule(mode=ExitMode.ATR, value=D("2")),
        take_profit=ExitRule(mode=ExitMode.ATR, value=D("3")),
    )

    decision = run(signal(action), risk=risk, atr=D("250.3"))

    assert (decision.stop_loss, decision.take_profit) == (D(stop), D(take))


def test_atr_exit_without_an_atr_is_invalid() -> None:
    risk = replace(FIXED, stop_loss=ExitRule(mode=ExitMode.ATR, value=D("2")))

    assert_rejected(run(signal(Action.OPEN_LONG), risk=risk, atr=None), Rule.INVALID, "ATR")


def test_explicit_exit_prices_override_the_strategy_rules() -> None:
    risk = replace(FIXED, stop_loss=ExitRule(mode=ExitMode.PERCENT, value=D("2")))

    decision = run(signal(Action.OPEN_LONG, stop_loss=D("29000"), take_profit=D("33000")), risk=risk)

    assert (decision.stop_loss, decision.take_profit) == (D("29000"), D("33000"))


@pytest.mark.parametrize(
    ("action", "fields"),
    [
        (Action.OPEN_LONG, {"stop_loss": D("31000")}),
        (Action.OPEN_LONG, {"take_profit": D("29000")}),
        (Action.OPEN_SHORT, {"stop_loss": D("29000")}),
        (Action.OPEN_SHORT, {"take_profit": D("31000")}),
        (Action.OPEN_LONG, {"stop_loss": D("29999.8")}),  # rounds onto the entry
    ],
)
def test_exit_on_the_wrong_side_of_the_entry_is_invalid(action: Action, fields: dict[str, Decimal]) -> None:
    assert_rejected(run(signal(action, **fields)), Rule.INVALID, "entry price 30000")


def test_percent_stop_of_100_or_more_on_a_long_is_invalid() -> None:
    risk = replace(FIXED, stop_loss=ExitRule(mode=ExitMode.PERCENT, value=D("100")))

    assert_rejected(run(signal(Action.OPEN_LONG), risk=risk), Rule.INVALID, "positive")


def test_exit_only_decisions_carry_no_stops() -> None:
    risk = replace(FIXED, stop_loss=ExitRule(mode=ExitMode.ATR, value=D("2")))

    decision = run(signal(Action.CLOSE), acct=account(positions=[position("0.1")]), risk=risk, atr=None)

    assert decision.accepted is True
    assert decision.stop_loss is None


# --- halts ---------------------------------------------------------------------------------------


def test_kill_switch_rejects_entries() -> None:
    decision = run(signal(Action.OPEN_LONG), acct=account(kill_switch=True))

    assert_rejected(decision, Rule.KILL_SWITCH, "kill switch")


def test_kill_switch_rejects_a_reverse_whole() -> None:
    decision = run(signal(Action.REVERSE), acct=account(positions=[position("0.5")], kill_switch=True))

    assert_rejected(decision, Rule.KILL_SWITCH)


@pytest.mark.parametrize(
    "intent",
    [signal(Action.CLOSE), signal(Action.TARGET, target=D("0.1")), signal(Action.TARGET, target=D("0"))],
)
def test_exits_are_allowed_under_the_kill_switch_and_daily_loss(intent: SignalIntent) -> None:
    acct = account(positions=[position("0.5")], kill_switch=True, pnl_today="-5000")
    limits = replace(OPEN, daily_loss_limit=D("100"))

    decision = run(intent, acct=acct, limits=limits)

    assert decision.accepted is True
    assert all(order.reduce_only for order in decision.orders)


def test_daily_loss_limit_halts_entries_once_reached() -> None:
    limits = replace(OPEN, daily_loss_limit=D("500"))

    reached = run(signal(Action.OPEN_LONG), acct=account(pnl_today="-500"), limits=limits)
    below = run(signal(Action.OPEN_LONG), acct=account(pnl_today="-499.99"), limits=limits)

    assert_rejected(reached, Rule.DAILY_LOSS, "-500")
    assert below.accepted is True


def test_stale_quote_is_rejected() -> None:
    limits = replace(OPEN, max_price_age_seconds=120)

    assert_rejected(run(signal(Action.OPEN_LONG), age=121, limits=limits), Rule.STALE_PRICE, "121s", "120s")
    assert run(signal(Action.OPEN_LONG), age=120, limits=limits).accepted is True


def test_stale_quote_still_allows_exits() -> None:
    decision = run(signal(Action.CLOSE), acct=account(positions=[position("0.1")]), age=600)

    assert decision.accepted is True
    assert [(o.side, o.reduce_only) for o in decision.orders] == [(Side.SELL, True)]


# --- limits --------------------------------------------------------------------------------------


def test_max_open_positions_rejects_a_new_pair() -> None:
    acct = account(positions=[position("1", symbol=ETH, mark="2000"), position("0.1", strategy_id=2)])
    limits = replace(OPEN, max_open_positions=2)

    decision = run(signal(Action.OPEN_LONG), acct=acct, limits=limits)

    assert_rejected(decision, Rule.MAX_POSITIONS, "2 positions", "limit is 2")


def test_max_open_positions_allows_adding_to_an_open_pair() -> None:
    acct = account(positions=[position("1", symbol=ETH, mark="2000"), position("0.1")])

    decision = run(signal(Action.OPEN_LONG), acct=acct, limits=replace(OPEN, max_open_positions=2))

    assert decision.accepted is True


def test_max_open_positions_counts_pending_entries_of_flat_pairs() -> None:
    acct = account(positions=[position("1", symbol=ETH, mark="2000")], orders=[pending("0.1", strategy_id=3)])

    decision = run(signal(Action.OPEN_LONG), acct=acct, limits=replace(OPEN, max_open_positions=2))

    assert_rejected(decision, Rule.MAX_POSITIONS)


def test_max_open_positions_ignores_pending_reduce_only_orders_and_flat_rows() -> None:
    acct = account(
        positions=[position("1", symbol=ETH, mark="2000"), position("0", strategy_id=2)],
        orders=[pending("0.1", strategy_id=3, reduce_only=True)],
    )

    decision = run(signal(Action.OPEN_LONG), acct=acct, limits=replace(OPEN, max_open_positions=2))

    assert decision.accepted is True


def test_max_open_positions_treats_a_pending_entry_of_the_same_pair_as_already_open() -> None:
    acct = account(positions=[position("1", symbol=ETH, mark="2000")], orders=[pending("0.1")])

    decision = run(signal(Action.OPEN_LONG), acct=acct, limits=replace(OPEN, max_open_positions=2))

    assert decision.accepted is True


def test_symbol_exposure_counts_other_strategies_gross() -> None:
    limits = replace(OPEN, max_symbol_exposure=D("5000"))
    # another strategy is short 0.1 BTC: gross exposure adds it instead of netting it against our long
    acct = account(positions=[position("-0.1", strategy_id=2)])

    decision = run(signal(Action.OPEN_LONG), acct=acct, limits=limits)

    assert_rejected(decision, Rule.SYMBOL_EXPOSURE, "BTC-USD exposure 6000", "limit 5000")


def test_symbol_exposure_counts_pending_entries() -> None:
    limits = replace(OPEN, max_symbol_exposure=D("5000"))
    acct = account(orders=[pending("0.07", strategy_id=2)])

    assert_rejected(run(signal(Action.OPEN_LONG), acct=acct, limits=limits), Rule.SYMBOL_EXPOSURE, "5100")


def test_symbol_exposure_at_the_limit_is_allowed() -> None:
    limits = replace(OPEN, max_symbol_exposure=D("6000"))

    decision = run(signal(Action.OPEN_LONG), acct=account(positions=[position("0.1")]), limits=limits)

    assert decision.accepted is True


def test_reverse_exposure_counts_the_position_after_the_close() -> None:
    limits = replace(OPEN, max_symbol_exposure=D("3000"))

    decision = run(signal(Action.REVERSE), acct=account(positions=[position("0.1")]), limits=limits)

    assert decision.accepted is True  # after: short 0.1 = 3000, not 0.1 + 0.1


def test_account_exposure_sums_every_symbol() -> None:
    limits = replace(OPEN, max_account_exposure=D("10000"))
    acct = account(positions=[position("2", symbol=ETH, mark="2000", strategy_id=2)])

    at_limit = run(signal(Action.OPEN_LONG, quantity=D("0.2")), acct=acct, limits=limits)
    over = run(signal(Action.OPEN_LONG, quantity=D("0.201")), acct=acct, limits=limits)

    assert at_limit.accepted is True
    assert_rejected(over, Rule.ACCOUNT_EXPOSURE, "account exposure 10030", "limit 10000")


def test_leverage_rejects_exposure_beyond_equity_times_the_cap() -> None:
    limits = RiskLimits(max_leverage=D("2"))

    decision = run(signal(Action.OPEN_LONG), acct=account(equity="1000"), limits=limits)

    assert_rejected(decision, Rule.LEVERAGE, "3000", "3x", "equity 1000", "cap 2x")


def test_leverage_cap_is_the_lowest_of_account_market_and_venue_caps() -> None:
    acct = account(equity="1000")
    intent = signal(Action.OPEN_LONG, leverage=D("10"))

    by_market_cap = run(intent, acct=acct, limits=RiskLimits(max_leverage=D("10"), market_leverage_caps={BTC: D("3")}))
    by_venue = run(
        intent, acct=acct, limits=RiskLimits(max_leverage=D("10")), market=replace(MARKET, max_leverage=D("4"))
    )
    too_low = run(intent, acct=acct, limits=RiskLimits(max_leverage=D("10"), market_leverage_caps={BTC: D("2.5")}))

    assert by_market_cap.leverage == D("3")
    assert by_venue.leverage == D("4")
    assert_rejected(too_low, Rule.LEVERAGE, "cap 2.5x")


def test_requested_leverage_below_the_cap_is_kept() -> None:
    decision = run(signal(Action.OPEN_LONG), risk=replace(FIXED, leverage=D("2")))

    assert decision.leverage == D("2")


def test_non_positive_equity_rejects_entries_by_leverage() -> None:
    assert_rejected(run(signal(Action.OPEN_LONG), acct=account(equity="0")), Rule.LEVERAGE, "equity 0")


# --- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "intent",
    [
        signal(Action.OPEN_LONG, quantity=D("NaN")),
        signal(Action.OPEN_LONG, quantity=D("-1")),
        signal(Action.OPEN_LONG, quantity=D("0")),
        signal(Action.OPEN_LONG, price=D("Infinity")),
        signal(Action.OPEN_LONG, stop_loss=D("0")),
        signal(Action.OPEN_LONG, take_profit=D("-5")),
        signal(Action.OPEN_LONG, leverage=D("0")),
        signal(Action.OPEN_LONG, order_type=OrderType.LIMIT),
        signal(Action.OPEN_LONG, order_type=OrderType.STOP, price=D("30000")),
        signal(Action.OPEN_LONG, symbol=ETH),
        signal(Action.TARGET),
        signal(Action.TARGET, target=D("NaN")),
        signal(Action.OPEN_LONG, quantity=0.1),
    ],
)
def test_invalid_intent_numbers_are_rejected(intent: SignalIntent) -> None:
    assert_rejected(run(intent), Rule.INVALID)


def test_non_positive_quote_price_is_invalid() -> None:
    assert_rejected(run(signal(Action.OPEN_LONG), price="0"), Rule.INVALID, "quote price")


def test_naive_datetimes_are_invalid() -> None:
    decision = decide(
        intent=signal(Action.OPEN_LONG),
        strategy_id=1,
        account=account(),
        market=MARKET,
        quote=Quote(price=D("30000"), time=NOW.replace(tzinfo=None)),
        atr=None,
        risk=FIXED,
        limits=OPEN,
        now=NOW.replace(tzinfo=None),
    )

    assert_rejected(decision, Rule.INVALID, "timezone")


def test_absurdly_large_numbers_are_invalid_not_rounded() -> None:
    decision = run(signal(Action.OPEN_LONG, quantity=D("1E+60")))

    assert_rejected(decision, Rule.INVALID)


# --- properties ----------------------------------------------------------------------------------


def powers_of_ten(low: int, high: int) -> st.SearchStrategy[Decimal]:
    return st.integers(min_value=low, max_value=high).map(lambda e: D(1).scaleb(e))


def amounts(*, max_units: int, places: int) -> st.SearchStrategy[Decimal]:
    return st.integers(min_value=1, max_value=max_units).map(lambda u: D(u).scaleb(-places))


@st.composite
def priced_markets(draw: st.DrawFn) -> tuple[Decimal, Decimal]:
    """A price in [10^e, 10^(e+1)) and a tick at most a thousandth of it."""
    exponent = draw(st.integers(min_value=-2, max_value=6))
    price = D(draw(st.integers(min_value=1000, max_value=9999))).scaleb(exponent - 3)
    tick = D(1).scaleb(exponent - 3 - draw(st.integers(min_value=0, max_value=2)))
    return price, tick


@given(
    lot=powers_of_ten(-8, 0),
    price_tick=priced_markets(),
    equity=amounts(max_units=10**10, places=2),
    pct=amounts(max_units=500, places=2),
    stop_pct=amounts(max_units=2000, places=2),
    side=st.sampled_from([Action.OPEN_LONG, Action.OPEN_SHORT]),
)
def test_risk_sized_entries_are_whole_lots_within_the_risk_budget(
    lot: Decimal, price_tick: tuple[Decimal, Decimal], equity: Decimal, pct: Decimal, stop_pct: Decimal, side: Action
) -> None:
    price, tick = price_tick
    market = MarketRules(symbol=BTC, lot_size=lot, min_qty=lot, tick_size=tick, max_leverage=D("1E+9"))
    risk = sized(SizingMode.RISK, str(pct), stop_loss=ExitRule(mode=ExitMode.PERCENT, value=stop_pct))

    decision = run(
        signal(side),
        acct=account(equity=str(equity)),
        market=market,
        price=str(price),
        risk=risk,
        limits=RiskLimits(max_leverage=D("1E+9")),
    )

    if not decision.accepted:
        assert decision.rule in (Rule.MIN_SIZE, Rule.INVALID), decision.detail
        return
    (order,) = decision.orders
    assert decision.stop_loss is not None
    with localcontext(EXACT):
        assert order.quantity % lot == 0
        assert order.quantity >= lot
        assert decision.stop_loss % tick == 0
        assert order.quantity * abs(price - decision.stop_loss) <= equity * pct / 100
        # whole lots: one more lot would exceed the budget
        assert (order.quantity + lot) * abs(price - decision.stop_loss) > equity * pct / 100


@given(
    mode=st.sampled_from([SizingMode.QUANTITY, SizingMode.NOTIONAL]),
    value=amounts(max_units=10**8, places=4),
    lot=powers_of_ten(-8, 0),
    price=amounts(max_units=10**8, places=2),
)
def test_quantity_and_notional_sizing_produce_whole_lots(
    mode: SizingMode, value: Decimal, lot: Decimal, price: Decimal
) -> None:
    market = MarketRules(symbol=BTC, lot_size=lot, min_qty=lot, tick_size=D("0.01"), max_leverage=D("1E+9"))

    decision = run(
        signal(Action.OPEN_LONG),
        market=market,
        price=str(price),
        risk=sized(mode, str(value)),
        limits=RiskLimits(max_leverage=D("1E+9")),
    )

    if not decision.accepted:
        assert decision.rule == Rule.MIN_SIZE, decision.detail
        return
    qty = decision.orders[0].quantity
    with localcontext(EXACT):
        assert qty % lot == 0
        if mode is SizingMode.QUANTITY:
            assert qty <= value < qty + lot
        else:
            assert qty * price <= value < (qty + lot) * price


SYMBOLS = [BTC, ETH, "SOL-USD"]
STRATEGIES = [1, 2, 3]
MARKS = {BTC: D("30000"), ETH: D("2000"), "SOL-USD": D("100")}
positions_st = st.lists(
    st.builds(
        lambda sid, sym, qty: PositionView(strategy_id=sid, symbol=sym, quantity=qty, mark_price=MARKS[sym]),
        st.sampled_from(STRATEGIES),
        st.sampled_from(SYMBOLS),
        st.integers(min_value=-100, max_value=100).map(lambda u: D(u).scaleb(-2)),
    ),
    max_size=6,
)
pending_st = st.lists(
    st.builds(
        lambda sid, sym, side, qty, ro: PendingOrder(
            strategy_id=sid, symbol=sym, side=side, quantity=qty, price=MARKS[sym], reduce_only=ro
        ),
        st.sampled_from(STRATEGIES),
        st.sampled_from(SYMBOLS),
        st.sampled_from([Side.BUY, Side.SELL]),
        st.integers(min_value=1, max_value=100).map(lambda u: D(u).scaleb(-2)),
        st.booleans(),
    ),
    max_size=3,
)
# sampled rather than drawn from a range: hypothesis favours 0, which would reject almost everything
optional_amount = st.sampled_from([None, D("100000"), D("30000"), D("10000"), D("3000"), D("0")])
intents_st = st.one_of(
    st.builds(
        lambda action, qty: SignalIntent(action=action, symbol=BTC, quantity=qty),
        st.sampled_from([Action.OPEN_LONG, Action.OPEN_SHORT, Action.REVERSE]),
        st.one_of(st.none(), st.integers(min_value=1, max_value=500).map(lambda u: D(u).scaleb(-2))),
    ),
    st.builds(
        lambda target: SignalIntent(action=Action.TARGET, symbol=BTC, target=target),
        st.integers(min_value=-500, max_value=500).map(lambda u: D(u).scaleb(-2)),
    ),
)


def independent_exposures(positions: Sequence[PositionView], pending: Sequence[PendingOrder]) -> dict[str, Decimal]:
    """Gross notional per symbol, recomputed plainly: |net qty| per (strategy, symbol) at its mark, plus entries."""
    per_pair: dict[tuple[int, str], Decimal] = {}
    marks: dict[tuple[int, str], Decimal] = {}
    for p in positions:
        per_pair[(p.strategy_id, p.symbol)] = per_pair.get((p.strategy_id, p.symbol), D(0)) + p.quantity
        marks[(p.strategy_id, p.symbol)] = p.mark_price
    out: dict[str, Decimal] = {}
    for (sid, sym), qty in per_pair.items():
        out[sym] = out.get(sym, D(0)) + abs(qty) * marks[(sid, sym)]
    for o in pending:
        if not o.reduce_only:
            out[o.symbol] = out.get(o.symbol, D(0)) + o.quantity * o.price
    return out


@settings(max_examples=300)
@given(
    positions=positions_st,
    orders=pending_st,
    intent=intents_st,
    equity=st.sampled_from(["50000", "200000", "10000", "3000", "0", "-500"]).map(D),
    pnl_today=st.integers(min_value=-3000, max_value=3000).map(D),
    kill_switch=st.sampled_from([False, False, False, True]),
    daily_loss=st.sampled_from([None, D("2000"), D("500"), D("0")]),
    max_positions=st.one_of(st.none(), st.integers(min_value=0, max_value=5)),
    max_symbol=optional_amount,
    max_account=optional_amount,
    max_leverage=st.sampled_from([D("0.5"), D("1"), D("2"), D("5"), D("20")]),
    btc_cap=st.one_of(st.none(), st.sampled_from([D("1"), D("3"), D("10")])),
    sizing=st.sampled_from([sized(SizingMode.QUANTITY, "0.15"), sized(SizingMode.NOTIONAL, "2500")]),
)
def test_accepted_entries_never_breach_a_configured_limit(
    positions: list[PositionView],
    orders: list[PendingOrder],
    intent: SignalIntent,
    equity: Decimal,
    pnl_today: Decimal,
    kill_switch: bool,
    daily_loss: Decimal | None,
    max_positions: int | None,
    max_symbol: Decimal | None,
    max_account: Decimal | None,
    max_leverage: Decimal,
    btc_cap: Decimal | None,
    sizing: StrategyRisk,
) -> None:
    strategy_id = 1
    market = replace(MARKET, lot_size=D("0.01"), min_qty=D("0.01"))
    limits = RiskLimits(
        max_leverage=max_leverage,
        market_leverage_caps={BTC: btc_cap} if btc_cap is not None else {},
        max_open_positions=max_positions,
        max_symbol_exposure=max_symbol,
        max_account_exposure=max_account,
        daily_loss_limit=daily_loss,
    )
    acct = AccountView(
        equity=equity, positions=tuple(positions), pending=tuple(orders), pnl_today=pnl_today, kill_switch=kill_switch
    )

    decision = run(intent, strategy_id=strategy_id, acct=acct, market=market, risk=sizing, limits=limits)

    if not decision.accepted:
        assert decision.detail
        return
    price = D("30000")
    current = sum((p.quantity for p in positions if (p.strategy_id, p.symbol) == (1, BTC)), D(0))
    entries = [o for o in decision.orders if o.purpose == "entry"]
    exits = [o for o in decision.orders if o.purpose == "exit"]
    net = sum((p.quantity for p in positions if p.symbol == BTC), D(0))
    claimed = {side: sum((o.quantity for o in orders if o.symbol == BTC and o.reduce_only and o.side is side), D(0))
               for side in (Side.BUY, Side.SELL)}
    for o in decision.orders:
        assert o.quantity > 0
        assert o.quantity % market.lot_size == 0 or (o.purpose == "exit" and o.quantity == abs(current))
        # reduce-only exactly where it only shrinks the account's net (what the venue checks), never on an entry
        assert o.reduce_only == (o.purpose == "exit" and o.quantity <= -net * o.side.sign - claimed[o.side])
    # exits only ever shrink the position toward zero
    assert sum((o.quantity for o in exits), D(0)) <= abs(current)
    for o in exits:
        assert o.side.sign == -1 if current > 0 else o.side.sign == 1
    if not entries:
        return

    assert not kill_switch
    assert daily_loss is None or pnl_today > -daily_loss
    assert equity > 0
    for o in entries:
        assert o.quantity >= market.min_qty and o.quantity * price >= market.min_notional

    after = current + sum((o.side.sign * o.quantity for o in decision.orders), D(0))
    others = [p for p in positions if (p.strategy_id, p.symbol) != (1, BTC)]
    new_positions = [*others, PositionView(strategy_id=1, symbol=BTC, quantity=after, mark_price=price)]
    exposures = independent_exposures(new_positions, orders)
    total = sum(exposures.values(), D(0))
    if max_symbol is not None:
        assert exposures[BTC] <= max_symbol
    if max_account is not None:
        assert total <= max_account
    cap = min([max_leverage, market.max_leverage] + ([btc_cap] if btc_cap is not None else []))
    assert decision.leverage is not None and decision.leverage <= cap
    assert total <= equity * cap

    if max_positions is not None:
        open_before = {
            (p.strategy_id, p.symbol)
            for p in positions
            if sum((q.quantity for q in positions if (q.strategy_id, q.symbol) == (p.strategy_id, p.symbol)), D(0)) != 0
        } | {(o.strategy_id, o.symbol) for o in orders if not o.reduce_only}
        if (1, BTC) not in open_before:
            assert len(open_before) + 1 <= max_positions
