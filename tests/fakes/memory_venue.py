"""A hand-written live venue in process memory, for engine and command tests that need no wire format.

`MemoryVenue` looks like a live connector to the engine (capabilities.live, no `match()`: the venue works its
orders by itself) and uses the paper fill model underneath. A test registers it under a live venue name with
`install(monkeypatch, venue)`, moves its market with `set_price` (resting orders fill at once, as on a real
venue, whether or not we are listening), and can make the next calls fail with `fail_next`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import datetime, UTC
from decimal import Decimal
from typing import Any

from exchanges import registry
from exchanges.base import (
    Balance,
    Capabilities,
    CheckItem,
    Connector,
    Market,
    OrderRequest,
    Ticker,
    VenueConfig,
    VenueOrder,
    VenuePosition,
)
from exchanges.errors import TemporaryError, VenueError
from exchanges.paper import DEFAULT_MARKETS, InMemoryPaperStore, PaperConfig, PaperVenue


class _Prices:
    """Settable prices stamped with the wall clock (the engine's staleness checks use real time)."""

    def __init__(self) -> None:
        self.quotes: dict[str, Decimal] = {}

    def ticker(self, symbol: str) -> Ticker:
        if symbol not in self.quotes:
            raise TemporaryError(f"no price for {symbol}", venue="memory")
        return Ticker(symbol=symbol, price=self.quotes[symbol], time=datetime.now(UTC))


class MemoryVenue(Connector):
    """A live-looking venue in memory; every public call is counted in `calls` and can be made to fail."""

    def __init__(self, *, venue: str = "coinbase", cash: str = "100000", quote_asset: str = "USD",
                 markets: Sequence[Market] = DEFAULT_MARKETS, fee_bps: str = "0") -> None:
        self.capabilities = Capabilities(venue=venue, live=True)
        self.prices = _Prices()
        fee = Decimal(fee_bps) / 10000
        markets = tuple(Market(**{**m.__dict__, "taker_fee": fee, "maker_fee": fee}) for m in markets)
        self.paper = PaperVenue(store=InMemoryPaperStore(Decimal(cash)), prices=self.prices,
                                config=PaperConfig(markets=markets, quote_asset=quote_asset))
        self.quote_asset = quote_asset
        self.verify_items: list[CheckItem] = [CheckItem("signature accepted", True, "a signed read was accepted"),
                                              CheckItem("permissions", True, "trade, no transfer")]
        self.calls: list[str] = []
        self.configs: list[VenueConfig] = []
        self._failures: list[tuple[str | None, BaseException]] = []
        self._dropped: list[tuple[str, BaseException]] = []
        self._lookup_lag = 0
        self._hooks: list[tuple[str, Callable[[], object]]] = []
        self._lock = threading.Lock()

    # -- test controls ------------------------------------------------------------------------------------

    def set_price(self, symbol: str, price: Decimal | str) -> None:
        """Move a market; the venue works its resting orders at once, as a real venue does."""
        self.prices.quotes[symbol] = Decimal(price)
        self.paper.match(symbol)

    def fail_next(self, exc: BaseException, *, call: str | None = None, times: int = 1) -> None:
        """Raise `exc` from the next `times` calls (of `call` only, when given)."""
        with self._lock:
            self._failures.extend([(call, exc)] * times)

    def recover(self) -> None:
        """Forget every planned failure: the venue answers normally again."""
        with self._lock:
            self._failures.clear()
            self._dropped.clear()

    def drop_reply_next(self, exc: BaseException, *, call: str = "create_order", times: int = 1) -> None:
        """Let the next `times` calls of `call` take effect on the venue, then raise `exc` (the reply was lost)."""
        with self._lock:
            self._dropped.extend([(call, exc)] * times)

    def on_next(self, call: str, action: Callable[[], object]) -> None:
        """Run `action` when `call` is next made, before it answers (another process acting meanwhile)."""
        with self._lock:
            self._hooks.append((call, action))

    def lag_lookups(self, times: int) -> None:
        """The next `times` lookups by client id answer "not found" (a venue whose reads lag its acceptance)."""
        with self._lock:
            self._lookup_lag += times

    def _lost(self, call: str) -> None:
        with self._lock:
            for i, (name, exc) in enumerate(self._dropped):
                if name == call:
                    del self._dropped[i]
                    raise exc

    def _enter(self, call: str) -> None:
        with self._lock:
            self.calls.append(call)
            hooks = [action for name, action in self._hooks if name == call]
            self._hooks = [(name, action) for name, action in self._hooks if name != call]
            for i, (name, exc) in enumerate(self._failures):
                if name is None or name == call:
                    del self._failures[i]
                    raise exc
        for action in hooks:
            action()

    # -- the connector interface ----------------------------------------------------------------------------

    def markets(self) -> Sequence[Market]:
        self._enter("markets")
        return self.paper.markets()

    def balances(self) -> Sequence[Balance]:
        self._enter("balances")
        cash = list(self.paper.balances())
        if self.capabilities.positions:
            return cash
        # A spot venue: what the account holds of each coin is a balance too.
        markets = {m.symbol: m for m in self.paper.markets()}
        return cash + [Balance(markets[p.symbol].base, free=p.quantity, total=p.quantity)
                       for p in self.paper.positions()]

    def ticker(self, symbol: str) -> Ticker:
        self._enter("ticker")
        return self.paper.ticker(symbol)

    def create_order(self, request: OrderRequest) -> VenueOrder:
        self._enter("create_order")
        order = self.paper.create_order(request)
        self._lost("create_order")
        return order

    def cancel_order(self, symbol: str, venue_order_id: str) -> VenueOrder:
        self._enter("cancel_order")
        order = self.paper.cancel_order(symbol, venue_order_id)
        self._lost("cancel_order")
        return order

    def fetch_order(self, symbol: str, venue_order_id: str) -> VenueOrder:
        self._enter("fetch_order")
        return self.paper.fetch_order(symbol, venue_order_id)

    def fetch_order_by_client_id(self, symbol: str, client_order_id: str) -> VenueOrder | None:
        self._enter("fetch_order_by_client_id")
        with self._lock:
            if self._lookup_lag > 0:
                self._lookup_lag -= 1
                return None
        return self.paper.fetch_order_by_client_id(symbol, client_order_id)

    def open_orders(self, symbol: str | None = None) -> Sequence[VenueOrder]:
        self._enter("open_orders")
        return self.paper.open_orders(symbol)

    def positions(self) -> Sequence[VenuePosition]:
        self._enter("positions")
        return self.paper.positions()

    def set_leverage(self, symbol: str, leverage: Decimal) -> None:
        self._enter("set_leverage")
        self.paper.set_leverage(symbol, leverage)

    def verify(self) -> Sequence[CheckItem]:
        self._enter("verify")
        return list(self.verify_items)


def install(monkeypatch: Any, venue: MemoryVenue | Callable[[VenueConfig], Connector],
            name: str | None = None) -> None:
    """Register a memory venue (or any builder) under a live venue name for this test only."""
    if isinstance(venue, MemoryVenue):
        memory = venue

        def build(config: VenueConfig) -> Connector:
            memory.configs.append(config)
            return memory

        builder: Callable[[VenueConfig], Connector] = build
        name = name or memory.capabilities.venue
    else:
        builder = venue
        if name is None:
            raise ValueError("a builder needs a venue name")
    # registry.register has no "unregister": setitem first records what was there, so the end of the test
    # restores it; then the public registration.
    monkeypatch.setitem(registry._LIVE, name, builder)
    registry.register(name, builder)


def failing_builder(exc: BaseException) -> Callable[[VenueConfig], Connector]:
    """A builder that refuses to build (bad or missing credentials)."""

    def build(config: VenueConfig) -> Connector:
        raise exc

    return build


__all__ = ["MemoryVenue", "install", "failing_builder", "VenueError"]
