"""Numbers past what a column holds, over-precise decimals, non-ASCII digits and deeply nested JSON: each is a 400
naming the field that changes nothing, never a 500 and never a silent change of the value (found by an audit:
each case below answered 500 or stored something else before)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from tests.api.test_strategies import _data
from trading.models import AuditEvent, Strategy, VenueAccount

TOO_LARGE = ["1e30", "1e400", "1" + "0" * 39, 10**40, "100000000000000000000"]
TOO_PRECISE = ["1e-19", "0.0000000000000000001"]
@pytest.fixture
def staff_client(staff: Any) -> Client:
    client = Client()
    client.force_login(staff)
    return client


NOT_ASCII_DECIMALS = ["１２", "٣", "1_0", "+1", " 1 ", "1e3", "NaN", "Infinity", "-0x1"]


@pytest.mark.parametrize("value", TOO_LARGE + TOO_PRECISE + NOT_ASCII_DECIMALS)
def test_strategy_money_out_of_the_column_is_a_400_naming_it(api: Any, make_account: Any, value: Any) -> None:
    account = make_account()
    audits = AuditEvent.objects.count()
    response = api.post("/api/strategies/", _data(account, sizing_value=value), format="json")
    assert response.status_code == 400, response.content
    assert list(response.json()) == ["sizing_value"], response.json()
    assert not Strategy.objects.exists() and AuditEvent.objects.count() == audits
    validated = api.post("/api/strategies/validate/", _data(account, sizing_value=value), format="json")
    assert validated.status_code == 400 or validated.json()["valid"] is False, validated.content


def test_an_over_precise_edit_is_refused_not_stored_as_zero(api: Any, make_account: Any, make_strategy: Any) -> None:
    strategy = make_strategy(make_account())
    before = Strategy.objects.get(pk=strategy.pk).sizing_value
    for value in TOO_PRECISE + TOO_LARGE[:2]:
        response = api.patch(f"/api/strategies/{strategy.pk}/", {"sizing_value": value}, format="json")
        assert response.status_code == 400 and "sizing_value" in response.json(), (value, response.content)
    assert Strategy.objects.get(pk=strategy.pk).sizing_value == before
    # the largest and the finest values a column holds are taken as they are
    for value in ("99999999999999999999", "0.000000000000000001"):
        response = api.patch(f"/api/strategies/{strategy.pk}/", {"sizing_value": value}, format="json")
        assert response.status_code == 200, response.content
        assert Strategy.objects.get(pk=strategy.pk).sizing_value == Decimal(value)


@pytest.mark.parametrize("field,value", [
    ("max_open_positions", 2**63), ("max_open_positions", 2**31), ("paper_initial_cash", "1e21"),
    ("max_symbol_exposure", "1e30"), ("daily_loss_limit", "1" + "0" * 40), ("max_leverage", "1e-19"),
    ("paper_slippage_bps", "1e-400"),
])
def test_account_numbers_out_of_their_column_are_a_400(api: Any, field: str, value: Any) -> None:
    response = api.post("/api/accounts/", {"name": "acct", field: value}, format="json")
    assert response.status_code == 400, response.content
    assert list(response.json()) == [field], response.json()
    assert not VenueAccount.objects.filter(name="acct").exists()


@pytest.mark.parametrize("path", ["/api/orders/?strategy={}", "/api/orders/?account={}", "/api/signals/?strategy={}",
                                  "/api/pnl/equity/?account={}", "/api/pnl/equity/?strategy={}"])
def test_an_id_filter_past_64_bits_is_a_400(api: Any, path: str) -> None:
    response = api.get(path.format(2**64))
    assert response.status_code == 400, response.content
    assert set(response.json()) & {"strategy", "account"}, response.json()


def test_json_nested_past_the_recursion_limit_is_a_400(api: Any, make_account: Any) -> None:
    body = '{"name": ' + "[" * 5000 + "]" * 5000 + "}"
    response = api.post("/api/strategies/", body, content_type="application/json")
    assert response.status_code == 400 and "nested too deeply" in response.json()["detail"], response.content
    assert not Strategy.objects.exists()


def test_the_largest_cash_an_account_holds_renders_on_the_dashboard(api: Any, staff_client: Client) -> None:
    response = api.post("/api/accounts/", {"name": "big", "paper_initial_cash": "99999999999999999999.99"},
                        format="json")
    assert response.status_code == 201, response.content
    for page in ("dashboard-overview", "dashboard-accounts"):
        assert staff_client.get(reverse(page)).status_code == 200, page


@pytest.mark.parametrize("field,value", [("account", "²"), ("account", str(2**64)), ("sizing_value", "1e30"),
                                         ("sizing_value", "1e-19"), ("params", "[" * 100_000)])
def test_the_strategy_form_answers_400_for_what_the_api_refuses(staff_client: Client, make_account: Any, field: str,
                                                                value: str) -> None:
    account = make_account()
    form = {"name": "Trend", "slug": "trend", "kind": "webhook", "account": str(account.pk), "mode": "paper",
            "symbol": "BTC/USD", "timeframe": "1m", "params": "{}", "sizing_mode": "notional", "sizing_value": "100",
            "stop_loss_mode": "none", "take_profit_mode": "none", "leverage": "1", field: value}
    response = staff_client.post(reverse("dashboard-strategy-create"), form)
    assert response.status_code == 400, (field, response.status_code)
    assert not Strategy.objects.exists()


@pytest.mark.parametrize("body,field", [
    ({"quote_asset": "ß" * 16}, "quote_asset"), ({"quote_asset": "US D"}, "quote_asset"),
    ({"market_leverage_caps": {"x" * 10_000: "2"}}, "market_leverage_caps"),
    ({"market_leverage_caps": {"BTC/USD; DROP": "2"}}, "market_leverage_caps"),
])
def test_account_codes_and_cap_keys_are_checked(api: Any, body: dict[str, Any], field: str) -> None:
    response = api.post("/api/accounts/", {"name": "acct", **body}, format="json")
    assert response.status_code == 400 and list(response.json()) == [field], response.content
    assert not VenueAccount.objects.filter(name="acct").exists()
    fine = api.post("/api/accounts/", {"name": "ok", "quote_asset": "usdc",
                                       "market_leverage_caps": {"BTC-PERP": "3", "ETH/USD": "2"}}, format="json")
    assert fine.status_code == 201 and fine.json()["quote_asset"] == "USDC", fine.content
