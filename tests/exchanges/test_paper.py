"""The paper venue's own behaviour: fill prices, fees and cash to the last digit."""

from __future__ import annotations

import itertools
from datetime import timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exchanges.base import (
    Balance,
    Market,
    OrderRequest,
    OrderType,
    Side,
    VenueFill,
    VenueOrder,
    VenueOrderStatus,
)
from exchanges.errors import (
    InsufficientFundsError,
    InvalidOrderError,
    OrderNotFoundError,
    TemporaryError,
)
from exchanges.paper import InMemoryPaperStore, PaperConfig, PaperVenue
from tests.exchanges.fakes import T0, FakePrices

MAKER, TAKER = Decimal("0.0002"), Decimal("0.0005")
BTC = Market(
    "BTC/USD", "BTC", "USD", tick_size=Decimal("0.01"), lot_size=Decimal("0.00001"), min_qty=Decimal("0.0001"),
    min_notional=Decimal("10"), maker_fee=MAKER, taker_fee=TAKER,
)
PERP = Market(
    "BTC-PERP", "BTC", "USD", tick_size=Decimal("0.1"), lot_size=Decimal("0.001"), min_qty=Decimal("0.001"),
    max_leverage=Decimal("10"), kind="perp", maker_fee=MAKER, taker_fee=TAKER,
)
ETH_BTC = Market(
    "ETH/BTC", "ETH", "BTC", tick_size=Decimal("0.00001"), lot_size=Decimal("0.01"), min_qty=Decimal("0.01"),
    maker_fee=MAKER, taker_fee=TAKER,
)
OPEN, PARTIAL, FILLED, CANCELED = (
    VenueOrderStatus.OPEN,
    VenueOrderStatus.PARTIALLY_FILLED,
    VenueOrderStatus.FILLED,
    VenueOrderStatus.CANCELED,
)
BUY, SELL = Side.BUY, Side.SELL
_ids = itertools.count(1)


def make_paper(
    cash: str = "100000", *, slippage_bps: str = "0", max_volume_share: str | None = None
) -> tuple[PaperVenue, FakePrices]:
    """Return a paper venue on BTC/USD 30000, BTC-PERP 30000 and ETH/BTC 0.05, and its price source."""
    prices = FakePrices()
    prices.set("BTC/USD", "30000")
    prices.set("BTC-PERP", "30000")
    prices.set("ETH/BTC", "0.05")
    config = PaperConfig(
        markets=(BTC, PERP, ETH_BTC),
        slippage_bps=Decimal(slippage_bps),
        max_volume_share=None if max_volume_share is None else Decimal(max_volume_share),
    )
    return PaperVenue(store=InMemoryPaperStore(Decimal(cash)), prices=prices, config=config, clock=prices.clock), prices


def place(
    paper: PaperVenue,
    side: Side,
    quantity: str,
    type_: OrderType = OrderType.MARKET,
    *,
    price: str | None = None,
    trigger: str | None = None,
    symbol: str = "BTC/USD",
    reduce_only: bool = False,
    post_only: bool = False,
    leverage: str | None = None,
    client_order_id: str | None = None,
) -> VenueOrder:
    """Place an order from string amounts."""
    return paper.create_order(
        OrderRequest(
            client_order_id=client_order_id or f"c{next(_ids)}",
            symbol=symbol,
            side=side,
            type=type_,
            quantity=Decimal(quantity),
            price=None if price is None else Decimal(price),
            trigger_price=None if trigger is None else Decimal(trigger),
            reduce_only=reduce_only,
            post_only=post_only,
            leverage=None if leverage is None else Decimal(leverage),
        )
    )


def cash(paper: PaperVenue) -> Decimal:
    (balance,) = paper.balances()
    return balance.free


def equity(paper: PaperVenue) -> Decimal:
    (balance,) = paper.balances()
    return balance.total


def position(paper: PaperVenue, symbol: str = "BTC/USD") -> tuple[Decimal, Decimal] | None:
    found = [(p.quantity, p.entry_price) for p in paper.positions() if p.symbol == symbol]
    return found[0] if found else None


# -- fill prices and fees ---------------------------------------------------------------------------------------


