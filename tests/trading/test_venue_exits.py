"""Positions that always close, on each venue's fake through its real connector: an exit the venue refuses,
cancels unfilled, fills in part, expires or answers without the reply ever arriving is pursued until flat, with
exactly the orders needed; strategies netting on one account close, stop out, take profit, are closed from the
dashboard and by the kill switch, their sub-positions always summing to the venue's net. P&L is checked to the
cent against the fills the venue itself reports (an account independent of our book).

The engine is driven in this process as beat would drive it (tests/fakes/live.py `drive`: sweeper, exit driver,
monitor); the workers' part is covered by test_venue_cycle and test_workers_exits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
from django.urls import reverse

from exchanges.base import Connector, Side
from tests.fakes import venues as fake_venues
from tests.fakes.faults import OrderFault
from tests.fakes.live import LiveSetup, bare_connector, drive, live_setup
from trading import services
from trading.execution import signal_process
from trading.intake import signal_create
from trading.killswitch import kill_switch_enforce
from trading.models import Fill, KillSwitch, Order, Position, Signal, Strategy

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


@dataclass
class Venue:
    """What the venue itself says, asked through a connector of its own (no journal, retries or breaker of ours)."""

    live: LiveSetup
    bare: Connector = field(init=False)

    def __post_init__(self) -> None:
        self.bare = bare_connector(self.live.harness)

    def net(self) -> Decimal:
        """The account's net in the market: its position (perps) or its holding of the base asset (spot)."""
        if self.bare.capabilities.positions:
            return sum((p.quantity for p in self.bare.positions() if p.symbol == self.live.harness.symbol),
                       Decimal(0))
        return sum((b.total for b in self.bare.balances() if b.asset == self.live.market.base), Decimal(0))

    def round_trip(self, orders: list[Order]) -> tuple[Decimal, Decimal]:
        """The venue's (gross P&L, fees) of these orders' fills; each order's fills agree with our book's."""
        gross, fees = Decimal(0), Decimal(0)
        for order in orders:
            found = self.bare.fetch_order_by_client_id(order.symbol, order.client_order_id)
            filled = Decimal(0) if found is None else sum((f.quantity for f in found.fills), Decimal(0))
            assert filled == order.filled_quantity, (order.purpose, order.status, order.reason, found)
            for fill in () if found is None else found.fills:
                gross += fill.quantity * fill.price * (-1 if found.side is Side.BUY else 1)
                fees += fill.fee
        return gross, fees


def _signal(strategy: Strategy, action: str, key: str, *, source: str = "manual") -> Signal:
    signal, created = signal_create(strategy=strategy, source=source, idempotency_key=key, action=action,
                                           enqueue=False)
    assert created
    return signal_process(signal_id=signal.pk)


def _open(strategy: Strategy, action: str, key: str) -> None:
    signal = _signal(strategy, action, key)
    assert signal.status == Signal.Status.EXECUTED, (signal.status, signal.decision_detail)


def _status(signal_id: int) -> str:
    return str(Signal.objects.values_list("status", flat=True).get(pk=signal_id))


def _held(strategy: Strategy) -> Decimal:
    return Position.objects.filter(strategy=strategy).values_list("quantity", flat=True).first() or Decimal(0)


def _book(live: LiveSetup) -> dict[int, Decimal]:
    return dict(Position.objects.filter(account=live.account, symbol=live.harness.symbol)
                .values_list("strategy_id", "quantity"))


def _flat_everywhere(venue: Venue) -> None:
    """No position in the book or on the venue, no working order, no exit still pursued."""
    live = venue.live
    assert all(q == 0 for q in _book(live).values()), _book(live)
    assert venue.net() == 0
    assert not Order.objects.filter(account=live.account, status__in=Order.WORKING).exists(), list(
        Order.objects.filter(account=live.account, status__in=Order.WORKING).values_list("purpose", "status"))
    assert not Signal.objects.filter(account=live.account, status=Signal.Status.WORKING).exists()


def _never_flipped(strategy: Strategy) -> None:
    """The strategy's sub-position, fill by fill, only ever went toward zero from the side it was on."""
    held = Decimal(0)
    for side, quantity in Fill.objects.filter(strategy=strategy).order_by("pk").values_list("side", "quantity"):
        after = held + (quantity if side == Side.BUY.value else -quantity)
        assert held == 0 or after == 0 or (after > 0) == (held > 0), (strategy.name, held, after)
        held = after


