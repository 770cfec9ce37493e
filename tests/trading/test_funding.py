"""Perp funding booked once per (account, market, funding time), to the last digit.

Paper on the hyperliquid feed: the loopback Hyperliquid publishes hourly rates (`fundingHistory`, a few ms past the
hour, one hour missing) and 1h candles; a paper account holds a long and a short, with a second long added between
two funding times. Each payment is position then x the candle's open at the funding time x the rate, charged by the
paper venue on its own cash and booked into the strategies' realized P&L and the account's cash, once, whether the
beat runs once, twice, four times at once, or first before some hours and again after the downtime.

Live Hyperliquid: the fake charges the account's position and reports it in `userFunding`; each payment on a position
of ours is booked once from that record.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db.models import F
from django.utils import timezone

from exchanges import registry
from exchanges.base import datetime_to_ms
from exchanges.resilience import RetryPolicy
from tests.conftest import run_threads
from tests.fakes.hyperliquid_venue import HyperliquidFake
from trading.execution import signal_process
from trading.funding import floor_time, funding_settle, funding_split, venue_funding_record
from trading.intake import signal_create
from trading.models import AuditEvent, Fill, Funding, Position, Signal, VenueAccount

D = Decimal
BTC, ETH = "BTC/USDC:USDC", "ETH/USDC:USDC"
HOUR = timedelta(hours=1)


@pytest.fixture(autouse=True)
def _quick_retries_and_a_roomy_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two tries a read, a few milliseconds apart, and a request budget that never makes a test wait."""
    monkeypatch.setattr(registry, "RETRY_POLICY", RetryPolicy(max_attempts=2, base_delay=0.001, max_delay=0.002))
    monkeypatch.setitem(registry.VENUE_RATES, "hyperliquid", dataclasses.replace(
        registry.VENUE_RATES["hyperliquid"], rate=1e6, burst=1e6))


@pytest.fixture
def hl(settings: Any) -> Iterator[HyperliquidFake]:
    with HyperliquidFake(mainnet=True) as fake:
        settings.PUBLIC_ENDPOINTS = {**settings.PUBLIC_ENDPOINTS, "hyperliquid": fake.url}
        yield fake


def _open(strategy: Any, action: str) -> None:
    signal, _ = signal_create(strategy=strategy, source="manual", action=action, idempotency_key=f"{strategy.pk}",
                              enqueue=False)
    assert signal_process(signal_id=signal.pk).status == Signal.Status.EXECUTED


def _candle(coin: str, open_time: datetime, o: str, c: str) -> dict[str, Any]:
    t = datetime_to_ms(open_time)
    return {"T": t + 3_599_999, "c": c, "h": max(o, c, key=D), "i": "1h", "l": min(o, c, key=D), "n": 10,
            "o": o, "s": coin, "t": t, "v": "1.0"}