def test_market_buy_pays_slippage_rounded_up_to_the_tick_and_a_half_up_taker_fee() -> None:
    paper, prices = make_paper(slippage_bps="7")
    prices.set("BTC/USD", "30123.45")

    order = place(paper, BUY, "0.1235")

    (fill,) = order.fills
    # 30123.45 x 1.0007 = 30144.536415 -> 30144.54; fee 0.1235 x 30144.54 x 0.0005 = 1.861425345 -> 1.86142535
    assert (fill.price, fill.fee, fill.fee_currency, fill.liquidity) == (
        Decimal("30144.54"), Decimal("1.86142535"), "USD", "taker"
    )
    assert (fill.fill_id, fill.time) == (f"{order.venue_order_id}-1", T0)
    assert order.venue_order_id == "paper-1"
    # 100000 - 0.1235 x 30144.54 - 1.86142535 = 100000 - 3722.850669 - 1.86142535
    assert cash(paper) == Decimal("96275.28788465")
    # + 0.1235 x 30123.45 = 3720.246075 at the mark
    assert equity(paper) == Decimal("99995.53395965")


def test_market_sell_pays_slippage_rounded_down_to_the_tick() -> None:
    paper, prices = make_paper(slippage_bps="7")
    prices.set("BTC/USD", "31234.56")

    (fill,) = place(paper, SELL, "0.1235").fills

    # 31234.56 x 0.9993 = 31212.695808 -> 31212.69; fee 0.1235 x 31212.69 x 0.0005 = 1.9273836075 -> 1.92738361
    assert (fill.price, fill.fee) == (Decimal("31212.69"), Decimal("1.92738361"))


def test_round_trip_leaves_initial_cash_plus_price_gain_less_fees_exactly() -> None:
    paper, prices = make_paper(slippage_bps="7")
    prices.set("BTC/USD", "30123.45")
    place(paper, BUY, "0.1235")
    prices.set("BTC/USD", "31234.56")

    place(paper, SELL, "0.1235")

    # 100000 + (31212.69 - 30144.54) x 0.1235 - 1.86142535 - 1.92738361 = 100000 + 131.916525 - 3.78880896
    expected = Decimal("100128.12771604")
    assert paper.balances() == [Balance("USD", free=expected, total=expected)]
    assert paper.positions() == []


def test_short_round_trip_gains_when_the_price_falls() -> None:
    paper, prices = make_paper()
    place(paper, SELL, "0.2")
    assert (cash(paper), equity(paper)) == (Decimal("105997.0000"), Decimal("99997.0000"))  # fee 6000 x 0.0005
    assert position(paper) == (Decimal("-0.2"), Decimal("30000"))
    prices.set("BTC/USD", "29000")

    place(paper, BUY, "0.2")

    assert equity(paper) == Decimal("100194.1")  # 100000 + 0.2 x 1000 - 3 - 2.9


# -- limits -----------------------------------------------------------------------------------------------------


def test_resting_limit_fills_at_its_limit_with_maker_fee_once_the_price_reaches_it() -> None:
    paper, prices = make_paper(slippage_bps="10")
    placed = place(paper, BUY, "0.5", OrderType.LIMIT, price="29000")
    assert placed.status is OPEN and placed.fills == ()
    prices.set("BTC/USD", "29000.01")
    assert paper.match() == []

    prices.set("BTC/USD", "28950.5")
    (filled,) = paper.match()

    assert filled.status is FILLED
    (fill,) = filled.fills
    assert (fill.price, fill.fee, fill.liquidity) == (Decimal("29000"), Decimal("2.9"), "maker")  # 14500 x 0.0002
    assert cash(paper) == Decimal("85497.1")
    assert paper.open_orders() == []


def test_sell_limit_fills_when_the_price_rises_to_it() -> None:
    paper, prices = make_paper()
    placed = place(paper, SELL, "0.5", OrderType.LIMIT, price="31000")
    prices.set("BTC/USD", "31000")

    (filled,) = paper.match("BTC/USD")

    assert (filled.venue_order_id, filled.status, filled.fills[0].price) == (
        placed.venue_order_id, FILLED, Decimal("31000")
    )


