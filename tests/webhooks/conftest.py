"""Webhook fixtures: a strategy with a known secret, a market price, and a poster through the test client."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

URL = "/api/webhooks/tradingview/"


@dataclass
class Hook:
    strategy: Any
    secret: str

    def body(self, **fields: Any) -> dict[str, Any]:
        data = {"passphrase": self.secret, "strategy": self.strategy.slug, "action": "buy", "ticker": "BTCUSD",
                "time": timezone.now().strftime("%Y-%m-%dT%H:%M:%SZ")}
        data.update(fields)
        return {k: v for k, v in data.items() if v is not None}


@pytest.fixture(autouse=True)
def _generous_limits(settings: Any) -> None:
    settings.WEBHOOK_RATE_LIMIT_PER_IP = 10**9
    settings.WEBHOOK_RATE_LIMIT_PER_STRATEGY = 10**9


@pytest.fixture
def make_hook(make_account: Callable[..., Any], make_strategy: Callable[..., Any],
              set_price: Callable[..., None]) -> Callable[..., Hook]:
    """A started strategy with a fresh webhook secret; the market price of its symbol is set."""
    from trading import services

    def make(symbol: str = "BTC/USD", price: str = "50000", account: dict[str, Any] | None = None,
             **overrides: Any) -> Hook:
        strategy = make_strategy(make_account(**(account or {})), symbol=symbol, **overrides)
        set_price(symbol, price)
        return Hook(strategy, services.strategy_webhook_secret_rotate(strategy=strategy, by="test"))

    return make


@pytest.fixture
def post() -> Callable[..., Any]:
    """POST a body (dict → JSON, str/bytes as is) to the webhook; return the response."""
    client = Client()

    def send(body: Any, content_type: str = "application/json", url: str = URL, **extra: Any) -> Any:
        raw = json.dumps(body) if isinstance(body, dict) else body
        return client.post(url, data=raw, content_type=content_type, **extra)

    return send