class Book:
    """A paper account on the hyperliquid feed: A long 0.5 BTC and B short 2 ETH since before H-4, C long 0.25 BTC
    since H-2 + 30 min (H: the current hour)."""

    def __init__(self, hl: HyperliquidFake, make_account: Any, make_strategy: Any, set_price: Any) -> None:
        self.hour = h = floor_time(timezone.now(), HOUR)
        self.account = make_account(price_feed="hyperliquid", paper_initial_cash="100000")
        set_price(BTC, "60000", feed="hyperliquid")
        set_price(ETH, "3000", feed="hyperliquid")
        self.a = make_strategy(self.account, symbol=BTC, sizing_mode="quantity", sizing_value="0.5")
        self.b = make_strategy(self.account, symbol=ETH, sizing_mode="quantity", sizing_value="2")
        self.c = make_strategy(self.account, symbol=BTC, sizing_mode="quantity", sizing_value="0.25")
        _open(self.a, "open_long")
        _open(self.b, "open_short")
        _open(self.c, "open_long")
        # The positions are older than the funding times below: their fills moved back in time.
        Fill.objects.filter(strategy__in=[self.a, self.b]).update(time=h - 5 * HOUR + timedelta(minutes=30))
        Fill.objects.filter(strategy=self.c).update(time=h - 2 * HOUR + timedelta(minutes=30))
        # Rates: H-4, (H-3 missing from the venue's history), H-2, H-1: 0.0000125 -> 0.0000123 (ETH) / 0.00002
        # (BTC) -> -0.00001.
        for coin, rates in (("BTC", ("0.0000125", "0.00002", "-0.00001")),
                            ("ETH", ("0.0000125", "0.0000123", "-0.00001"))):
            for back, rate in zip((4, 2, 1), rates, strict=True):
                hl.fund(coin, datetime_to_ms(h - back * HOUR), rate)
        hl.candles[("BTC", "1h")] = [
            _candle("BTC", h - 5 * HOUR, "59000", "59990"), _candle("BTC", h - 4 * HOUR, "60000", "60700"),
            _candle("BTC", h - 3 * HOUR, "60800", "60950"), _candle("BTC", h - 2 * HOUR, "61000", "60400"),
            _candle("BTC", h - HOUR, "60500.3", "60510"), _candle("BTC", h, "60510", "60520")]
        # ETH's candles stop at H-2: H-1 is valued at the last close before it (2999.99).
        hl.candles[("ETH", "1h")] = [
            _candle("ETH", h - 5 * HOUR, "2990", "2995"), _candle("ETH", h - 4 * HOUR, "3000", "3002"),
            _candle("ETH", h - 3 * HOUR, "3002", "3001.5"), _candle("ETH", h - 2 * HOUR, "3001.73", "2999.99")]
        self.account.refresh_from_db()
        self.cash, self.paper_cash = self.account.cash, self.account.paper_cash

    def payments(self) -> set[tuple[str, datetime, Decimal]]:
        return set(Funding.objects.filter(account=self.account).values_list("symbol", "time", "amount"))

    def expected(self) -> set[tuple[str, datetime, Decimal]]:
        h = self.hour
        return {
            (BTC, h - 4 * HOUR, D("-0.375")),  # A 0.5 x 60000 x 0.0000125, paid
            (BTC, h - 2 * HOUR, D("-0.61")),  # A 0.5 x 61000 x 0.00002, paid (C not yet open)
            (BTC, h - HOUR, D("0.45375225")),  # (A + C) 0.75 x 60500.3 x -0.00001, received
            (ETH, h - 4 * HOUR, D("0.075")),  # B -2 x 3000 x 0.0000125, received
            (ETH, h - 2 * HOUR, D("0.07384256")),  # B -2 x 3001.73 x 0.0000123 = -0.073842558, half up
            (ETH, h - HOUR, D("-0.0599998")),  # B -2 x 2999.99 x -0.00001, paid
        }

    def check(self) -> None:
        """Every payment booked exactly once, into the venue's cash, the account's and each strategy's P&L."""
        assert self.payments() == self.expected()
        realized = dict(Position.objects.filter(account=self.account).values_list("strategy_id", "realized_pnl"))
        assert realized == {self.a.pk: D("-0.6824985"),  # -0.375 - 0.61 + 0.3025015 (its 0.5 of 0.75)
                            self.c.pk: D("0.15125075"),  # its 0.25 of 0.75 at H-1
                            self.b.pk: D("0.08884276")}  # 0.075 + 0.07384256 - 0.0599998
        total = D("-0.44240499")
        self.account.refresh_from_db()
        assert (self.account.cash - self.cash, self.account.paper_cash - self.paper_cash) == (total, total)
        late = Funding.objects.get(account=self.account, symbol=BTC, time=self.hour - HOUR)
        assert late.by_strategy == {str(self.a.pk): "0.3025015", str(self.c.pk): "0.15125075"}
        assert (late.rate, late.price, late.quantity, late.source) == (D("-0.00001"), D("60500.3"), D("0.75"),
                                                                       "paper")
        assert Funding.objects.get(account=self.account, symbol=ETH, time=self.hour - HOUR).price == D("2999.99")
        assert AuditEvent.objects.filter(action="funding.booked", entity_id=str(self.account.pk)).count() == 6


@pytest.mark.django_db
def test_paper_funding_on_the_venues_rates_is_booked_once_each_to_the_last_digit(
        hl: HyperliquidFake, make_account: Any, make_strategy: Any, set_price: Any) -> None:
    book = Book(hl, make_account, make_strategy, set_price)
    assert funding_settle() == {"paper": 6, "venue": 0, "failed": 0}
    book.check()
    assert funding_settle() == {"paper": 0, "venue": 0, "failed": 0}  # the beat again: nothing twice
    book.check()


@pytest.mark.django_db(transaction=True)
def test_four_workers_at_once_book_each_payment_once(hl: HyperliquidFake, make_account: Any, make_strategy: Any,
                                                     set_price: Any) -> None:
    book = Book(hl, make_account, make_strategy, set_price)
    assert run_threads(lambda: funding_settle() and None, 4) == []
    book.check()


@pytest.mark.django_db
def test_the_hours_missed_while_down_are_caught_up(hl: HyperliquidFake, make_account: Any, make_strategy: Any,
                                                  set_price: Any) -> None:
    book = Book(hl, make_account, make_strategy, set_price)
    before_the_outage = book.hour - 3 * HOUR + timedelta(minutes=5)
    assert funding_settle(now=before_the_outage)["paper"] == 2  # H-4 only (BTC, ETH)
    assert {t for _, t, _ in book.payments()} == {book.hour - 4 * HOUR}
    assert funding_settle()["paper"] == 4  # back up: H-2 and H-1 (H-3 the venue never paid)
    book.check()