@pytest.mark.parametrize(
    ("side", "limit", "fill_price"),
    [
        (BUY, "30100", "30030"),  # slipped 30000 x 1.001 is better than the limit
        (BUY, "30010", "30010"),  # the limit caps the slippage
        (SELL, "29900", "29970"),
        (SELL, "29990", "29990"),
    ],
)
def test_marketable_limit_fills_at_once_as_taker_at_the_better_of_limit_and_slipped_price(
    side: Side, limit: str, fill_price: str
) -> None:
    paper, _ = make_paper(slippage_bps="10")

    order = place(paper, side, "0.1", OrderType.LIMIT, price=limit)

    (fill,) = order.fills
    assert (order.status, fill.price, fill.liquidity) == (FILLED, Decimal(fill_price), "taker")
    assert fill.fee == Decimal("0.1") * Decimal(fill_price) * TAKER


def test_post_only_limit_that_would_take_is_rejected() -> None:
    paper, _ = make_paper()
    with pytest.raises(InvalidOrderError, match="post-only"):
        place(paper, BUY, "0.1", OrderType.LIMIT, price="30000", post_only=True)
    assert place(paper, BUY, "0.1", OrderType.LIMIT, price="29999.99", post_only=True).status is OPEN


# -- stops and take-profits -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("side", "type_", "trigger", "short_of_trigger", "past_trigger", "fill_price"),
    [
        (SELL, OrderType.STOP, "29000", "29000.01", "28990", "28961.01"),  # 28990 x 0.999
        (BUY, OrderType.STOP, "31000", "30999.99", "31010", "31041.01"),  # 31010 x 1.001
        (SELL, OrderType.TAKE_PROFIT, "31000", "30999.99", "31010", "30978.99"),  # 31010 x 0.999
        (BUY, OrderType.TAKE_PROFIT, "29000", "29000.01", "28990", "29018.99"),  # 28990 x 1.001
    ],
)
def test_stop_and_take_profit_trigger_on_their_side_and_fill_like_a_market_order(
    side: Side, type_: OrderType, trigger: str, short_of_trigger: str, past_trigger: str, fill_price: str
) -> None:
    paper, prices = make_paper(slippage_bps="10")
    placed = place(paper, side, "0.1", type_, trigger=trigger)
    assert placed.status is OPEN
    prices.set("BTC/USD", short_of_trigger)
    assert paper.match() == []

    prices.set("BTC/USD", past_trigger)
    (filled,) = paper.match()

    (fill,) = filled.fills
    assert (filled.status, fill.price, fill.liquidity) == (FILLED, Decimal(fill_price), "taker")
    assert fill.fee == Decimal("0.1") * Decimal(fill_price) * TAKER


@pytest.mark.parametrize(
    ("side", "type_"),
    [(SELL, OrderType.STOP), (BUY, OrderType.STOP), (SELL, OrderType.TAKE_PROFIT), (BUY, OrderType.TAKE_PROFIT)],
)
def test_stop_and_take_profit_trigger_at_exactly_the_trigger_price(side: Side, type_: OrderType) -> None:
    paper, prices = make_paper()
    trigger = "31000" if (side is BUY) == (type_ is OrderType.STOP) else "29000"
    place(paper, side, "0.1", type_, trigger=trigger)
    prices.set("BTC/USD", trigger)

    (filled,) = paper.match()

    assert filled.fills[0].price == Decimal(trigger)


# -- partial fills by volume share ------------------------------------------------------------------------------


def test_volume_share_caps_a_fill_and_the_remainder_fills_on_later_candles() -> None:
    paper, prices = make_paper(max_volume_share="0.1")
    prices.set("BTC/USD", "30000", volume="2.5")

    order = place(paper, BUY, "1")

    assert (order.status, order.filled_quantity) == (PARTIAL, Decimal("0.25"))
    assert paper.match() == []  # same candle, same volume: the budget is spent
    prices.set("BTC/USD", "30000", volume="3.0")  # the candle grows
    assert [o.filled_quantity for o in paper.match()] == [Decimal("0.30")]
    prices.next_candle()
    prices.set("BTC/USD", "30100", volume="4")
    assert [o.filled_quantity for o in paper.match()] == [Decimal("0.70")]
    prices.next_candle()
    prices.set("BTC/USD", "30200", volume="10")

    (done,) = paper.match()

    assert done.status is FILLED
    assert [(f.fill_id, f.quantity, f.price) for f in done.fills] == [
        ("paper-1-1", Decimal("0.25"), Decimal("30000")),
        ("paper-1-2", Decimal("0.05"), Decimal("30000")),
        ("paper-1-3", Decimal("0.40"), Decimal("30100")),
        ("paper-1-4", Decimal("0.30"), Decimal("30200")),
    ]
    assert position(paper) == (Decimal("1"), Decimal("30100"))  # (7500 + 1500 + 12040 + 9060) / 1


