"""A strategy on a paper account priced by a venue's feed names one of that venue's markets: any other symbol is
refused at creation on `symbol` with a 400, and so is every symbol while the venue cannot be reached and none of its
markets are stored yet (never a 500)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from exchanges import registry
from exchanges.resilience import RetryPolicy
from tests.fakes.hyperliquid_venue import HyperliquidFake
from trading import services
from trading.models import Strategy

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "RETRY_POLICY", RetryPolicy(max_attempts=2, base_delay=0.001, max_delay=0.002))


@pytest.fixture
def hl_paper(settings: Any) -> Iterator[Any]:
    with HyperliquidFake(mainnet=True) as fake:
        settings.PUBLIC_ENDPOINTS = {**settings.PUBLIC_ENDPOINTS, "hyperliquid": fake.url}
        yield services.account_create(data={"name": "hl paper", "venue": "paper", "network": "paper",
                                            "price_feed": "hyperliquid"}, by="test")


def _strategy(account: Any, symbol: str) -> dict[str, Any]:
    return {"name": "t", "slug": "t", "kind": "webhook", "symbol": symbol, "account": account.pk, "mode": "paper",
            "sizing_mode": "notional", "sizing_value": "100"}


def test_a_symbol_hyperliquid_lacks_is_refused_on_symbol(api: Any, hl_paper: Any) -> None:
    refused = api.post("/api/strategies/", _strategy(hl_paper, "BTC/USD"), format="json")
    assert refused.status_code == 400
    assert refused.json() == {"symbol": ["unknown market 'BTC/USD': paper trades hyperliquid's markets "
                                         "(ARB/USDC:USDC, AVAX/USDC:USDC, BNB/USDC:USDC, BTC/USDC:USDC, "
                                         "DOGE/USDC:USDC, ...)"]}
    assert not Strategy.objects.exists()
    made = api.post("/api/strategies/", _strategy(hl_paper, "BTC/USDC:USDC"), format="json")
    assert made.status_code == 201, made.json()


def test_with_the_venue_unreachable_and_nothing_stored_creation_is_a_400_on_symbol(api: Any, settings: Any) -> None:
    with HyperliquidFake(mainnet=True) as fake:
        gone = fake.url  # nothing listens there any more
    settings.PUBLIC_ENDPOINTS = {**settings.PUBLIC_ENDPOINTS, "hyperliquid": gone}
    account = services.account_create(data={"name": "hl paper", "venue": "paper", "network": "paper",
                                            "price_feed": "hyperliquid"}, by="test")
    refused = api.post("/api/strategies/", _strategy(account, "BTC/USDC:USDC"), format="json")
    assert refused.status_code == 400
    (message,) = refused.json()["symbol"]
    assert message.startswith("the markets of the hyperliquid price feed cannot be loaded from its venue and none "
                              "are stored yet (")
    assert list(refused.json()) == ["symbol"] and not Strategy.objects.exists()
