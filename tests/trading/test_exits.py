"""Positions that always close: strategies netting on one account, exits pursued until flat, honest statuses."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from trading import services
from trading.execution import signal_process
from trading.exits import exit_drive, exits_drive
from trading.intake import signal_create
from trading.killswitch import kill_switch_enforce
from trading.monitor import positions_monitor
from trading.recovery import orders_sweep
from trading.models import Order, PaperPosition, Position, Signal

pytestmark = pytest.mark.django_db


def _signal(strategy, action: str, key: str, **fields):  # type: ignore[no-untyped-def]
    signal, created = signal_create(strategy=strategy, source="manual", idempotency_key=key, action=action,
                                           enqueue=False, **fields)
    assert created
    return signal_process(signal_id=signal.pk)


def _venue_net(account, symbol: str = "BTC/USD") -> Decimal:  # type: ignore[no-untyped-def]
    row = PaperPosition.objects.filter(account=account, symbol=symbol).first()
    return row.quantity if row else Decimal(0)


def _book(account, symbol: str = "BTC/USD") -> dict[int, Decimal]:  # type: ignore[no-untyped-def]
    return dict(Position.objects.filter(account=account, symbol=symbol).values_list("strategy_id", "quantity"))


def _faults():  # type: ignore[no-untyped-def]
    from exchanges.paper import PAPER_FAULTS

    return PAPER_FAULTS


def test_opposite_strategies_on_one_account_each_close_flat(make_account, make_strategy, set_price) -> None:
    account = make_account()
    long_ = make_strategy(account, sizing_value="2")
    short = make_strategy(account, sizing_value="1")
    set_price("BTC/USD", "100")
    _signal(long_, "open_long", "a1")
    _signal(short, "open_short", "b1")
    assert _venue_net(account) == Decimal("1") and _book(account) == {long_.pk: Decimal("2"), short.pk: Decimal("-1")}

    closed = _signal(long_, "close", "a2")  # a reduce-only sell of 2 against a net of +1 would be clipped to 1
    assert closed.status == Signal.Status.EXECUTED, closed.decision_detail
    assert _book(account)[long_.pk] == 0 and _venue_net(account) == Decimal("-1")
    closed = _signal(short, "close", "b2")
    assert closed.status == Signal.Status.EXECUTED, closed.decision_detail
    assert _book(account) == {long_.pk: 0, short.pk: 0} and _venue_net(account) == 0
    # Each strategy's P&L is its own, to the cent: both traded at 100 in and out, so each lost exactly its fees.
    for strategy, qty in ((long_, Decimal("2")), (short, Decimal("1"))):
        position = Position.objects.get(strategy=strategy)
        assert position.realized_pnl == 0
        assert position.fees_paid == qty * 100 * Decimal("0.0005") * 2


def test_the_close_of_a_long_is_plain_when_the_net_is_short(make_account, make_strategy, set_price) -> None:
    account = make_account()
    long_ = make_strategy(account, sizing_value="1")
    short = make_strategy(account, sizing_value="3")
    set_price("BTC/USD", "100")
    _signal(long_, "open_long", "a1")
    _signal(short, "open_short", "b1")
    assert _venue_net(account) == Decimal("-2")
    assert _signal(long_, "close", "a2").status == Signal.Status.EXECUTED  # reduce-only would be refused outright
    order = Order.objects.get(signal__idempotency_key="a2")
    assert not order.reduce_only and order.quantity == Decimal("1") and order.filled_quantity == Decimal("1")
    assert _venue_net(account) == Decimal("-3") and _book(account)[long_.pk] == 0
    assert Order.objects.get(signal__idempotency_key="a1").reduce_only is False


@pytest.mark.parametrize("fault", ["refuse", "cancel", "partial", "expire", "drop"])
def test_a_failed_stop_loss_exit_is_pursued_until_flat(fault, make_account, make_strategy, set_price) -> None:
    from exchanges.base import Side
    from exchanges.paper import PaperFault

    account = make_account()
    strategy = make_strategy(account, sizing_value="0.4", stop_loss_mode="percent", stop_loss_value="2")
    set_price("BTC/USD", "100")
    _signal(strategy, "open_long", "o1")
    _faults().next(2, PaperFault(fault), match=lambda request: request.side is Side.SELL)
    set_price("BTC/USD", "97")
    positions_monitor()
    stop = Signal.objects.get(source=Signal.Source.MONITOR)
    later = timezone.now()
    for _step in range(6):
        if stop.status != Signal.Status.WORKING:
            break
        later += timedelta(seconds=40)
        orders_sweep(now=later)  # an order whose reply was lost is found on the venue by its client id
        stop = exit_drive(signal_id=stop.pk, now=later)
    assert stop.status == Signal.Status.EXECUTED, stop.decision_detail
    assert _book(account)[strategy.pk] == 0 and _venue_net(account) == 0
    exits = list(Order.objects.filter(signal=stop).order_by("pk"))
    assert all(o.purpose == Order.Purpose.STOP_LOSS for o in exits)
    assert sum(o.filled_quantity for o in exits) == Decimal("0.4")  # exactly what was held, never more
    assert len(exits) <= 3 and exits[-1].status == Order.Status.FILLED
    assert not Order.objects.filter(status__in=Order.WORKING).exists()


def test_a_close_while_the_entry_works_cancels_it_and_closes_what_filled(make_account, make_strategy,
                                                                        set_price) -> None:
    account = make_account()
    strategy = make_strategy(account, sizing_value="1")
    set_price("BTC/USD", "100")
    resting = _signal(strategy, "open_long", "e1", order_type="limit", price=Decimal("90"))
    entry = Order.objects.get(signal=resting)
    assert entry.status == Order.Status.OPEN
    closed = _signal(strategy, "close", "e2")  # the position is flat but the entry is working: never "ignored"
    assert closed.status == Signal.Status.EXECUTED, closed.decision_detail
    entry.refresh_from_db()
    assert entry.status == Order.Status.CANCELED
    set_price("BTC/USD", "80")
    positions_monitor()
    assert _book(account).get(strategy.pk, Decimal(0)) == 0 and _venue_net(account) == 0


def test_a_refused_only_order_fails_its_signal_with_the_venues_reason(make_account, make_strategy,
                                                                     set_price) -> None:
    from exchanges.paper import PaperFault

    strategy = make_strategy(make_account())
    set_price("BTC/USD", "100")
    _faults().next(1, PaperFault.REFUSE)
    signal = _signal(strategy, "open_long", "r1")
    assert signal.status == Signal.Status.FAILED
    assert "refused" in signal.decision_detail
    assert Signal.objects.filter(status=Signal.Status.FAILED).count() == 1


def test_kill_switch_flattens_two_opposite_strategies_on_one_account(make_account, make_strategy,
                                                                      set_price) -> None:
    account = make_account()
    long_ = make_strategy(account, sizing_value="2")
    short = make_strategy(account, sizing_value="2")
    set_price("BTC/USD", "100")
    _signal(long_, "open_long", "a1")
    _signal(short, "open_short", "b1")
    assert _venue_net(account) == 0
    services.kill_switch_engage(by="test", reason="drill")
    kill_switch_enforce()
    exits_drive(now=timezone.now() + timedelta(seconds=5))
    assert _book(account) == {long_.pk: 0, short.pk: 0} and _venue_net(account) == 0
    assert not Signal.objects.filter(status=Signal.Status.WORKING).exists()


def test_the_positions_page_shows_a_closing_exit_and_the_signals_page_finds_it(make_account, make_strategy,
                                                                              set_price, client) -> None:
    from django.contrib.auth import get_user_model
    from exchanges.paper import PaperFault

    account = make_account()
    strategy = make_strategy(account, sizing_value="1")
    set_price("BTC/USD", "100")
    _signal(strategy, "open_long", "p1")
    _faults().next(10, PaperFault.REFUSE)
    closing = _signal(strategy, "close", "p2")
    assert closing.status == Signal.Status.WORKING
    client.force_login(get_user_model().objects.create_user("trader", is_staff=True))
    page = client.get("/positions/").content.decode()
    assert "closing: attempt 2, last refusal: rejected: venue refused: sell 1.00000 BTC/USD refused" in page, page
    found = client.get("/signals/?problem=closing").content.decode()
    assert f'id="signal-{closing.pk}"' in found
    assert f'id="signal-{closing.pk}"' not in client.get("/signals/?problem=failed").content.decode()
    failed = client.get("/api/signals/?problem=failed")
    assert failed.status_code == 200 and failed.json()["count"] == 0
    assert client.get("/api/signals/?problem=closing").json()["count"] == 1
    assert client.get("/api/signals/?problem=nonsense").status_code == 400


def test_the_signals_problem_filter_finds_an_entry_filled_in_part(make_account, make_strategy, set_price) -> None:
    from exchanges.paper import PaperFault
    from trading import selectors

    strategy = make_strategy(make_account(), sizing_value="1")
    set_price("BTC/USD", "100")
    _faults().next(1, PaperFault.PARTIAL)
    signal = _signal(strategy, "open_long", "q1")
    assert signal.status == Signal.Status.FAILED
    assert "filled 0.5 of 1, then canceled: IOC partly filled" in signal.decision_detail
    assert [s.pk for s in selectors.signal_list(problem="partly_filled")] == [signal.pk]
    assert [s.pk for s in selectors.signal_list(problem="failed")] == [signal.pk]
    assert Position.objects.get(strategy=strategy).quantity == Decimal("0.5")  # what filled is held, and shown


def test_the_kill_switch_says_flat_only_once_the_venue_is_flat(make_account, make_strategy, set_price,
                                                                client) -> None:
    from django.contrib.auth import get_user_model
    from exchanges.paper import PaperFault
    from trading.models import KillSwitch

    account = make_account()
    strategy = make_strategy(account, sizing_value="1")
    set_price("BTC/USD", "100")
    _signal(strategy, "open_long", "k1")
    _faults().next(3, PaperFault.REFUSE)  # the venue refuses the kill switch's first exits
    services.kill_switch_engage(by="test", reason="drill")
    kill_switch_enforce()
    switch = KillSwitch.objects.get(pk=1)
    assert switch.flat_at is None
    assert {"account": account.name, "symbol": "BTC/USD", "book": "1", "venue": "1"} in switch.still_open
    client.force_login(get_user_model().objects.create_user("boss", is_staff=True))
    page = client.get("/").content.decode()
    assert "not flat yet" in page and "BTC/USD: book 1, venue 1" in page
    assert client.get("/api/kill-switch/").json()["flat_at"] is None
    later = timezone.now()
    for _ in range(4):  # it keeps trying until the venue is flat
        later += timedelta(seconds=40)
        exits_drive(now=later)
        kill_switch_enforce(now=later)
    switch.refresh_from_db()
    assert switch.still_open == [] and switch.flat_at is not None
    assert _venue_net(account) == 0
    assert 'id="kill-flat"' in client.get("/").content.decode()
    assert client.get("/api/kill-switch/").json()["still_open"] == []


def test_a_close_behind_an_entry_waiting_for_an_exit_is_decided_after_it(make_account, make_strategy,
                                                                          set_price) -> None:
    """Found by the interleaving test below: open (reply lost), close (reply lost), open, close. The second open
    waits for the first close in flight; the second close must wait behind it, not be decided first (it found
    nothing to close, and the open that ran after it left the strategy long)."""
    from exchanges.paper import PaperFault

    account = make_account()
    strategy = make_strategy(account, sizing_value="1")
    set_price("BTC/USD", "100")
    _faults().next(1, PaperFault.DROP)
    _signal(strategy, "open_long", "w1")
    _faults().next(1, PaperFault.DROP)
    _signal(strategy, "close", "w2")
    waiting = _signal(strategy, "open_long", "w3")
    assert waiting.status == Signal.Status.RECEIVED
    behind = _signal(strategy, "close", "w4")
    assert behind.status == Signal.Status.RECEIVED, behind.decision_detail
    assert f"earlier signal {waiting.pk}" in behind.decision_detail
    later = timezone.now()
    for _ in range(4):
        later += timedelta(seconds=40)
        orders_sweep(now=later)
        exits_drive(now=later)
    statuses = dict(Signal.objects.filter(account=account).values_list("idempotency_key", "status"))
    assert statuses == {"w1": "executed", "w2": "executed", "w3": "executed", "w4": "executed"}, statuses
    assert _book(account)[strategy.pk] == 0 and _venue_net(account) == 0
    opened, closed = (Order.objects.get(signal__idempotency_key=key) for key in ("w3", "w4"))
    assert opened.pk < closed.pk  # decided in the order they arrived


ACTIONS = ("open_long", "open_short", "close")
FAULTS = (None, None, "refuse", "cancel", "partial", "expire", "drop")


def _steps():  # type: ignore[no-untyped-def]
    from hypothesis import strategies as st

    return st.lists(st.tuples(st.integers(0, 2), st.sampled_from(ACTIONS), st.sampled_from(FAULTS)),
                    min_size=1, max_size=12)


@pytest.mark.django_db
def test_any_interleaving_with_refusals_ends_with_the_books_summing_to_the_venues_net(make_account, make_strategy,
                                                                                     set_price) -> None:
    from hypothesis import given, settings

    from exchanges.paper import PaperFault

    set_price("BTC/USD", "100")

    @settings(max_examples=60, deadline=None, database=None)
    @given(steps=_steps())
    def run(steps) -> None:  # type: ignore[no-untyped-def]
        _faults().clear()
        set_price("BTC/USD", "100")  # fresh for each example: a long run must not turn it stale (stale_price)
        account = make_account()
        strategies = [make_strategy(account, sizing_value=size) for size in ("1", "2", "3")]
        last: dict[int, str] = {}
        for n, (who, action, fault) in enumerate(steps):
            if fault is not None:
                _faults().next(1, PaperFault(fault))
            signal, _ = signal_create(strategy=strategies[who], source="manual", action=action,
                                             idempotency_key=f"{account.pk}:{n}", enqueue=False)
            signal_process(signal_id=signal.pk)
            last[who] = action
        _faults().clear()
        later = timezone.now()
        for _ in range(8):  # the beat's work until every exit is done and every lost reply found
            later += timedelta(seconds=40)
            orders_sweep(now=later)
            exits_drive(now=later)
        assert not Signal.objects.filter(account=account, status=Signal.Status.WORKING).exists()
        assert not Order.objects.filter(account=account, status__in=Order.WORKING).exists()
        book = _book(account)
        assert sum(book.values(), Decimal(0)) == _venue_net(account)
        for who, action in last.items():
            if action == "close":
                assert book.get(strategies[who].pk, Decimal(0)) == 0, (steps, book)

    run()