def test_orders_on_a_market_share_one_candle_volume_budget() -> None:
    paper, prices = make_paper(max_volume_share="0.1")
    prices.set("BTC/USD", "30000", volume="3")

    first = place(paper, BUY, "0.2")
    second = place(paper, BUY, "0.2")

    assert (first.filled_quantity, second.filled_quantity) == (Decimal("0.2"), Decimal("0.1"))
    assert paper.open_orders() == [second]


def test_market_order_rests_open_when_the_candle_has_no_volume() -> None:
    paper, prices = make_paper(max_volume_share="0.1")
    prices.set("BTC/USD", "30000", volume="0")

    assert place(paper, BUY, "0.1").status is OPEN


def test_partly_filled_marketable_limit_rests_and_fills_its_remainder_as_maker() -> None:
    paper, prices = make_paper(max_volume_share="0.5", slippage_bps="10")
    prices.set("BTC/USD", "30000", volume="0.2")
    placed = place(paper, BUY, "0.3", OrderType.LIMIT, price="30100")
    assert (placed.status, placed.fills[0].price, placed.fills[0].liquidity) == (PARTIAL, Decimal("30030"), "taker")
    prices.next_candle()
    prices.set("BTC/USD", "30050", volume="1")

    (done,) = paper.match()

    assert (done.status, done.fills[1].quantity, done.fills[1].price, done.fills[1].liquidity) == (
        FILLED, Decimal("0.2"), Decimal("30100"), "maker"
    )


def test_triggered_stop_keeps_filling_after_the_price_moves_back() -> None:
    paper, prices = make_paper(max_volume_share="0.1")
    place(paper, SELL, "0.3", OrderType.STOP, trigger="29000")
    prices.set("BTC/USD", "28900", volume="1")
    assert [o.filled_quantity for o in paper.match()] == [Decimal("0.1")]
    prices.next_candle()
    prices.set("BTC/USD", "29500", volume="5")

    (done,) = paper.match()

    assert (done.status, done.fills[-1].price) == (FILLED, Decimal("29500"))


# -- reduce-only ------------------------------------------------------------------------------------------------


def test_reduce_only_order_is_clipped_to_the_position() -> None:
    paper, _ = make_paper()
    place(paper, BUY, "0.5")

    order = place(paper, SELL, "0.8", reduce_only=True)

    assert (order.quantity, order.filled_quantity, order.status) == (Decimal("0.5"), Decimal("0.5"), FILLED)
    assert paper.positions() == []


@pytest.mark.parametrize("held", [None, "0.5"])
def test_reduce_only_order_that_would_open_or_add_is_rejected(held: str | None) -> None:
    paper, _ = make_paper()
    if held is not None:
        place(paper, BUY, held)
    with pytest.raises(InvalidOrderError, match="no position to reduce"):
        place(paper, BUY, "0.1", reduce_only=True)


def test_reduce_only_stop_is_canceled_when_its_take_profit_closes_the_position() -> None:
    paper, prices = make_paper()
    place(paper, BUY, "0.5")
    stop = place(paper, SELL, "0.5", OrderType.STOP, trigger="29000", reduce_only=True)
    take = place(paper, SELL, "0.5", OrderType.TAKE_PROFIT, trigger="31000", reduce_only=True)
    prices.set("BTC/USD", "31000")

    changed = {o.venue_order_id: o for o in paper.match()}

    assert changed[take.venue_order_id].status is FILLED
    assert changed[stop.venue_order_id].status is CANCELED
    assert "reduce-only" in changed[stop.venue_order_id].reason
    assert paper.open_orders() == []


