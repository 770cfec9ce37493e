"""Faults injected into each fake venue, driven through the engine and the real connector (and a real Celery
worker for the crash): never a duplicate order in the venue's journal, the right final state in the database,
and the circuit breaker opening and closing.

Parametrized over every venue harness that exists (`tests.fakes.venues.available()`). The 20 s outage runs once
per venue; every other test takes a few seconds.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from decimal import Decimal

import pytest

from exchanges.errors import VenueError
from exchanges.resilience import BreakerState
from tests.conftest import wait_for
from tests.fakes import venues as fake_venues
from tests.fakes.faults import Fault
from tests.fakes.live import (
    LiveSetup,
    bare_connector,
    client_timeout_of,
    create_match,
    creates_received,
    drive,
    live_setup,
)
from trading import reconcile
from trading.execution import signal_process
from trading.intake import signal_create
from trading.models import Fill, Order, Position, Signal, VenueHealth

VENUES = list(fake_venues.available())
pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not VENUES, reason="no venue harness has landed yet"),
]


@pytest.fixture(params=VENUES or ["none"])
def harness(request: pytest.FixtureRequest) -> Iterator[fake_venues.VenueHarness]:
    with fake_venues.harness(request.param) as running:
        yield running


@pytest.fixture
def fast(settings) -> None:  # type: ignore[no-untyped-def]
    """The sweeper re-drives after 1 s and resends an order the venue never saw after 1 s."""
    settings.TRADING = {**settings.TRADING, "STUCK_AFTER_SECONDS": 1, "RESEND_AFTER_SECONDS": 1}


@pytest.fixture
def live(harness, monkeypatch, make_strategy, fast) -> LiveSetup:  # type: ignore[no-untyped-def]
    setup = live_setup(harness, setenv=monkeypatch.setenv, make_strategy=make_strategy)
    setup.breaker().cool_down = 1.0  # production waits 30 s before probing; the states are what is tested
    return setup


def _signal(live: LiveSetup, key: str, action: str = "open_long", **fields) -> Signal:  # type: ignore[no-untyped-def]
    signal, created = signal_create(strategy=live.strategy, source="manual", idempotency_key=key,
                                           action=action, enqueue=False, **fields)
    assert created
    return signal


def _process(signal: Signal) -> None:
    try:
        signal_process(signal_id=signal.pk)
    except VenueError:
        pass  # retryable: the signal stays RECEIVED and the sweeper re-drives it


def _entry(signal: Signal) -> Order | None:
    return Order.objects.filter(signal=signal).first()


def _assert_one_filled_entry(live: LiveSetup, signal: Signal) -> Order:
    """Exactly one order for the signal, created once on the venue, filled, and the position booked from fills."""
    orders = list(Order.objects.filter(signal=signal))
    assert len(orders) == 1
    order = orders[0]
    assert order.status == Order.Status.FILLED, (order.status, order.reason)
    assert live.created(order.client_order_id) == 1, live.harness.created_client_ids()
    assert len(live.harness.created_client_ids()) == Order.objects.filter(account=live.account).count()
    fills = Fill.objects.filter(order=order)
    assert sum((f.quantity for f in fills), Decimal(0)) == order.filled_quantity == live.quantity
    assert Position.objects.get(strategy=live.strategy).quantity == live.quantity
    return order


# --------------------------------------------------------------------------------------------- outage


@pytest.fixture
def every_venue(monkeypatch, make_strategy, fast) -> Iterator[list[LiveSetup]]:  # type: ignore[no-untyped-def]
    """One live account on every venue's fake at once (each with its own credential prefix)."""
    with contextlib.ExitStack() as stack:
        setups = []
        for venue in VENUES:
            running = stack.enter_context(fake_venues.harness(venue))
            setup = live_setup(running, setenv=monkeypatch.setenv, make_strategy=make_strategy,
                               prefix=f"SUITE_{venue.upper()}")
            setup.breaker().cool_down = 1.0
            setups.append(setup)
        yield setups


