"""The live candle feed: a venue's recent closed candles reach the store before strategies are evaluated."""

from __future__ import annotations

from datetime import datetime, timedelta, UTC
from decimal import Decimal

import pytest

from exchanges import registry
from strategies import services
from strategies.models import Candle
from tests.fakes.candle_venue import CandleVenue
from trading import services as trading_services
from exchanges.base import VenueCandle

pytestmark = pytest.mark.django_db
T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def _candles(n: int) -> list[VenueCandle]:
    return [VenueCandle(T0 + timedelta(minutes=i), Decimal("100") + i, Decimal("101") + i, Decimal("99") + i,
                        Decimal("100.5") + i, Decimal("3")) for i in range(n)]


@pytest.fixture
def venue(monkeypatch: pytest.MonkeyPatch) -> CandleVenue:
    fake = CandleVenue(_candles(6) + [VenueCandle(T0 + timedelta(minutes=6), Decimal("1"), Decimal("0.5"),
                                                  Decimal("1"), Decimal("1"), Decimal("1"))])
    monkeypatch.setattr(registry, "_LIVE", {"coinbase": lambda config: fake})
    return fake


def _strategy():  # type: ignore[no-untyped-def]
    account = trading_services.account_create(
        data={"name": "live", "venue": "coinbase", "network": "testnet", "credentials_env": "FAKE_CB"}, by="t")
    strategy = trading_services.strategy_create(data={"name": "r", "slug": "r", "kind": "rsi", "symbol": "BTC/USD",
                                                      "account": account, "mode": "live"}, by="t")
    return trading_services.strategy_start(strategy=strategy, by="t")


def test_only_closed_sane_candles_are_stored_once(venue: CandleVenue) -> None:
    strategy = _strategy()
    now = T0 + timedelta(minutes=5, seconds=30)  # the 12:05 candle is still forming
    assert services.candles_refresh(account=strategy.account, symbol="BTC/USD", timeframe="1m", now=now) == 5
    later = T0 + timedelta(minutes=8)  # 12:05 closed; 12:06 is impossible (high below open): skipped
    assert services.candles_refresh(account=strategy.account, symbol="BTC/USD", timeframe="1m", now=later) == 1
    times = list(Candle.objects.order_by("open_time").values_list("open_time", flat=True))
    assert times == [T0 + timedelta(minutes=i) for i in range(6)]
    assert Candle.objects.get(open_time=T0).close == Decimal("100.5")


def test_evaluation_tick_fetches_candles_first_and_survives_a_venue_outage(venue: CandleVenue) -> None:
    strategy = _strategy()
    counts = services.strategies_evaluate_due(now=T0 + timedelta(minutes=10))
    assert counts["candles_fetched"] == 6 and counts["evaluated"] == 1
    venue.down = True
    counts = services.strategies_evaluate_due(now=T0 + timedelta(minutes=11))
    # Reads are retried by the resilience wrapper (every try fails here), then the tick goes on without candles.
    assert counts["candles_fetched"] == 0 and venue.calls == 1 + registry.RETRY_POLICY.max_attempts
    strategy.refresh_from_db()
    assert strategy.status == "active"