def test_reduce_only_limit_fills_only_what_is_left_of_the_position() -> None:
    paper, prices = make_paper()
    place(paper, BUY, "0.5")
    placed = place(paper, SELL, "0.5", OrderType.LIMIT, price="31000", reduce_only=True)
    place(paper, SELL, "0.3")
    prices.set("BTC/USD", "31000")

    (done,) = paper.match()

    assert (done.venue_order_id, done.filled_quantity, done.status) == (
        placed.venue_order_id, Decimal("0.2"), CANCELED
    )
    assert paper.positions() == []


# -- margin -----------------------------------------------------------------------------------------------------


def test_order_costing_more_than_equity_is_rejected_and_not_stored() -> None:
    paper, _ = make_paper("1000")
    with pytest.raises(InsufficientFundsError):
        place(paper, BUY, "0.034", client_order_id="too-big")  # 1020 USD
    assert paper.fetch_order_by_client_id("BTC/USD", "too-big") is None
    assert place(paper, BUY, "0.033").status is FILLED  # 990 USD


def test_spot_cash_cannot_be_spent_twice() -> None:
    paper, _ = make_paper("1000")
    place(paper, BUY, "0.0325")  # 975 + 0.4875 fee: equity 999.5125, of which 24.5125 is free at 1x
    with pytest.raises(InsufficientFundsError):
        place(paper, BUY, "0.001")  # 30
    resting = place(paper, BUY, "0.0008", OrderType.LIMIT, price="29000")  # 23.2
    with pytest.raises(InsufficientFundsError):
        place(paper, BUY, "0.0008")  # 24, but the working limit holds 23.2 of the 24.5125
    paper.cancel_order("BTC/USD", resting.venue_order_id)
    assert place(paper, BUY, "0.0008").status is FILLED


def test_leverage_multiplies_buying_power_up_to_the_market_maximum() -> None:
    paper, _ = make_paper("1000")
    with pytest.raises(InsufficientFundsError):
        place(paper, BUY, "0.3", symbol="BTC-PERP")  # 9000 at 1x
    with pytest.raises(InsufficientFundsError):
        place(paper, BUY, "0.4", symbol="BTC-PERP", leverage="50")  # capped at 10x: 1200
    with pytest.raises(InsufficientFundsError):
        place(paper, BUY, "0.034", leverage="10")  # spot stays at 1x

    assert place(paper, BUY, "0.3", symbol="BTC-PERP", leverage="10").status is FILLED  # 900


def test_set_leverage_applies_to_orders_without_their_own_and_is_capped() -> None:
    paper, _ = make_paper("1000")
    paper.set_leverage("BTC-PERP", Decimal("5"))
    assert place(paper, BUY, "0.16", symbol="BTC-PERP").status is FILLED  # 4800 / 5 = 960
    with pytest.raises(InvalidOrderError):
        paper.set_leverage("BTC-PERP", Decimal("11"))
    with pytest.raises(InvalidOrderError):
        paper.set_leverage("BTC/USD", Decimal("2"))


def test_closing_a_losing_position_needs_no_margin() -> None:
    paper, prices = make_paper("1000")
    place(paper, BUY, "0.3", symbol="BTC-PERP", leverage="10")
    prices.set("BTC-PERP", "27000")
    assert equity(paper) == Decimal("95.5")  # 1000 - 9000 - 4.5 + 0.3 x 27000

    assert place(paper, SELL, "0.3", symbol="BTC-PERP").status is FILLED


# -- positions, funding, other quotes ---------------------------------------------------------------------------


def test_cost_basis_averages_in_keeps_its_average_on_reduction_and_resets_on_a_flip() -> None:
    paper, prices = make_paper()
    place(paper, BUY, "1")
    prices.set("BTC/USD", "31000")
    place(paper, BUY, "1")
    assert position(paper) == (Decimal("2"), Decimal("30500"))
    prices.set("BTC/USD", "32000")
    place(paper, SELL, "0.5")
    assert position(paper) == (Decimal("1.5"), Decimal("30500"))
    prices.set("BTC/USD", "33000")

    place(paper, SELL, "2.5")

    assert position(paper) == (Decimal("-1.0"), Decimal("33000"))


