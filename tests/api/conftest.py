"""API fixtures: token clients for a staff user and a plain user, and a small book of rows to read."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient


@pytest.fixture
def staff(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("admin", password="pw-admin-123", is_staff=True)


@pytest.fixture
def user(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("viewer", password="pw-viewer-123")


def api_key(user: Any) -> str:
    """A new API token's key for `user` (only its digest is stored)."""
    from trading import services

    return str(services.api_token_create(user=user, by="test")[1])


def token_client(user: Any, key: str | None = None) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key or api_key(user)}")
    return client


@pytest.fixture
def staff_key(staff: Any) -> str:
    """The staff user's API token key."""
    return api_key(staff)


@pytest.fixture
def api(staff: Any, staff_key: str) -> APIClient:
    """A client authenticated as staff with a token."""
    return token_client(staff, staff_key)


@pytest.fixture
def user_api(user: Any) -> APIClient:
    """A client authenticated as a non-staff user with a token."""
    return token_client(user)


@dataclass
class Book:
    account: Any
    strategy: Any
    signals: list[Any]
    orders: list[Any]
    positions: list[Any]


@pytest.fixture
def make_book(make_account: Callable[..., Any], make_strategy: Callable[..., Any]) -> Callable[[int], Book]:
    """n signals each with one order, n positions (one flat), n equity snapshots, n backtest runs."""
    from strategies.models import BacktestRun
    from trading.models import EquitySnapshot, Order, Position, Signal

    def make(n: int = 7) -> Book:
        account = make_account()
        strategies = [make_strategy(account, symbol="BTC/USD") for _ in range(n)]
        now = timezone.now()
        signals, orders, positions = [], [], []
        for i in range(n):
            strategy = strategies[i]
            signal = Signal.objects.create(
                strategy=strategy, account=account, source="webhook", idempotency_key=uuid.uuid4().hex,
                action="open_long", symbol="BTC/USD", status="executed", decision_rule="accepted",
                decision_detail="ok", received_at=now - timedelta(seconds=i + 1),
                accepted_at=now - timedelta(seconds=i + 1) + timedelta(milliseconds=5),
            )
            signals.append(signal)
            orders.append(Order.objects.create(
                client_order_id=uuid.uuid4().hex, account=account, strategy=strategy, signal=signal,
                symbol="BTC/USD", side="buy", quantity=Decimal("0.1"), status="new",
                created_at=now - timedelta(seconds=i), updated_at=now,
            ))
            positions.append(Position.objects.create(
                account=account, strategy=strategy, symbol="BTC/USD", quantity=Decimal("0.1") if i else Decimal(0),
                cost_basis=Decimal("5000") if i else Decimal(0), average_entry=Decimal("50000") if i else None,
                realized_pnl=Decimal("10"), fees_paid=Decimal("1.5"), updated_at=now,
            ))
            EquitySnapshot.objects.create(account=account, time=now - timedelta(minutes=n - i), equity=Decimal("10000"),
                                          cash=Decimal("10000"), realized_pnl=Decimal(0), unrealized_pnl=Decimal(0))
            BacktestRun.objects.create(kind="rsi", symbol="BTC/USD", created_at=now, metrics={"trades": i},
                                       trades=[{"i": i}])
        return Book(account, strategies[0], signals, orders, positions)

    return make
