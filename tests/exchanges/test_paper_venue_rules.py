"""The paper venue on a real venue's market rules: Hyperliquid's prices (5 significant figures, whole numbers always,
at most 6 - szDecimals decimals), sizes rounded down to szDecimals, the $10 minimum; and funding charged at a
position and price of the past. The rounding is Hyperliquid's own (`exchanges.hyperliquid.round_price`, through
`Market.price_sig_figs`), checked against the loopback fake's independent rule (`price_ok`)."""

from __future__ import annotations

from datetime import datetime, UTC
from decimal import ROUND_DOWN, ROUND_HALF_UP, ROUND_UP, Decimal

import pytest
from hypothesis import given, settings, strategies as st

from exchanges.base import Market, OrderRequest, OrderType, Side, Ticker, VenueOrderStatus
from exchanges.errors import InvalidOrderError
from exchanges.fills import slipped_price
from exchanges.hyperliquid import MAKER_FEE, MIN_NOTIONAL, SIG_FIGS, TAKER_FEE, price_tick, round_price
from exchanges.paper import InMemoryPaperStore, PaperConfig, PaperVenue
from tests.fakes.hyperliquid_venue import price_ok

D = Decimal


def hl_market(coin: str = "BTC", sz_decimals: int = 5) -> Market:
    """A market as HyperliquidConnector lists it (exchanges/hyperliquid.py `_load_markets`)."""
    lot = D(1).scaleb(-sz_decimals)
    return Market(symbol=f"{coin}/USDC:USDC", base=coin, quote="USDC", tick_size=price_tick(sz_decimals),
                  lot_size=lot, min_qty=lot, min_notional=MIN_NOTIONAL, max_leverage=D(40), kind="perp",
                  maker_fee=MAKER_FEE, taker_fee=TAKER_FEE, price_sig_figs=SIG_FIGS)


class Prices:
    def __init__(self) -> None:
        self.prices: dict[str, Decimal] = {}

    def ticker(self, symbol: str) -> Ticker:
        return Ticker(symbol, self.prices[symbol], datetime.now(UTC))


def venue(*markets: Market) -> tuple[PaperVenue, Prices]:
    prices = Prices()
    store = InMemoryPaperStore(D("100000"))
    return PaperVenue(store=store, prices=prices, config=PaperConfig(markets=markets, quote_asset="USD")), prices


def market_order(side: Side, quantity: str, symbol: str = "BTC/USDC:USDC", cid: str = "c1") -> OrderRequest:
    return OrderRequest(client_order_id=cid, symbol=symbol, side=side, type=OrderType.MARKET, quantity=D(quantity))


prices_st = st.decimals(min_value=D("0.000001"), max_value=D("5000000"), places=8, allow_nan=False,
                        allow_infinity=False).filter(lambda p: p > 0)


@settings(max_examples=400, deadline=None)
@given(price=prices_st, sz_decimals=st.integers(min_value=0, max_value=5),
       bps=st.sampled_from([D(0), D(5), D("12.5")]), side=st.sampled_from([Side.BUY, Side.SELL]))
def test_a_paper_taker_price_is_the_venues_rounding_and_a_price_the_venue_accepts(
        price: Decimal, sz_decimals: int, bps: Decimal, side: Side) -> None:
    market = hl_market(sz_decimals=sz_decimals)
    got = slipped_price(market, side, price, bps)
    moved = price * (1 + bps / 10000) if side is Side.BUY else price * (1 - bps / 10000)
    assert got == round_price(moved, sz_decimals, ROUND_UP if side is Side.BUY else ROUND_DOWN)
    if got > 0:
        assert price_ok(got, sz_decimals), got  # the fake's own rule, written out independently
        assert (got >= moved) if side is Side.BUY else (got <= moved)  # never better for the taker than the price


