"""A strategy evaluated on candles needs them from its venue: a timeframe the venue lacks is refused at creation and
on edit (API and dashboard), with the field error naming the venue's timeframes; a venue without candles (Synthetix)
refuses indicator kinds. Webhook strategies and the paper venue's store take any timeframe."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

from exchanges import synthetix
from tests.fakes import venues as fake_venues
from tests.fakes.memory_venue import MemoryVenue, install
from trading import services
from trading.models import AuditEvent, Strategy

HL_TIMEFRAMES = "1m, 3m, 5m, 15m, 30m, 1h, 2h, 4h, 12h, 1d"


def _live_account(monkeypatch: pytest.MonkeyPatch, harness: fake_venues.VenueHarness, prefix: str) -> Any:
    for key, value in harness.env(prefix).items():
        monkeypatch.setenv(key, value)
    return services.account_create(data={"name": prefix.lower(), "venue": harness.venue, "network": harness.network,
                                         "credentials_env": prefix}, by="test")


@pytest.fixture
def hl_account(monkeypatch: pytest.MonkeyPatch, db: Any) -> Iterator[Any]:
    with fake_venues.harness("hyperliquid") as harness:
        yield _live_account(monkeypatch, harness, "TF_HL")


def _data(account: Any, **overrides: Any) -> dict[str, Any]:
    data = {"name": "Trend", "slug": "trend", "kind": "rsi", "symbol": "BTC/USDC:USDC", "account": account.pk,
            "mode": "live", "sizing_mode": "notional", "sizing_value": "100"}
    return {**data, **overrides}


def test_a_timeframe_hyperliquid_lacks_is_refused_at_creation_naming_its_timeframes_and_nothing_is_written(
        api: Any, hl_account: Any) -> None:
    response = api.post("/api/strategies/", _data(hl_account, timeframe="6h"), format="json")
    assert response.status_code == 400
    assert response.json() == {"timeframe": [f"hyperliquid serves candles in {HL_TIMEFRAMES}; not 6h"]}
    assert not Strategy.objects.exists() and not AuditEvent.objects.filter(action="strategy.created").exists()
    assert api.post("/api/strategies/", _data(hl_account, timeframe="4h"), format="json").status_code == 201


def test_a_timeframe_the_venue_lacks_is_refused_on_edit_and_the_strategy_is_unchanged(
        api: Any, hl_account: Any) -> None:
    created = api.post("/api/strategies/", _data(hl_account, timeframe="12h"), format="json").json()
    response = api.patch(f"/api/strategies/{created['id']}/", {"timeframe": "6h"}, format="json")
    assert response.status_code == 400 and list(response.json()) == ["timeframe"]
    assert Strategy.objects.get(pk=created["id"]).timeframe == "12h"


def test_a_webhook_strategy_reads_no_candles_and_keeps_any_timeframe(api: Any, hl_account: Any) -> None:
    response = api.post("/api/strategies/", _data(hl_account, kind="webhook", timeframe="6h"), format="json")
    assert response.status_code == 201, response.json()


def test_coinbase_has_no_4h_candles(api: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    with fake_venues.harness("coinbase") as harness:
        account = _live_account(monkeypatch, harness, "TF_CB")
        response = api.post("/api/strategies/", _data(account, symbol="BTC/USD", timeframe="4h"), format="json")
    assert response.status_code == 400
    assert response.json()["timeframe"] == ["coinbase serves candles in 1m, 5m, 15m, 30m, 1h, 2h, 6h, 1d; not 4h"]
    assert not Strategy.objects.exists()


def test_synthetix_serves_no_candles_so_indicator_kinds_are_refused_and_webhooks_are_not(
        api: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    venue = MemoryVenue(venue="synthetix")
    venue.capabilities = dataclasses.replace(synthetix.CAPABILITIES)  # the venue's own capability table
    install(monkeypatch, venue)
    account = services.account_create(data={"name": "snx", "venue": "synthetix", "network": "testnet",
                                            "credentials_env": "TF_SNX"}, by="test")
    response = api.post("/api/strategies/", _data(account, symbol="BTC/USD", timeframe="1h"), format="json")
    assert response.status_code == 400
    assert response.json() == {"kind": ["rsi is evaluated on candles and synthetix serves none: use a webhook or "
                                         "manual strategy on this account"]}
    assert not Strategy.objects.exists()
    webhook = api.post("/api/strategies/", _data(account, kind="webhook", symbol="BTC/USD"), format="json")
    assert webhook.status_code == 201, webhook.json()


@pytest.mark.parametrize("timeframe", services.TIMEFRAMES)
def test_the_paper_venue_takes_every_timeframe_its_store_can_hold(api: Any, make_account: Any,
                                                                   timeframe: str) -> None:
    response = api.post("/api/strategies/", _data(make_account(), symbol="BTC/USD", mode="paper",
                                                  timeframe=timeframe), format="json")
    assert response.status_code == 201, response.json()


@pytest.mark.parametrize(("feed", "timeframe", "field", "message"), [
    ("hyperliquid", "6h", "timeframe", f"hyperliquid serves candles in {HL_TIMEFRAMES}; not 6h"),
    ("hyperliquid-testnet", "6h", "timeframe", f"hyperliquid-testnet serves candles in {HL_TIMEFRAMES}; not 6h"),
    ("coinbase", "4h", "timeframe", "coinbase serves candles in 1m, 5m, 15m, 30m, 1h, 2h, 6h, 1d; not 4h"),
    ("synthetix", "1h", "kind", "rsi is evaluated on candles and synthetix serves none: use a webhook or manual "
                                "strategy on this account"),
])
def test_a_paper_account_on_a_venues_prices_takes_that_venues_timeframes(
        api: Any, feed_markets: Any, feed: str, timeframe: str, field: str, message: str) -> None:
    feed_markets(feed)  # the venue's markets as stored (here the bundled ones, BTC/USD among them)
    account = services.account_create(data={"name": "paper live", "venue": "paper", "network": "paper",
                                            "price_feed": feed}, by="test")
    response = api.post("/api/strategies/", _data(account, symbol="BTC/USD", mode="paper", timeframe=timeframe),
                        format="json")
    assert response.status_code == 400 and response.json() == {field: [message]}
    assert not Strategy.objects.exists()


def test_the_dashboard_form_shows_the_error_on_the_timeframe_field(client: Any, django_user_model: Any,
                                                                   hl_account: Any) -> None:
    client.force_login(django_user_model.objects.create_user("boss", password="pw-boss-123", is_staff=True))
    fields = {"name": "Trend", "slug": "trend", "kind": "rsi", "account": hl_account.pk, "mode": "live",
              "symbol": "BTC/USDC:USDC", "timeframe": "6h", "params": "{}", "sizing_mode": "notional",
              "sizing_value": "100", "stop_loss_mode": "none", "take_profit_mode": "none", "leverage": "1",
              "protective_orders": "auto"}
    response = client.post("/strategies/new/", fields)
    assert response.status_code == 400
    assert f"hyperliquid serves candles in {HL_TIMEFRAMES}; not 6h" in response.content.decode()
    assert not Strategy.objects.exists()
