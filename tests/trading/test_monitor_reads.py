"""The monitor's cost on a venue with a request budget: prices read once per pass, a price pass looks only at the
market that moved, and the fan-out never starves the same accounts (benchmarks/stop_to_exit.py measures the time).

On the Hyperliquid fake through the real connector: one allMids answers every market, so an account holding
three markets costs one price read per monitor pass and one per exit decision, not one per market each time.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.fakes import venues as fake_venues
from tests.fakes.live import LiveSetup, bare_connector, fake_server, live_setup, small_quantity
from tests.fakes.faults import Request
from trading.execution import signal_process
from trading.intake import signal_create
from trading.monitor import account_monitor
from trading.models import Order, Position, Signal, Strategy

pytestmark = pytest.mark.django_db(transaction=True)

COINS = ("BTC", "ETH", "SOL")


@pytest.fixture
def hyperliquid() -> Iterator[fake_venues.VenueHarness]:
    with fake_venues.harness("hyperliquid") as running:
        yield running


def _all_mids(request: Request) -> bool:
    try:
        body = request.json()
    except ValueError:
        return False
    return request.path == "/info" and isinstance(body, dict) and body.get("type") == "allMids"


def _reads(live: LiveSetup) -> int:
    return len(fake_server(live.harness).requests(_all_mids))


def _three_markets(hyperliquid: fake_venues.VenueHarness, monkeypatch: pytest.MonkeyPatch,
                   make_strategy: Any) -> tuple[LiveSetup, list[Strategy]]:
    """One account, one long strategy per market, each with a stop 1 % below its entry (bot-side only)."""
    live = live_setup(hyperliquid, setenv=monkeypatch.setenv, make_strategy=make_strategy,
                      protective_orders="off", stop_loss_mode="percent", stop_loss_value="1")
    fake = hyperliquid.extra["fake"]
    strategies = [live.strategy]
    for coin in COINS[1:]:
        symbol = f"{coin}/USDC:USDC"
        quantity = small_quantity(bare_connector(hyperliquid).market(symbol), Decimal(str(fake.prices[coin])))
        strategies.append(make_strategy(live.account, symbol=symbol, mode="live", sizing_mode="quantity",
                                        sizing_value=str(quantity), leverage="1", protective_orders="off",
                                        stop_loss_mode="percent", stop_loss_value="1"))
    for n, strategy in enumerate(strategies):
        signal, _ = signal_create(strategy=strategy, source="manual", action="open_long",
                                         idempotency_key=f"open-{n}", enqueue=False)
        assert signal_process(signal_id=signal.pk).status == Signal.Status.EXECUTED
    return live, strategies


def _cross(hyperliquid: fake_venues.VenueHarness, *coins: str) -> None:
    fake = hyperliquid.extra["fake"]
    for coin in coins:
        fake.set_price(coin, Decimal(str(fake.prices[coin])) * Decimal("0.97"))


def test_a_price_pass_reads_one_price_and_exits_only_the_market_that_moved(hyperliquid, monkeypatch,
                                                                           make_strategy, workers) -> None:
    live, (btc, eth, sol) = _three_markets(hyperliquid, monkeypatch, make_strategy)
    _cross(hyperliquid, "BTC", "ETH")  # two stops crossed; the price of ETH is the one that arrived
    before = _reads(live)
    counts = account_monitor(account_id=live.account.pk, symbol=eth.symbol)
    assert counts["exits"] == 1
    # One allMids for the pass, one for the exit's decision (every held market's mark with it): not one per market.
    assert _reads(live) - before == 2
    fired = set(Signal.objects.filter(source=Signal.Source.MONITOR).values_list("strategy_id", flat=True))
    assert fired == {eth.pk}
    # The exit is at the venue (filled there); its booking waits for an execution worker, not for this pass.
    exit_order = Order.objects.get(strategy=eth, purpose=Order.Purpose.STOP_LOSS)
    assert fake_server(hyperliquid).requests(lambda r: exit_order.client_order_id in r.body.decode(errors="replace"))
    assert exit_order.status == Order.Status.SUBMITTING and Position.objects.get(strategy=eth).quantity > 0
    workers.env.update(live.env)
    workers.queues = "execution"
    workers.start()
    wait_for(lambda: Position.objects.get(strategy=eth).quantity == 0, what="the exit booked by the worker")
    exit_order.refresh_from_db()
    assert exit_order.status == Order.Status.FILLED and exit_order.filled_quantity == exit_order.quantity
    assert wait_for(lambda: Signal.objects.get(strategy=eth, source=Signal.Source.MONITOR).status
                    == Signal.Status.EXECUTED, what="the stop's signal executed")
    workers.stop_all()
    assert Position.objects.get(strategy=btc).quantity > 0  # left to its own price pass or the tick

    before = _reads(live)
    counts = account_monitor(account_id=live.account.pk)  # the tick: every market, in one read
    assert counts["exits"] == 1 and Position.objects.get(strategy=btc).quantity == 0
    assert Position.objects.get(strategy=sol).quantity > 0
    assert _reads(live) - before == 2
    assert not Order.objects.filter(account=live.account, status__in=Order.WORKING).exists()


def test_a_price_pass_whose_booking_message_is_lost_is_booked_by_the_sweeper(hyperliquid, monkeypatch,
                                                                            make_strategy) -> None:
    """The reply's message to the execution worker is lost (the broker loses it; every worker dies): the order
    stays SUBMITTING, and the sweeper asks the venue by client id and books what it says, as after any lost reply."""
    from datetime import timedelta

    from django.utils import timezone

    from tests.conftest import flush_broker
    from trading.recovery import orders_sweep

    live, (btc, eth, sol) = _three_markets(hyperliquid, monkeypatch, make_strategy)
    _cross(hyperliquid, "ETH")
    assert account_monitor(account_id=live.account.pk, symbol=eth.symbol)["exits"] == 1
    flush_broker()  # the message is gone
    exit_order = Order.objects.get(strategy=eth, purpose=Order.Purpose.STOP_LOSS)
    assert exit_order.status == Order.Status.SUBMITTING
    orders_sweep(now=timezone.now() + timedelta(minutes=5))
    exit_order.refresh_from_db()
    assert exit_order.status == Order.Status.FILLED and Position.objects.get(strategy=eth).quantity == 0
    assert Signal.objects.get(strategy=eth, source=Signal.Source.MONITOR).status == Signal.Status.EXECUTED
    assert Order.objects.filter(strategy=eth, purpose=Order.Purpose.STOP_LOSS).count() == 1  # never sent twice
    assert Position.objects.get(strategy=btc).quantity > 0


class _BrokerDown:
    """A task whose broker refuses every message (what `apply_async` raises when Redis is unreachable)."""

    def apply_async(self, *args: Any, **kwargs: Any) -> None:
        raise ConnectionRefusedError(111, "Connection refused")


def test_a_price_pass_books_its_exit_itself_when_the_broker_refuses_the_message(hyperliquid, monkeypatch,
                                                                                make_strategy) -> None:
    from trading import dispatch

    live, (btc, eth, sol) = _three_markets(hyperliquid, monkeypatch, make_strategy)
    _cross(hyperliquid, "ETH")
    monkeypatch.setattr(dispatch, "task", lambda name: _BrokerDown())
    assert account_monitor(account_id=live.account.pk, symbol=eth.symbol)["exits"] == 1
    assert Order.objects.get(strategy=eth, purpose=Order.Purpose.STOP_LOSS).status == Order.Status.FILLED
    assert Position.objects.get(strategy=eth).quantity == 0
    assert Signal.objects.get(strategy=eth, source=Signal.Source.MONITOR).status == Signal.Status.EXECUTED


def _guarded_accounts(make_account, make_strategy, n: int, tag: str) -> list:  # type: ignore[no-untyped-def]
    """`n` paper accounts, each long BTC/USD with a stop 5 % below: every one has something to monitor."""
    accounts = [make_account() for _ in range(n)]
    for account in accounts:
        strategy = make_strategy(account, sizing_value="1", stop_loss_mode="percent", stop_loss_value="5")
        signal, _ = signal_create(strategy=strategy, source="manual", action="open_long",
                                  idempotency_key=f"{tag}{account.pk}", enqueue=False)
        signal_process(signal_id=signal.pk)
    return accounts


def test_the_fan_out_sends_the_least_recently_monitored_account_first(make_account, make_strategy,
                                                                      set_price) -> None:
    from trading.monitor import accounts_to_monitor

    set_price("BTC/USD", "100")
    accounts = _guarded_accounts(make_account, make_strategy, 4, "o")
    ids = [a.pk for a in accounts]
    order = accounts_to_monitor()
    assert sorted(order) == sorted(ids)
    # A venue's budget lets only two monitors run before the rest of the tick's expire: the next tick starts with
    # the two that did not run, and so on; no account waits more than one tick more than any other.
    ran: list[int] = []
    for _ in range(4):
        order = accounts_to_monitor()
        for account_id in order[:2]:
            account_monitor(account_id=account_id)
            ran.append(account_id)
    assert {ran.count(a) for a in ids} == {2}, ran
    assert set(ran[:4]) == set(ids)


def test_a_price_pass_does_not_send_its_account_to_the_back_of_the_tick(make_account, make_strategy,
                                                                        set_price) -> None:
    """A price pass (a trailing stop's new best price, a crossed stop) skips a live venue's order sync: it must not
    count as the account's turn, or an account with frequent price passes would always be the tick's last."""
    from trading.monitor import accounts_to_monitor

    set_price("BTC/USD", "100")
    accounts = _guarded_accounts(make_account, make_strategy, 3, "p")
    for account in accounts:  # every account had its full turn, the first one longest ago
        account_monitor(account_id=account.pk)
    first = accounts[0].pk
    assert accounts_to_monitor()[0] == first
    account_monitor(account_id=first, symbol="BTC/USD")  # a price pass
    assert accounts_to_monitor()[0] == first
