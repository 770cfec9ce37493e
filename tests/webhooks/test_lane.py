"""The webhook's lean WSGI lane (tradesite/wsgi.py) answers exactly as Django's full stack does."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from trading import services as trading_services
from trading.models import Signal

pytestmark = pytest.mark.django_db(transaction=True)  # the handlers send request_started/finished as in production
PATH = "/api/webhooks/tradingview/"


def _environ(body: bytes | dict[str, Any] = b"", *, method: str = "POST", path: str = PATH, host: str = "127.0.0.1",
             content_type: str = "application/json", scheme: str = "http", **extra: str) -> dict[str, Any]:
    raw = json.dumps(body).encode() if isinstance(body, dict) else body
    return {"REQUEST_METHOD": method, "PATH_INFO": path, "SCRIPT_NAME": "", "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "HTTP_HOST": host, "CONTENT_TYPE": content_type,
            "CONTENT_LENGTH": str(len(raw)), "REMOTE_ADDR": "127.0.0.1", "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.input": io.BytesIO(raw), "wsgi.url_scheme": scheme, "wsgi.errors": io.StringIO(),
            "wsgi.multithread": False, "wsgi.multiprocess": True, "wsgi.run_once": False, "wsgi.version": (1, 0),
            **extra}


def _call(app: Callable[..., Iterable[bytes]], environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        seen.update(status=status, headers=headers)

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        if hasattr(result, "close"):
            result.close()
    return seen["status"], sorted(seen["headers"]), body


def _handlers() -> tuple[Any, Any]:
    """(Django's full WSGI handler, the webhook's lane), built with the settings as they are now."""
    from django.core.handlers.wsgi import WSGIHandler

    from tradesite.wsgi import lane_handler

    path, lane = lane_handler("webhook-tradingview")
    assert path == PATH
    return WSGIHandler(), lane


def _without_ids(body: bytes) -> Any:
    data = json.loads(body)
    data.pop("signal_id", None)
    data.get("fields", {}).pop("signal_id", None)
    return data


def _same(make: Callable[[str], dict[str, Any]], *, new_rows: bool = False) -> tuple[str, list[Any], bytes]:
    """Send the same request (made per handler; `new_rows`: each stores its own row) to both; assert equal."""
    full, lane = _handlers()
    a = _call(full, make("full"))
    b = _call(lane, make("lane"))
    assert a[0] == b[0] and a[1] == b[1], (a, b)
    if new_rows:
        assert _without_ids(a[2]) == _without_ids(b[2]) and a[2] != b[2]
    else:
        assert a[2] == b[2]
    return b


def test_accepted_duplicate_and_stored_rejection_are_answered_alike(make_hook) -> None:
    hook = make_hook()
    status, headers, _ = _same(lambda who: _environ(hook.body(id=f"lane-{who}")), new_rows=True)
    assert status == "202 Accepted"
    assert ("X-Content-Type-Options", "nosniff") in headers and ("X-Frame-Options", "DENY") in headers
    assert ("Cache-Control", "no-store") in headers
    status, _, body = _same(lambda who: _environ(hook.body(id="lane-full")))
    assert status == "200 OK" and json.loads(body)["duplicate"] is True
    trading_services.strategy_pause(strategy=hook.strategy, by="test")
    status, _, _ = _same(lambda who: _environ(hook.body(id=f"paused-{who}")), new_rows=True)
    assert status == "409 Conflict"
    assert Signal.objects.filter(status=Signal.Status.REJECTED).count() == 2


@pytest.mark.parametrize("case", ["wrong_passphrase", "unknown_strategy", "invalid_json", "not_an_object",
                                  "too_large", "content_type", "get", "put", "stale", "bad_fields"])
def test_refusals_are_answered_alike(case: str, make_hook) -> None:
    hook = make_hook()
    bodies: dict[str, Any] = {
        "wrong_passphrase": lambda: _environ(hook.body(passphrase="not-the-secret-at-all-0000000000000")),
        "unknown_strategy": lambda: _environ(hook.body(strategy="no-such-strategy")),
        "invalid_json": lambda: _environ(b"{nope"),
        "not_an_object": lambda: _environ(b"[1, 2]"),
        "too_large": lambda: _environ(json.dumps(hook.body(comment="x" * 9000)).encode()),
        "content_type": lambda: _environ(hook.body(), content_type="application/xml"),
        "get": lambda: _environ(method="GET"),
        "put": lambda: _environ(hook.body(), method="PUT"),
        "stale": lambda: _environ(hook.body(time="2020-01-01T00:00:00Z")),
        "bad_fields": lambda: _environ(hook.body(contracts="-1", action="hodl")),
    }
    status, _, _ = _same(lambda who: bodies[case]())
    assert int(status.split()[0]) in (400, 401, 405, 413, 415)
    assert Signal.objects.count() == 0


def test_source_allowlist_and_rate_limit_are_answered_alike(make_hook, settings) -> None:
    from django.core.cache import cache

    hook = make_hook()
    settings.WEBHOOK_ALLOWED_IPS = "tradingview"
    assert _same(lambda who: _environ(hook.body()))[0] == "403 Forbidden"
    settings.WEBHOOK_ALLOWED_IPS = ""
    settings.WEBHOOK_RATE_LIMIT_PER_IP = 0
    cache.clear()
    assert _same(lambda who: _environ(hook.body()))[0] == "429 Too Many Requests"
    assert Signal.objects.count() == 0


def test_disallowed_host_is_refused_alike(make_hook, caplog) -> None:
    hook = make_hook()
    with caplog.at_level(logging.ERROR, logger="django.security.DisallowedHost"):
        status, _, body = _same(lambda who: _environ(hook.body(id=f"h-{who}"), host="evil.example.com"))
    assert status == "400 Bad Request"
    assert len([r for r in caplog.records if r.name == "django.security.DisallowedHost"]) == 2  # logged by both
    assert Signal.objects.count() == 0


def test_ssl_redirect_and_hsts_are_kept(make_hook, settings) -> None:
    hook = make_hook()
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 3600
    status, headers, _ = _same(lambda who: _environ(hook.body(id=f"s-{who}")))
    assert status == "301 Moved Permanently"
    assert ("Location", "https://127.0.0.1/api/webhooks/tradingview/") in headers
    assert Signal.objects.count() == 0
    status, headers, _ = _same(lambda who: _environ(hook.body(id=f"tls-{who}"), scheme="https"), new_rows=True)
    assert status == "202 Accepted"
    assert ("Strict-Transport-Security", "max-age=3600") in headers


def test_lane_logs_refusals_like_django(make_hook, caplog) -> None:
    hook = make_hook()
    with caplog.at_level(logging.WARNING, logger="django.request"):
        _same(lambda who: _environ(hook.body(passphrase="wrong-wrong-wrong-wrong-wrong-wrong")))
    messages = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "django.request"]
    assert messages == [("WARNING", "Unauthorized: /api/webhooks/tradingview/")] * 2


def test_lane_counts_request_metrics(make_hook) -> None:
    from prometheus_client import REGISTRY

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    hook = make_hook()
    _, lane = _handlers()
    view = {"view": "webhook-tradingview", "method": "POST"}
    before = (value("django_http_responses_total_by_status_view_method_total", status="202", **view),
              value("django_http_requests_total_by_method_total", method="POST"),
              value("django_http_requests_latency_seconds_by_view_method_count", **view),
              value("django_http_responses_total_by_status_total", status="401"))
    assert _call(lane, _environ(hook.body(id="m1")))[0] == "202 Accepted"
    assert _call(lane, _environ(hook.body(passphrase="wrong-wrong-wrong-wrong-wrong")))[0] == "401 Unauthorized"
    after = (value("django_http_responses_total_by_status_view_method_total", status="202", **view),
             value("django_http_requests_total_by_method_total", method="POST"),
             value("django_http_requests_latency_seconds_by_view_method_count", **view),
             value("django_http_responses_total_by_status_total", status="401"))
    assert [b - a for a, b in zip(before, after)] == [1, 2, 2, 1]


def test_application_routes_only_the_lane_paths_to_the_lane(make_hook) -> None:
    from tradesite.wsgi import lanes_application

    hook = make_hook()
    seen: list[str] = []

    def default(environ: dict[str, Any], start_response: Any) -> Any:
        seen.append(environ["PATH_INFO"])
        start_response("204 No Content", [])
        return [b""]

    app = lanes_application(default, ["webhook-tradingview"])
    assert _call(app, _environ(hook.body(id="routed")))[0] == "202 Accepted"
    assert _call(app, _environ(path="/healthz", method="GET"))[0] == "204 No Content"
    assert _call(app, _environ(hook.body(), path=PATH.rstrip("/")))[0] == "204 No Content"
    assert seen == ["/healthz", PATH.rstrip("/")]
    assert lanes_application(default, []) is default
    assert Signal.objects.filter(idempotency_key__startswith="tv:id:").count() == 1


def test_the_wsgi_entry_point_uses_the_lane_for_the_webhook(make_hook, settings) -> None:
    import tradesite.wsgi

    assert settings.LEAN_URL_NAMES == ["webhook-tradingview"]
    hook = make_hook()
    status, _, body = _call(tradesite.wsgi.application, _environ(hook.body(id="entry")))
    assert status == "202 Accepted", body
    assert Signal.objects.get(pk=json.loads(body)["signal_id"]).status == Signal.Status.RECEIVED
