"""A paper account on a venue's price feed trades that venue's markets (tick, lot, minimums, leverage, fees, price
rules), read from its public market data (the loopback Hyperliquid fake) once, stored for every process and reloaded
daily; the demo feed keeps the bundled markets. Its fills round as the venue would and its minimums are the venue's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from exchanges import registry
from exchanges.base import Market
from exchanges.errors import TemporaryError, VenueError
from exchanges.paper import DEFAULT_MARKETS
from exchanges.resilience import RetryPolicy
from tests.fakes.hyperliquid_venue import UNIVERSE, HyperliquidFake, price_ok
from trading.connectors import connector_build, connector_for
from trading.execution import signal_process
from trading.feedmarkets import feed_markets, feed_markets_store
from trading.intake import signal_create
from trading.models import FeedMarkets, Fill, Signal

pytestmark = pytest.mark.django_db
D = Decimal
BTC = "BTC/USDC:USDC"


@pytest.fixture(autouse=True)
def _quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "RETRY_POLICY", RetryPolicy(max_attempts=2, base_delay=0.001, max_delay=0.002))


@pytest.fixture
def hl(settings: Any) -> Iterator[HyperliquidFake]:
    """The venue's public market data: Hyperliquid's REST info on loopback (HYPERLIQUID_PUBLIC_ENDPOINT)."""
    with HyperliquidFake(mainnet=True) as fake:
        settings.PUBLIC_ENDPOINTS = {**settings.PUBLIC_ENDPOINTS, "hyperliquid": fake.url}
        yield fake


def _meta_requests(fake: HyperliquidFake) -> int:
    return len(fake.requests(lambda r: '"meta"' in r.body.decode()))


def _open(strategy: Any, key: str, action: str = "open_long") -> Signal:
    signal, _ = signal_create(strategy=strategy, source="manual", action=action, idempotency_key=key, enqueue=False)
    return signal_process(signal_id=signal.pk)


def test_a_paper_account_on_the_hyperliquid_feed_trades_hyperliquids_markets_loaded_once(
        hl: HyperliquidFake, make_account: Any) -> None:
    account = make_account(price_feed="hyperliquid")
    markets = {m.symbol: m for m in connector_for(account).markets()}
    assert set(markets) == {f"{u['name']}/USDC:USDC" for u in UNIVERSE}  # the venue's, not the bundled list
    btc, doge = markets[BTC], markets["DOGE/USDC:USDC"]
    assert (btc.tick_size, btc.lot_size, btc.min_qty, btc.min_notional, btc.max_leverage, btc.kind) == (
        D("0.1"), D("0.00001"), D("0.00001"), D("10"), D("40"), "perp")
    assert (btc.maker_fee, btc.taker_fee, btc.price_sig_figs) == (D("0.00015"), D("0.00045"), 5)
    assert (doge.tick_size, doge.lot_size, doge.max_leverage) == (D("0.000001"), D("1"), D("10"))
    assert _meta_requests(hl) == 1

    second = make_account(price_feed="hyperliquid")
    assert connector_build(second).market(BTC) == btc  # from the stored list: no request
    assert _meta_requests(hl) == 1
    assert FeedMarkets.objects.get(feed="hyperliquid").markets[0]["tick_size"] == "0.1"  # exact text
    assert tuple(connector_for(make_account()).markets()) == DEFAULT_MARKETS  # the demo feed keeps the bundle


def test_a_feeds_markets_are_reloaded_after_a_day_and_kept_when_the_venue_cannot_be_reached() -> None:
    now = timezone.now()
    first = (Market(symbol="X/USD", base="X", quote="USD", tick_size=D("0.01"), lot_size=D("1"), min_qty=D("1")),)
    later = (dataclasses.replace(first[0], tick_size=D("0.05")),)
    loads: list[str] = []

    def load(markets: tuple[Market, ...]) -> Any:
        def loader() -> tuple[Market, ...]:
            loads.append("ok")
            return markets
        return loader

    def down() -> tuple[Market, ...]:
        loads.append("down")
        raise TemporaryError("connection refused", venue="x")

    with pytest.raises(TemporaryError, match="cannot be loaded from its venue and none are stored yet"):
        feed_markets("x", load=down, now=now)
    assert feed_markets("x", load=load(first), now=now) == first
    assert feed_markets("x", load=down, now=now + timedelta(hours=23)) == first  # fresh: not asked
    assert feed_markets("x", load=down, now=now + timedelta(hours=25)) == first  # stale, venue down: kept
    assert feed_markets("x", load=load(later), now=now + timedelta(hours=25)) == later  # reloaded
    assert feed_markets("x", load=down, now=now + timedelta(hours=26)) == later
    assert loads == ["down", "ok", "down", "ok"]


def test_with_the_venue_unreachable_and_nothing_stored_the_paper_connector_is_not_built(
        settings: Any, make_account: Any) -> None:
    with HyperliquidFake(mainnet=True) as fake:
        gone = fake.url
    settings.PUBLIC_ENDPOINTS = {**settings.PUBLIC_ENDPOINTS, "hyperliquid": gone}
    account = make_account(price_feed="hyperliquid")
    with pytest.raises(VenueError, match="markets of the hyperliquid price feed cannot be loaded"):
        connector_build(account)
    feed_markets_store("hyperliquid", DEFAULT_MARKETS, now=timezone.now() - timedelta(days=3))
    assert tuple(connector_build(account).markets()) == DEFAULT_MARKETS  # a stale list beats none


def test_a_paper_fill_on_the_hyperliquid_feed_rounds_as_the_venue_would(
        hl: HyperliquidFake, make_account: Any, make_strategy: Any, set_price: Any) -> None:
    account = make_account(price_feed="hyperliquid", paper_initial_cash="100000")
    strategy = make_strategy(account, symbol=BTC, sizing_mode="quantity", sizing_value="0.123456")
    set_price(BTC, "43210.5", feed="hyperliquid")  # a mid between two valid prices (5 significant figures)
    assert _open(strategy, "buy").status == Signal.Status.EXECUTED
    fill = Fill.objects.get(strategy=strategy)
    assert (fill.quantity, fill.price) == (D("0.12345"), D("43211"))  # size down to szDecimals, price up to 5 figures
    assert price_ok(fill.price, 5)
    assert fill.fee == D("2.40047908")  # 0.12345 x 43211 x 0.00045 (the venue's taker fee) = 2.4004790775
    assert _open(strategy, "sell", action="close").status == Signal.Status.EXECUTED
    closing = Fill.objects.filter(strategy=strategy).latest("pk")
    assert closing.price == D("43210")  # a seller's price rounds down


def test_an_entry_under_ten_dollars_is_refused_as_on_the_venue(
        hl: HyperliquidFake, make_account: Any, make_strategy: Any, set_price: Any) -> None:
    account = make_account(price_feed="hyperliquid")
    strategy = make_strategy(account, symbol=BTC, sizing_mode="quantity", sizing_value="0.0002")
    set_price(BTC, "43210", feed="hyperliquid")
    refused = _open(strategy, "small")
    assert refused.status == Signal.Status.REJECTED and refused.decision_rule == "min_size"
    assert "below the minimum 10" in refused.decision_detail
    assert not Fill.objects.filter(strategy=strategy).exists()
