"""A venue order as JSON and back (how the paper store keeps its orders)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from exchanges.base import OrderType, Side, VenueFill, VenueOrder, VenueOrderStatus


def order_to_json(order: VenueOrder) -> dict[str, Any]:
    """Serialize a venue order (Decimals as strings, times as ISO 8601)."""
    def dec(v: Decimal | None) -> str | None:
        return None if v is None else str(v)

    return {
        "client_order_id": order.client_order_id,
        "venue_order_id": order.venue_order_id,
        "symbol": order.symbol,
        "side": order.side.value,
        "type": order.type.value,
        "status": order.status.value,
        "quantity": str(order.quantity),
        "filled_quantity": str(order.filled_quantity),
        "price": dec(order.price),
        "trigger_price": dec(order.trigger_price),
        "reduce_only": order.reduce_only,
        "reason": order.reason,
        "fills": [
            {"fill_id": f.fill_id, "quantity": str(f.quantity), "price": str(f.price), "fee": str(f.fee),
             "fee_currency": f.fee_currency, "time": f.time.isoformat(), "liquidity": f.liquidity}
            for f in order.fills
        ],
    }


def order_from_json(data: dict[str, Any]) -> VenueOrder:
    """Rebuild a venue order from order_to_json's output."""
    def dec(v: str | None) -> Decimal | None:
        return None if v is None else Decimal(v)

    return VenueOrder(
        client_order_id=data["client_order_id"],
        venue_order_id=data["venue_order_id"],
        symbol=data["symbol"],
        side=Side(data["side"]),
        type=OrderType(data["type"]),
        status=VenueOrderStatus(data["status"]),
        quantity=Decimal(data["quantity"]),
        filled_quantity=Decimal(data["filled_quantity"]),
        price=dec(data["price"]),
        trigger_price=dec(data["trigger_price"]),
        reduce_only=data["reduce_only"],
        reason=data.get("reason", ""),
        fills=tuple(
            VenueFill(fill_id=f["fill_id"], quantity=Decimal(f["quantity"]), price=Decimal(f["price"]),
                      fee=Decimal(f["fee"]), fee_currency=f["fee_currency"],
                      time=datetime.fromisoformat(f["time"]), liquidity=f.get("liquidity", "taker"))
            for f in data["fills"]
        ),
    )