def test_a_20s_outage_during_creates_leaves_one_order_each_and_the_breakers_cycle(every_venue) -> None:
    """Every venue at once (one 20 s window for all): the create hits a 503, then the whole venue is down."""
    started = time.monotonic()
    orders: dict[str, tuple[Signal, Order]] = {}
    for live in every_venue:
        live.harness.plan.fail_for(20, status=503, match=create_match(live.harness))
        signal = _signal(live, f"outage-{live.harness.venue}")
        _process(signal)
        order = _entry(signal)
        assert order is not None and order.status == Order.Status.UNKNOWN, (live.harness.venue, order and order.reason)
        orders[live.harness.venue] = signal, order
    for live in every_venue:
        live.harness.plan.fail_for(20 - (time.monotonic() - started), status=503)  # now the whole venue is down

    states: dict[str, set[BreakerState]] = {live.harness.venue: set() for live in every_venue}
    shown: dict[str, set[str | None]] = {live.harness.venue: set() for live in every_venue}  # VenueHealth rows

    def look() -> None:
        for live in every_venue:
            states[live.harness.venue].add(live.breaker().state)
            shown[live.harness.venue].add(
                VenueHealth.objects.filter(account=live.account).values_list("state", flat=True).first())

    drive(lambda: time.monotonic() - started > 19, timeout=25, every=0.5, seen=look)
    for live in every_venue:
        venue = live.harness.venue
        assert BreakerState.OPEN in states[venue], (venue, states[venue])
        assert "open" in shown[venue], (venue, shown[venue])  # what /api/venues/ and the logs show
        # Never resent blind while the venue cannot be asked about it.
        assert Order.objects.get(pk=orders[venue][1].pk).status == Order.Status.UNKNOWN, venue
        assert live.harness.created_client_ids() == [], venue

    drive(lambda: all(Order.objects.get(pk=o.pk).is_final for _, o in orders.values()), timeout=30, every=0.3)
    for live in every_venue:
        assert live.breaker().state is BreakerState.CLOSED, live.harness.venue
        assert VenueHealth.objects.get(account=live.account).state == "closed", live.harness.venue
        _assert_one_filled_entry(live, orders[live.harness.venue][0])


# --------------------------------------------------------------------------------------------- rate limits


def test_a_429_storm_is_ridden_out_without_a_duplicate(live) -> None:
    live.harness.plan.next(6, Fault.RATE_LIMIT, retry_after=0.2)  # reads and the create alike
    live.harness.plan.next(2, Fault.RATE_LIMIT, retry_after=0.2, match=create_match(live.harness))
    signal = _signal(live, "storm")
    _process(signal)
    drive(lambda: (o := _entry(signal)) is not None and o.is_final, timeout=30)
    _assert_one_filled_entry(live, signal)
    drive(lambda: live.breaker().state is BreakerState.CLOSED, timeout=10)


# --------------------------------------------------------------------------------------------- lost replies


def test_accept_then_drop_is_found_by_client_id_not_resent(live) -> None:
    live.harness.plan.next(1, Fault.ACCEPT_THEN_DROP, match=create_match(live.harness))
    signal = _signal(live, "lost-reply")
    _process(signal)
    order = _entry(signal)
    assert order is not None and order.status == Order.Status.UNKNOWN, order and (order.status, order.reason)
    assert live.created(order.client_order_id) == 1  # the venue has it; we do not know yet

    drive(lambda: Order.objects.get(pk=order.pk).is_final, timeout=20)
    _assert_one_filled_entry(live, signal)


def test_a_reply_slower_than_the_client_timeout_is_found_not_duplicated(live) -> None:
    client_timeout = client_timeout_of(live.harness)
    live.harness.plan.next(1, Fault.TIMEOUT, hold=client_timeout + 1, match=create_match(live.harness))
    signal = _signal(live, "slow-reply")
    _process(signal)
    order = _entry(signal)
    assert order is not None and order.status == Order.Status.UNKNOWN, order and (order.status, order.reason)

    # The sweeper asks by client id: not there yet, later there (the venue took it late); a resend carries the
    # same client id, which the venue refuses to take twice.
    drive(lambda: Order.objects.get(pk=order.pk).is_final, timeout=client_timeout + 20)
    wait_for(lambda: len(live.harness.created_client_ids()) >= 1, timeout=client_timeout + 5)
    _assert_one_filled_entry(live, signal)


# --------------------------------------------------------------------------------------------- partial fills


