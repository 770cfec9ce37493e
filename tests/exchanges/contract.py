"""The connector contract: behaviour every venue must show. A venue's test module subclasses ConnectorContract.

    class TestPaperConnectorContract(ConnectorContract):
        @pytest.fixture
        def venue(self) -> ContractVenue: ...

The harness funds the account well enough for a few small orders on `symbol` and makes `set_price` move
the market the way the live venue would see it (working orders react before it returns).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest

from exchanges.base import (
    Connector,
    Market,
    OrderRequest,
    OrderType,
    Side,
    VenueOrder,
    VenueOrderStatus,
    round_up,
)
from exchanges.errors import InvalidOrderError, MarketNotFoundError, OrderNotFoundError, VenueError


@dataclass(frozen=True)
class ContractVenue:
    """A connector under test, the market the contract trades, its current price and a way to move it."""

    connector: Connector
    symbol: str
    price: Decimal  # the market's price when the test starts, in quote
    set_price: Callable[[str, Decimal], None]

    @property
    def market(self) -> Market:
        return self.connector.market(self.symbol)


def small_quantity(market: Market, price: Decimal) -> Decimal:
    """Return twice the smallest quantity that clears the market's lot, minimum size and minimum notional."""
    smallest = max(market.lot_size, round_up(market.min_qty, market.lot_size))
    if market.min_notional > 0:
        smallest = max(smallest, round_up(market.min_notional / price, market.lot_size))
    return smallest * 2


def request(
    venue: ContractVenue,
    side: Side,
    quantity: Decimal | None = None,
    *,
    type_: OrderType = OrderType.MARKET,
    price: Decimal | None = None,
    client_order_id: str | None = None,
) -> OrderRequest:
    """Build an order request on the contract's market with a fresh client order id."""
    return OrderRequest(
        client_order_id=client_order_id or uuid.uuid4().hex,
        symbol=venue.symbol,
        side=side,
        type=type_,
        quantity=small_quantity(venue.market, venue.price) if quantity is None else quantity,
        price=price,
    )


def far_price(venue: ContractVenue, side: Side) -> Decimal:
    """Return a limit price that will not trade now: half the price for a buy, twice it for a sell."""
    factor = Decimal("0.5") if side is Side.BUY else Decimal("2")
    return venue.market.round_price(venue.price * factor, side)


COUNT_FIELDS = {"price_sig_figs"}  # a number of digits, not an amount: an int


def decimals_of(value: Any) -> list[object]:
    """Return every number-like field of a dataclass and of the dataclasses it holds."""
    found: list[object] = []
    for f in dataclasses.fields(value):
        if f.name in COUNT_FIELDS:
            continue
        item = getattr(value, f.name)
        items = item if isinstance(item, tuple) else (item,)
        for x in items:
            if dataclasses.is_dataclass(x):
                found.extend(decimals_of(x))
            elif isinstance(x, (int, float, Decimal)) and not isinstance(x, bool):
                found.append(x)
    return found


def rests_limit_orders(venue: ContractVenue) -> bool:
    """Whether the venue keeps limit orders working (an on-chain perp with only async market orders does not)."""
    return venue.connector.capabilities.extra.get("limit_orders", "true") != "false"


def skip_without_limit_orders(venue: ContractVenue) -> None:
    """Skip a test that needs resting limit orders on a venue whose capabilities say it has none."""
    if not rests_limit_orders(venue):
        pytest.skip(f"{venue.connector.capabilities.venue} has no resting limit orders (capabilities.extra)")


def open_position(venue: ContractVenue, quantity: Decimal) -> VenueOrder:
    """Buy at market and return the filled order."""
    order = venue.connector.create_order(request(venue, Side.BUY, quantity))
    assert order.status is VenueOrderStatus.FILLED
    return order


