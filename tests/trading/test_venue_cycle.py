"""A full trading cycle on each venue's fake through its real connector, the engine and a real Celery worker:
open -> stop-loss -> closed, then open -> take-profit -> closed, with the P&L checked to the cent against the
fills the venue itself reports (an account of its own, independent of our book)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest

from exchanges.base import Side, VenueOrder
from tests.conftest import wait_for
from tests.fakes import venues as fake_venues
from tests.fakes.live import LiveSetup, bare_connector, live_setup
from trading.intake import signal_create
from trading.models import Fill, Order, Position, Signal, VenueAccount
from trading.tasks import positions_monitor_task

VENUES = list(fake_venues.available())
pytestmark = [
    pytest.mark.integration,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not VENUES, reason="no venue harness has landed yet"),
]


@pytest.fixture(params=VENUES or ["none"])
def harness(request: pytest.FixtureRequest) -> Iterator[fake_venues.VenueHarness]:
    with fake_venues.harness(request.param) as running:
        yield running


def _venue_orders(live: LiveSetup, orders: list[Order]) -> list[VenueOrder]:
    connector = bare_connector(live.harness)
    found = [connector.fetch_order_by_client_id(o.symbol, o.client_order_id) for o in orders]
    assert all(v is not None for v in found)
    return found  # type: ignore[return-value]


def _round_trip(live: LiveSetup, key: str, exit_kind: str) -> tuple[Decimal, Decimal]:
    """Open long through the worker, move the venue past the exit, let the worker's monitor close; return
    the venue's (gross P&L, fees) of the round trip."""
    signal, _ = signal_create(strategy=live.strategy, source="manual", idempotency_key=key,
                                     action="open_long")
    wait_for(lambda: Signal.objects.get(pk=signal.pk).status in ("executed", "rejected"), timeout=60,
             what="the entry executed by the worker")
    assert Signal.objects.get(pk=signal.pk).status == "executed", Signal.objects.get(pk=signal.pk).decision_detail
    position = Position.objects.get(strategy=live.strategy)
    assert position.quantity == live.quantity
    level = position.stop_loss if exit_kind == "sl" else position.take_profit
    assert level is not None
    capabilities = bare_connector(live.harness).capabilities
    if capabilities.stop_orders:  # the protective orders rest on the venue before the price moves
        resting = 2 if capabilities.reduce_only else 1  # spot: the stop-loss only
        wait_for(lambda: Order.objects.filter(position=position, status=Order.Status.OPEN).count() == resting,
                 timeout=30, what="the protective orders resting on the venue")
    beyond = level * (Decimal("0.99") if exit_kind == "sl" else Decimal("1.01"))
    live.harness.set_price(live.harness.symbol, live.market.round_price(beyond))

    def closed() -> bool:
        if Position.objects.get(pk=position.pk).quantity == 0:
            return True
        positions_monitor_task.delay()  # the beat's job: the worker's monitor prices the exit from the venue
        return False

    wait_for(closed, timeout=60, every=0.5, what=f"the {exit_kind} exit filled by the worker")
    wait_for(lambda: not Order.objects.filter(account=live.account, status__in=Order.WORKING).exists(), timeout=30,
             what="the other protective order canceled")
    purpose = Order.Purpose.STOP_LOSS if exit_kind == "sl" else Order.Purpose.TAKE_PROFIT
    entry = list(Order.objects.filter(signal=signal))
    exit_ = list(Order.objects.filter(strategy=live.strategy, purpose=purpose, status=Order.Status.FILLED)
                 .order_by("-pk")[:1])
    assert len(entry) == 1 and len(exit_) == 1
    gross, fees = Decimal(0), Decimal(0)
    for venue_order in _venue_orders(live, entry + exit_):
        assert venue_order.fills, venue_order
        for fill in venue_order.fills:
            gross += fill.quantity * fill.price * (-1 if venue_order.side is Side.BUY else 1)
            fees += fill.fee
    exit_price = exit_[0].average_fill_price
    assert exit_price is not None
    assert exit_price <= level if exit_kind == "sl" else exit_price >= level * Decimal("0.99")
    return gross, fees


def test_full_cycle_through_the_real_connector_and_a_worker(harness, workers, monkeypatch, make_strategy) -> None:
    live = live_setup(harness, setenv=monkeypatch.setenv, make_strategy=make_strategy, stop_loss_mode="percent",
                      stop_loss_value="2", take_profit_mode="percent", take_profit_value="2")
    cash = live.account.cash
    workers.env.update(live.env)
    workers.start()

    gross_sl, fees_sl = _round_trip(live, "cycle-sl", "sl")
    assert gross_sl < 0
    harness.set_price(harness.symbol, harness.price)  # back to where it started
    gross_tp, fees_tp = _round_trip(live, "cycle-tp", "tp")
    assert gross_tp > 0

    position = Position.objects.get(strategy=live.strategy)
    assert position.quantity == 0 and position.stop_loss is None and position.take_profit is None
    assert position.realized_pnl == gross_sl + gross_tp
    assert position.fees_paid == fees_sl + fees_tp
    assert VenueAccount.objects.get(pk=live.account.pk).cash == cash + gross_sl + gross_tp - fees_sl - fees_tp
    fills = Fill.objects.filter(account=live.account)
    assert sum((f.fee for f in fills), Decimal(0)) == fees_sl + fees_tp
    # Live accounts keep the stop-loss and take-profit on the venue (protective orders, auto): each round trip has
    # its entry and one exit filled, and every other protective order canceled once the position was flat.
    orders = Order.objects.filter(account=live.account)
    assert orders.filter(purpose=Order.Purpose.ENTRY, status=Order.Status.FILLED).count() == 2
    assert orders.exclude(purpose=Order.Purpose.ENTRY).filter(status=Order.Status.FILLED).count() == 2
    assert set(orders.values_list("status", flat=True)) <= {Order.Status.FILLED, Order.Status.CANCELED}, [
        (o.purpose, o.type, o.status, o.reason, o.created_at.time()) for o in orders]
    if bare_connector(harness).capabilities.stop_orders:
        assert orders.filter(position__isnull=False).exists()  # the protective orders rested on the venue
    assert orders.count() == len(harness.created_client_ids())
    assert set(harness.created_client_ids()) == set(Order.objects.filter(account=live.account)
                                                     .values_list("client_order_id", flat=True))
