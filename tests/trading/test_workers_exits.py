"""Exits through real Celery workers, Redis and Postgres: a close racing a slow entry, a worker killed between."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest
from django.utils import timezone

from tests.conftest import wait_for
from trading.execution import signal_process
from trading.intake import signal_create
from trading.monitor import stops_crossed
from trading.models import Order, PaperOrder, PaperPosition, Position, Signal

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def _send(strategy, action: str, key: str):  # type: ignore[no-untyped-def]
    signal, created = signal_create(strategy=strategy, source="webhook", idempotency_key=key, action=action)
    assert created
    return signal


def _beat_until_executed(signal_id: int, *, timeout: float = 60) -> None:
    """Do beat's part (a step of every exit every half second, run by the worker) until the exit is done."""
    from trading.tasks import exits_drive_task

    def done() -> bool:
        status = Signal.objects.values_list("status", flat=True).get(pk=signal_id)
        if status == Signal.Status.WORKING:
            exits_drive_task.delay()
        return status == Signal.Status.EXECUTED

    wait_for(done, timeout=timeout, every=0.5, what=f"exit signal {signal_id} executed")


def _flat(account, strategy) -> None:  # type: ignore[no-untyped-def]
    held = Position.objects.filter(strategy=strategy).values_list("quantity", flat=True).first()
    assert not held, (held, list(Order.objects.filter(account=account).values_list("purpose", "status", "reason")))
    venue = PaperPosition.objects.filter(account=account, symbol="BTC/USD").first()
    assert venue is None or venue.quantity == 0
    assert not Order.objects.filter(account=account, status__in=Order.WORKING).exists()


def test_a_close_50ms_after_the_open_with_300ms_of_venue_latency_ends_flat(workers, make_account, make_strategy,
                                                                            set_price) -> None:
    workers.start()
    account = make_account(paper_latency_ms=300)
    strategy = make_strategy(account, sizing_value="0.01")
    set_price("BTC/USD", "60000")
    opened = _send(strategy, "open_long", "race-open")
    time.sleep(0.05)
    closed = _send(strategy, "close", "race-close")
    _beat_until_executed(closed.pk)
    _flat(account, strategy)
    entry = Order.objects.get(signal=opened)
    exits = Order.objects.filter(signal=closed)
    # The entry filled (it reached the venue before the close) and one exit sold exactly that, or it was canceled
    # before filling and nothing needed selling: never a second entry, never more sold than bought.
    assert sum(o.filled_quantity for o in exits) == entry.filled_quantity
    assert PaperOrder.objects.filter(account=account).count() == 1 + exits.count()


def test_a_worker_killed_between_the_open_and_the_close_still_ends_flat(workers, make_account, make_strategy,
                                                                         set_price) -> None:
    workers.env["TRADING_RESEND_AFTER_SECONDS"] = "1"
    first = workers.start()
    account = make_account(paper_latency_ms=2000)
    strategy = make_strategy(account, sizing_value="0.01")
    set_price("BTC/USD", "60000")
    opened = _send(strategy, "open_long", "kill-open")
    wait_for(lambda: Order.objects.filter(signal=opened, status=Order.Status.SUBMITTING).exists(),
             what="entry committed as SUBMITTING")
    workers.kill(first)  # SIGKILL mid-send
    closed = _send(strategy, "close", "kill-close")
    workers.start()  # start-up recovery, then the exit goes on
    _beat_until_executed(closed.pk, timeout=90)
    _flat(account, strategy)
    entry = Order.objects.get(signal=opened)
    assert entry.is_final
    assert sum(o.filled_quantity for o in Order.objects.filter(signal=closed)) == entry.filled_quantity
    assert Signal.objects.get(pk=closed.pk).status == Signal.Status.EXECUTED
    assert Decimal(0) == sum(Position.objects.filter(account=account).values_list("quantity", flat=True))