def test_funding_is_paid_by_longs_and_received_by_shorts_when_positive() -> None:
    paper, prices = make_paper()
    place(paper, BUY, "0.5", symbol="BTC-PERP")
    prices.set("BTC-PERP", "30123.45")
    before = cash(paper)

    paid = paper.apply_funding("BTC-PERP", Decimal("0.0000123"))

    assert paid == Decimal("0.18525922")  # 0.5 x 30123.45 x 0.0000123 = 0.1852592175, half up
    assert cash(paper) == before - paid
    place(paper, SELL, "1", symbol="BTC-PERP")
    assert paper.apply_funding("BTC-PERP", Decimal("0.0000123")) == Decimal("-0.18525922")


def test_funding_is_nothing_when_flat_and_refused_on_spot() -> None:
    paper, _ = make_paper()
    assert paper.apply_funding("BTC-PERP", Decimal("0.0001")) == 0
    with pytest.raises(InvalidOrderError):
        paper.apply_funding("BTC/USD", Decimal("0.0001"))


def test_other_quote_markets_settle_in_the_account_currency_at_the_fill_time_rate() -> None:
    paper, prices = make_paper()

    (fill,) = place(paper, BUY, "2", symbol="ETH/BTC").fills

    # 2 x 0.05 BTC = 0.1 BTC = 3000 USD at 30000; taker fee 1.5 USD
    assert (fill.price, fill.fee, fill.fee_currency) == (Decimal("0.05"), Decimal("1.5"), "USD")
    assert (cash(paper), equity(paper)) == (Decimal("96998.5"), Decimal("99998.5"))
    assert position(paper, "ETH/BTC") == (Decimal("2"), Decimal("0.05"))
    prices.set("BTC/USD", "31000")
    assert equity(paper) == Decimal("100098.5")


# -- validation, idempotency, errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quantity", "type_", "price", "trigger", "post_only", "message"),
    [
        ("0", OrderType.MARKET, None, None, False, "below the minimum"),
        ("-1", OrderType.MARKET, None, None, False, "below the minimum"),
        ("0.00009", OrderType.MARKET, None, None, False, "below the minimum"),
        ("NaN", OrderType.MARKET, None, None, False, "finite"),
        ("Infinity", OrderType.MARKET, None, None, False, "finite"),
        ("0.0003", OrderType.MARKET, None, None, False, "notional"),  # 9 USD < 10
        ("0.1", OrderType.LIMIT, None, None, False, "needs a price"),
        ("0.1", OrderType.LIMIT, "-5", None, False, "positive"),
        ("0.1", OrderType.STOP, None, None, False, "needs a trigger_price"),
        ("0.1", OrderType.TAKE_PROFIT, None, None, False, "needs a trigger_price"),
        ("0.1", OrderType.MARKET, None, None, True, "post-only"),
    ],
)
def test_malformed_order_is_rejected_with_a_reason(
    quantity: str, type_: OrderType, price: str | None, trigger: str | None, post_only: bool, message: str
) -> None:
    paper, _ = make_paper()
    with pytest.raises(InvalidOrderError, match=message):
        place(paper, BUY, quantity, type_, price=price, trigger=trigger, post_only=post_only)
    assert paper.open_orders() == [] and paper.positions() == []


def test_same_client_order_id_returns_the_stored_order_unchanged() -> None:
    paper, prices = make_paper()
    first = place(paper, BUY, "0.1", client_order_id="once")
    prices.set("BTC/USD", "35000")

    again = place(paper, SELL, "0.5", client_order_id="once")

    assert again == first
    assert position(paper) == (Decimal("0.1"), Decimal("30000"))


def test_no_price_means_no_order() -> None:
    paper, prices = make_paper()
    prices.remove("BTC/USD")
    with pytest.raises(TemporaryError):
        place(paper, BUY, "0.1", client_order_id="unpriced")
    assert paper.fetch_order_by_client_id("BTC/USD", "unpriced") is None


def test_match_leaves_orders_of_unpriced_markets_alone() -> None:
    paper, prices = make_paper()
    placed = place(paper, BUY, "0.1", OrderType.LIMIT, price="29000")
    prices.remove("BTC/USD")

    assert paper.match() == []
    assert paper.open_orders() == [placed]


