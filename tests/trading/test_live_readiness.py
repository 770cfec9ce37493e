"""The engine on live venues: exits priced by the venue's own ticker, resting orders followed, reconciliation
recording what happened while we were down and flagging (never adopting) orders we did not place."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal

import pytest

from exchanges.base import OrderRequest, OrderType, Side
from exchanges.errors import (
    AuthError,
    InsufficientFundsError,
    InvalidOrderError,
    MarketNotFoundError,
    OrderStatusUnknownError,
    TemporaryError,
)
from tests.conftest import wait_for
from tests.fakes import venues as fake_venues
from tests.fakes.live import bare_connector, live_setup
from tests.fakes.memory_venue import MemoryVenue, failing_builder, install
from trading import reconcile, services
from trading.execution import signal_process
from trading.intake import signal_create
from trading.monitor import positions_monitor
from trading.recovery import orders_sweep
from trading.connectors import connector_for
from trading.models import AuditEvent, Fill, MarketPrice, Order, Position, Signal, VenueAccount

SYMBOL = "BTC/USD"


def _live_account(monkeypatch, venue: MemoryVenue, *, name: str = "live", env: str = "LIVE_T"):  # type: ignore[no-untyped-def]
    install(monkeypatch, venue)
    monkeypatch.setenv(f"{env}_API_KEY", "key")
    account = services.account_create(data={"name": name, "venue": venue.capabilities.venue, "network": "testnet",
                                            "credentials_env": env, "max_leverage": "5"}, by="test")
    reconcile.account_reconcile(account=account)  # opens the cash book at the venue's balance
    account.refresh_from_db()
    return account


def _send(strategy, action: str, key: str, **fields) -> Signal:  # type: ignore[no-untyped-def]
    signal, created = signal_create(strategy=strategy, source="manual", idempotency_key=key, action=action,
                                           enqueue=False, **fields)
    assert created
    return signal_process(signal_id=signal.pk)


@pytest.fixture
def venue() -> MemoryVenue:
    memory = MemoryVenue(venue="coinbase", fee_bps="10")
    memory.set_price(SYMBOL, "50000")
    return memory


def test_a_live_cash_book_opens_once_at_the_venue_balance(db, monkeypatch, venue) -> None:
    account = _live_account(monkeypatch, venue)
    assert account.cash == Decimal("100000")
    assert account.last_reconcile_report["cash"] == {"ours": "100000", "venue": "100000", "asset": "USD"}
    venue.paper._store.set_cash(Decimal("250000"))  # a later deposit is reported, never booked silently
    report = reconcile.account_reconcile(account=VenueAccount.objects.get(pk=account.pk))
    assert report["cash"] == {"ours": "100000", "venue": "250000", "asset": "USD"}
    assert VenueAccount.objects.get(pk=account.pk).cash == Decimal("100000")
    assert AuditEvent.objects.filter(action="account.cash_from_venue", entity_id=str(account.pk)).count() == 1


def test_stop_loss_on_a_live_account_fires_from_the_venue_ticker(db, monkeypatch, venue, make_strategy) -> None:
    account = _live_account(monkeypatch, venue)
    # the bot's own monitor, not the venue's trigger orders (tests/trading/test_protection.py has those)
    strategy = make_strategy(account, mode="live", sizing_value="0.1", protective_orders="off",
                             stop_loss_mode="percent", stop_loss_value="2")
    opened = _send(strategy, "open_long", "live-open")
    assert opened.status == Signal.Status.EXECUTED
    assert Position.objects.get(strategy=strategy).stop_loss == Decimal("49000")

    venue.set_price(SYMBOL, "49100")
    assert positions_monitor() == {"matched": 0, "exits": 0}
    venue.set_price(SYMBOL, "48900")
    assert positions_monitor() == {"matched": 0, "exits": 1}

    assert not MarketPrice.objects.exists()  # no shared price table was needed: the venue's own ticker
    position = Position.objects.get(strategy=strategy)
    assert position.quantity == 0
    assert position.realized_pnl == (Decimal("48900") - Decimal("50000")) * Decimal("0.1")
    assert position.fees_paid == Decimal("5") + Decimal("4.89")  # 10 bps of 5000 and of 4890
    assert VenueAccount.objects.get(pk=account.pk).cash == Decimal("100000") - Decimal("110") - Decimal("9.89")
    exit_order = Order.objects.get(strategy=strategy, purpose=Order.Purpose.STOP_LOSS)
    assert exit_order.status == Order.Status.FILLED and exit_order.reduce_only
    assert venue.paper.positions() == []


def test_a_resting_live_limit_that_fills_between_ticks_is_followed_by_the_monitor(db, monkeypatch, venue,
                                                                                   make_strategy) -> None:
    account = _live_account(monkeypatch, venue)
    strategy = make_strategy(account, mode="live", sizing_value="0.1", protective_orders="off",
                             take_profit_mode="percent", take_profit_value="4")
    signal = _send(strategy, "open_long", "live-limit", order_type="limit", price=Decimal("49000"))
    order = Order.objects.get(signal=signal)
    assert order.status == Order.Status.OPEN
    assert positions_monitor() == {"matched": 0, "exits": 0}  # nothing changed on the venue

    venue.set_price(SYMBOL, "48950")  # the venue fills our resting buy at its limit, by itself
    assert positions_monitor()["matched"] == 1
    order.refresh_from_db()
    assert order.status == Order.Status.FILLED and order.average_fill_price == Decimal("49000")
    position = Position.objects.get(strategy=strategy)
    assert position.quantity == Decimal("0.1") and position.take_profit is not None

    venue.set_price(SYMBOL, str(position.take_profit))
    assert positions_monitor()["exits"] == 1
    assert Position.objects.get(strategy=strategy).quantity == 0


def test_a_venue_that_is_down_does_not_stop_the_other_accounts_exits(db, monkeypatch, venue, make_strategy) -> None:
    down = MemoryVenue(venue="hyperliquid")
    down.set_price(SYMBOL, "50000")
    account_down = _live_account(monkeypatch, down, name="down", env="LIVE_DOWN")
    account_up = _live_account(monkeypatch, venue, name="up", env="LIVE_UP")
    for account, key in ((account_down, "d"), (account_up, "u")):
        strategy = make_strategy(account, mode="live", sizing_value="0.1", protective_orders="off",
                                 stop_loss_mode="percent", stop_loss_value="2")
        _send(strategy, "open_long", f"open-{key}")
    down.set_price(SYMBOL, "40000")
    venue.set_price(SYMBOL, "40000")
    down.fail_next(TemporaryError("503 Service Unavailable", venue="hyperliquid"), times=50)
    assert positions_monitor()["exits"] == 1
    assert Position.objects.get(account=account_up).quantity == 0
    assert Position.objects.get(account=account_down).quantity == Decimal("0.1")
    down.recover()  # the venue is back: the next tick closes it
    assert positions_monitor()["exits"] == 1
    assert Position.objects.get(account=account_down).quantity == 0


def test_reconcile_records_fills_made_while_we_were_down_once(db, monkeypatch, venue, make_strategy) -> None:
    account = _live_account(monkeypatch, venue)
    strategy = make_strategy(account, mode="live", sizing_value="0.2")
    signal = _send(strategy, "open_long", "down-limit", order_type="limit", price=Decimal("49500"))
    order = Order.objects.get(signal=signal)
    assert order.status == Order.Status.OPEN

    venue.set_price(SYMBOL, "49400")  # fills on the venue while nothing of ours runs
    report = reconcile.account_reconcile(account=account)
    assert report["updated_orders"] == 1 and report["unknown_venue_orders"] == []
    assert report["position_differences"] == {}
    order.refresh_from_db()
    assert order.status == Order.Status.FILLED and order.filled_quantity == Decimal("0.2")
    assert Position.objects.get(strategy=strategy).quantity == Decimal("0.2")
    assert Signal.objects.get(pk=signal.pk).status == Signal.Status.EXECUTED

    again = reconcile.account_reconcile(account=account)
    assert again["updated_orders"] == 0
    assert Fill.objects.filter(order=order).count() == 1


def test_reconcile_finds_an_order_whose_reply_was_lost_without_resending_it(db, monkeypatch, venue,
                                                                           make_strategy) -> None:
    account = _live_account(monkeypatch, venue)
    strategy = make_strategy(account, mode="live", sizing_value="0.1")
    venue.drop_reply_next(OrderStatusUnknownError("read timed out", venue="coinbase"))
    signal = _send(strategy, "open_long", "lost-reply")
    order = Order.objects.get(signal=signal)
    assert order.status == Order.Status.UNKNOWN and not Fill.objects.exists()

    report = reconcile.account_reconcile(account=account)
    assert report["recovered_orders"] == 1
    order.refresh_from_db()
    assert order.status == Order.Status.FILLED and order.venue_order_id
    assert Position.objects.get(strategy=strategy).quantity == Decimal("0.1")
    assert venue.calls.count("create_order") == 1  # looked up by client id, never resent
    assert len(venue.paper._store._orders) == 1


def test_venue_orders_we_did_not_place_are_flagged_never_adopted(db, monkeypatch, venue, make_strategy) -> None:
    account = _live_account(monkeypatch, venue)
    make_strategy(account, mode="live")
    foreign = venue.create_order(OrderRequest(client_order_id="placed-by-hand", symbol=SYMBOL, side=Side.BUY,
                                              type=OrderType.LIMIT, quantity=Decimal("0.01"),
                                              price=Decimal("30000")))
    for _ in range(2):
        report = reconcile.account_reconcile(account=account)
        assert report["unknown_venue_orders"] == ["placed-by-hand"]
    assert not Order.objects.exists()
    assert venue.fetch_order(SYMBOL, foreign.venue_order_id).status.value == "open"  # not canceled either
    flagged = AuditEvent.objects.filter(action="reconcile.unknown_venue_order", entity_id=str(account.pk))
    assert [e.data["order"] for e in flagged] == ["placed-by-hand"]  # one row, not one per run
    assert VenueAccount.objects.get(pk=account.pk).last_reconcile_report["unknown_venue_orders"] == ["placed-by-hand"]


def test_one_broken_account_does_not_stop_the_others_reconciling(db, monkeypatch, venue, make_account) -> None:
    good = _live_account(monkeypatch, venue)
    install(monkeypatch, failing_builder(AuthError("bad key", venue="synthetix")), name="synthetix")
    monkeypatch.setenv("SNX_T_PRIVATE_KEY", "x")
    services.account_create(data={"name": "broken", "venue": "synthetix", "network": "testnet",
                                  "credentials_env": "SNX_T"}, by="test")
    paper = make_account(name="paper")
    reports = reconcile.accounts_reconcile()
    assert reports["broken"]["error"] == "AuthError: bad key"  # type: ignore[index]
    assert "error" not in reports["live"] and "error" not in reports["paper"]  # type: ignore[operator]
    assert VenueAccount.objects.get(pk=good.pk).last_reconciled_at is not None
    assert VenueAccount.objects.get(pk=paper.pk).last_reconciled_at is not None


@pytest.mark.integration
def test_a_worker_start_records_venue_fills_made_while_no_worker_ran(workers, make_account, make_strategy,
                                                                     set_price) -> None:
    account = make_account()
    strategy = make_strategy(account, sizing_value="0.05")
    set_price(SYMBOL, "50000")
    signal = _send(strategy, "open_long", "while-down", order_type="limit", price=Decimal("49000"))
    order = Order.objects.get(signal=signal)
    assert order.status == Order.Status.OPEN
    set_price(SYMBOL, "48800")
    connector_for(account).match()  # the venue side works the order; nothing of ours records it
    assert Order.objects.get(pk=order.pk).status == Order.Status.OPEN

    workers.start()  # start-up reconciliation asks the venue
    wait_for(lambda: Order.objects.get(pk=order.pk).status == Order.Status.FILLED, timeout=30,
             what="the fill recorded at worker start")
    assert Position.objects.get(strategy=strategy).quantity == Decimal("0.05")
    assert Fill.objects.filter(order=order).count() == 1


# --------------------------------------------------------------------------------------------- real fakes


@pytest.fixture(params=list(fake_venues.available()) or [pytest.param(None, marks=pytest.mark.skip(
    reason="no venue harness has landed yet"))])
def harness(request: pytest.FixtureRequest) -> Iterator[fake_venues.VenueHarness]:
    with fake_venues.harness(request.param) as running:
        yield running


@pytest.mark.django_db(transaction=True)
def test_reconcile_on_each_fake_records_a_fill_made_while_down_and_flags_foreign_orders(harness, monkeypatch,
                                                                                        make_strategy) -> None:
    bare = bare_connector(harness)
    if bare.capabilities.extra.get("order_types") == "market":
        pytest.skip(f"{harness.venue} has market orders only: nothing rests on it")
    live = live_setup(harness, setenv=monkeypatch.setenv, make_strategy=make_strategy)
    limit = live.market.round_price(harness.price * Decimal("0.98"), Side.BUY)
    signal = _send(live.strategy, "open_long", "rest", order_type="limit", price=limit)
    order = Order.objects.get(signal=signal)
    assert order.status == Order.Status.OPEN, (order.status, order.reason)

    harness.set_price(harness.symbol, live.market.round_price(harness.price * Decimal("0.97"), Side.SELL))
    foreign = bare.create_order(OrderRequest(client_order_id=uuid.uuid4().hex, symbol=harness.symbol, side=Side.BUY,
                                             type=OrderType.LIMIT, quantity=live.quantity,
                                             price=live.market.round_price(harness.price / 2, Side.BUY)))
    report = reconcile.account_reconcile(account=live.account)  # nothing of ours ran since the fill
    assert report["updated_orders"] == 1, report
    order.refresh_from_db()
    assert order.status == Order.Status.FILLED and order.filled_quantity == live.quantity
    assert sum((f.quantity for f in Fill.objects.filter(order=order)), Decimal(0)) == live.quantity
    assert Position.objects.get(strategy=live.strategy).quantity == live.quantity
    assert report["unknown_venue_orders"] == [foreign.client_order_id]
    # Our book and the venue agree: a position (perps) or, on a spot venue, a holding its balance covers.
    assert report["position_differences"] == {}, report
    assert Order.objects.filter(account=live.account).count() == 1  # flagged, never adopted
    assert bare.fetch_order(harness.symbol, foreign.venue_order_id).status.value == "open"  # nor canceled

    again = reconcile.account_reconcile(account=live.account)
    assert again["updated_orders"] == 0 and Fill.objects.filter(order=order).count() >= 1
    assert AuditEvent.objects.filter(action="reconcile.unknown_venue_order",
                                     entity_id=str(live.account.pk)).count() == 1


@pytest.mark.parametrize(("error", "reason"), [
    (InsufficientFundsError("order needs 5000 USD of margin; 12 is free", venue="coinbase"),
     "venue refused: order needs 5000 USD of margin; 12 is free"),
    (InvalidOrderError("size below the minimum 0.001", venue="coinbase"), "venue refused: size below the minimum"),
    (MarketNotFoundError("no market BTC/USD", venue="coinbase"), "venue refused: no market BTC/USD"),
    (AuthError("the key was revoked", venue="coinbase"), "venue refused the credentials: the key was revoked"),
])
def test_a_venue_refusal_rejects_the_order_with_the_venues_reason_and_sends_nothing_again(
        db, monkeypatch, venue, make_strategy, error, reason) -> None:
    account = _live_account(monkeypatch, venue)
    strategy = make_strategy(account, mode="live", sizing_value="0.1")
    venue.fail_next(error, call="create_order")

    signal = _send(strategy, "open_long", f"refused-{type(error).__name__}")

    order = Order.objects.get(signal=signal)
    assert order.status == Order.Status.REJECTED and order.reason.startswith(reason), order.reason
    # Settled, and honest: its only order was refused, so the signal failed, with the venue's reason.
    assert signal.status == Signal.Status.FAILED and reason in signal.decision_detail
    assert AuditEvent.objects.filter(action="order.rejected", entity_id=str(order.pk)).count() == 1
    assert not Position.objects.filter(strategy=strategy).exclude(quantity=0).exists()
    orders_sweep()  # recovery has nothing to ask about and nothing to resend
    assert venue.calls.count("create_order") == 1
    assert venue.calls.count("fetch_order_by_client_id") == 0
    # What the user reads through the API.
    from rest_framework.test import APIClient
    from django.contrib.auth import get_user_model
    client = APIClient()
    client.force_authenticate(get_user_model().objects.create_user("reader"))
    shown = client.get(f"/api/orders/{order.pk}/").json()
    assert shown["status"] == "rejected" and shown["reason"].startswith(reason)


def test_on_a_spot_venue_holdings_are_compared_with_balances_and_only_a_shortfall_is_flagged(
        db, monkeypatch, make_strategy) -> None:
    from dataclasses import replace

    spot = MemoryVenue(venue="coinbase")
    spot.capabilities = replace(spot.capabilities, positions=False)  # balances, no positions: as Coinbase spot
    spot.set_price(SYMBOL, "50000")
    account = _live_account(monkeypatch, spot)
    strategy = make_strategy(account, mode="live", sizing_value="0.1")
    assert _send(strategy, "open_long", "spot-buy").status == Signal.Status.EXECUTED
    spot.paper._store.set_position(SYMBOL, Decimal("0.25"), Decimal("12500"))  # the account also owns other coins

    report = reconcile.account_reconcile(account=VenueAccount.objects.get(pk=account.pk))
    assert report["position_differences"] == {}, report  # the venue holds more than our strategies bought: fine

    spot.paper._store.set_position(SYMBOL, Decimal("0.04"), Decimal("2000"))  # coins moved out behind our back
    report = reconcile.account_reconcile(account=VenueAccount.objects.get(pk=account.pk))
    assert report["position_differences"] == {"BTC": {"ours": "0.1", "venue": "0.04"}}, report
