"""Exactly-once under slow venues: a send in flight is never repeated by a sweep or a cancel (its send lease), a late
refusal never overwrites what the venue said meanwhile, a cancel never sends, and an order given up on is still
recorded if the venue shows it later. Each case was a reproduced hole (an audit's demos, inverted here)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import pytest
from django.conf import settings
from django.db import connection

from exchanges.errors import InvalidOrderError, OrderStatusUnknownError
from tests.fakes.memory_venue import MemoryVenue, install
from trading import reconcile, services
from trading.execution import signal_process
from trading.intake import signal_create
from trading.orders import UNACKNOWLEDGED, order_cancel
from trading.recovery import orders_sweep, startup_recover
from trading.leases import order_send_lease
from trading.models import Fill, Order, Position

SYMBOL = "BTC/USD"


class HeldSend(MemoryVenue):
    """The first create_order is held (a slow network, a rate-limit queue, a chain's pending transaction): before it
    reaches the venue, or, with `lands_first`, after the venue took it and before its answer comes back."""

    def __init__(self, *, late_answer: BaseException | None = None, lands_first: bool = False, **kw: Any) -> None:
        super().__init__(**kw)
        self.gate, self.entered = threading.Event(), threading.Event()
        self.sent: list[str] = []  # the client id of every create that reached the venue
        self.late_answer, self.lands_first = late_answer, lands_first
        self._n = 0

    def create_order(self, request: Any) -> Any:
        with self._lock:
            self._n += 1
            first = self._n == 1
        if first and self.lands_first:
            self.sent.append(request.client_order_id)
            super().create_order(request)
        if first:
            self.entered.set()
            assert self.gate.wait(30)
            if self.late_answer is not None:
                raise self.late_answer
            if self.lands_first:
                return self.paper.fetch_order_by_client_id(request.symbol, request.client_order_id)
        self.sent.append(request.client_order_id)
        return super().create_order(request)


def _live_strategy(monkeypatch: Any, venue: MemoryVenue, make_strategy: Any) -> Any:
    install(monkeypatch, venue)
    monkeypatch.setenv("LIVE_T_API_KEY", "key")
    account = services.account_create(data={"name": "live", "venue": "coinbase", "network": "testnet",
                                            "credentials_env": "LIVE_T", "max_leverage": "5"}, by="test")
    reconcile.account_reconcile(account=account)
    # 10 s / 5 s by default: shortened, the same code path as a send held for 15 s
    monkeypatch.setitem(settings.TRADING, "STUCK_AFTER_SECONDS", 1)
    monkeypatch.setitem(settings.TRADING, "RESEND_AFTER_SECONDS", 0)
    return make_strategy(account, mode="live", sizing_value="0.1")


def _in_thread(signal_id: int) -> threading.Thread:
    def run() -> None:
        try:
            signal_process(signal_id=signal_id)
        finally:
            connection.close()
    thread = threading.Thread(target=run, name="worker-original")
    thread.start()
    return thread


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("late", ["answer", "refusal"])
def test_a_send_in_flight_is_never_repeated_by_the_sweeper_or_a_cancel(monkeypatch: Any, make_strategy: Any,
                                                                       late: str) -> None:
    venue = HeldSend(venue="coinbase", late_answer=InvalidOrderError("insufficient funds", venue="coinbase")
                     if late == "refusal" else None)
    venue.set_price(SYMBOL, "50000")
    strategy = _live_strategy(monkeypatch, venue, make_strategy)
    signal, _ = signal_create(strategy=strategy, source="manual", idempotency_key=f"k-{late}",
                                     action="open_long", enqueue=False)
    original = _in_thread(signal.pk)
    assert venue.entered.wait(10)
    order = Order.objects.get(signal=signal)
    time.sleep(1.2)  # past STUCK_AFTER_SECONDS: the sweeper now looks at it
    orders_sweep()
    startup_recover()
    order_cancel(order_id=order.pk, by="user:alice")
    order.refresh_from_db()
    assert order.status == Order.Status.SUBMITTING and order.attempts == 1, (order.status, order.attempts)
    venue.gate.set()
    original.join(30)
    order.refresh_from_db()
    if late == "answer":
        assert venue.sent == [order.client_order_id]  # one create reached the venue
        assert order.status == Order.Status.FILLED and Fill.objects.filter(order=order).count() == 1
        assert Position.objects.get(strategy=strategy).quantity == Decimal("0.1")
    else:
        assert venue.sent == [] and order.status == Order.Status.REJECTED and "insufficient funds" in order.reason


@pytest.mark.django_db(transaction=True)
def test_a_late_refusal_never_overwrites_what_the_venue_said_meanwhile(monkeypatch: Any, make_strategy: Any) -> None:
    venue = HeldSend(venue="coinbase", lands_first=True,
                     late_answer=InvalidOrderError("duplicate client_order_id", venue="coinbase"))
    venue.set_price(SYMBOL, "50000")
    strategy = _live_strategy(monkeypatch, venue, make_strategy)
    signal, _ = signal_create(strategy=strategy, source="manual", idempotency_key="k-late",
                                     action="open_long", enqueue=False)
    original = _in_thread(signal.pk)
    assert venue.entered.wait(10)
    order = Order.objects.get(signal=signal)
    time.sleep(1.2)
    reconcile.account_reconcile(account=order.account)  # asks by client id: the venue has it, filled
    order.refresh_from_db()
    assert order.status == Order.Status.FILLED
    venue.gate.set()
    original.join(30)
    order.refresh_from_db()
    assert order.status == Order.Status.FILLED and Fill.objects.filter(order=order).count() == 1
    assert Position.objects.get(strategy=strategy).quantity == Decimal("0.1")


class Backlogged(MemoryVenue):
    """A backlogged order gateway: each create is queued and answered by a client timeout, and done only later."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.backlog: list[Any] = []
        self.held = True

    def create_order(self, request: Any) -> Any:
        if self.held:
            self.calls.append("create_order")
            self.backlog.append(request)
            raise OrderStatusUnknownError("read timed out after sending", venue="coinbase")
        return super().create_order(request)

    def drain(self) -> None:
        self.held = False
        for request in self.backlog:
            super().create_order(request)  # the first creates, the others dedupe on the client id


@pytest.mark.django_db
def test_an_order_given_up_on_is_recorded_when_the_venue_shows_it_later(monkeypatch: Any, make_strategy: Any) -> None:
    venue = Backlogged(venue="coinbase")
    venue.set_price(SYMBOL, "50000")
    strategy = _live_strategy(monkeypatch, venue, make_strategy)
    signal, _ = signal_create(strategy=strategy, source="manual", idempotency_key="gx", action="open_long",
                                     enqueue=False)
    signal_process(signal_id=signal.pk)
    order = Order.objects.get(signal=signal)
    for _ in range(settings.TRADING["MAX_SUBMIT_ATTEMPTS"] + 1):
        orders_sweep()
    order.refresh_from_db()
    assert order.status == Order.Status.REJECTED and UNACKNOWLEDGED in order.reason
    venue.drain()  # the gateway catches up: the order executes after all
    report = reconcile.account_reconcile(account=order.account)
    order.refresh_from_db()
    assert report["recovered_orders"] == 1
    assert order.status == Order.Status.FILLED and Fill.objects.filter(order=order).count() == 1
    assert Position.objects.get(strategy=strategy).quantity == Decimal("0.1")
    reconcile.account_reconcile(account=order.account)
    assert Fill.objects.filter(order=order).count() == 1  # recorded once


@pytest.mark.django_db
def test_a_cancel_of_an_unacknowledged_order_never_sends_it(monkeypatch: Any, make_strategy: Any) -> None:
    venue = MemoryVenue(venue="coinbase")
    venue.set_price(SYMBOL, "50000")
    strategy = _live_strategy(monkeypatch, venue, make_strategy)
    venue.fail_next(OrderStatusUnknownError("connection reset before the venue read it", venue="coinbase"),
                    call="create_order")
    signal, _ = signal_create(strategy=strategy, source="manual", idempotency_key="cx", action="open_long",
                                     enqueue=False)
    signal_process(signal_id=signal.pk)
    order = Order.objects.get(signal=signal)
    assert order.status == Order.Status.UNKNOWN
    creates = venue.calls.count("create_order")
    result = order_cancel(order_id=order.pk, by="user:alice")
    assert venue.calls.count("create_order") == creates  # asked about it, did not send it
    assert result.status == Order.Status.CANCELED and "user:alice" in result.reason
    orders_sweep()
    reconcile.account_reconcile(account=order.account)
    order.refresh_from_db()
    assert order.status == Order.Status.CANCELED and venue.calls.count("create_order") == creates
    assert not Position.objects.filter(strategy=strategy).exclude(quantity=0).exists()


@contextmanager
def _held_in_another_thread(order_id: int, *, session_ends: bool = False) -> Iterator[None]:
    """Another thread (another worker) holds the order's send lease for the block; `session_ends`: its lock
    connection is closed under it first, as when that worker's process is killed."""
    from trading import sidedb

    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        try:
            with order_send_lease(order_id) as mine:
                assert mine
                if session_ends:
                    sidedb.lock_connection().close()
                taken.set()
                release.wait(10)
        finally:
            connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert taken.wait(10)
        yield
    finally:
        release.set()
        holder.join(10)


@pytest.mark.django_db(transaction=True)
def test_the_send_lease_is_exclusive_across_threads_and_free_once_released() -> None:
    with _held_in_another_thread(424242), order_send_lease(424242) as mine:
        assert mine is False  # another thread holds it
        with order_send_lease(424243) as other:
            assert other is True  # another order's lease is free
    with order_send_lease(424242) as mine, order_send_lease(424242) as again:
        assert mine is True and again is True  # free again once released; re-entrant in one thread


@pytest.mark.django_db(transaction=True)
def test_a_lease_whose_holder_died_is_free_at_once() -> None:
    """A worker killed mid-send: its database session ends, and the lease with it, so recovery need not wait for
    any timeout."""
    if connection.vendor != "postgresql":
        pytest.skip("the session-bound lease is PostgreSQL's; SQLite's flock ends with the process")
    with _held_in_another_thread(515151, session_ends=True), order_send_lease(515151) as mine:
        assert mine is True
