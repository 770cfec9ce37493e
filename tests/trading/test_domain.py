"""Value types of the trading core (trading/domain.py)."""

from __future__ import annotations

from decimal import Decimal as D

from exchanges.base import Market
from trading.domain import MarketRules


def test_market_rules_from_a_venue_market_keep_every_sizing_rule() -> None:
    market = Market(symbol="ETH/USDC:USDC", base="ETH", quote="USDC", tick_size=D("0.1"), lot_size=D("0.001"),
                    min_qty=D("0.002"), min_notional=D("10"), max_leverage=D("25"), kind="perp",
                    maker_fee=D("0.0002"), taker_fee=D("0.0005"))
    assert MarketRules.from_market(market) == MarketRules(
        symbol="ETH/USDC:USDC", lot_size=D("0.001"), min_qty=D("0.002"), tick_size=D("0.1"), min_notional=D("10"),
        max_leverage=D("25"))