@pytest.mark.parametrize(("sz_decimals", "mid", "side", "filled", "asked", "sent"), [
    # 5 significant figures: the tick (0.1) alone would keep 43210.5
    (5, "43210.5", Side.BUY, "43211", "0.123456", "0.12345"),
    (5, "43210.5", Side.SELL, "43210", "0.123456", "0.12345"),
    (5, "99999.5", Side.BUY, "100000", "0.123456", "0.12345"),  # past a power of ten: a whole number
    (5, "1.234567", Side.BUY, "1.3", "100.123456", "100.12345"),  # szDecimals 5: one decimal at most
    (0, "1.234567", Side.BUY, "1.2346", "100.9", "100"),  # szDecimals 0: six decimals, five figures; whole sizes
])
def test_a_paper_market_fill_on_hyperliquids_rules_rounds_as_the_venue_would(
        sz_decimals: int, mid: str, side: Side, filled: str, asked: str, sent: str) -> None:
    paper, prices = venue(hl_market(sz_decimals=sz_decimals))
    prices.prices["BTC/USDC:USDC"] = D(mid)
    if side is Side.SELL:  # something to sell first
        paper.create_order(market_order(Side.BUY, asked, cid="open"))
    order = paper.create_order(market_order(side, asked))
    assert order.status is VenueOrderStatus.FILLED
    (fill,) = order.fills
    assert fill.price == D(filled) and price_ok(fill.price, sz_decimals)
    assert order.quantity == fill.quantity == D(sent)  # sizes round down to szDecimals
    assert fill.fee == (fill.quantity * fill.price * TAKER_FEE).quantize(D("1e-8"), rounding=ROUND_HALF_UP)


def test_a_paper_limit_and_trigger_price_go_onto_the_venues_prices() -> None:
    paper, prices = venue(hl_market())
    prices.prices["BTC/USDC:USDC"] = D("43000")
    limit = paper.quantize(OrderRequest("l", "BTC/USDC:USDC", Side.BUY, OrderType.LIMIT, D("0.1"),
                                        price=D("42987.6")))
    stop = paper.quantize(OrderRequest("s", "BTC/USDC:USDC", Side.SELL, OrderType.STOP, D("0.1"),
                                       trigger_price=D("41234.56")))
    assert limit.price == D("42987")  # a buy limit rounds down, never above what was asked
    assert stop.trigger_price == D("41235")  # a trigger to the nearest valid price
    assert limit.price == round_price(D("42987.6"), 5, ROUND_DOWN)


def test_an_order_under_ten_dollars_is_refused_as_on_the_venue() -> None:
    paper, prices = venue(hl_market())
    prices.prices["BTC/USDC:USDC"] = D("43210")
    with pytest.raises(InvalidOrderError, match="below the minimum 10"):
        paper.create_order(market_order(Side.BUY, "0.0002"))  # 8.64 USD
    assert paper.create_order(market_order(Side.BUY, "0.00024", cid="c2")).status is VenueOrderStatus.FILLED


def test_funding_of_a_past_time_is_charged_at_the_position_and_price_named() -> None:
    paper, prices = venue(hl_market())
    prices.prices["BTC/USDC:USDC"] = D("43210")
    before = paper.balances()[0].free
    # 0.75 x 60500.3 x 0.0000123 = 0.558115267 5: half up to the fee quantum (1e-8)
    paid = paper.apply_funding("BTC/USDC:USDC", D("0.0000123"), price=D("60500.3"), quantity=D("0.75"))
    assert paid == D("0.55811527")
    assert paper.balances()[0].free == before - paid
    # A negative rate: shorts pay (-2 x 60000 x -0.00001 = 1.2 paid), longs receive.
    assert paper.apply_funding("BTC/USDC:USDC", D("-0.00001"), price=D("60000"), quantity=D("-2")) == D("1.2")
    assert paper.apply_funding("BTC/USDC:USDC", D("-0.00001"), price=D("60000"), quantity=D("2")) == D("-1.2")
    assert paper.apply_funding("BTC/USDC:USDC", D("0.0001"), price=D("60000"), quantity=D("0")) == 0
