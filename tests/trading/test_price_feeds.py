"""Prices are keyed by feed and symbol: two venues quoting one symbol never overwrite each other, a paper account
trades on the feed it names, and marks, stops and the webhook's price guard read the account's own feed."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.utils import timezone

from trading import selectors
from trading.execution import signal_process
from trading.intake import signal_create
from trading.models import Fill, MarketPrice, Position, Signal, VenueAccount
from trading.monitor import stops_crossed
from trading.prices import accounts_priced_by, price_feed_of

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _venue_feeds_list_the_paper_markets(feed_markets) -> None:  # type: ignore[no-untyped-def]
    """Paper accounts on a venue's feed trade that venue's markets: here the bundled ones, so that two feeds quote
    the same symbols."""
    feed_markets("hyperliquid", "coinbase")


def _open(strategy, key: str) -> Signal:  # type: ignore[no-untyped-def]
    signal, _ = signal_create(strategy=strategy, source="manual", action="open_long", idempotency_key=key,
                              enqueue=False)
    return signal_process(signal_id=signal.pk)


def test_two_feeds_quoting_one_symbol_keep_their_own_price(set_price) -> None:
    set_price("BTC/USD", "50000")
    set_price("BTC/USD", "61000", feed="hyperliquid")
    set_price("BTC/USD", "50010")  # the demo feed's next price leaves hyperliquid's alone
    prices = dict(MarketPrice.objects.values_list("feed", "price"))
    assert prices == {"demo": Decimal("50010"), "hyperliquid": Decimal("61000")}


def test_a_paper_account_fills_at_the_price_of_the_feed_it_names(make_account, make_strategy, set_price) -> None:
    set_price("BTC/USD", "50000")
    set_price("BTC/USD", "61000", feed="hyperliquid")
    demo = make_account()
    live_priced = make_account(price_feed="hyperliquid")
    assert (price_feed_of(demo), price_feed_of(live_priced)) == ("demo", "hyperliquid")
    for account, expected in ((demo, Decimal("50000")), (live_priced, Decimal("61000"))):
        strategy = make_strategy(account, sizing_value="0.01")
        assert _open(strategy, f"o{account.pk}").status == Signal.Status.EXECUTED
        assert Fill.objects.get(strategy=strategy).price == expected


def test_marks_come_from_each_accounts_own_feed(make_account, make_strategy, set_price) -> None:
    set_price("BTC/USD", "50000")
    set_price("BTC/USD", "50000", feed="hyperliquid")
    demo, hl = make_account(), make_account(price_feed="hyperliquid")
    for account in (demo, hl):
        assert _open(make_strategy(account, sizing_value="0.1"), f"m{account.pk}").status == Signal.Status.EXECUTED
    set_price("BTC/USD", "51000")  # +1000 on the demo feed only
    set_price("BTC/USD", "49000", feed="hyperliquid")  # -1000 on hyperliquid's
    marks = {m.position.account_id: m.mark for m in selectors.positions_marked()}
    assert marks == {demo.pk: Decimal("51000"), hl.pk: Decimal("49000")}
    unrealized = {line.id: line.unrealized_pnl for line in selectors.pnl_summary()["accounts"]}
    assert unrealized[demo.pk] == Decimal("100") and unrealized[hl.pk] == Decimal("-100")


def test_a_price_crosses_only_the_stops_of_accounts_on_its_feed(make_account, make_strategy, set_price) -> None:
    set_price("BTC/USD", "50000")
    set_price("BTC/USD", "50000", feed="hyperliquid")
    demo, hl = make_account(), make_account(price_feed="hyperliquid")
    for account in (demo, hl):
        strategy = make_strategy(account, sizing_value="0.1", stop_loss_mode="percent", stop_loss_value="2")
        assert _open(strategy, f"s{account.pk}").status == Signal.Status.EXECUTED
    assert Position.objects.filter(stop_loss=Decimal("49000")).count() == 2
    assert stops_crossed(symbol="BTC/USD", price=Decimal("48000"), feed="hyperliquid") == [hl.pk]
    assert stops_crossed(symbol="BTC/USD", price=Decimal("48000")) == [demo.pk]
    assert stops_crossed(symbol="BTC/USD", price=Decimal("48000"), feed="coinbase") == []


def test_accounts_priced_by_is_price_feed_of_inverted(make_account) -> None:
    accounts = [make_account(), make_account(price_feed="hyperliquid"), make_account(price_feed="coinbase"),
                VenueAccount.objects.create(name="hl-live", venue="hyperliquid", network="mainnet",
                                            credentials_env="HL"),
                VenueAccount.objects.create(name="hl-test", venue="hyperliquid", network="testnet",
                                            credentials_env="HLT")]
    for feed in ("demo", "hyperliquid", "hyperliquid-testnet", "coinbase", "synthetix"):
        found = set(VenueAccount.objects.filter(accounts_priced_by(feed)).values_list("pk", flat=True))
        assert found == {a.pk for a in accounts if price_feed_of(a) == feed}, feed


def test_the_webhook_price_guard_reads_the_accounts_feed(make_account, make_strategy, set_price) -> None:
    from webhooks.parsers import alert_validate
    from webhooks.services import price_guard

    set_price("BTC/USD", "50000")
    set_price("BTC/USD", "70000", feed="hyperliquid")
    alert = alert_validate({"strategy": "s", "action": "buy", "ticker": "BTCUSD", "price": "69900"}, now=timezone.now(),
                           max_age_seconds=60, max_future_seconds=60, require_time=False)
    assert price_guard(alert, "BTC/USD", "hyperliquid") is None
    refused = price_guard(alert, "BTC/USD", "demo")
    assert refused is not None and refused.error == "price_out_of_range"


def test_a_market_in_use_without_a_fresh_price_is_stale_and_refuses_entries_but_not_exits(
        make_account, make_strategy, set_price) -> None:
    from datetime import timedelta

    from tradesite.health import _prices_check
    from trading.selectors import prices_in_use

    now = timezone.now()
    hl = make_account(price_feed="hyperliquid")
    strategy = make_strategy(hl, sizing_value="0.1")
    make_strategy(make_account(), symbol="ETH/USD", start=False)  # paused: not in use
    assert [(m.feed, m.symbol, m.age_seconds, m.stale) for m in prices_in_use(now=now, max_age_seconds=60)] == [
        ("hyperliquid", "BTC/USD", None, True)]  # no price at all
    set_price("BTC/USD", "50000", feed="hyperliquid", at=now - timedelta(seconds=10))
    set_price("BTC/USD", "50000", at=now - timedelta(hours=1))  # the demo feed's old price is not this account's
    (market,) = prices_in_use(now=now, max_age_seconds=60)
    assert (market.age_seconds, market.stale) == (10.0, False)
    assert _prices_check() == "ok"
    assert _open(strategy, "fresh").status == Signal.Status.EXECUTED

    set_price("BTC/USD", "50000", feed="hyperliquid", at=now - timedelta(seconds=600))  # the feed went silent
    assert prices_in_use(now=now, max_age_seconds=60)[0].stale and _prices_check() == "stale"
    refused = _open(strategy, "stale")
    assert refused.status == Signal.Status.REJECTED and refused.decision_rule == "stale_price"
    closing, _ = signal_create(strategy=strategy, source="manual", action="close", idempotency_key="close",
                               enqueue=False)
    assert signal_process(signal_id=closing.pk).status == Signal.Status.EXECUTED  # the exit still goes
    assert Position.objects.get(strategy=strategy).quantity == 0


def test_prices_store_upserts_a_feeds_markets_in_one_statement(set_price, django_assert_num_queries) -> None:
    from trading.prices import prices_store

    now = timezone.now()
    set_price("BTC/USD", "50000", feed="hyperliquid")
    set_price("BTC/USD", "40000")  # the demo feed's row is left alone
    with django_assert_num_queries(1):
        prices_store("hyperliquid", [("BTC/USD", Decimal("50100.5"), now), ("ETH/USD", Decimal("3000"), now)])
    rows = {(f, s): (p, t) for f, s, p, t in MarketPrice.objects.values_list("feed", "symbol", "price", "time")}
    assert rows == {("hyperliquid", "BTC/USD"): (Decimal("50100.5"), now), ("hyperliquid", "ETH/USD"):
                    (Decimal("3000"), now), ("demo", "BTC/USD"): (Decimal("40000"), rows[("demo", "BTC/USD")][1])}