def test_a_slow_venue_never_delays_another_accounts_stop(workers, monkeypatch, make_account, make_strategy,
                                                         set_price) -> None:
    from tests.fakes import venues as fake_venues
    from tests.fakes.live import live_setup
    from trading.tasks import positions_monitor_task

    with fake_venues.harness("hyperliquid") as harness:
        live = live_setup(harness, setenv=monkeypatch.setenv, make_strategy=make_strategy,
                          stop_loss_mode="percent", stop_loss_value="2")
        slow, _ = signal_create(strategy=live.strategy, source="manual", idempotency_key="slow-open",
                                       action="open_long", enqueue=False)
        assert signal_process(signal_id=slow.pk).status == Signal.Status.EXECUTED
        paper = make_account()
        strategy = make_strategy(paper, sizing_value="0.01", stop_loss_mode="percent", stop_loss_value="2")
        set_price("BTC/USD", "60000")
        opened, _ = signal_create(strategy=strategy, source="manual", idempotency_key="fast-open",
                                         action="open_long", enqueue=False)
        signal_process(signal_id=opened.pk)
        assert Position.objects.get(strategy=strategy).quantity == Decimal("0.01")

        workers.env.update(live.env)
        workers.start()
        harness.plan.latency = 20  # every call to the live venue now hangs for longer than its client waits
        set_price("BTC/USD", "58000")  # the paper account's stop is crossed
        positions_monitor_task.delay()
        wait_for(lambda: Position.objects.get(strategy=strategy).quantity == 0, timeout=15,
                 what="the paper account's stop-loss, while the live venue hangs")
        harness.plan.latency = 0


def test_stops_crossed_names_the_accounts_a_new_price_reaches(make_account, make_strategy, set_price) -> None:
    long_account, short_account, far_account, trail_account = (make_account() for _ in range(4))
    set_price("BTC/USD", "50000")
    for account, action, stop in ((long_account, "open_long", "2"), (short_account, "open_short", "2"),
                                  (far_account, "open_long", "10")):
        strategy = make_strategy(account, sizing_value="0.01", stop_loss_mode="percent", stop_loss_value=stop)
        signal_process(signal_id=signal_create(strategy=strategy, source="manual", action=action,
                                                             idempotency_key=f"s-{account.pk}", enqueue=False)[0].pk)
    trailing = make_strategy(trail_account, sizing_value="0.01", trailing_stop_percent="3")
    signal_process(signal_id=signal_create(strategy=trailing, source="manual", action="open_long",
                                                         idempotency_key="trail", enqueue=False)[0].pk)
    assert stops_crossed(symbol="BTC/USD", price=Decimal("49500")) == []  # the trail waits to be in profit
    assert stops_crossed(symbol="BTC/USD", price=Decimal("48999")) == [long_account.pk]
    assert stops_crossed(symbol="BTC/USD", price=Decimal("51001")) == [short_account.pk, trail_account.pk]
    assert stops_crossed(symbol="ETH/USD", price=Decimal("1")) == []
    Position.objects.filter(strategy=trailing).update(trail_peak=Decimal("50800"))  # the best price seen so far
    assert stops_crossed(symbol="BTC/USD", price=Decimal("50700")) == []  # no new best: nothing to move
    assert stops_crossed(symbol="BTC/USD", price=Decimal("50900")) == [trail_account.pk]


def test_a_price_that_crosses_a_stop_sends_the_exit_without_waiting_for_the_monitor_tick(
        workers, make_account, make_strategy, set_price) -> None:
    """No beat runs here: only the price's arrival (price_arrived, as the paper feed calls it) can send the exit."""
    from trading.tasks import price_arrived
    from trading.prices import price_set

    workers.start()
    account = make_account()
    strategy = make_strategy(account, sizing_value="0.01", stop_loss_mode="percent", stop_loss_value="2")
    set_price("BTC/USD", "50000")
    opened = signal_create(strategy=strategy, source="manual", action="open_long", idempotency_key="o",
                                  enqueue=False)[0]
    signal_process(signal_id=opened.pk)
    assert price_arrived("BTC/USD", Decimal("49500")) == 0  # above the stop: nothing to send
    price_set("BTC/USD", Decimal("48900"), time=timezone.now())
    assert price_arrived("BTC/USD", Decimal("48900")) == 1
    wait_for(lambda: Order.objects.filter(strategy=strategy, purpose=Order.Purpose.STOP_LOSS,
                                          status=Order.Status.FILLED).exists(), timeout=30,
             what="the stop-loss exit filled by the worker")
    _flat(account, strategy)
