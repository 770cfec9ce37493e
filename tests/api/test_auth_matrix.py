"""Who may call what: tokens, sessions with CSRF, removed users, staff-only endpoints, wrong methods."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from tests.api.conftest import api_key
from trading.models import KillSwitch, Strategy

READS = ["/api/strategies/", "/api/accounts/", "/api/orders/", "/api/positions/", "/api/signals/", "/api/pnl/",
         "/api/pnl/equity/", "/api/backtests/", "/api/kill-switch/"]
ADMIN_ONLY = [("get", "/api/kill-switch/"), ("post", "/api/kill-switch/engage/"),
              ("post", "/api/kill-switch/release/"), ("post", "/api/accounts/")]


@pytest.mark.parametrize("url", READS)
def test_no_credentials_is_401(db: Any, url: str) -> None:
    assert APIClient().get(url).status_code == 401


@pytest.mark.parametrize("url", ["/api/strategies/", "/api/kill-switch/"])
def test_bad_token_is_401(db: Any, url: str) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token " + "0" * 40)
    assert client.get(url).status_code == 401


@pytest.mark.parametrize("header", ["Bearer {key}", "Token", "Token {key} extra", "token{key}"])
def test_malformed_authorization_header_is_401(api: Any, staff_key: str, header: str) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header.format(key=staff_key))
    assert client.get("/api/strategies/").status_code == 401


def test_token_in_the_query_string_is_ignored(api: Any, staff_key: str) -> None:
    key = staff_key
    assert APIClient().get(f"/api/strategies/?token={key}").status_code == 401
    assert APIClient().get(f"/api/strategies/?auth_token={key}").status_code == 401


def test_session_without_csrf_token_cannot_post(staff: Any) -> None:
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(staff)
    assert client.get("/api/kill-switch/").status_code == 200  # reads need no CSRF token
    response = client.post("/api/kill-switch/engage/", {"reason": "x"}, format="json")
    assert response.status_code == 403 and "CSRF" in response.json()["detail"]
    assert not KillSwitch.objects.filter(engaged=True).exists()


def test_session_with_csrf_token_can_post(staff: Any, make_account: Any, make_strategy: Any) -> None:
    strategy = make_strategy(make_account(), start=False)
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(staff)
    csrf = "a" * 32
    client.cookies["csrftoken"] = csrf
    response = client.post(f"/api/strategies/{strategy.pk}/start/", HTTP_X_CSRFTOKEN=csrf)
    assert response.status_code == 200


def test_removed_user_token_is_401(user: Any) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {api_key(user)}")
    assert client.get("/api/orders/").status_code == 200
    user.delete()
    assert client.get("/api/orders/").status_code == 401


def test_deactivated_user_token_is_401(user: Any) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {api_key(user)}")
    user.is_active = False
    user.save()
    assert client.get("/api/orders/").status_code == 401


@pytest.mark.parametrize(("method", "url"), ADMIN_ONLY)
def test_non_staff_gets_403_on_admin_only(user_api: Any, method: str, url: str) -> None:
    response = getattr(user_api, method)(url, {"reason": "x", "name": "n"}, format="json")
    assert response.status_code == 403
    assert not KillSwitch.objects.filter(engaged=True).exists()


def test_non_staff_may_operate_strategies(user_api: Any, make_account: Any, make_strategy: Any) -> None:
    strategy = make_strategy(make_account(), start=False)
    assert user_api.post(f"/api/strategies/{strategy.pk}/start/").status_code == 200
    assert Strategy.objects.get(pk=strategy.pk).status == "active"


@pytest.mark.parametrize(("method", "url"), [("delete", "/api/strategies/1/"), ("put", "/api/orders/1/"),
                                             ("get", "/api/kill-switch/engage/"), ("post", "/api/pnl/"),
                                             ("delete", "/api/backtests/1/"), ("get", "/api/positions/1/close/")])
def test_wrong_method_is_405(api: Any, method: str, url: str) -> None:
    assert getattr(api, method)(url).status_code == 405


def test_anonymous_schema_and_docs_need_login(db: Any) -> None:
    assert APIClient().get("/api/schema/").status_code == 401
    assert APIClient().get("/api/docs/").status_code in (401, 403)


def test_signals_url_lists_on_get_and_routes_post_to_the_webhooks_app(api: Any) -> None:
    assert api.get("/api/signals/").status_code == 200
    response = api.post("/api/signals/", b"{}", content_type="application/json")
    assert response.status_code not in (405, 500)  # handled by webhooks.apis.SignalCreateApi
    assert api.delete("/api/signals/").status_code == 405
    assert APIClient().post("/api/signals/", b"{}", content_type="application/json").status_code == 401


@pytest.mark.parametrize("url", ["/api/strategies/", "/api/strategies/validate/", "/api/strategies/1/start/",
                                 "/api/strategies/1/rotate-secret/", "/api/accounts/", "/api/orders/1/cancel/",
                                 "/api/positions/1/close/", "/api/kill-switch/engage/", "/api/kill-switch/release/",
                                 "/api/backtests/"])
def test_anonymous_writes_are_401(db: Any, url: str) -> None:
    assert APIClient().post(url, {}, format="json").status_code == 401
    assert not KillSwitch.objects.filter(engaged=True).exists()
