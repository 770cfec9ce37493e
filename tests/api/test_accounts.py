"""Venue accounts: staff write and see credential variables (masked); everyone else reads the rest."""

from __future__ import annotations

from typing import Any

import pytest

from trading.models import AuditEvent, VenueAccount


@pytest.fixture
def live_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CB_MAIN_API_KEY", "organizations/abc/apiKeys/key-1234abcd")
    monkeypatch.setenv("CB_MAIN_API_SECRET", "-----BEGIN EC PRIVATE KEY-----zzzzWXYZ")
    monkeypatch.setenv("CB_MAIN_PIN", "short")


def test_staff_creates_an_account_and_sees_masked_credentials(api: Any, live_env: None) -> None:
    response = api.post("/api/accounts/", {"name": "cb", "venue": "coinbase", "network": "testnet",
                                           "credentials_env": "CB_MAIN", "max_leverage": "2"}, format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["credentials_env"] == "CB_MAIN"
    assert body["credentials"] == {"API_KEY": "****abcd", "API_SECRET": "****WXYZ", "PIN": "****"}
    assert "key-1234abcd" not in response.content.decode() and "PRIVATE" not in response.content.decode()
    assert AuditEvent.objects.filter(action="account.created", actor="api:admin").exists()


def test_non_staff_reads_accounts_without_credentials(user_api: Any, make_account: Any, live_env: None) -> None:
    account = make_account()
    body = user_api.get(f"/api/accounts/{account.pk}/").json()
    assert body["name"] == account.name and body["cash"] == "10000"
    assert body["credentials_env"] is None and body["credentials"] is None
    assert user_api.get("/api/accounts/").json()["results"][0]["credentials"] is None


def test_non_staff_cannot_create_or_update_accounts(user_api: Any, make_account: Any) -> None:
    account = make_account()
    assert user_api.post("/api/accounts/", {"name": "x"}, format="json").status_code == 403
    assert user_api.patch(f"/api/accounts/{account.pk}/", {"name": "y"}, format="json").status_code == 403


def test_account_errors_per_field(api: Any, make_account: Any) -> None:
    response = api.post("/api/accounts/", {"name": "cb", "venue": "coinbase", "network": "paper",
                                           "credentials_env": "lower-case", "max_leverage": "abc"}, format="json")
    assert response.status_code == 400
    assert set(response.json()) >= {"max_leverage"}
    response = api.post("/api/accounts/", {"name": "cb", "venue": "coinbase", "network": "paper",
                                           "credentials_env": "lower-case"}, format="json")
    assert set(response.json()) >= {"network", "credentials_env"}
    account = make_account()
    moved = api.patch(f"/api/accounts/{account.pk}/", {"venue": "coinbase"}, format="json")
    assert moved.status_code == 400 and "venue" in moved.json()


def test_update_account_and_404(api: Any, make_account: Any) -> None:
    account = make_account()
    response = api.patch(f"/api/accounts/{account.pk}/", {"daily_loss_limit": "250"}, format="json")
    assert response.status_code == 200 and response.json()["daily_loss_limit"] == "250"
    assert api.patch("/api/accounts/999999/", {"name": "y"}, format="json").status_code == 404
    assert api.get("/api/accounts/999999/").status_code == 404


def test_the_api_names_the_feed_and_refuses_one_for_a_live_account(api: Any) -> None:
    made = api.post("/api/accounts/", {"name": "hl-paper", "price_feed": "hyperliquid"}, format="json")
    assert made.status_code == 201 and made.json()["price_feed"] == "hyperliquid"
    before = VenueAccount.objects.count()
    refused = api.post("/api/accounts/", {"name": "live", "venue": "coinbase", "network": "mainnet",
                                          "credentials_env": "CB", "price_feed": "hyperliquid"}, format="json")
    assert refused.status_code == 400 and "price_feed" in refused.json()
    unknown = api.post("/api/accounts/", {"name": "x", "price_feed": "nasdaq"}, format="json")
    assert unknown.status_code == 400 and "price_feed" in unknown.json()
    assert VenueAccount.objects.count() == before
