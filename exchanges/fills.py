"""The fill model shared by the paper venue and the backtester: taker prices, triggers, fee rounding. Pure.

Prices are in the market's quote, quantities in base, all Decimal. A taker is moved `slippage_bps` against them
and rounded to the tick against them (buys up, sells down); a limit trades at or better than its price; STOP
triggers against the position (sell: price <= trigger, buy: price >= trigger), TAKE_PROFIT in its favour; fees
are rounded half-up to a fee step (`FEE_QUANTUM` unless the venue says otherwise).
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from exchanges.base import Market, OrderType, Side, VenueOrder

ONE = Decimal("1")
BPS = Decimal("10000")
FEE_QUANTUM = Decimal("0.00000001")  # the paper venue's default fee (and funding) rounding step


def round_half_up(value: Decimal, step: Decimal) -> Decimal:
    """Round to the nearest multiple of step, halves away from zero."""
    return (value / step).to_integral_value(rounding=ROUND_HALF_UP) * step


def slipped_price(market: Market, side: Side, price: Decimal, slippage_bps: Decimal) -> Decimal:
    """Return the price a taker gets: moved against them by slippage_bps, rounded to the market's price rules (the
    tick, and a venue's significant figures) against them."""
    if side is Side.BUY:
        return market.round_price(price * (ONE + slippage_bps / BPS), Side.BUY)
    return market.round_price(price * (ONE - slippage_bps / BPS), Side.SELL)


def limit_crosses(side: Side, limit: Decimal, price: Decimal) -> bool:
    """Say whether a limit order can trade at this price (buy: price <= limit, sell: price >= limit)."""
    return price <= limit if side is Side.BUY else price >= limit


def is_triggered(order: VenueOrder, price: Decimal) -> bool:
    """Say whether an open order may fill at this price."""
    buy = order.side is Side.BUY
    if order.type is OrderType.MARKET:
        return True
    if order.type is OrderType.LIMIT:
        assert order.price is not None
        return limit_crosses(order.side, order.price, price)
    if order.filled_quantity > 0:
        # A stop that has filled in part has triggered; its remainder is a market order now.
        return True
    assert order.trigger_price is not None
    if order.type is OrderType.STOP:
        return price >= order.trigger_price if buy else price <= order.trigger_price
    return price <= order.trigger_price if buy else price >= order.trigger_price


def reference_price(
    type_: OrderType, price: Decimal | None, trigger_price: Decimal | None, market_price: Decimal
) -> Decimal:
    """Return the price an order's notional is judged at: its limit, its trigger, or the market's price."""
    if type_ is OrderType.LIMIT and price is not None:
        return price
    if type_ in (OrderType.STOP, OrderType.TAKE_PROFIT) and trigger_price is not None:
        return trigger_price
    return market_price
