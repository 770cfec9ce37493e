"""Connector.create_order, the one template every venue shares: check, round to the market, then the venue's hook."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from decimal import Decimal

import pytest

from exchanges.base import (
    Balance,
    Capabilities,
    Connector,
    Market,
    OrderRequest,
    OrderType,
    Side,
    Ticker,
    VenueOrder,
    VenueOrderStatus,
    VenuePosition,
)
from exchanges.coinbase import CoinbaseConnector
from exchanges.errors import InvalidOrderError
from exchanges.hyperliquid import HyperliquidConnector
from exchanges.paper import PaperVenue
from exchanges.synthetix import SynthetixConnector

BTC = Market("BTC/USD", "BTC", "USD", tick_size=Decimal("0.01"), lot_size=Decimal("0.001"), min_qty=Decimal("0.002"))


class HookVenue(Connector):
    """A venue whose hook only records what reaches it."""

    capabilities = Capabilities(venue="hook", live=False)

    def __init__(self, placed: dict[str, VenueOrder] | None = None) -> None:
        self.sent: list[tuple[OrderRequest, Market]] = []
        self.placed = placed or {}

    def _create_order(self, request: OrderRequest, market: Market) -> VenueOrder:
        self.sent.append((request, market))
        return VenueOrder(request.client_order_id, f"v{len(self.sent)}", request.symbol, request.side, request.type,
                          VenueOrderStatus.OPEN, request.quantity, price=request.price,
                          trigger_price=request.trigger_price)

    def _order_placed(self, request: OrderRequest) -> VenueOrder | None:
        return self.placed.get(request.client_order_id)

    def markets(self) -> Sequence[Market]:
        return [BTC]

    def balances(self) -> Sequence[Balance]:
        return []

    def ticker(self, symbol: str) -> Ticker:
        raise NotImplementedError

    def cancel_order(self, symbol: str, venue_order_id: str) -> VenueOrder:
        raise NotImplementedError

    def fetch_order(self, symbol: str, venue_order_id: str) -> VenueOrder:
        raise NotImplementedError

    def fetch_order_by_client_id(self, symbol: str, client_order_id: str) -> VenueOrder | None:
        raise NotImplementedError

    def open_orders(self, symbol: str | None = None) -> Sequence[VenueOrder]:
        return []

    def positions(self) -> Sequence[VenuePosition]:
        return []

    def set_leverage(self, symbol: str, leverage: Decimal) -> None:
        raise NotImplementedError


def order(quantity: str = "0.01", type_: OrderType = OrderType.MARKET, **fields: object) -> OrderRequest:
    request = OrderRequest("c1", "BTC/USD", Side.BUY, type_, Decimal(quantity))
    return replace(request, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("cls", [PaperVenue, CoinbaseConnector, HyperliquidConnector, SynthetixConnector])
def test_every_venue_implements_the_hook_and_keeps_the_template(cls: type[Connector]) -> None:
    assert "_create_order" in vars(cls) and "create_order" not in vars(cls)


@pytest.mark.parametrize(("request_", "message"), [
    (order(client_order_id=""), "client_order_id is required"),
    (order("NaN"), "quantity must be a finite number"),
    (order(price=Decimal("Infinity")), "price must be a finite number"),
    (order(type_=OrderType.LIMIT, price=Decimal("-5")), "price must be positive"),
    (order(leverage=Decimal("0")), "leverage must be positive"),
    (order(type_=OrderType.LIMIT), "a limit order needs a price"),
    (order(type_=OrderType.STOP), "a stop order needs a trigger_price"),
    (order(type_=OrderType.TAKE_PROFIT), "a take_profit order needs a trigger_price"),
    (order(post_only=True), "post-only needs a limit order"),
    (order("0"), "below the minimum"),
    (order("-1"), "below the minimum"),
    (order("0.0019"), "quantity 0.0019 is below the minimum 0.002"),  # 0.001 once rounded to the lot
    (order(type_=OrderType.LIMIT, price=Decimal("0.004")), "price 0.004 is below the smallest price of BTC/USD"),
])
def test_a_malformed_order_never_reaches_the_venue(request_: OrderRequest, message: str) -> None:
    venue = HookVenue()
    with pytest.raises(InvalidOrderError, match=message) as caught:
        venue.create_order(request_)
    assert caught.value.venue == "hook" and venue.sent == []


def test_the_hook_gets_the_order_rounded_to_the_lot_and_tick_with_its_market() -> None:
    venue = HookVenue()
    venue.create_order(order("0.0129", OrderType.LIMIT, price=Decimal("30000.019"), trigger_price=Decimal("1.005")))
    ((sent, market),) = venue.sent
    assert market == BTC
    # quantity down to the lot; a limit buy's price down to the tick (never worse than asked); a trigger to nearest
    assert (sent.quantity, sent.price, sent.trigger_price) == (Decimal("0.012"), Decimal("30000.01"), Decimal("1.00"))


def test_an_order_already_placed_is_returned_before_any_check() -> None:
    placed = VenueOrder("c1", "v0", "BTC/USD", Side.BUY, OrderType.MARKET, VenueOrderStatus.FILLED, Decimal("0.01"))
    venue = HookVenue(placed={"c1": placed})
    assert venue.create_order(order("0.0001")) is placed  # below today's minimum: it was taken once, never refused
    assert venue.sent == []