def _pnl_matches_the_venue(venue: Venue, strategy: Strategy) -> None:
    """A flat strategy's realized P&L and fees are the venue's fills of its own orders, to the cent."""
    position = Position.objects.get(strategy=strategy)
    assert position.quantity == 0
    _never_flipped(strategy)
    gross, fees = venue.round_trip(list(Order.objects.filter(strategy=strategy).order_by("pk")))
    assert (position.realized_pnl, position.fees_paid) == (gross, fees), strategy.name


# --------------------------------------------------------------------------------------------- one exit, one fault


@pytest.mark.parametrize("fault", list(OrderFault), ids=lambda f: f.value)
def test_an_exit_the_venue_fails_is_pursued_until_flat_with_exactly_the_orders_needed(
        harness, fault, monkeypatch, make_strategy, fast) -> None:
    if fault in harness.order_faults.unsupported:
        pytest.skip(f"{harness.venue} cannot play {fault.value}: {harness.order_faults.unsupported[fault]}")
    live = live_setup(harness, setenv=monkeypatch.setenv, make_strategy=make_strategy)
    venue = Venue(live)
    cash = live.account.cash
    _open(live.strategy, "open_long", "open")
    entry = Order.objects.get(strategy=live.strategy)
    assert venue.net() == live.quantity

    harness.order_faults.next(1, fault, match=lambda order: order.side is Side.SELL)  # the next exit order
    closing = _signal(live.strategy, "close", "close")
    drive(lambda: _status(closing.pk) != Signal.Status.WORKING, timeout=30)
    closing.refresh_from_db()
    assert closing.status == Signal.Status.EXECUTED, closing.decision_detail
    assert harness.order_faults.remaining() == 0  # the fault was played

    exits = list(Order.objects.filter(signal=closing).order_by("pk"))
    shape = [(o.status, o.filled_quantity) for o in exits]
    failed = {OrderFault.REFUSE: (Order.Status.REJECTED,), OrderFault.CANCEL: (Order.Status.CANCELED,
                                                                                   Order.Status.REJECTED),
              OrderFault.EXPIRE: (Order.Status.CANCELED,), OrderFault.PARTIAL: (Order.Status.CANCELED,)}
    if fault is OrderFault.DROP:  # the venue worked it; its lost reply was found by client id, never resent
        assert shape == [(Order.Status.FILLED, live.quantity)], [(o.status, o.reason) for o in exits]
    elif fault is OrderFault.PARTIAL:  # what filled is kept; a new order (new client id) sells the remainder
        half = exits[0].filled_quantity
        assert 0 < half < live.quantity
        assert shape == [(Order.Status.CANCELED, half), (Order.Status.FILLED, live.quantity - half)], shape
    else:  # one failed, nothing filled; one that filled all
        assert len(exits) == 2 and exits[0].status in failed[fault] and exits[0].filled_quantity == 0, [
            (o.status, o.filled_quantity, o.reason) for o in exits]
        assert shape[1] == (Order.Status.FILLED, live.quantity)
    if fault is OrderFault.REFUSE:
        assert exits[0].reason.startswith("venue refused: "), exits[0].reason  # in the venue's own words
    assert all(o.purpose == Order.Purpose.EXIT and o.side == Side.SELL.value for o in exits)
    assert len({o.client_order_id for o in exits}) == len(exits)
    # The venue made exactly these orders: the entry and every exit that reached it, each once.
    reached = [entry, *(o for o in exits if not (fault is OrderFault.REFUSE and o is exits[0]))]
    assert sorted(harness.created_client_ids()) == sorted(o.client_order_id for o in reached)

    # Flat on the venue and in the book; never sold more than was bought.
    assert sum((o.filled_quantity for o in exits), Decimal(0)) == entry.filled_quantity == live.quantity
    _flat_everywhere(venue)
    _never_flipped(live.strategy)
    gross, fees = venue.round_trip([entry, *exits])
    position = Position.objects.get(strategy=live.strategy)
    assert (position.realized_pnl, position.fees_paid) == (gross, fees)
    live.account.refresh_from_db()
    assert live.account.cash == cash + gross - fees


