"""A hand-written live-venue stand-in that serves public candles only (what the live feed needs)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

from exchanges.base import (
    Balance,
    Capabilities,
    Connector,
    Market,
    OrderRequest,
    Ticker,
    VenueCandle,
    VenueOrder,
    VenuePosition,
)
from exchanges.errors import TemporaryError, VenueError


class CandleVenue(Connector):
    """Serves the candles it is given; every trading call fails (it is never traded on)."""

    capabilities = Capabilities(venue="coinbase", live=True)

    def __init__(self, candles: list[VenueCandle], *, down: bool = False) -> None:
        self.served, self.down, self.calls = candles, down, 0

    def markets(self) -> Sequence[Market]:
        return [Market("BTC/USD", "BTC", "USD", Decimal("0.01"), Decimal("0.00001"), Decimal("0.00001"))]

    def candles(self, symbol: str, timeframe: str, *, since: datetime | None = None,
                limit: int = 300) -> Sequence[VenueCandle]:
        self.calls += 1
        if self.down:
            raise TemporaryError("venue down", venue="coinbase")
        return [c for c in self.served if since is None or c.open_time >= since][:limit]

    def _no(self, *args: object, **kwargs: object) -> None:
        raise VenueError("not a trading venue", venue="coinbase")

    def balances(self) -> Sequence[Balance]:
        raise VenueError("not a trading venue")

    def ticker(self, symbol: str) -> Ticker:
        raise VenueError("not a trading venue")

    def create_order(self, request: OrderRequest) -> VenueOrder:
        raise VenueError("not a trading venue")

    def cancel_order(self, symbol: str, venue_order_id: str) -> VenueOrder:
        raise VenueError("not a trading venue")

    def fetch_order(self, symbol: str, venue_order_id: str) -> VenueOrder:
        raise VenueError("not a trading venue")

    def fetch_order_by_client_id(self, symbol: str, client_order_id: str) -> VenueOrder | None:
        raise VenueError("not a trading venue")

    def open_orders(self, symbol: str | None = None) -> Sequence[VenueOrder]:
        raise VenueError("not a trading venue")

    def positions(self) -> Sequence[VenuePosition]:
        raise VenueError("not a trading venue")

    def set_leverage(self, symbol: str, leverage: Decimal) -> None:
        raise VenueError("not a trading venue")
