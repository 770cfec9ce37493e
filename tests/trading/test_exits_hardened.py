"""Exits that an outside audit broke, each pinned: a venue error never ends an exit, one venue never stops the kill
switch for the others, a signal waits while its strategy's exit is in flight, an entry the venue's lagging reads
could not find is not taken for gone, and dust is reported once instead of retried for ever."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from exchanges.errors import AuthError, TemporaryError
from tests.fakes.memory_venue import MemoryVenue
from tests.trading.test_live_readiness import SYMBOL, _live_account
from trading import services
from trading.execution import signal_process
from trading.exits import exit_drive, exits_drive
from trading.intake import signal_create
from trading.killswitch import kill_switch_enforce
from trading.monitor import accounts_to_monitor
from trading.protection import protection_sync
from trading.recovery import orders_sweep
from trading.models import KillSwitch, Order, PaperPosition, Position, Signal

pytestmark = pytest.mark.django_db


@pytest.fixture
def venue() -> MemoryVenue:
    memory = MemoryVenue(venue="hyperliquid")
    memory.set_price(SYMBOL, "50000")
    return memory


def _send(strategy, action: str, key: str) -> Signal:  # type: ignore[no-untyped-def]
    signal, created = signal_create(strategy=strategy, source="manual", idempotency_key=key, action=action,
                                           enqueue=False)
    assert created
    return signal_process(signal_id=signal.pk)


def _venue_net(venue: MemoryVenue) -> Decimal:
    return sum((p.quantity for p in venue.positions() if p.symbol == SYMBOL), Decimal(0))


def _held(strategy) -> Decimal:  # type: ignore[no-untyped-def]
    return Position.objects.filter(strategy=strategy).values_list("quantity", flat=True).first() or Decimal(0)


def _drive(signal: Signal, *, steps: int = 8, every: float = 40) -> Signal:
    later = timezone.now()
    for _ in range(steps):
        if signal.status != Signal.Status.WORKING:
            break
        later += timedelta(seconds=every)
        orders_sweep(now=later)
        signal = exit_drive(signal_id=signal.pk, now=later)
    return signal


def test_a_close_the_venue_cannot_take_stays_working_and_closes_once_it_answers(monkeypatch, venue,
                                                                                make_strategy) -> None:
    account = _live_account(monkeypatch, venue)
    strategy = make_strategy(account, mode="live", sizing_value="0.1", protective_orders="off")
    _send(strategy, "open_long", "o")
    venue.fail_next(AuthError("401 key rotated", venue="hyperliquid"), call="ticker")  # not retryable
    closing = _send(strategy, "close", "c")
    assert closing.status != Signal.Status.REJECTED, closing.decision_detail  # was: REJECTED venue_unavailable
    assert _drive(closing).status == Signal.Status.EXECUTED
    assert _held(strategy) == 0 and _venue_net(venue) == 0


def test_one_broken_venue_does_not_stop_the_kill_switch_closing_the_others(monkeypatch, venue,
                                                                           make_strategy) -> None:
    down = MemoryVenue(venue="hyperliquid")
    down.set_price(SYMBOL, "50000")
    broken = _live_account(monkeypatch, down, name="down", env="LIVE_DOWN")
    healthy = _live_account(monkeypatch, venue, name="up", env="LIVE_UP")
    for account, key in ((broken, "d"), (healthy, "u")):
        _send(make_strategy(account, mode="live", sizing_value="0.1", protective_orders="off"), "open_long", key)
    down.fail_next(TemporaryError("503 Service Unavailable", venue="hyperliquid"), times=1000)
    services.kill_switch_engage(reason="test", by="test")
    kill_switch_enforce()  # was: the broken venue's error ended the tick before the healthy account
    exits_drive()
    assert _venue_net(venue) == 0
    switch = KillSwitch.objects.get(pk=1)
    assert switch.flat_at is None and any(row.get("account") == "down" for row in switch.still_open)


def test_a_signal_waits_while_its_strategys_exit_is_in_flight(monkeypatch, venue, make_strategy) -> None:
    """The close's reply is lost (the venue filled it); a reverse arrives before anyone learned so. Deciding it
    then would sell the position again: it waits, and the book and the venue never go short twice over."""
    account = _live_account(monkeypatch, venue)
    strategy = make_strategy(account, mode="live", sizing_value="1", protective_orders="off")
    venue.set_price(SYMBOL, "100")
    _send(strategy, "open_long", "o")
    venue.drop_reply_next(TemporaryError("connection reset", venue="hyperliquid"))
    venue.lag_lookups(1)
    closing = _send(strategy, "close", "c")
    assert closing.status == Signal.Status.WORKING and _venue_net(venue) == 0  # filled there, unknown here
    reverse = _send(strategy, "reverse", "r")
    assert reverse.status == Signal.Status.RECEIVED, reverse.decision_detail
    assert "exit in flight" in reverse.decision_detail
    assert _drive(closing).status == Signal.Status.EXECUTED
    reverse = signal_process(signal_id=reverse.pk)
    assert _venue_net(venue) == _held(strategy) and _venue_net(venue) >= Decimal("-1")


def test_an_entry_the_venue_could_not_find_yet_is_not_taken_for_gone(monkeypatch, venue, make_strategy) -> None:
    """The entry's reply is lost and the venue's first lookups lag: the close must not end as done while the
    entry may still show up (it did fill), or the position stays open with nothing closing it."""
    account = _live_account(monkeypatch, venue)
    strategy = make_strategy(account, mode="live", sizing_value="0.1", protective_orders="off")
    venue.drop_reply_next(TemporaryError("connection reset", venue="hyperliquid"))
    _send(strategy, "open_long", "o")  # UNKNOWN here, filled there
    venue.lag_lookups(2)
    closing = _send(strategy, "close", "c")
    closing = _drive(closing, steps=20, every=3)  # beat's pace
    assert closing.status == Signal.Status.EXECUTED, closing.decision_detail
    assert _venue_net(venue) == 0 and _held(strategy) == 0


def test_an_entry_found_filled_after_its_strategy_was_closed_is_closed_again(monkeypatch, venue,
                                                                              make_strategy) -> None:
    """The venue's reads lag past the exit's patience: the close ends, and reconciliation finds the entry filled
    later. The strategy's last target was flat, so a new close goes after what the entry bought."""
    from trading import reconcile

    account = _live_account(monkeypatch, venue)
    strategy = make_strategy(account, mode="live", sizing_value="0.1", protective_orders="off")
    venue.drop_reply_next(TemporaryError("connection reset", venue="hyperliquid"))
    _send(strategy, "open_long", "o")
    venue.lag_lookups(2)  # the cancel's lookup and the exit's second look both miss it
    closing = _drive(_send(strategy, "close", "c"))
    assert closing.status == Signal.Status.EXECUTED and _venue_net(venue) == Decimal("0.1")  # the venue's lag
    reconcile.account_reconcile(account=account)  # finds the entry filled after all
    late = Signal.objects.get(payload__trigger="late_fill")
    assert late.action == Signal.Action.CLOSE
    later = timezone.now() + timedelta(minutes=1)
    orders_sweep(now=later)  # the worker would have taken it at once; the sweeper does in any case
    assert _drive(Signal.objects.get(pk=late.pk)).status == Signal.Status.EXECUTED
    assert _venue_net(venue) == 0 and _held(strategy) == 0