class ConnectorContract:
    """Tests every connector must pass; subclasses provide the `venue` fixture."""

    @pytest.fixture
    def venue(self) -> ContractVenue:
        raise NotImplementedError("a connector's test module provides the venue fixture")

    def test_markets_have_positive_tick_and_lot(self, venue: ContractVenue) -> None:
        markets = venue.connector.markets()
        assert markets
        for m in markets:
            assert m.tick_size > 0 and m.lot_size > 0 and m.min_qty >= 0 and m.max_leverage >= 1
            assert all(type(x) is Decimal for x in decimals_of(m))

    def test_ticker_returns_the_price_set(self, venue: ContractVenue) -> None:
        ticker = venue.connector.ticker(venue.symbol)
        assert (ticker.symbol, ticker.price) == (venue.symbol, venue.price)
        assert ticker.time.tzinfo is not None

    def test_unknown_market_raises_market_not_found(self, venue: ContractVenue) -> None:
        with pytest.raises(MarketNotFoundError):
            venue.connector.create_order(dataclasses.replace(request(venue, Side.BUY), symbol="NOPE/NOPE"))

    @pytest.mark.parametrize("side", [Side.BUY, Side.SELL])
    def test_market_order_fills_with_fills_summing_to_its_quantity(self, venue: ContractVenue, side: Side) -> None:
        quantity = small_quantity(venue.market, venue.price)
        if side is Side.SELL:
            open_position(venue, quantity)
        order = venue.connector.create_order(request(venue, side, quantity))
        assert order.status is VenueOrderStatus.FILLED
        assert order.quantity == order.filled_quantity == sum(f.quantity for f in order.fills) == quantity
        assert all(f.price > 0 and f.fee >= 0 and f.time.tzinfo is not None for f in order.fills)
        assert len({f.fill_id for f in order.fills}) == len(order.fills)

    def test_same_client_order_id_twice_creates_one_order(self, venue: ContractVenue) -> None:
        first = venue.connector.create_order(request(venue, Side.BUY, client_order_id="dup-1"))
        second = venue.connector.create_order(request(venue, Side.BUY, client_order_id="dup-1"))
        assert second.venue_order_id == first.venue_order_id
        if venue.connector.capabilities.positions:
            (position,) = venue.connector.positions()
            assert position.quantity == first.filled_quantity

    def test_same_client_order_id_twice_rests_one_limit_order(self, venue: ContractVenue) -> None:
        skip_without_limit_orders(venue)
        limit = far_price(venue, Side.BUY)
        for _ in range(2):
            venue.connector.create_order(
                request(venue, Side.BUY, type_=OrderType.LIMIT, price=limit, client_order_id="dup-2")
            )
        assert [o.client_order_id for o in venue.connector.open_orders(venue.symbol)] == ["dup-2"]

    def test_order_is_fetched_by_venue_id_and_by_client_id(self, venue: ContractVenue) -> None:
        placed = venue.connector.create_order(request(venue, Side.BUY))
        assert venue.connector.fetch_order(venue.symbol, placed.venue_order_id) == placed
        assert venue.connector.fetch_order_by_client_id(venue.symbol, placed.client_order_id) == placed

    def test_unknown_client_order_id_returns_none(self, venue: ContractVenue) -> None:
        assert venue.connector.fetch_order_by_client_id(venue.symbol, "never-sent") is None

    def test_unknown_venue_order_id_raises_order_not_found(self, venue: ContractVenue) -> None:
        with pytest.raises(OrderNotFoundError):
            venue.connector.fetch_order(venue.symbol, "no-such-order")

    @pytest.mark.parametrize("side", [Side.BUY, Side.SELL])
    def test_limit_order_rests_open_and_cancel_removes_it(self, venue: ContractVenue, side: Side) -> None:
        skip_without_limit_orders(venue)
        quantity = small_quantity(venue.market, venue.price)
        if side is Side.SELL:
            open_position(venue, quantity)
        placed = venue.connector.create_order(
            request(venue, side, quantity, type_=OrderType.LIMIT, price=far_price(venue, side))
        )
        assert (placed.status, placed.filled_quantity) == (VenueOrderStatus.OPEN, Decimal("0"))
        assert [o.venue_order_id for o in venue.connector.open_orders(venue.symbol)] == [placed.venue_order_id]
        assert [o.venue_order_id for o in venue.connector.open_orders()] == [placed.venue_order_id]

        canceled = venue.connector.cancel_order(venue.symbol, placed.venue_order_id)

        assert canceled.status is VenueOrderStatus.CANCELED
        assert venue.connector.open_orders(venue.symbol) == []
        assert venue.connector.fetch_order(venue.symbol, placed.venue_order_id).status is VenueOrderStatus.CANCELED

    def test_resting_limit_fills_when_the_price_crosses_it(self, venue: ContractVenue) -> None:
        skip_without_limit_orders(venue)
        limit = venue.market.round_price(venue.price * Decimal("0.9"), Side.BUY)
        placed = venue.connector.create_order(request(venue, Side.BUY, type_=OrderType.LIMIT, price=limit))

        venue.set_price(venue.symbol, venue.market.round_price(venue.price * Decimal("0.8")))

        filled = venue.connector.fetch_order(venue.symbol, placed.venue_order_id)
        assert filled.status is VenueOrderStatus.FILLED
        assert all(f.price <= limit for f in filled.fills)
        assert venue.connector.open_orders(venue.symbol) == []

    def test_quantity_is_rounded_down_to_the_lot(self, venue: ContractVenue) -> None:
        quantity = small_quantity(venue.market, venue.price)
        order = venue.connector.create_order(request(venue, Side.BUY, quantity + venue.market.lot_size / 2))
        assert order.quantity == quantity

    def test_quantity_below_the_minimum_raises_invalid_order(self, venue: ContractVenue) -> None:
        below = max(venue.market.min_qty, venue.market.lot_size) / 2
        with pytest.raises(InvalidOrderError):
            venue.connector.create_order(request(venue, Side.BUY, below))
        assert venue.connector.open_orders() == []

    def test_a_malformed_order_is_refused_before_it_reaches_the_venue(self, venue: ContractVenue) -> None:
        good = request(venue, Side.BUY)
        for bad in (dataclasses.replace(good, quantity=Decimal("NaN")), dataclasses.replace(good, type=OrderType.LIMIT),
                    dataclasses.replace(good, post_only=True), dataclasses.replace(good, price=Decimal("-1"))):
            with pytest.raises(InvalidOrderError):
                venue.connector.create_order(bad)
        assert venue.connector.open_orders() == []
        assert venue.connector.fetch_order_by_client_id(venue.symbol, good.client_order_id) is None

    def test_positions_follow_fills(self, venue: ContractVenue) -> None:
        if not venue.connector.capabilities.positions:
            pytest.skip("venue has no positions")
        quantity = small_quantity(venue.market, venue.price)
        open_position(venue, quantity)
        (position,) = venue.connector.positions()
        assert (position.symbol, position.quantity) == (venue.symbol, quantity)
        assert position.entry_price > 0

        venue.connector.create_order(request(venue, Side.SELL, quantity))

        assert [p for p in venue.connector.positions() if p.quantity != 0] == []

    def test_values_are_decimal_everywhere(self, venue: ContractVenue) -> None:
        limit = far_price(venue, Side.BUY)
        values: list[Any] = [
            open_position(venue, small_quantity(venue.market, venue.price)),
            *([venue.connector.create_order(request(venue, Side.BUY, type_=OrderType.LIMIT, price=limit))]
              if rests_limit_orders(venue) else []),
            venue.connector.ticker(venue.symbol),
            *venue.connector.balances(),
            *venue.connector.positions(),
            *venue.connector.markets(),
        ]
        numbers = [x for v in values for x in decimals_of(v)]
        assert numbers and all(type(x) is Decimal for x in numbers)

    # ---- what a venue declares in its capabilities, it does (and what it does not declare, it refuses)

    def test_a_stop_order_rests_with_its_trigger_until_canceled(self, venue: ContractVenue) -> None:
        caps = venue.connector.capabilities
        if not caps.stop_orders:
            with pytest.raises(InvalidOrderError):
                venue.connector.create_order(dataclasses.replace(
                    request(venue, Side.SELL), type=OrderType.STOP, trigger_price=far_price(venue, Side.BUY)))
            return
        quantity = small_quantity(venue.market, venue.price)
        open_position(venue, quantity)
        trigger = venue.market.round_price(venue.price * Decimal("0.8"), Side.SELL)
        stop = venue.connector.create_order(dataclasses.replace(
            request(venue, Side.SELL, quantity), type=OrderType.STOP, trigger_price=trigger,
            reduce_only=caps.reduce_only))
        assert stop.status is VenueOrderStatus.OPEN and stop.filled_quantity == 0
        assert stop.trigger_price == trigger
        assert stop.client_order_id in {o.client_order_id for o in venue.connector.open_orders(venue.symbol)}
        canceled = venue.connector.cancel_order(venue.symbol, stop.venue_order_id)
        assert canceled.status is VenueOrderStatus.CANCELED and canceled.filled_quantity == 0

    def test_reduce_only_never_opens_a_position(self, venue: ContractVenue) -> None:
        if not venue.connector.capabilities.reduce_only:
            pytest.skip(f"{venue.connector.capabilities.venue} has no reduce-only orders")
        try:
            order = venue.connector.create_order(dataclasses.replace(request(venue, Side.SELL), reduce_only=True))
        except InvalidOrderError:
            order = None
        assert order is None or order.filled_quantity == 0
        assert [p for p in venue.connector.positions() if p.quantity != 0] == []

    def test_a_post_only_order_that_would_take_is_refused(self, venue: ContractVenue) -> None:
        caps = venue.connector.capabilities
        through = venue.market.round_price(venue.price * Decimal("1.05"), Side.BUY)  # would take at once
        post = dataclasses.replace(request(venue, Side.BUY, type_=OrderType.LIMIT, price=through), post_only=True)
        if not caps.post_only:
            with pytest.raises(InvalidOrderError):
                venue.connector.create_order(post)
            return
        try:
            order = venue.connector.create_order(post)
        except InvalidOrderError:
            order = None
        assert order is None or (order.filled_quantity == 0 and order.status is not VenueOrderStatus.FILLED)

    def test_leverage_within_the_market_maximum_is_set_and_beyond_it_refused(self, venue: ContractVenue) -> None:
        if not venue.connector.capabilities.leverage:
            pytest.skip(f"{venue.connector.capabilities.venue} sets no leverage")
        venue.connector.set_leverage(venue.symbol, min(Decimal(2), venue.market.max_leverage))
        with pytest.raises(InvalidOrderError):
            venue.connector.set_leverage(venue.symbol, venue.market.max_leverage * 2)

    def test_candles_are_served_as_declared(self, venue: ContractVenue) -> None:
        if not venue.connector.capabilities.candles:
            with pytest.raises(VenueError):
                venue.connector.candles(venue.symbol, "1m")
            return
        candles = venue.connector.candles(venue.symbol, "1m", limit=5)
        times = [c.open_time for c in candles]
        assert times == sorted(times) and len(times) == len(set(times))
        assert all(type(x) is Decimal for c in candles for x in (c.open, c.high, c.low, c.close, c.volume))

    def test_balances_move_with_a_fill(self, venue: ContractVenue) -> None:
        before = {b.asset: b for b in venue.connector.balances()}
        assert before and all(b.total >= 0 and b.free <= b.total for b in before.values())
        open_position(venue, small_quantity(venue.market, venue.price))
        after = {b.asset: b for b in venue.connector.balances()}
        assert after != before  # a fill (and its fee) shows in the account's balances
