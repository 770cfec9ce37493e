"""Exact money columns, snapshots, the paper/live wall, and the admin pages."""

from __future__ import annotations

from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
from django.test import Client

from exchanges import registry
from exchanges.errors import LiveVenueForbiddenError
from trading import services
from trading.execution import signal_process
from trading.intake import signal_create
from trading.fields import ExactDecimalField
from trading.models import EquitySnapshot, Order, Signal, Strategy

pytestmark = pytest.mark.django_db


def test_money_is_exact_on_sqlite_too() -> None:
    field = ExactDecimalField()
    sqlite = SimpleNamespace(vendor="sqlite")
    value = Decimal("12345678901234567890.123456789012345678")
    stored = field.get_db_prep_value(value, sqlite)
    assert stored == "12345678901234567890.123456789012345678" and field.db_type(sqlite) == "text"
    assert field.from_db_value(stored, None, sqlite) == value
    assert field.from_db_value("100.000000000000000000", None, sqlite) == Decimal("100")


def test_money_round_trips_through_postgres_to_the_last_digit(make_account) -> None:
    account = make_account(paper_initial_cash="12345678901234567890.123456789012345678")
    account.refresh_from_db()
    assert account.cash == Decimal("12345678901234567890.123456789012345678")


def test_paper_network_can_never_build_a_live_venue() -> None:
    for venue in ("coinbase", "hyperliquid", "synthetix", "paper"):
        with pytest.raises(LiveVenueForbiddenError):
            registry.build(venue=venue, network="paper", credentials={})


def test_equity_snapshot_books_realized_and_unrealized(make_account, make_strategy, set_price) -> None:
    account = make_account()
    strategy = make_strategy(account, sizing_value="1")
    set_price("BTC/USD", "1000")
    signal, _ = signal_create(strategy=strategy, source="manual", idempotency_key="snap", action="open_long",
                                     enqueue=False)
    signal_process(signal_id=signal.pk)
    set_price("BTC/USD", "1100")
    assert services.equity_snapshot_take() == 2
    total = EquitySnapshot.objects.get(account=account, strategy=None)
    fee = Decimal("1000") * Decimal("0.0005")
    assert total.unrealized_pnl == Decimal("100") and total.realized_pnl == -fee
    assert total.equity == Decimal("10000") - fee + Decimal("100")
    assert EquitySnapshot.objects.get(strategy=strategy).equity == Decimal("100") - fee


def test_admin_pages_render_and_state_rows_are_read_only(admin_client: Client, make_account, make_strategy,
                                                         set_price) -> None:
    strategy = make_strategy(make_account())
    set_price("BTC/USD", "50000")
    signal, _ = signal_create(strategy=strategy, source="manual", idempotency_key="adm", action="open_long",
                                     enqueue=False)
    signal_process(signal_id=signal.pk)
    for model in ("venueaccount", "strategy", "signal", "order", "fill", "position", "equitysnapshot",
                  "marketprice", "auditevent", "killswitch"):
        assert admin_client.get(f"/admin/trading/{model}/").status_code == 200, model
    order = Order.objects.get()
    assert admin_client.get(f"/admin/trading/order/{order.pk}/change/").status_code == 200
    response = admin_client.post(f"/admin/trading/order/{order.pk}/change/", {"status": "canceled"})
    assert response.status_code == 403
    assert Order.objects.get().status == Order.Status.FILLED
    assert admin_client.get("/admin/trading/signal/add/").status_code == 403
    assert Signal.objects.count() == 1


def test_admin_strategy_form_shows_errors_per_field_and_saves_nothing(admin_client: Client, make_account) -> None:
    account = make_account()
    response = admin_client.post("/admin/trading/strategy/add/", {
        "name": "bad", "slug": "bad", "kind": "webhook", "symbol": "NOPE/USD", "timeframe": "1m", "params": "{}",
        "account": account.pk, "mode": "paper", "sizing_mode": "risk", "sizing_value": "150",
        "stop_loss_mode": "none", "take_profit_mode": "none", "leverage": "1",
    })
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert {"symbol", "sizing_value", "stop_loss_mode"} <= set(errors)
    assert Strategy.objects.count() == 0


def test_the_admin_never_shows_an_api_token(admin_client: Client, django_user_model: Any) -> None:
    """DRF's stock token admin showed every user's full key to any staff user (the key was the row's primary key,
    so it was in every link): now only a digest is stored, and the admin shows a token's 8-character prefix."""
    token, key = services.api_token_create(user=django_user_model.objects.create_user("bob", password="x" * 20),
                                           by="test")
    index = admin_client.get("/admin/")
    assert index.status_code == 200 and "tokenproxy" not in index.content.decode().lower()
    for path in ("/admin/knox/authtoken/", f"/admin/knox/authtoken/{token.pk}/change/", "/admin/authtoken/tokenproxy/"):
        response = admin_client.get(path)
        assert response.status_code in (200, 302, 404) and key not in response.content.decode(), path
    assert key[:8] in admin_client.get("/admin/knox/authtoken/").content.decode()


def test_deleting_in_the_admin_leaves_an_audit_row(admin_client: Client, make_account: Any) -> None:
    from trading.models import AuditEvent, VenueAccount

    account = make_account()
    response = admin_client.post(f"/admin/trading/venueaccount/{account.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302 and not VenueAccount.objects.filter(pk=account.pk).exists()
    other = make_account()
    response = admin_client.post("/admin/trading/venueaccount/", {
        "action": "delete_selected", "_selected_action": [other.pk], "post": "yes"})
    assert response.status_code == 302 and not VenueAccount.objects.filter(pk=other.pk).exists()
    for pk in (account.pk, other.pk):
        event = AuditEvent.objects.get(action="venueaccount.deleted", entity_id=str(pk))
        assert event.actor.startswith("admin:")