def test_dust_below_the_smallest_order_fails_once_with_a_plain_reason(make_account, make_strategy,
                                                                      set_price) -> None:
    account = make_account()
    strategy = make_strategy(account, sizing_value="0.4")
    set_price("BTC/USD", "100")
    _send(strategy, "open_long", "o")
    # Leftovers off the lot (a fee in coin, a liquidation remainder): 0.000005 BTC more than any order can sell.
    Position.objects.filter(strategy=strategy).update(quantity=Decimal("0.400005"))
    PaperPosition.objects.filter(account=account).update(quantity=Decimal("0.400005"))
    closing = _drive(_send(strategy, "close", "c"))
    assert closing.status == Signal.Status.FAILED and closing.decision_rule == "dust", closing.decision_detail
    assert "0.000005" in closing.decision_detail and "by hand" in closing.decision_detail
    assert _held(strategy) == Decimal("0.000005")
    assert Order.objects.filter(signal=closing).count() == 1  # sold the 0.4 it could; no order for the dust
    services.kill_switch_engage(reason="test", by="test")
    for _ in range(3):
        kill_switch_enforce()
    assert Signal.objects.filter(source=Signal.Source.KILL_SWITCH).count() == 1  # reported, not retried for ever


def test_a_protective_order_is_not_placed_once_an_exit_started_after_it_was_decided(monkeypatch, venue,
                                                                                     make_strategy) -> None:
    """protection_sync decides outside the lock; an exit that starts before the placement (here: while the venue
    is asked for its net) must stop it, or a stop rests for a size that is being sold."""
    account = _live_account(monkeypatch, venue)
    strategy = make_strategy(account, mode="live", sizing_value="0.1", protective_orders="off",
                             stop_loss_mode="percent", stop_loss_value="2", take_profit_mode="percent",
                             take_profit_value="2")
    opened = _send(strategy, "open_long", "o")
    position = Position.objects.get(strategy=strategy)
    type(strategy).objects.filter(pk=strategy.pk).update(protective_orders="on")

    def an_exit_starts() -> None:
        signal, _ = signal_create(strategy=strategy, source="manual", idempotency_key="c", action="close",
                                         enqueue=False)
        Signal.objects.filter(pk=signal.pk).update(status=Signal.Status.WORKING)

    venue.on_next("positions", an_exit_starts)
    counts = protection_sync(position_id=position.pk)
    assert counts["placed"] == 0 and opened.status == Signal.Status.EXECUTED
    assert not Order.objects.filter(position=position).exists()


def test_the_monitor_watches_only_accounts_with_something_to_watch(make_account, make_strategy, set_price) -> None:
    set_price("BTC/USD", "100")
    guarded, flat_trailing, idle = make_account(), make_account(), make_account()
    _send(make_strategy(guarded, sizing_value="0.1", stop_loss_mode="percent", stop_loss_value="2"), "open_long", "g")
    trailing = make_strategy(flat_trailing, sizing_value="0.1", trailing_stop_percent="2")
    _send(trailing, "open_long", "t1")
    _send(trailing, "close", "t2")  # flat: its trailing stop has nothing to guard
    make_strategy(idle)
    assert accounts_to_monitor() == [guarded.pk]
