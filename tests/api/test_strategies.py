"""Strategies: list, create, retrieve, update, validate, start/pause/stop, with errors per field."""

from __future__ import annotations

from typing import Any

from trading.models import AuditEvent, Strategy


def _data(account: Any, **overrides: Any) -> dict[str, Any]:
    data = {"name": "Trend", "slug": "trend", "symbol": "BTC/USD", "account": account.pk, "mode": "paper",
            "sizing_mode": "notional", "sizing_value": "250.5"}
    data.update(overrides)
    return data


def test_create_strategy_returns_201_with_money_as_strings_and_audits(api: Any, make_account: Any) -> None:
    account = make_account()
    response = api.post("/api/strategies/", _data(account), format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["slug"] == "trend" and body["status"] == "stopped"
    assert body["sizing_value"] == "250.5" and body["leverage"] == "1"
    assert AuditEvent.objects.filter(action="strategy.created", entity_id=str(body["id"]), actor="api:admin").exists()


def test_create_strategy_reports_errors_per_field(api: Any, make_account: Any) -> None:
    account = make_account()
    response = api.post("/api/strategies/", _data(account, slug="Bad Slug", sizing_value="-1", timeframe="7m"),
                        format="json")
    assert response.status_code == 400
    errors = response.json()
    assert set(errors) >= {"slug", "sizing_value", "timeframe"}
    assert not Strategy.objects.exists()


def test_create_strategy_rejects_a_float_and_a_missing_account(api: Any) -> None:
    response = api.post("/api/strategies/", {"name": "x", "slug": "x", "symbol": "BTC/USD", "account": 999,
                                             "sizing_value": 1.5}, format="json")
    assert response.status_code == 400
    assert "sizing_value" in response.json()


def test_create_strategy_with_unknown_account_says_so(api: Any) -> None:
    response = api.post("/api/strategies/", {"name": "x", "slug": "x", "symbol": "BTC/USD", "account": 999},
                        format="json")
    assert response.status_code == 400
    assert response.json()["account"] == ["an existing venue account is required"]


def test_list_and_retrieve_strategies(api: Any, make_account: Any, make_strategy: Any) -> None:
    strategy = make_strategy(make_account())
    listed = api.get("/api/strategies/").json()
    assert listed["count"] == 1 and listed["results"][0]["id"] == strategy.pk
    assert api.get(f"/api/strategies/{strategy.pk}/").json()["slug"] == strategy.slug
    assert api.get("/api/strategies/999999/").status_code == 404


def test_patch_strategy_changes_only_given_fields(api: Any, make_account: Any, make_strategy: Any) -> None:
    strategy = make_strategy(make_account())
    response = api.patch(f"/api/strategies/{strategy.pk}/", {"sizing_value": "0.25"}, format="json")
    assert response.status_code == 200, response.json()
    assert response.json()["sizing_value"] == "0.25"
    too_much = api.patch(f"/api/strategies/{strategy.pk}/", {"leverage": "500"}, format="json")
    assert too_much.status_code == 400 and "leverage" in too_much.json()
    assert api.patch("/api/strategies/999999/", {"name": "x"}, format="json").status_code == 404


def test_validate_is_a_dry_run(api: Any, make_account: Any) -> None:
    account = make_account()
    ok = api.post("/api/strategies/validate/", _data(account), format="json")
    assert ok.status_code == 200 and ok.json() == {"valid": True, "errors": {}}
    bad = api.post("/api/strategies/validate/", _data(account, mode="live", timeframe="2w"), format="json").json()
    assert bad["valid"] is False and set(bad["errors"]) >= {"mode", "timeframe"}
    missing = api.post("/api/strategies/validate/", {}, format="json").json()
    assert missing["valid"] is False and "slug" in missing["errors"]
    assert not Strategy.objects.exists()


def test_start_pause_stop(api: Any, make_account: Any, make_strategy: Any) -> None:
    strategy = make_strategy(make_account(), start=False)
    for action, state in (("start", "active"), ("pause", "paused"), ("stop", "stopped")):
        response = api.post(f"/api/strategies/{strategy.pk}/{action}/")
        assert response.status_code == 200 and response.json()["status"] == state
    assert AuditEvent.objects.filter(entity="strategy", entity_id=str(strategy.pk), action="strategy.paused").exists()
    assert api.post("/api/strategies/999999/start/").status_code == 404


def test_rotate_secret_returns_it_once_and_stores_only_a_hash(api: Any, make_account: Any,
                                                              make_strategy: Any) -> None:
    import hashlib

    strategy = make_strategy(make_account())
    response = api.post(f"/api/strategies/{strategy.pk}/rotate-secret/")
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    secret = response.json()["secret"]
    assert len(secret) >= 32
    stored = Strategy.objects.get(pk=strategy.pk)
    assert stored.webhook_secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    shown = api.get(f"/api/strategies/{strategy.pk}/")
    assert secret not in shown.content.decode() and stored.webhook_secret_hash not in shown.content.decode()
    assert shown.json()["webhook_secret_set_at"] is not None
    second = api.post(f"/api/strategies/{strategy.pk}/rotate-secret/").json()["secret"]
    assert second != secret
    assert AuditEvent.objects.filter(action="strategy.webhook_secret_rotated", actor="api:admin").exists()
    assert api.post("/api/strategies/999999/rotate-secret/").status_code == 404


def test_rotate_secret_is_staff_only(user_api: Any, make_account: Any, make_strategy: Any) -> None:
    strategy = make_strategy(make_account())
    assert user_api.post(f"/api/strategies/{strategy.pk}/rotate-secret/").status_code == 403
    assert Strategy.objects.get(pk=strategy.pk).webhook_secret_hash == ""