def test_a_partial_fill_books_exactly_what_the_venue_filled(live) -> None:
    if bare_connector(live.harness).capabilities.extra.get("partial_fills") == "never":
        pytest.skip(f"{live.harness.venue} never fills partially")
    live.harness.partial_fills(1, Decimal("0.5"))
    signal = _signal(live, "partial")
    _process(signal)
    order = _entry(signal)
    assert order is not None
    drive(lambda: Order.objects.get(pk=order.pk).filled_quantity > 0, timeout=10, monitor=True)
    reconcile.account_reconcile(account=live.account)
    order.refresh_from_db()
    assert 0 < order.filled_quantity < live.quantity, order.status
    venue = bare_connector(live.harness).fetch_order_by_client_id(live.harness.symbol, order.client_order_id)
    assert venue is not None and venue.filled_quantity == order.filled_quantity
    assert order.status == venue.status.value  # our statuses carry the venue's names
    fills = Fill.objects.filter(order=order)
    assert sum((f.quantity for f in fills), Decimal(0)) == order.filled_quantity
    assert Position.objects.get(strategy=live.strategy).quantity == order.filled_quantity
    assert live.created(order.client_order_id) == 1

    closing = _signal(live, "partial-close", action="close")  # closes what was filled, not what was asked
    _process(closing)
    drive(lambda: (o := _entry(closing)) is not None and o.is_final, timeout=10)
    exit_ = _entry(closing)
    assert exit_ is not None and exit_.quantity == order.filled_quantity and exit_.status == Order.Status.FILLED
    assert Position.objects.get(strategy=live.strategy).quantity == 0


# --------------------------------------------------------------------------------------------- crash


def _in_flight(orders: dict[str, Order]) -> bool:
    """Every order committed and sent (or being sent) with no reply recorded yet."""
    return all(Order.objects.get(pk=o.pk).status in (Order.Status.SUBMITTING, Order.Status.UNKNOWN)
               for o in orders.values())


@pytest.mark.integration
def test_workers_killed_between_commit_and_reply_leave_one_order_each(every_venue, workers) -> None:
    """Every venue at once, one worker group: SIGKILL while the entries are in flight (the venues take them
    late), restart; SIGKILL while the exits are in flight (the venues never get them), restart."""
    for live in every_venue:
        workers.env.update(live.env)
    workers.env["TRADING_RESEND_AFTER_SECONDS"] = "1"
    workers.concurrency = len(every_venue)
    worker = workers.start()
    for step, (action, venue_got_it) in enumerate((("open_long", True), ("close", False))):
        sent = {live.harness.venue: creates_received(live.harness) for live in every_venue}
        for live in every_venue:
            if venue_got_it:  # held, then taken: the venue has the order, the dead worker never hears
                live.harness.plan.next(1, Fault.TIMEOUT, hold=3.0, match=create_match(live.harness))
            else:  # every request slowed, then the create dropped unprocessed
                live.harness.plan.next(1, Fault.DROP, match=create_match(live.harness))
                live.harness.plan.latency = 0.5
        signals = {live.harness.venue: signal_create(strategy=live.strategy, source="manual",
                                                            idempotency_key=f"crash-{step}-{live.harness.venue}",
                                                            action=action)[0] for live in every_venue}
        orders: dict[str, Order] = {}
        for venue, signal in signals.items():
            orders[venue] = wait_for(lambda: Order.objects.filter(signal=signal).first(), timeout=60, every=0.02,  # noqa: B023 - called within this iteration
                                     what=f"the {venue} order committed")
        if venue_got_it:  # the kill lands while every create is held by its venue
            wait_for(lambda: all(creates_received(live.harness) > sent[live.harness.venue] for live in every_venue),  # noqa: B023 - called within this iteration
                     timeout=30, every=0.02, what="every create received")
        else:  # the kill lands after the commits, wherever each create is (slowed, or not yet sent)
            wait_for(lambda: _in_flight(orders), timeout=10, every=0.02, what="every order committed")  # noqa: B023 - called within this iteration
        workers.kill(worker)  # SIGKILL the whole worker group between the commits and the venues' replies
        assert _in_flight(orders)
        time.sleep(3.2)  # whatever was held or slowed reaches its venue (or is dropped) now
        for live in every_venue:
            live.harness.plan.clear()
            venue = live.harness.venue
            assert live.created(orders[venue].client_order_id) == (1 if venue_got_it else 0), venue

        worker = workers.start()  # start-up recovery asks by client id, resends only what the venue never saw
        drive(lambda: all(Order.objects.get(pk=o.pk).status == Order.Status.FILLED for o in orders.values()),  # noqa: B023 - called within this iteration
              timeout=60, every=0.5)  # this process sweeps too, as the beat would
        for live in every_venue:
            assert live.created(orders[live.harness.venue].client_order_id) == 1, live.harness.venue
    for live in every_venue:
        assert len(live.harness.created_client_ids()) == Order.objects.filter(account=live.account).count() == 2
        assert Position.objects.get(strategy=live.strategy).quantity == 0, live.harness.venue
