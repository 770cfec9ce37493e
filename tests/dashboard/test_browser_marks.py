"""Live marks in a real Chromium: a live Hyperliquid position on the overview is marked at the prices the
market-data role streams from the venue's websocket (the loopback fake), and the mark moves without a reload."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.fakes import venues as fake_venues
from tests.fakes.hyperliquid_ws import FakeHyperliquidWs
from tests.fakes.live import live_setup

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "artifacts" / "screenshots"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-dev-shm-usage"]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (make test installs it)"),
]


@pytest.fixture
def hyperliquid() -> Iterator[fake_venues.VenueHarness]:
    with fake_venues.harness("hyperliquid") as running:
        yield running


@pytest.mark.django_db(transaction=True)
def test_a_live_position_is_marked_at_the_streamed_price_and_follows_it(live_server: Any, hyperliquid: Any,
                                                                       monkeypatch: Any, make_strategy: Any) -> None:
    from django.contrib.auth import get_user_model
    from playwright.sync_api import sync_playwright

    from exchanges.streams.hyperliquid import HyperliquidStream
    from strategies.feeds import MarketDataRole
    from trading.execution import signal_process
    from trading.intake import signal_create
    from trading.models import MarketPrice, Signal
    from trading.prices import price_feed_of

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's sync API keeps a loop in this thread
    live = live_setup(hyperliquid, setenv=monkeypatch.setenv, make_strategy=make_strategy)
    signal, _ = signal_create(strategy=live.strategy, source="manual", action="open_long", idempotency_key="o",
                              enqueue=False)
    assert signal_process(signal_id=signal.pk).status == Signal.Status.EXECUTED
    feed = price_feed_of(live.account)
    coin = live.strategy.symbol.split("/")[0]
    get_user_model().objects.create_user("trader", "t@localhost", "trader-password-1", is_staff=True)

    with FakeHyperliquidWs() as ws:
        role = MarketDataRole(streams=lambda f: HyperliquidStream(base_url=ws.base_url), feeds=[feed],
                              flush_seconds=0.05, refresh_seconds=0.5)
        stop = threading.Event()
        thread = threading.Thread(target=lambda: asyncio.run(role.run(until=stop.is_set)), daemon=True)
        thread.start()
        try:
            def mark(price: str) -> None:
                wait_for(lambda: ws.push_mids({coin: price}) > 0 and MarketPrice.objects.filter(
                    feed=feed, symbol=live.strategy.symbol, price=Decimal(price)).exists(),
                    what=f"the role wrote {price}")

            mark("61234.5")
            SHOTS.mkdir(parents=True, exist_ok=True)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
                try:
                    page = browser.new_page(viewport={"width": 1280, "height": 800})
                    page.set_default_timeout(20_000)
                    page.goto(f"{live_server.url}/login/")
                    page.fill("#id_username", "trader")
                    page.fill("#id_password", "trader-password-1")
                    page.click("button[type=submit]")
                    page.goto(f"{live_server.url}/")
                    positions = "#overview-positions"
                    page.wait_for_selector(f"{positions}:has-text('61,234.5'), {positions}:has-text('61234.5')")
                    assert live.strategy.slug in page.inner_text(positions)
                    assert f"{live.strategy.symbol}" in page.inner_text("#prices")
                    page.screenshot(path=str(SHOTS / "overview-live-marks.png"), full_page=True)
                    mark("60500")  # the venue's price moves: the page follows by itself (htmx polling)
                    page.wait_for_selector(f"{positions}:has-text('60,500'), {positions}:has-text('60500')",
                                           timeout=30_000)
                finally:
                    browser.close()
        finally:
            stop.set()
            thread.join(timeout=15)
