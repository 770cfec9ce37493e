"""The connector contract, run against the paper venue on several of its default markets."""

from __future__ import annotations

from decimal import Decimal

import pytest

from exchanges.paper import DEFAULT_MARKETS, InMemoryPaperStore, PaperConfig, PaperVenue
from tests.exchanges.contract import ConnectorContract, ContractVenue
from tests.exchanges.fakes import FakePrices

PRICES = {
    "BTC/USD": "43210.55",
    "ETH/USD": "2345.67",
    "SOL/USD": "98.765",
    "ETH/BTC": "0.05431234",
    "BTC-PERP": "43215.3",
    "XRP/USDT:USDT": "0.6123",
}


class TestPaperConnectorContract(ConnectorContract):
    @pytest.fixture(params=["BTC/USD", "ETH/BTC", "BTC-PERP", "XRP/USDT:USDT"])
    def venue(self, request: pytest.FixtureRequest) -> ContractVenue:
        prices = FakePrices()
        for priced, price in PRICES.items():
            prices.set(priced, price)
        paper = PaperVenue(
            store=InMemoryPaperStore(Decimal("1000000")),
            prices=prices,
            config=PaperConfig(markets=DEFAULT_MARKETS, slippage_bps=Decimal("5")),
            clock=prices.clock,
        )

        def set_price(symbol: str, price: Decimal) -> None:
            prices.set(symbol, price)
            paper.match(symbol)

        symbol: str = request.param
        return ContractVenue(connector=paper, symbol=symbol, price=Decimal(PRICES[symbol]), set_price=set_price)
