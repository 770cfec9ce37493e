"""Connectors for public market data (`registry.build_public`): no credentials, the venue's public endpoints only,
and every private call refused before anything is sent."""

from __future__ import annotations

import pytest

from exchanges import registry
from exchanges.errors import AuthError, VenueError
from exchanges.hyperliquid import INTERVALS
from tests.fakes.coinbase_venue import CoinbaseFake
from tests.fakes.hyperliquid_venue import HyperliquidFake


def test_a_public_hyperliquid_connector_reads_markets_and_refuses_account_calls_unsent() -> None:
    with HyperliquidFake() as fake:
        connector = registry.build_public(venue="hyperliquid", network="mainnet", endpoint=fake.url)
        assert fake.requests() == []  # building sends nothing
        assert connector.market("BTC/USDC:USDC").base == "BTC"
        sent = len(fake.requests())
        with pytest.raises(AuthError):
            connector.balances()
        assert len(fake.requests()) == sent
    assert connector.capabilities.timeframes == INTERVALS and type(connector).__name__ == "ResilientConnector"


def test_a_public_coinbase_connector_uses_public_endpoints_only_and_refuses_private_calls_unsent() -> None:
    with CoinbaseFake() as fake:
        connector = registry.build_public(venue="coinbase", network="mainnet", endpoint=fake.url)
        assert connector.market("BTC/USD").quote == "USD"
        assert connector.candles("BTC/USD", "1h", limit=3)
        with pytest.raises(AuthError):
            connector.balances()
        paths = [r.path for r in fake.requests()]
        assert paths and all("/brokerage/market/" in p for p in paths), paths
        assert all("authorization" not in r.headers for r in fake.requests())
    assert "4h" not in (connector.capabilities.timeframes or ())


def test_a_venue_without_public_market_data_says_so() -> None:
    with pytest.raises(VenueError, match="synthetix serves no public market data"):
        registry.build_public(venue="synthetix", network="testnet")
    with pytest.raises(VenueError, match="no public market data for venue 'paper'"):
        registry.build_public(venue="paper", network="mainnet")
    with pytest.raises(VenueError, match="Coinbase Advanced Trade has no test network"):
        registry.build_public(venue="coinbase", network="testnet")
