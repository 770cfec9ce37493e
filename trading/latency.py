"""The paper venue with a live venue's latency (an account's `paper_latency_ms`)."""

from __future__ import annotations

import time
from dataclasses import replace
from decimal import Decimal
from typing import Any

from exchanges.base import Connector, OrderRequest, Ticker, VenueOrder
from exchanges.paper import PaperVenue


class LatentConnector(Connector):
    """Paper with a venue's latency: half before the venue records an order, half before its reply arrives."""

    def __init__(self, inner: PaperVenue, latency_ms: int) -> None:
        self.inner, self.half = inner, latency_ms / 2000
        # A venue with latency is remote as far as the engine is concerned: decide, send and record apart.
        self.capabilities = replace(inner.capabilities, in_database=False)

    def create_order(self, request: OrderRequest) -> VenueOrder:
        time.sleep(self.half)
        result = self.inner.create_order(request)
        time.sleep(self.half)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def markets(self):
        return self.inner.markets()

    def balances(self):
        return self.inner.balances()

    def ticker(self, symbol: str) -> Ticker:
        return self.inner.ticker(symbol)

    def cancel_order(self, symbol: str, venue_order_id: str) -> VenueOrder:
        return self.inner.cancel_order(symbol, venue_order_id)

    def fetch_order(self, symbol: str, venue_order_id: str) -> VenueOrder:
        return self.inner.fetch_order(symbol, venue_order_id)

    def fetch_order_by_client_id(self, symbol: str, client_order_id: str) -> VenueOrder | None:
        return self.inner.fetch_order_by_client_id(symbol, client_order_id)

    def open_orders(self, symbol: str | None = None):
        return self.inner.open_orders(symbol)

    def positions(self):
        return self.inner.positions()

    def set_leverage(self, symbol: str, leverage: Decimal) -> None:
        self.inner.set_leverage(symbol, leverage)