# --------------------------------------------------------------------------------------------- netting strategies

LAYOUTS = ("same_side", "opposite_sides")


def _strategy(live: LiveSetup, make_strategy: Callable[..., Any], name: str, lots: int, **levels: str) -> Strategy:
    """Another live strategy on the setup's account and market, `lots` times the setup's order size."""
    strategy: Strategy = make_strategy(live.account, name=name, symbol=live.harness.symbol, mode="live",
                                       sizing_mode="quantity", sizing_value=str(live.quantity * lots),
                                       leverage="1", **levels)
    return strategy


def _spot_cannot_short(harness: fake_venues.VenueHarness, layout: str) -> None:
    if layout == "opposite_sides" and not bare_connector(harness).capabilities.positions:
        pytest.skip(f"{harness.venue} is spot: a strategy cannot sell short there, so none nets against another")


def _sums_to_the_venue(venue: Venue) -> None:
    book = _book(venue.live)
    assert sum(book.values(), Decimal(0)) == venue.net(), book


def _price(live: LiveSetup, level: Decimal | None, beyond: str) -> None:
    """Move the venue's market just past a stop-loss or take-profit level (`beyond`: a factor such as 0.99)."""
    assert level is not None
    live.harness.set_price(live.harness.symbol, live.market.round_price(level * Decimal(beyond)))


