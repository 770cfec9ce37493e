"""The webhook half of the auth matrix: every refused request leaves no signal and no order."""

from __future__ import annotations

import json
from typing import Any

import pytest

from trading import services
from trading.models import AuditEvent, Order, Signal

pytestmark = pytest.mark.django_db

UNAUTHORIZED = {"error": "unauthorized", "detail": "unknown strategy or wrong passphrase", "fields": {}}


def _refused(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert Signal.objects.count() == 0 and Order.objects.count() == 0
    return response.json()


SECRET_VARIANTS = {
    "missing": lambda s: None,
    "empty": lambda s: "",
    "wrong": lambda s: "not-the-secret-at-all-but-long-enough-000",
    "padded_left": lambda s: " " + s,
    "padded_right": lambda s: s + " ",
    "newline": lambda s: s + "\n",
    "upper": lambda s: s.upper(),
    "lower": lambda s: s.lower(),
    "swapcase": lambda s: s.swapcase(),
    "truncated": lambda s: s[:-1],
    "prefix_only": lambda s: s[:8],
    "extended": lambda s: s + "x",
    "number": lambda s: 12345,
    "list": lambda s: [s],
    "object": lambda s: {"value": s},
    "null_byte": lambda s: s + "\x00",
    "hash_of_secret": lambda s: __import__("hashlib").sha256(s.encode()).hexdigest(),
}


@pytest.mark.parametrize("variant", list(SECRET_VARIANTS))
def test_bad_passphrase_is_refused_like_an_unknown_strategy(variant: str, make_hook, post) -> None:
    hook = make_hook()
    body = hook.body(passphrase=SECRET_VARIANTS[variant](hook.secret))
    if body.get("passphrase") is None:
        body.pop("passphrase", None)
    assert _refused(post(body), 401) == UNAUTHORIZED


def test_unknown_strategy_gets_the_same_answer(make_hook, post) -> None:
    hook = make_hook()
    assert _refused(post(hook.body(strategy="no-such-strategy")), 401) == UNAUTHORIZED


def test_missing_strategy_gets_the_same_answer(make_hook, post) -> None:
    hook = make_hook()
    body = hook.body()
    del body["strategy"]
    assert _refused(post(body), 401) == UNAUTHORIZED


def test_another_strategys_secret_is_refused(make_hook, post) -> None:
    mine, other = make_hook(), make_hook()
    assert _refused(post(mine.body(passphrase=other.secret)), 401) == UNAUTHORIZED


def test_strategy_without_a_secret_refuses_everything(make_account, make_strategy, set_price, post) -> None:
    strategy = make_strategy(make_account())
    set_price("BTC/USD", "50000")
    body = {"passphrase": "", "strategy": strategy.slug, "action": "buy", "ticker": "BTCUSD", "id": "x"}
    assert _refused(post(body), 401) == UNAUTHORIZED
    body["passphrase"] = "anything-at-all-anything-at-all-anything"
    assert _refused(post(body), 401) == UNAUTHORIZED


def test_secret_in_the_query_string_is_not_accepted(make_hook, post) -> None:
    hook = make_hook()
    body = hook.body()
    del body["passphrase"]
    assert _refused(post(body, url=f"/api/webhooks/tradingview/?passphrase={hook.secret}"), 401) == UNAUTHORIZED


def test_rotated_secret_replaces_the_old_one(make_hook, post) -> None:
    hook = make_hook()
    new = services.strategy_webhook_secret_rotate(strategy=hook.strategy, by="test")
    assert new != hook.secret and len(new) >= 43  # 32 random bytes, URL-safe base64
    _refused(post(hook.body()), 401)
    assert post(hook.body(passphrase=new)).status_code == 202
    actions = list(AuditEvent.objects.filter(entity="strategy", entity_id=str(hook.strategy.pk))
                   .values_list("action", flat=True))
    assert "strategy.webhook_secret_set" in actions and "strategy.webhook_secret_rotated" in actions
    assert all(new not in json.dumps(e.data) for e in AuditEvent.objects.all())


@pytest.mark.parametrize("method", ["get", "put", "patch", "delete"])
def test_wrong_method_is_405(method: str, make_hook, client) -> None:
    response = getattr(client, method)("/api/webhooks/tradingview/")
    assert response.status_code == 405 and response.json()["error"] == "method_not_allowed"
    assert Signal.objects.count() == 0


def test_allowlist_refuses_other_sources(make_hook, post, settings) -> None:
    settings.WEBHOOK_ALLOWED_IPS = "tradingview"
    hook = make_hook()
    assert _refused(post(hook.body()), 403)["error"] == "forbidden_source"
    assert post(hook.body(), REMOTE_ADDR="52.89.214.238").status_code == 202


def test_spoofed_forwarded_for_is_ignored_without_a_trusted_proxy(make_hook, post, settings) -> None:
    settings.WEBHOOK_ALLOWED_IPS = "tradingview"
    hook = make_hook()
    _refused(post(hook.body(), HTTP_X_FORWARDED_FOR="52.89.214.238"), 403)
    settings.WEBHOOK_TRUSTED_PROXY_HEADER = "X-Forwarded-For"
    settings.WEBHOOK_TRUSTED_PROXIES = "10.0.0.0/8"
    _refused(post(hook.body(), HTTP_X_FORWARDED_FOR="52.89.214.238"), 403)  # peer 127.0.0.1 is not a proxy
    # From the trusted proxy, the right-most untrusted hop counts: a client-supplied left hop does not.
    _refused(post(hook.body(), REMOTE_ADDR="10.1.2.3", HTTP_X_FORWARDED_FOR="52.89.214.238, 1.2.3.4"), 403)
    assert post(hook.body(), REMOTE_ADDR="10.1.2.3", HTTP_X_FORWARDED_FOR="1.2.3.4, 52.89.214.238").status_code == 202


def test_oversized_body_is_413(make_hook, post) -> None:
    hook = make_hook()
    assert _refused(post(hook.body(comment="x" * 9000)), 413)["error"] == "too_large"


def test_other_content_type_is_415(make_hook, post) -> None:
    hook = make_hook()
    assert _refused(post(json.dumps(hook.body()), content_type="application/xml"), 415)["error"] == \
        "unsupported_media_type"


def test_rate_limit_per_ip_and_per_strategy(make_hook, post, settings) -> None:
    from django.core.cache import cache

    cache.clear()
    settings.WEBHOOK_RATE_LIMIT_PER_STRATEGY = 3
    hook = make_hook()
    statuses = [post(hook.body(id=f"a{i}")).status_code for i in range(5)]
    assert statuses == [202, 202, 202, 429, 429]
    settings.WEBHOOK_RATE_LIMIT_PER_IP = 2
    cache.clear()
    assert [post(hook.body(id=f"b{i}")).status_code for i in range(3)] == [202, 202, 429]
    assert post(hook.body(id="c"), REMOTE_ADDR="10.9.9.9").status_code == 202
    assert Signal.objects.count() == 6


@pytest.mark.parametrize("state", ["paused", "stopped", "kill_switch"])
def test_inactive_strategy_or_kill_switch_is_409_and_stored_rejected(state: str, make_hook, post) -> None:
    hook = make_hook()
    if state == "paused":
        services.strategy_pause(strategy=hook.strategy, by="test")
    elif state == "stopped":
        services.strategy_stop(strategy=hook.strategy, by="test")
    else:
        services.kill_switch_engage(by="test", reason="test")
    response = post(hook.body())
    assert response.status_code == 409
    body = response.json()
    signal = Signal.objects.get(pk=int(body["fields"]["signal_id"]))
    assert signal.status == Signal.Status.REJECTED
    assert signal.decision_rule == body["error"] == ("kill_switch" if state == "kill_switch" else "strategy_inactive")
    assert Order.objects.count() == 0


# ------------------------------------------------------------------------------------------ POST /api/signals/


@pytest.fixture
def token(django_user_model) -> str:
    from trading import services

    user = django_user_model.objects.create_user(username="script", password="x" * 20)
    return services.api_token_create(user=user, by="test")[1]


@pytest.mark.urls("tests.webhooks.urls")
def test_signal_api_needs_a_token(make_hook, post, token) -> None:
    hook = make_hook()
    body = hook.body(passphrase=None)
    assert post(body, url="/api/signals/").status_code == 401
    assert post(body, url="/api/signals/", HTTP_AUTHORIZATION="Token wrong").status_code == 401
    assert Signal.objects.count() == 0
    response = post(body, url="/api/signals/", HTTP_AUTHORIZATION=f"Token {token}")
    assert response.status_code == 202, response.content
    signal = Signal.objects.get(pk=response.json()["signal_id"])
    assert signal.source == Signal.Source.MANUAL and signal.action == "open_long"
    again = post(body, url="/api/signals/", HTTP_AUTHORIZATION=f"Token {token}")
    assert again.status_code == 200 and again.json()["duplicate"] is True
    bad = post(hook.body(passphrase=None, contracts="-1", action="hodl"), url="/api/signals/",
               HTTP_AUTHORIZATION=f"Token {token}")
    assert bad.status_code == 400 and set(bad.json()["fields"]) == {"contracts", "action"}
