"""The demo's two opposite strategies on one paper account trade for an hour of feed without locking up."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.conf import settings
from django.core.management import call_command
from django.utils import timezone

from strategies.candles import candles_read_csv
from strategies.management.commands.demo_feed import demo_signal
from trading import services
from trading.execution import signal_process
from trading.exits import exits_drive
from trading.killswitch import kill_switch_enforce
from trading.monitor import positions_monitor
from trading.models import PaperPosition, Position, Signal, Strategy, VenueAccount
from trading.prices import price_set

pytestmark = pytest.mark.django_db

LIMIT_RULES = {"max_leverage", "max_open_positions", "max_symbol_exposure", "max_account_exposure"}


def test_the_demo_trades_an_hour_of_feed_without_piling_up_then_the_kill_switch_leaves_it_flat() -> None:
    call_command("seed_demo")
    account = VenueAccount.objects.get(name="demo-paper")
    strategies = list(Strategy.objects.filter(slug__startswith="demo-", status=Strategy.Status.ACTIVE))
    assert {s.slug for s in strategies} == {"demo-eth-btc", "demo-eth-btc-short"}
    rows = candles_read_csv(settings.BASE_DIR / "data" / "ETH_BTC-1m.csv", form="rows",
                            timeframe="1m").rows[:3600]  # the feed's hour: one candle a second, a signal every 20
    largest: dict[str, Decimal] = {s.slug: Decimal(0) for s in strategies}
    for count, row in enumerate(rows, start=1):
        price_set("ETH/BTC", row.close, volume=row.volume, time=timezone.now())
        signal_id = demo_signal(strategies, row, count=count, every=20, enqueue=False)
        if signal_id is not None:
            signal_process(signal_id=signal_id)
        if count % 5 == 0:  # the monitor's and the exit driver's beat, every 5 s of feed
            positions_monitor()
            exits_drive()
        for p in Position.objects.filter(account=account).select_related("strategy"):
            largest[p.strategy.slug] = max(largest[p.strategy.slug], abs(p.quantity))
    refused = list(Signal.objects.filter(account=account, decision_rule__in=LIMIT_RULES)
                   .values_list("decision_rule", "decision_detail"))
    assert refused == []
    assert Signal.objects.filter(account=account).count() >= 180
    assert not Signal.objects.filter(account=account, status=Signal.Status.FAILED).exists()
    # An entry is 0.2 BTC of ETH (about 2.25 ETH on these candles): a strategy never holds more than one of them.
    assert all(q < Decimal("2.6") for q in largest.values()), largest
    books = sum(Position.objects.filter(account=account).values_list("quantity", flat=True), Decimal(0))
    venue = PaperPosition.objects.filter(account=account, symbol="ETH/BTC").values_list("quantity", flat=True)
    assert books == sum(venue, Decimal(0))  # the strategies' sub-positions sum to the venue's net

    services.kill_switch_engage(by="test", reason="end of the demo hour")
    kill_switch_enforce()
    exits_drive()
    assert not Position.objects.filter(account=account).exclude(quantity=0).exists()
    assert all(q == 0 for q in PaperPosition.objects.filter(account=account).values_list("quantity", flat=True))
    assert not Signal.objects.filter(account=account, status=Signal.Status.WORKING).exists()