def test_match_fills_what_it_can_price_and_leaves_the_rest_untouched() -> None:
    paper, prices = make_paper()
    unpriced = place(paper, BUY, "2", OrderType.LIMIT, price="0.04", symbol="ETH/BTC")
    place(paper, BUY, "0.1", OrderType.LIMIT, price="29000", symbol="BTC-PERP")
    prices.remove("BTC/USD")  # ETH/BTC can no longer be converted to USD
    prices.set("ETH/BTC", "0.039")
    prices.set("BTC-PERP", "28000")

    (filled,) = paper.match()

    assert (filled.symbol, filled.status) == ("BTC-PERP", FILLED)
    assert paper.open_orders() == [unpriced]
    assert cash(paper) == Decimal("97099.42")  # 100000 - 2900 - 0.58 maker fee


def test_other_quote_market_without_a_conversion_price_places_nothing() -> None:
    paper, prices = make_paper()
    prices.remove("BTC/USD")
    with pytest.raises(TemporaryError):
        place(paper, BUY, "2", symbol="ETH/BTC")
    assert paper.open_orders() == [] and paper.positions() == []
    assert cash(paper) == Decimal("100000")


def test_stale_price_is_refused() -> None:
    prices = FakePrices()
    prices.set("BTC/USD", "30000")
    paper = PaperVenue(
        store=InMemoryPaperStore(Decimal("100000")),
        prices=prices,
        config=PaperConfig(markets=(BTC,), max_price_age=timedelta(minutes=1)),
        clock=lambda: T0 + timedelta(minutes=2),
    )
    with pytest.raises(TemporaryError, match="stale"):
        paper.ticker("BTC/USD")


def test_cancel_of_a_final_order_returns_it_unchanged_and_unknown_ids_raise() -> None:
    paper, _ = make_paper()
    filled = place(paper, BUY, "0.1")
    assert paper.cancel_order("BTC/USD", filled.venue_order_id) == filled
    with pytest.raises(OrderNotFoundError):
        paper.cancel_order("BTC/USD", "paper-999")
    with pytest.raises(OrderNotFoundError):
        paper.fetch_order("BTC-PERP", filled.venue_order_id)


def test_in_memory_store_rolls_back_a_failed_unit_of_work() -> None:
    store = InMemoryPaperStore(Decimal("100"))
    with pytest.raises(RuntimeError), store.atomic():
        store.set_cash(Decimal("5"))
        store.set_position("BTC/USD", Decimal("1"), Decimal("30000"))
        store.next_id()
        raise RuntimeError("boom")
    assert (store.cash(), store.all_positions()) == (Decimal("100"), {})
    assert store.next_id() == 2  # ids never roll back


# -- invariants -------------------------------------------------------------------------------------------------

trades = st.lists(
    st.tuples(
        st.sampled_from([BUY, SELL]),
        st.integers(min_value=1, max_value=500),  # quantity in lots of 0.001
        st.integers(min_value=100_000, max_value=600_000),  # price in ticks of 0.1
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=200, deadline=None)
@given(trades=trades, mark_ticks=st.integers(min_value=100_000, max_value=600_000))
def test_equity_is_initial_cash_plus_marked_fills_less_fees(
    trades: list[tuple[Side, int, int]], mark_ticks: int
) -> None:
    paper, prices = make_paper("100000000")
    fills: list[tuple[int, VenueFill]] = []
    for side, lots, ticks in trades:
        prices.set("BTC-PERP", Decimal(ticks) * PERP.tick_size)
        order = place(paper, side, str(lots * PERP.lot_size), symbol="BTC-PERP")
        fills.extend((side.sign, f) for f in order.fills)
    mark = Decimal(mark_ticks) * PERP.tick_size
    prices.set("BTC-PERP", mark)

    expected = Decimal("100000000") + sum(sign * f.quantity * (mark - f.price) - f.fee for sign, f in fills)
    assert equity(paper) == expected
    net = sum(sign * f.quantity for sign, f in fills)
    held = position(paper, "BTC-PERP")
    if net == 0:
        assert held is None
    else:
        assert held is not None and held[0] == net
        prices_paid = [f.price for _, f in fills]
        assert min(prices_paid) <= held[1] <= max(prices_paid)