@pytest.mark.django_db
def test_an_unreachable_venue_books_nothing_and_the_next_run_catches_up(
        hl: HyperliquidFake, make_account: Any, make_strategy: Any, set_price: Any) -> None:
    from tests.fakes.faults import Reply

    book = Book(hl, make_account, make_strategy, set_price)
    for _ in range(4):  # both tries of both markets' rates
        hl.script(lambda r: "fundingHistory" in r.body.decode(), Reply(502, b"Bad Gateway"))
    assert funding_settle() == {"paper": 0, "venue": 0, "failed": 2}
    assert not book.payments()
    assert funding_settle()["paper"] == 6
    book.check()


def test_a_payment_is_shared_by_position_and_adds_up_exactly() -> None:
    assert funding_split(D("-1"), {1: D("1"), 2: D("1"), 3: D("1")}, D("3")) == {
        1: D("-0.33333334"), 2: D("-0.33333333"), 3: D("-0.33333333")}  # the rest to the largest (lowest id)
    assert funding_split(D("0.45375225"), {1: D("0.5"), 2: D("0.25")}, D("0.75")) == {1: D("0.3025015"),
                                                                                      2: D("0.15125075")}
    # Half of the venue's position is ours: half of its payment.
    assert funding_split(D("2"), {1: D("-0.5")}, D("-1")) == {1: D("1")}
    assert funding_split(D("2"), {}, D("1")) == {} and funding_split(D("2"), {1: D("1")}, D("0")) == {}


@pytest.mark.django_db
def test_live_funding_is_booked_once_from_the_venues_records(monkeypatch: pytest.MonkeyPatch,
                                                              make_strategy: Any) -> None:
    from tests.fakes.hyperliquid_venue import harness
    from tests.fakes.live import live_setup

    with harness(network="testnet") as h:
        fake: HyperliquidFake = h.extra["fake"]  # type: ignore[assignment]
        live = live_setup(h, setenv=monkeypatch.setenv, make_strategy=make_strategy, sizing_value="0.1")
        _open(live.strategy, "open_long")
        hour = floor_time(timezone.now(), HOUR)
        Fill.objects.filter(strategy=live.strategy).update(time=hour - 3 * HOUR)  # opened three hours ago
        cash = VenueAccount.objects.get(pk=live.account.pk).cash
        realized = Position.objects.get(strategy=live.strategy).realized_pnl
        fake.fund("BTC", datetime_to_ms(hour - 4 * HOUR), "0.0001")  # before our position: not ours
        fake.fund("BTC", datetime_to_ms(hour - 2 * HOUR), "0.0000125")  # 0.1 x 43210 x 0.0000125 = 0.0540125 paid
        fake.fund("BTC", datetime_to_ms(hour - HOUR), "-0.00002")  # 0.1 x 43210 x 0.00002 = 0.08642 received
        reported = [r["delta"]["usdc"] for r in fake.user_funding[h.extra["owner"].address.lower()]]  # type: ignore[union-attr]
        assert reported == ["-0.4321", "-0.054012", "0.08642"]  # the venue's 6 decimals (half even)

        assert funding_settle() == {"paper": 0, "venue": 2, "failed": 0}
        assert venue_funding_record(account=live.account) == 0  # again: its next funding time has not come
        # A later run reads the last hour's records again: each is booked once all the same.
        assert venue_funding_record(account=live.account, now=timezone.now() + HOUR) == 0
        rows = list(Funding.objects.filter(account=live.account).order_by("time").values_list(
            "time", "amount", "rate", "quantity", "source"))
    assert rows == [(hour - 2 * HOUR, D("-0.054012"), D("0.0000125"), D("0.1"), "venue"),
                    (hour - HOUR, D("0.08642"), D("-0.00002"), D("0.1"), "venue")]
    assert Position.objects.get(strategy=live.strategy).realized_pnl - realized == D("0.032408")
    assert VenueAccount.objects.get(pk=live.account.pk).cash - cash == D("0.032408")
    assert Fill.objects.filter(strategy=live.strategy).update(time=F("time")) == 1  # one fill: nothing else moved


@pytest.mark.django_db
def test_the_beat_runs_funding_settle_on_the_monitoring_queue() -> None:
    from django_celery_beat.models import PeriodicTask

    from trading.schedules import schedules_ensure
    from trading.tasks import funding_settle_task

    schedules_ensure()
    task = PeriodicTask.objects.get(name="funding settle")
    assert (task.task, task.queue, task.interval.every, task.expire_seconds) == (
        "trading.tasks.funding_settle", "monitoring", 300, 300)
    assert funding_settle_task.apply().get() == {"paper": 0, "venue": 0, "failed": 0}