def _exited_by(strategy: Strategy, purpose: str) -> str:
    """How a flat strategy's stop-loss or take-profit went: 'venue' (its protective order fired there) or
    'monitor' (the bot's monitor sent the exit)."""
    filled = Order.objects.filter(strategy=strategy, purpose=purpose, status=Order.Status.FILLED)
    on_venue = filled.filter(position__isnull=False).exists()
    by_monitor = Signal.objects.filter(strategy=strategy, source=Signal.Source.MONITOR,
                                       status=Signal.Status.EXECUTED).exists()
    assert on_venue or by_monitor, list(Order.objects.filter(strategy=strategy).values_list("purpose", "status"))
    return "venue" if on_venue else "monitor"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_three_strategies_on_one_account_close_stop_out_and_take_profit_netting_on_the_venue(
        harness, layout, monkeypatch, make_strategy, fast, client) -> None:
    """One is closed from the dashboard, one stops out, one takes profit; the sub-positions always sum to the
    venue's net. Live strategies keep their stop-loss and take-profit on the venue where it has trigger orders and
    the order reduces the account's net; elsewhere the bot's monitor sends the exit."""
    from django.contrib.auth import get_user_model

    _spot_cannot_short(harness, layout)
    live = live_setup(harness, setenv=monkeypatch.setenv, make_strategy=make_strategy)
    venue = Venue(live)
    same = layout == "same_side"
    by_hand = live.strategy
    stopping = _strategy(live, make_strategy, "stopping", 3, stop_loss_mode="percent", stop_loss_value="2")
    taking = _strategy(live, make_strategy, "taking", 2, take_profit_mode="percent", take_profit_value="2")
    _open(stopping, "open_long", "stop-open")
    _open(taking, "open_long" if same else "open_short", "take-open")
    _open(by_hand, "open_long", "hand-open")
    q = live.quantity
    assert _book(live) == {stopping.pk: 3 * q, taking.pk: (2 if same else -2) * q, by_hand.pk: q}
    _sums_to_the_venue(venue)
    # Resting on the venue: only what reduces the account's net (opposite sides: nothing, even the stop-loss placed
    # while the long was alone, which a reduce-only sell of 3 against a net of 1 or 2 would have been clipped to).
    capabilities = venue.bare.capabilities
    resting = set(Order.objects.filter(account=live.account, position__isnull=False, status__in=Order.WORKING)
                  .values_list("strategy_id", "purpose"))
    expected = set()
    if same and capabilities.stop_orders:
        expected.add((stopping.pk, Order.Purpose.STOP_LOSS))
        if capabilities.reduce_only:  # spot: a resting sell holds the coins, so the stop-loss alone rests
            expected.add((taking.pk, Order.Purpose.TAKE_PROFIT))
    assert resting == expected

    # The position page's Close button.
    client.force_login(get_user_model().objects.create_user("trader", is_staff=True))
    position = Position.objects.get(strategy=by_hand)
    page = client.post(reverse("dashboard-position-close", args=[position.pk]))
    assert page.status_code == 302 and "closed=" in page["Location"], page
    closing = Signal.objects.get(pk=int(page["Location"].split("closed=")[1]))
    assert (closing.source, closing.action, closing.strategy_id) == ("manual", "close", by_hand.pk)
    signal_process(signal_id=closing.pk)  # what the worker does with the queued signal
    drive(lambda: _status(closing.pk) != Signal.Status.WORKING, timeout=30)
    assert _status(closing.pk) == Signal.Status.EXECUTED, Signal.objects.get(pk=closing.pk).decision_detail
    assert _held(by_hand) == 0 and _held(stopping) == 3 * q
    _sums_to_the_venue(venue)
    _pnl_matches_the_venue(venue, by_hand)

    # The stop-loss: 2% under the entry. Opposite sides: the short's take-profit is 2% under its entry too, so
    # both exits go at once, each for its own strategy (one a plain order: it would not reduce the net).
    _price(live, Position.objects.get(strategy=stopping).stop_loss, "0.99")
    drive(lambda: _held(stopping) == 0 and (same or _held(taking) == 0), timeout=30)
    assert _exited_by(stopping, Order.Purpose.STOP_LOSS) == ("venue" if same and capabilities.stop_orders
                                                           else "monitor")
    if same:
        assert _held(taking) == 2 * q
        _sums_to_the_venue(venue)
        harness.set_price(harness.symbol, harness.price)
        _price(live, Position.objects.get(strategy=taking).take_profit, "1.01")
        drive(lambda: _held(taking) == 0, timeout=30)
    on_venue = same and capabilities.stop_orders and capabilities.reduce_only  # spot: the stop-loss alone rests
    assert _exited_by(taking, Order.Purpose.TAKE_PROFIT) == ("venue" if on_venue else "monitor")
    drive(lambda: not Order.objects.filter(account=live.account, status__in=Order.WORKING).exists(), timeout=30)
    _flat_everywhere(venue)
    for strategy in (stopping, taking, by_hand):
        _pnl_matches_the_venue(venue, strategy)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_two_strategies_on_one_account_close_then_the_kill_switch_flattens_both(
        harness, layout, monkeypatch, make_strategy, fast) -> None:
    _spot_cannot_short(harness, layout)
    live = live_setup(harness, setenv=monkeypatch.setenv, make_strategy=make_strategy)
    venue = Venue(live)
    same = layout == "same_side"
    # A stop-loss far away: where the venue takes trigger orders, one rests there and must give way to each exit.
    first = _strategy(live, make_strategy, "first", 2, stop_loss_mode="percent", stop_loss_value="10")
    second = live.strategy
    _open(first, "open_long", "first-open")
    _open(second, "open_long" if same else "open_short", "second-open")
    q = live.quantity
    _sums_to_the_venue(venue)

    closing = _signal(first, "close", "first-close", source="webhook")
    drive(lambda: _status(closing.pk) != Signal.Status.WORKING, timeout=30)
    assert _status(closing.pk) == Signal.Status.EXECUTED, Signal.objects.get(pk=closing.pk).decision_detail
    assert _held(first) == 0 and _held(second) == (q if same else -q) == venue.net()
    _sums_to_the_venue(venue)
    _pnl_matches_the_venue(venue, first)

    _open(first, "open_long", "first-again")
    _sums_to_the_venue(venue)
    services.kill_switch_engage(by="test", reason="drill")

    def flat() -> bool:
        kill_switch_enforce()  # beat's part while the switch is engaged
        return KillSwitch.objects.get(pk=1).flat_at is not None

    drive(flat, timeout=45)
    assert KillSwitch.objects.get(pk=1).still_open == []
    _flat_everywhere(venue)
    for strategy in (first, second):
        assert Order.objects.filter(strategy=strategy, purpose=Order.Purpose.KILL_SWITCH,
                                    status=Order.Status.FILLED).exists()
        _pnl_matches_the_venue(venue, strategy)
