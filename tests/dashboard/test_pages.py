"""Dashboard pages with Django's test client: login, permissions, CSRF, forms, actions, query counts."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
import json
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from trading.models import AuditEvent, KillSwitch, Order, Signal, Strategy

PAGES = ["dashboard-overview", "dashboard-strategies", "dashboard-strategy-create", "dashboard-accounts",
         "dashboard-orders", "dashboard-positions", "dashboard-signals", "dashboard-backtests",
         "dashboard-webhook-tester"]


def _object_pages(data: dict[str, Any]) -> list[str]:
    s = data["strategies"][0].pk
    run = data["runs"][0].pk
    return [reverse("dashboard-strategy", args=[s]), reverse("dashboard-strategy-edit", args=[s]),
            reverse("dashboard-strategy-webhook", args=[s]), reverse("dashboard-backtest", args=[run]),
            f"{reverse('dashboard-backtest-compare')}?run={data['runs'][0].pk}&run={data['runs'][1].pk}"]


def test_logged_out_visitor_is_sent_to_the_login_page(client: Client, book: Any) -> None:
    data = book(2)
    urls = [reverse(name) for name in PAGES] + _object_pages(data)
    for url in urls:
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(reverse("dashboard-login") + "?next="), url
    posts = [reverse("dashboard-kill-engage"), reverse("dashboard-strategy-rotate", args=[data["strategies"][0].pk]),
             reverse("dashboard-strategy-action", args=[data["strategies"][0].pk, "stop"]),
             reverse("dashboard-position-close", args=[1])]
    for url in posts:
        assert client.post(url, {"confirm": "yes", "reason": "x"}).status_code == 302, url
    assert not KillSwitch.objects.filter(engaged=True).exists()
    assert Strategy.objects.get(pk=data["strategies"][0].pk).status == "active"
    login = client.get(reverse("dashboard-login"))
    assert login.status_code == 200 and b'name="password"' in login.content


def test_login_and_logout(client: Client, staff_user: Any) -> None:
    response = client.post(reverse("dashboard-login"), {"username": "boss", "password": "wrong"},
                           REMOTE_ADDR="127.0.0.1")
    assert response.status_code == 200 and b"Wrong username or password" in response.content
    response = client.post(reverse("dashboard-login"), {"username": "boss", "password": "boss-password-1"},
                           REMOTE_ADDR="127.0.0.1")
    assert response.status_code == 302
    assert client.get(reverse("dashboard-overview")).status_code == 200
    assert client.post(reverse("dashboard-logout")).status_code == 302
    assert client.get(reverse("dashboard-overview")).status_code == 302


def test_every_page_renders_with_data(staff_client: Client, book: Any) -> None:
    data = book(3)
    for url in [reverse(name) for name in PAGES] + _object_pages(data):
        response = staff_client.get(url)
        assert response.status_code == 200, (url, response.content[:500])
    overview = staff_client.get(reverse("dashboard-overview")).content.decode()
    assert "Engage the kill switch" in overview and data["account"].name in overview
    orders = staff_client.get(reverse("dashboard-orders")).content.decode()
    assert data["strategies"][1].slug in orders and "49000" in orders
    # htmx fragments for live updates
    for name in ("dashboard-overview", "dashboard-orders", "dashboard-positions", "dashboard-strategies"):
        fragment = staff_client.get(reverse(name) + "?partial=1", HTTP_HX_REQUEST="true")
        assert fragment.status_code == 200 and b"<html" not in fragment.content


def test_non_staff_cannot_touch_the_kill_switch_or_secrets(plain_client: Client, book: Any) -> None:
    data = book(1)
    strategy = data["strategies"][0]
    overview = plain_client.get(reverse("dashboard-overview"))
    assert overview.status_code == 200
    assert b"kill-engage" not in overview.content and b"Admin</a>" not in overview.content
    assert plain_client.post(reverse("dashboard-kill-engage"), {"confirm": "yes", "reason": "x"}).status_code == 403
    assert not KillSwitch.objects.filter(engaged=True).exists()
    KillSwitch.objects.create(pk=1, engaged=True, reason="test")
    assert plain_client.post(reverse("dashboard-kill-release"), {"confirm": "yes"}).status_code == 403
    assert KillSwitch.objects.get(pk=1).engaged
    webhook = plain_client.get(reverse("dashboard-strategy-webhook", args=[strategy.pk]))
    assert webhook.status_code == 200 and b"rotate-secret" not in webhook.content
    assert plain_client.post(reverse("dashboard-strategy-rotate", args=[strategy.pk])).status_code == 403
    assert Strategy.objects.get(pk=strategy.pk).webhook_secret_hash == ""


def test_kill_switch_needs_confirmation_then_engages_and_releases(staff_client: Client, db: Any) -> None:
    response = staff_client.post(reverse("dashboard-kill-engage"), {"reason": "test"})
    assert response.status_code == 400 and b"tick the box" in response.content
    assert not KillSwitch.objects.filter(engaged=True).exists()
    response = staff_client.post(reverse("dashboard-kill-engage"), {"reason": "", "confirm": "yes"})
    assert response.status_code == 400 and not KillSwitch.objects.filter(engaged=True).exists()
    assert staff_client.post(reverse("dashboard-kill-engage"), {"reason": "drill", "confirm": "yes"}).status_code == 302
    switch = KillSwitch.objects.get(pk=1)
    assert switch.engaged and switch.reason == "drill" and switch.changed_by == "web:boss"
    assert b"Kill switch ENGAGED" in staff_client.get(reverse("dashboard-overview")).content
    assert staff_client.post(reverse("dashboard-kill-release"), {}).status_code == 400
    assert KillSwitch.objects.get(pk=1).engaged
    assert staff_client.post(reverse("dashboard-kill-release"), {"confirm": "yes"}).status_code == 302
    assert not KillSwitch.objects.get(pk=1).engaged


def test_forms_refuse_posts_without_csrf_token(staff_user: Any, db: Any) -> None:
    csrf_client = Client(enforce_csrf_checks=True)
    csrf_client.force_login(staff_user)
    assert csrf_client.post(reverse("dashboard-kill-engage"), {"reason": "x", "confirm": "yes"}).status_code == 403
    assert not KillSwitch.objects.filter(engaged=True).exists()
    page = csrf_client.get(reverse("dashboard-overview")).content.decode()
    assert page.count("csrfmiddlewaretoken") >= 2  # engage form and logout form


def _strategy_post(account: Any, **overrides: str) -> dict[str, str]:
    data = {"name": "Web one", "slug": "web-one", "kind": "webhook", "account": str(account.pk), "mode": "paper",
            "symbol": "BTC/USD", "timeframe": "1m", "params": "{}", "sizing_mode": "quantity",
            "sizing_value": "0.01", "stop_loss_mode": "none", "stop_loss_value": "", "take_profit_mode": "percent",
            "take_profit_value": "5", "leverage": "1"}
    data.update(overrides)
    return data


def test_strategy_form_shows_field_errors_and_saves_nothing(staff_client: Client, make_account: Any) -> None:
    account = make_account()
    audits = AuditEvent.objects.count()
    response = staff_client.post(reverse("dashboard-strategy-create"), _strategy_post(account, sizing_value="-3"))
    assert response.status_code == 400
    html = response.content.decode()
    assert 'id="field-sizing_value"' in html and "must be greater than 0" in html
    assert 'value="-3"' in html  # the typed values are kept
    assert not Strategy.objects.filter(slug="web-one").exists() and AuditEvent.objects.count() == audits
    response = staff_client.post(reverse("dashboard-strategy-create"), _strategy_post(account, params="{oops"))
    assert response.status_code == 400 and b"not valid JSON" in response.content
    response = staff_client.post(reverse("dashboard-strategy-create"),
                                 _strategy_post(account, kind="rsi", params='{"period": 0}'))
    assert response.status_code == 400 and b"period:" in response.content
    assert not Strategy.objects.filter(slug="web-one").exists()

    response = staff_client.post(reverse("dashboard-strategy-create"), _strategy_post(account))
    strategy = Strategy.objects.get(slug="web-one")
    assert response.status_code == 302 and response["Location"] == reverse("dashboard-strategy", args=[strategy.pk])
    assert strategy.status == "stopped" and strategy.take_profit_value == 5

    edit = reverse("dashboard-strategy-edit", args=[strategy.pk])
    assert b'value="web-one"' in staff_client.get(edit).content
    response = staff_client.post(edit, _strategy_post(account, leverage="50"))
    assert response.status_code == 400 and b"max leverage" in response.content
    assert Strategy.objects.get(pk=strategy.pk).leverage == 1
    assert staff_client.post(edit, _strategy_post(account, name="Renamed")).status_code == 302
    assert Strategy.objects.get(pk=strategy.pk).name == "Renamed"


def test_start_pause_stop(staff_client: Client, make_account: Any, make_strategy: Any) -> None:
    strategy = make_strategy(make_account(), start=False)
    for action, status in (("start", "active"), ("pause", "paused"), ("stop", "stopped"), ("start", "active")):
        response = staff_client.post(reverse("dashboard-strategy-action", args=[strategy.pk, action]))
        assert response.status_code == 302
        assert Strategy.objects.get(pk=strategy.pk).status == status
    assert staff_client.post(reverse("dashboard-strategy-action", args=[strategy.pk, "delete"])).status_code == 403
    assert staff_client.get(reverse("dashboard-strategy-action", args=[strategy.pk, "stop"])).status_code == 405


def test_secret_is_shown_once_with_a_ready_alert_message(staff_client: Client, make_account: Any,
                                                         make_strategy: Any) -> None:
    strategy = make_strategy(make_account())
    page = staff_client.get(reverse("dashboard-strategy-webhook", args=[strategy.pk])).content.decode()
    assert "http://testserver/api/webhooks/tradingview/" in page and "{{strategy.order.action}}" in page
    response = staff_client.post(reverse("dashboard-strategy-rotate", args=[strategy.pk]))
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    html = response.content.decode()
    start = html.index('<code>', html.index('id="new-secret"')) + len("<code>")
    secret = html[start:html.index("</code>", start)]
    stored = Strategy.objects.get(pk=strategy.pk).webhook_secret_hash
    assert hashlib.sha256(secret.encode()).hexdigest() == stored
    message = html[html.index('id="alert-message">') + len('id="alert-message">'):]
    message = message[:message.index("</pre>")].replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">")
    assert json.loads(message)["passphrase"] == secret and json.loads(message)["strategy"] == strategy.slug
    again = staff_client.get(reverse("dashboard-strategy-webhook", args=[strategy.pk])).content.decode()
    assert secret not in again and "never shown again" in again


def test_position_close_button_queues_a_manual_close(staff_client: Client, book: Any) -> None:
    from trading.models import Position

    data = book(1)
    position = Position.objects.get(strategy=data["strategies"][0])
    assert f'positions/{position.pk}/close/' in staff_client.get(reverse("dashboard-positions")).content.decode()
    response = staff_client.post(reverse("dashboard-position-close", args=[position.pk]))
    assert response.status_code == 302
    signal = Signal.objects.get(source="manual", action="close", strategy=position.strategy)
    assert response["Location"].endswith(f"?closed={signal.pk}")


def test_signal_filters(staff_client: Client, book: Any) -> None:
    data = book(2)
    Signal.objects.filter(pk=data["signals"][1].pk).update(status="rejected", decision_rule="kill_switch",
                                                          source="strategy")
    url = reverse("dashboard-signals")
    only_rejected = staff_client.get(url, {"decision": "kill_switch"}).content.decode()
    assert f'id="signal-{data["signals"][1].pk}"' in only_rejected
    assert f'id="signal-{data["signals"][0].pk}"' not in only_rejected
    by_source = staff_client.get(url, {"source": "webhook"}).content.decode()
    first, second = (f'id="signal-{s.pk}"' for s in data["signals"])
    assert first in by_source and second not in by_source
    by_strategy = staff_client.get(url, {"strategy": data["strategies"][1].pk}).content.decode()
    assert second in by_strategy and first not in by_strategy
    later = (timezone.now() + timezone.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    assert "No signals." in staff_client.get(url, {"received_after": later}).content.decode()
    bad = staff_client.get(url, {"received_after": "yesterday"}).content.decode()
    assert "received_after" in bad and "errorlist" in bad


def test_backtest_launch_errors_then_queue(staff_client: Client, db: Any) -> None:
    from strategies.models import BacktestRun

    form = {"kind": "rsi", "params": '{"period": -1}', "symbol": "ETH/BTC", "timeframe": "1m", "venue": "paper",
            "start": "", "end": "", "cash": "1000", "fee": "0.001", "slippage_bps": "0"}
    response = staff_client.post(reverse("dashboard-backtests"), form)
    assert response.status_code == 400 and b"period:" in response.content
    response = staff_client.post(reverse("dashboard-backtests"), {**form, "params": "{}", "start": "2024-02-01T00:00",
                                                                  "end": "2024-01-01T00:00"})
    assert response.status_code == 400 and b"must not be before start" in response.content
    for bad in ({"start": "2024-02-30T00:00"}, {"start": "2024-01-01T25:00"}, {"end": "9999-12-31T23:59:59-05:00"},
                {"params": "[" * 100_000}):
        response = staff_client.post(reverse("dashboard-backtests"), {**form, "params": "{}", **bad})
        assert response.status_code == 400, bad
    response = staff_client.post(reverse("dashboard-backtests"), {**form, "params": "{}"})
    assert response.status_code == 400 and b"no stored 1m candles" in response.content
    assert not BacktestRun.objects.exists()
    from strategies.models import Candle

    Candle.objects.create(venue="paper", symbol="ETH/BTC", timeframe="1m", open_time=datetime(2024, 1, 1, tzinfo=UTC),
                          open=Decimal("0.05"), high=Decimal("0.051"), low=Decimal("0.049"), close=Decimal("0.05"),
                          volume=Decimal("1"))
    response = staff_client.post(reverse("dashboard-backtests"), {**form, "params": '{"period": 7}'})
    run = BacktestRun.objects.get()
    assert response.status_code == 302 and run.params == {"period": 7} and run.config["cash"] == "1000"
    progress = staff_client.get(reverse("dashboard-backtest", args=[run.pk]) + "?partial=1", HTTP_HX_REQUEST="true")
    assert b"queued" in progress.content and "HX-Refresh" not in progress
    BacktestRun.objects.filter(pk=run.pk).update(status="done", progress=1.0)
    progress = staff_client.get(reverse("dashboard-backtest", args=[run.pk]) + "?partial=1", HTTP_HX_REQUEST="true")
    assert progress["HX-Refresh"] == "true"


def test_webhook_tester_decides_without_storing(staff_client: Client, plain_client: Client, make_account: Any,
                                                make_strategy: Any, set_price: Any) -> None:
    from trading import services

    account = make_account()
    strategy = make_strategy(account)
    secret = services.strategy_webhook_secret_rotate(strategy=strategy, by="test")
    set_price("BTC/USD", "50000")
    counts = (Signal.objects.count(), Order.objects.count(), AuditEvent.objects.count())
    account_state = (account.day_start, account.day_start_equity)
    body = json.dumps({"strategy": strategy.slug, "passphrase": secret, "action": "buy", "ticker": "BTCUSD",
                       "contracts": "0.01", "time": timezone.now().isoformat()})
    page = staff_client.post(reverse("dashboard-webhook-tester"), {"body": body}).content.decode()
    assert "202 accepted" in page and "accepted (ok)" in page and "buy 0.01000 market (entry)" in page
    assert secret not in page.split('id="tester-result"')[1]  # the secret is not echoed in the result
    wrong = json.loads(body) | {"passphrase": "nope"}
    page = staff_client.post(reverse("dashboard-webhook-tester"), {"body": json.dumps(wrong)}).content.decode()
    assert "401 unauthorized" in page
    page = plain_client.post(reverse("dashboard-webhook-tester"), {"body": json.dumps(wrong)}).content.decode()
    assert "not checked (staff only)" in page and "202 accepted" in page
    page = staff_client.post(reverse("dashboard-webhook-tester"),
                             {"body": json.dumps(json.loads(body) | {"contracts": "abc"})}).content.decode()
    assert "400 invalid_fields" in page and "contracts: must be a number" in page
    KillSwitch.objects.create(pk=1, engaged=True)
    page = staff_client.post(reverse("dashboard-webhook-tester"), {"body": body}).content.decode()
    assert "409 kill_switch" in page
    assert (Signal.objects.count(), Order.objects.count(), AuditEvent.objects.count()) == counts
    account.refresh_from_db()
    assert (account.day_start, account.day_start_equity) == account_state


LIST_PAGES = ["dashboard-overview", "dashboard-strategies", "dashboard-accounts", "dashboard-orders",
              "dashboard-positions", "dashboard-signals", "dashboard-backtests"]


@pytest.mark.parametrize("name", LIST_PAGES)
def test_list_page_query_count_does_not_grow_with_rows(staff_client: Client, book: Any, name: str) -> None:
    from django.db import transaction

    def queries(n: int) -> int:
        sid = transaction.savepoint()
        book(n)
        staff_client.get(reverse(name))  # warm caches (session, content types)
        with CaptureQueriesContext(connection) as ctx:
            assert staff_client.get(reverse(name)).status_code == 200
        transaction.savepoint_rollback(sid)
        return len(ctx.captured_queries)

    one, fifty = queries(1), queries(50)
    assert one == fifty, f"{name}: {one} queries with 1 row, {fifty} with 50"
    assert one <= (20 if name == "dashboard-overview" else 12), f"{name}: {one} queries"


def test_overview_shows_each_venues_breaker_and_reconciliation(staff_client: Client, make_account: Any) -> None:
    from trading.models import VenueAccount, VenueHealth

    paper = make_account(name="paper-ok")
    VenueAccount.objects.filter(pk=paper.pk).update(
        last_reconciled_at=timezone.now(),
        last_reconcile_report={"time": "t", "updated_orders": 0, "unknown_venue_orders": ["x1", "x2"],
                               "position_differences": {}})
    live = VenueAccount.objects.create(name="cb-live", venue="coinbase", network="testnet", credentials_env="CB_T")
    VenueHealth.objects.create(account=live, state="open", since=timezone.now(), consecutive_failures=5,
                               last_error="TemporaryError: 503 from venue", updated_at=timezone.now())
    html = staff_client.get(reverse("dashboard-overview")).content.decode()
    venues = html[html.index("Venue health"):]
    assert "unknown venue orders: 2" in venues and "position differences" not in venues
    assert ">open<" in venues and "5 failures" in venues and "TemporaryError: 503 from venue" in venues
    assert "n/a (paper)" in venues and "never" in venues  # the live account was never reconciled


def test_actions_never_redirect_off_site(staff_client: Client, make_account: Any, make_strategy: Any) -> None:
    strategy = make_strategy(make_account())
    url = reverse("dashboard-strategy-action", args=[strategy.pk, "pause"])
    response = staff_client.post(url, {"next": "https://evil.example/phish"})
    assert response.status_code == 302 and response["Location"] == reverse("dashboard-strategy", args=[strategy.pk])
    response = staff_client.post(reverse("dashboard-strategy-action", args=[strategy.pk, "start"]),
                                 {"next": reverse("dashboard-strategies")})
    assert response["Location"] == reverse("dashboard-strategies")


def _json_script(html: str, element_id: str) -> Any:
    start = html.index(f'id="{element_id}"')
    start = html.index(">", start) + 1
    return json.loads(html[start:html.index("</script>", start)])


def test_strategy_detail_charts_mark_entries_and_exits(staff_client: Client, book: Any) -> None:
    from trading.models import Fill

    data = book(1)
    strategy = data["strategies"][0]
    entry = Fill.objects.get(strategy=strategy)
    exit_order = Order.objects.create(client_order_id="exit-1", account=data["account"], strategy=strategy,
                                      symbol="BTC/USD", side="sell", purpose="take_profit", quantity="0.1",
                                      status="filled", created_at=timezone.now(), updated_at=timezone.now())
    Fill.objects.create(order=exit_order, account=data["account"], strategy=strategy, symbol="BTC/USD", side="sell",
                        venue_fill_id="x", quantity="0.1", price="51000", realized_pnl="200",
                        time=entry.time + timezone.timedelta(minutes=5), recorded_at=timezone.now())
    html = staff_client.get(reverse("dashboard-strategy", args=[strategy.pk])).content.decode()
    price = _json_script(html, "price-data")
    assert [(Decimal(m["price"]), m["side"], m["exit"]) for m in price["markers"]] == [
        (49000, "buy", False), (51000, "sell", True)]
    assert Decimal(price["mark"]["price"]) == 50000 and price["x"] == []  # no candles of BTC/USD stored
    equity = _json_script(html, "strategy-equity-data")
    assert [Decimal(v) for v in equity["series"][0]["values"]] == [99]
    assert "take_profit" in html and "total" in html  # the trade and the stage timings


def test_backtest_compare_needs_two_runs(staff_client: Client, book: Any) -> None:
    data = book(2)
    one = staff_client.get(reverse("dashboard-backtest-compare"), {"run": data["runs"][0].pk})
    assert one.status_code == 400 and b"pick two runs" in one.content
    both = staff_client.get(reverse("dashboard-backtest-compare"), {"run": [r.pk for r in data["runs"]]})
    charts = _json_script(both.content.decode(), "cmp-data")
    assert [c["equity"] for c in charts] == [["10000", "10000.0009"]] * 2
    assert "total return" in both.content.decode() and "5.00 %" in both.content.decode()


def test_backtest_result_draws_equity_at_every_candle(staff_client: Client, db: Any) -> None:
    from pathlib import Path

    from strategies import services as strategy_services
    from strategies.candles import candles_read_csv

    parsed = candles_read_csv(Path(__file__).resolve().parents[2] / "data" / "ETH_BTC-1m.csv", form="rows",
                              timeframe="1m")
    strategy_services.candles_import(venue="paper", symbol="ETH/BTC", timeframe="1m", rows=parsed.rows[:3000],
                                     by="test")
    run = strategy_services.backtest_run_create(kind="rsi", params={"period": 7}, symbol="ETH/BTC", timeframe="1m",
                                                config={"cash": "1"}, by="test")
    run = strategy_services.backtest_run_execute(run_id=run.pk)
    assert run.status == "done" and run.metrics["trades"] > 2
    html = staff_client.get(reverse("dashboard-backtest", args=[run.pk])).content.decode()
    chart = _json_script(html, "bt-data")
    assert chart["per"] == "candle" and "(at each candle close)" in html
    assert 100 < len(chart["x"]) <= 1002 and chart["x"] == sorted(chart["x"])  # 3000 candles: min/max per bucket
    assert abs(min(chart["drawdown"]) + run.metrics["max_drawdown"] * 100) < 1e-6
    assert abs(chart["equity"][-1] - float(run.metrics["final_equity"])) < 1e-9


def test_accounts_page_masks_credentials_and_hides_them_from_non_staff(staff_client: Client, plain_client: Client,
                                                                       db: Any, monkeypatch: Any) -> None:
    from trading.models import VenueAccount

    monkeypatch.setenv("CBDASH_API_KEY", "organizations/abc/apiKeys/SECRETKEY9876")
    monkeypatch.setenv("CBDASH_API_SECRET", "-----BEGIN EC PRIVATE KEY-----zzzz")
    VenueAccount.objects.create(name="cb-dash", venue="coinbase", network="testnet", credentials_env="CBDASH")
    staff = staff_client.get(reverse("dashboard-accounts")).content.decode()
    assert "CBDASH_*" in staff and "API_KEY ****9876" in staff and "API_SECRET ****zzzz" in staff
    assert "SECRETKEY" not in staff and "PRIVATE" not in staff
    plain = plain_client.get(reverse("dashboard-accounts"))
    assert plain.status_code == 200 and b"cb-dash" in plain.content
    assert b"CBDASH" not in plain.content and b"9876" not in plain.content and b"Edit in the admin" not in plain.content
