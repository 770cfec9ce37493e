"""Fixtures of the dashboard tests: logged-in clients (staff and not) and a populated book."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone


@pytest.fixture
def staff_user(db: Any) -> Any:
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_user("boss", "boss@localhost", "boss-password-1", is_staff=True,
                                                is_superuser=True)


@pytest.fixture
def plain_user(db: Any) -> Any:
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_user("viewer", "viewer@localhost", "viewer-password-1")


@pytest.fixture
def staff_client(client: Any, staff_user: Any) -> Any:
    client.force_login(staff_user)
    return client


@pytest.fixture
def plain_client(db: Any, plain_user: Any) -> Any:
    from django.test import Client

    c = Client()
    c.force_login(plain_user)
    return c


@pytest.fixture
def book(make_account: Callable[..., Any], make_strategy: Callable[..., Any],
         set_price: Callable[..., None]) -> Callable[[int], dict[str, Any]]:
    """Populate n strategies, each with a signal, an order, a fill, an open position and a snapshot; n runs."""
    from strategies.models import BacktestRun
    from trading.models import EquitySnapshot, Fill, Order, Position, Signal, Strategy

    def populate(n: int) -> dict[str, Any]:
        account = make_account()
        set_price("BTC/USD", "50000")
        now = timezone.now()
        first = make_strategy(account)
        strategies = [first] + Strategy.objects.bulk_create([
            Strategy(name=f"bulk {i}", slug=f"bulk-{uuid.uuid4().hex[:10]}", symbol="BTC/USD", account=account,
                     sizing_mode="quantity", sizing_value=Decimal("0.1"), status="active")
            for i in range(n - 1)
        ])
        signals = Signal.objects.bulk_create([
            Signal(strategy=s, account=account, source="webhook", idempotency_key=f"k-{uuid.uuid4().hex}",
                   action="open_long", symbol="BTC/USD", received_at=now - timedelta(seconds=5), status="executed",
                   decision_rule="ok", accepted_at=now - timedelta(seconds=4), submitted_at=now - timedelta(seconds=4),
                   acknowledged_at=now - timedelta(seconds=3), filled_at=now - timedelta(seconds=3))
            for s in strategies
        ])
        orders = Order.objects.bulk_create([
            Order(client_order_id=uuid.uuid4().hex, account=account, strategy=s, signal=sig, symbol="BTC/USD",
                  side="buy", quantity=Decimal("0.1"), status="filled", filled_quantity=Decimal("0.1"),
                  average_fill_price=Decimal("49000"), fees=Decimal("1.5"), created_at=now, updated_at=now)
            for s, sig in zip(strategies, signals)
        ])
        Fill.objects.bulk_create([
            Fill(order=o, account=account, strategy=o.strategy, symbol="BTC/USD", side="buy", venue_fill_id="f1",
                 quantity=Decimal("0.1"), price=Decimal("49000"), fee=Decimal("1.5"), time=now, recorded_at=now)
            for o in orders
        ])
        Position.objects.bulk_create([
            Position(account=account, strategy=s, symbol="BTC/USD", quantity=Decimal("0.1"),
                     cost_basis=Decimal("4900"), average_entry=Decimal("49000"), fees_paid=Decimal("1.5"),
                     opened_at=now, updated_at=now)
            for s in strategies
        ])
        EquitySnapshot.objects.bulk_create(
            [EquitySnapshot(account=account, time=now - timedelta(minutes=m), equity=Decimal("10000") + m,
                            cash=Decimal("10000"), realized_pnl=Decimal("0"), unrealized_pnl=Decimal(m))
             for m in range(3)]
            + [EquitySnapshot(account=account, strategy=s, time=now, equity=Decimal("99"), cash=Decimal("10000"),
                              realized_pnl=Decimal("0"), unrealized_pnl=Decimal("99")) for s in strategies])
        runs = BacktestRun.objects.bulk_create([
            BacktestRun(kind="rsi", symbol="ETH/BTC", status="done", progress=1.0, created_at=now,
                        metrics={"total_return": 0.05, "max_drawdown": -0.02, "trades": 1},
                        trades=[{"entry_time": 1_700_000_000_000, "exit_time": 1_700_000_600_000, "side": "long",
                                 "quantity": "1", "entry_price": "0.05", "exit_price": "0.051", "fees": "0.0001",
                                 "pnl": "0.0009", "exit_reason": "signal"}])
            for _ in range(n)
        ])
        return {"account": account, "strategies": strategies, "signals": signals, "orders": orders, "runs": runs}

    return populate
