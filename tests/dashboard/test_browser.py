"""The dashboard in a real Chromium (Debian's, driven by Playwright) against a live server and real Celery workers.

One browser for the session (this module's). Each main page's screenshot goes to artifacts/screenshots/
(a test artefact).
`make test` installs /usr/bin/chromium with apt-get when it is missing; without it these tests are skipped.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from tests.conftest import wait_for

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "artifacts" / "screenshots"
DATA = ROOT / "data" / "ETH_BTC-1m.csv"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-dev-shm-usage"]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (make test installs it)"),
]


@pytest.fixture(scope="module", autouse=True)
def orm_beside_playwright() -> Iterator[None]:
    """Playwright's sync API keeps an event loop in this thread; the test's own ORM calls stay synchronous."""
    before = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    yield
    if before is None:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    else:
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = before


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for this module (the session's only browser), closed before other tests run."""
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def shot(page: Any, name: str) -> None:
    """Save a full-page screenshot once the page's charts are drawn."""
    page.wait_for_function("() => [...document.querySelectorAll('[data-chart]')].every(e => e.dataset.ready)")
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _candles(limit: int = 1500) -> None:
    from strategies import services
    from strategies.candles import candles_read_csv

    parsed = candles_read_csv(DATA, form="rows", timeframe="1m")
    services.candles_import(venue="paper", symbol="ETH/BTC", timeframe="1m", rows=parsed.rows[:limit], by="test")


@pytest.mark.django_db(transaction=True)
def test_trader_runs_the_platform_from_the_browser(live_server: Any, workers: Any, browser: Any,
                                                   make_account: Any, set_price: Any) -> None:
    from django.contrib.auth import get_user_model

    from strategies.models import BacktestRun
    from trading.models import KillSwitch, Order, Position, Strategy

    get_user_model().objects.create_user("trader", "t@localhost", "trader-password-1", is_staff=True)
    account = make_account(name="paper-main")
    set_price("BTC/USD", "50000")
    _candles()
    workers.start()
    url = live_server.url
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.on("dialog", lambda dialog: dialog.accept())

    # Logged out: only the login page.
    page.goto(f"{url}/orders/")
    assert "/login/" in page.url
    shot(page, "login")
    page.fill("#id_username", "trader")
    page.fill("#id_password", "trader-password-1")
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/orders/")

    # A strategy with one invalid field: the error is shown under it and nothing is saved; then a valid one.
    page.goto(f"{url}/strategies/new/")
    page.fill("#id_name", "Browser BTC")
    page.fill("#id_slug", "browser-btc")
    page.select_option("#id_account", str(account.pk))
    page.fill("#id_symbol", "BTC/USD")
    page.select_option("#id_sizing_mode", "quantity")
    page.fill("#id_sizing_value", "-0.01")
    page.click("#strategy-save")
    page.wait_for_selector("#field-sizing_value .errorlist")
    assert "must be greater than 0" in page.inner_text("#field-sizing_value")
    assert not Strategy.objects.filter(slug="browser-btc").exists()
    shot(page, "strategy-form-error")
    page.fill("#id_sizing_value", "0.01")
    page.click("#strategy-save")
    page.wait_for_selector("#strategy-status")
    strategy = Strategy.objects.get(slug="browser-btc")
    assert page.inner_text("#strategy-status") == "stopped"
    page.click("#strategy-start")
    page.wait_for_selector("#strategy-status:has-text('active')")
    assert Strategy.objects.get(pk=strategy.pk).status == "active"

    # Its webhook: issue the secret (shown once), then post an alert as TradingView would.
    page.click("#strategy-webhook")
    page.click("#rotate-secret")
    secret = page.inner_text("#new-secret code").strip()
    assert len(secret) >= 32 and secret in page.inner_text("#alert-message")
    shot(page, "strategy-webhook")
    alert = {"strategy": "browser-btc", "passphrase": secret, "action": "buy", "ticker": "BTCUSD",
             "contracts": "0.01", "time": timezone.now().isoformat()}
    response = page.request.post(f"{url}/api/webhooks/tradingview/", data=json.dumps(alert),
                                 headers={"Content-Type": "application/json"})
    assert response.status == 202, response.text()

    # The order, the position and the P&L appear by themselves (htmx polling).
    page.goto(f"{url}/orders/")
    page.wait_for_selector("#order-table .badge.filled", timeout=30_000)
    assert "browser-btc" in page.inner_text("#order-table")
    assert Order.objects.get(strategy=strategy).status == "filled"
    shot(page, "orders")
    page.goto(f"{url}/positions/")
    row = page.locator("#position-table tr[data-symbol='BTC/USD']")
    assert "0.01" in row.inner_text()
    shot(page, "positions")
    page.goto(f"{url}/")
    set_price("BTC/USD", "51000")  # +10 unrealized on 0.01 BTC; the overview refreshes itself
    page.wait_for_function(
        "() => /\\b10\\b/.test(document.querySelector('#overview-positions').innerText)", timeout=15_000)
    pnl_today = page.inner_text("[data-testid=pnl-today]")
    assert re.fullmatch(r"-?\d+(\.\d+)?", pnl_today), pnl_today
    shot(page, "overview")
    page.goto(f"{url}/strategies/{strategy.pk}/")
    page.wait_for_selector("#strategy-fills td:has-text('entry')")
    shot(page, "strategy-detail")
    page.goto(f"{url}/strategies/")
    assert "browser-btc" in page.inner_text("#strategy-table")
    shot(page, "strategies")
    page.goto(f"{url}/accounts/")
    assert "paper-main" in page.inner_text("#account-table")
    shot(page, "accounts")
    page.goto(f"{url}/signals/")
    assert "executed" in page.inner_text("table.signals") or "accepted" in page.inner_text("table.signals")
    shot(page, "signals")

    # The kill switch: engage with a reason and the confirmation box, then release.
    page.goto(f"{url}/")
    page.fill("#kill-reason", "browser drill")
    page.check("#kill-confirm")
    page.click("#kill-engage")
    page.wait_for_selector("#kill-banner")
    assert KillSwitch.objects.get(pk=1).engaged
    wait_for(lambda: not Position.objects.filter(strategy=strategy).exclude(quantity=0).exists(), timeout=30,
             what="the kill switch closed the position")
    shot(page, "overview-kill-switch")
    page.check("#release-confirm")
    page.click("#kill-release")
    page.wait_for_selector("#kill-state:has-text('released')")
    assert not KillSwitch.objects.get(pk=1).engaged

    # A backtest: launch with params and a data range, watch progress, open the result; compare two runs.
    page.goto(f"{url}/backtests/")
    page.select_option("#id_kind", "rsi")
    page.fill("#id_params", '{"period": 14}')
    page.fill("#id_symbol", "ETH/BTC")
    page.fill("#id_cash", "1")
    page.click("#backtest-launch")
    page.wait_for_selector("#result", timeout=60_000)  # the progress fragment reloads the page when done
    run = BacktestRun.objects.order_by("-id").first()
    assert run is not None and run.status == "done", run and run.error
    assert page.locator("#bt-metrics").inner_text().count("\n") >= 5
    assert page.locator("#bt-equity canvas").count() == 1
    shot(page, "backtest-result")
    from strategies import services as strategy_services

    other = strategy_services.backtest_run_create(kind="rsi", params={"period": 7}, symbol="ETH/BTC", timeframe="1m",
                                                  config={"cash": "1"}, by="test")
    wait_for(lambda: BacktestRun.objects.get(pk=other.pk).status == "done", timeout=60, what="second run")
    page.goto(f"{url}/backtests/")
    shot(page, "backtests")
    page.check(f"input[name=run][value='{run.pk}']")
    page.check(f"input[name=run][value='{other.pk}']")
    page.click("#compare")
    page.wait_for_selector("#cmp-metrics")
    shot(page, "backtest-compare")

    # The webhook tester: a dry run of the same alert stores nothing.
    orders = Order.objects.count()
    page.goto(f"{url}/webhook-tester/")
    page.fill("#id_body", json.dumps(alert | {"time": timezone.now().isoformat()}, indent=2))
    page.click("#tester-run")
    page.wait_for_selector("#tester-outcome")
    assert "202 accepted" in page.inner_text("#tester-outcome")
    assert Order.objects.count() == orders
    shot(page, "webhook-tester")
    context.close()

    # A phone.
    phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
                                device_scale_factor=2)
    mobile = phone.new_page()
    mobile.goto(f"{url}/login/")
    mobile.fill("#id_username", "trader")
    mobile.fill("#id_password", "trader-password-1")
    mobile.click("button[type=submit]")
    mobile.wait_for_selector("#kill-switch")
    shot(mobile, "phone-overview")
    assert mobile.evaluate("document.documentElement.scrollWidth") <= 390 + 1  # nothing wider than the screen
    mobile.goto(f"{url}/strategies/{strategy.pk}/")
    shot(mobile, "phone-strategy-detail")
    phone.close()
