"""Protective orders on the venue: placed on open, moved on change, sibling canceled, removed on close, recorded
after a restart; trailing stops."""

from __future__ import annotations

from decimal import Decimal

import pytest

from trading import reconcile
from trading.execution import signal_process
from trading.exits import exits_drive
from trading.intake import signal_create
from trading.monitor import positions_monitor
from trading.connectors import connector_for
from trading.models import Order, PaperOrder, PaperPosition, Position, Signal

pytestmark = pytest.mark.django_db


def _signal(strategy, action: str, key: str, **fields):  # type: ignore[no-untyped-def]
    signal, created = signal_create(strategy=strategy, source="manual", idempotency_key=key, action=action,
                                           enqueue=False, **fields)
    assert created
    return signal_process(signal_id=signal.pk)


def _resting(strategy) -> dict[str, tuple[str, Decimal, Decimal, bool]]:  # type: ignore[no-untyped-def]
    return {o.purpose: (o.side, o.quantity, o.trigger_price, o.reduce_only)
            for o in Order.objects.filter(strategy=strategy, position__isnull=False, status=Order.Status.OPEN)}


@pytest.fixture
def protected(make_account, make_strategy, set_price):  # type: ignore[no-untyped-def]
    account = make_account()
    strategy = make_strategy(account, sizing_value="1", stop_loss_mode="percent", stop_loss_value="2",
                             take_profit_mode="percent", take_profit_value="5", protective_orders="on")
    set_price("BTC/USD", "100")
    return account, strategy


def test_protective_orders_are_placed_on_open_and_moved_when_the_position_grows(protected, set_price) -> None:
    account, strategy = protected
    _signal(strategy, "open_long", "o1")
    assert _resting(strategy) == {"stop_loss": ("sell", Decimal("1"), Decimal("98"), True),
                                  "take_profit": ("sell", Decimal("1"), Decimal("105"), True)}
    assert PaperOrder.objects.filter(account=account, is_open=True).count() == 2  # they rest on the venue
    set_price("BTC/USD", "101")
    _signal(strategy, "open_long", "o2")  # added to: the newest entry's levels for the whole position of 2
    resting = _resting(strategy)
    assert resting["stop_loss"][:2] == ("sell", Decimal("2")) and resting["take_profit"][:2] == ("sell", Decimal("2"))
    assert Order.objects.filter(strategy=strategy, position__isnull=False, status=Order.Status.CANCELED).count() == 2
    assert PaperOrder.objects.filter(account=account, is_open=True).count() == 2


def test_the_stop_fires_on_the_venue_and_its_sibling_is_canceled(protected, set_price) -> None:
    account, strategy = protected
    _signal(strategy, "open_long", "o1")
    set_price("BTC/USD", "97")
    positions_monitor()
    assert Position.objects.get(strategy=strategy).quantity == 0
    stop = Order.objects.get(strategy=strategy, purpose=Order.Purpose.STOP_LOSS)
    assert stop.status == Order.Status.FILLED and stop.filled_quantity == 1
    take = Order.objects.get(strategy=strategy, purpose=Order.Purpose.TAKE_PROFIT)
    assert take.status == Order.Status.CANCELED
    assert not PaperOrder.objects.filter(account=account, is_open=True).exists()
    assert not Signal.objects.filter(source=Signal.Source.MONITOR).exists()  # the venue did it: no second exit
    assert PaperPosition.objects.get(account=account, symbol="BTC/USD").quantity == 0


def test_a_close_removes_the_protective_orders_first(protected) -> None:
    account, strategy = protected
    _signal(strategy, "open_long", "o1")
    closed = _signal(strategy, "close", "c1")
    assert closed.status == Signal.Status.EXECUTED, closed.decision_detail
    assert Position.objects.get(strategy=strategy).quantity == 0
    assert not Order.objects.filter(status__in=Order.WORKING).exists()
    assert not PaperOrder.objects.filter(account=account, is_open=True).exists()
    assert Order.objects.filter(strategy=strategy, position__isnull=False, status=Order.Status.CANCELED).count() == 2


def test_a_stop_that_fired_while_the_worker_was_down_is_recorded_after_restart(protected, set_price) -> None:
    account, strategy = protected
    _signal(strategy, "open_long", "o1")
    set_price("BTC/USD", "106")
    connector_for(account).match()  # the venue works its orders while nothing of ours runs
    assert Position.objects.get(strategy=strategy).quantity == 1  # our book has not heard yet
    reconcile.accounts_reconcile()  # what a worker does when it starts
    assert Position.objects.get(strategy=strategy).quantity == 0
    take = Order.objects.get(strategy=strategy, purpose=Order.Purpose.TAKE_PROFIT)
    assert take.status == Order.Status.FILLED
    assert Order.objects.get(strategy=strategy, purpose=Order.Purpose.STOP_LOSS).status == Order.Status.CANCELED
    # A triggered take-profit trades at market: 1 x (106 - 100), the venue's price, to the cent.
    assert Position.objects.get(strategy=strategy).realized_pnl == Decimal("6")


def test_no_protective_order_where_it_would_not_reduce_the_accounts_net(make_account, make_strategy,
                                                                        set_price) -> None:
    account = make_account()
    short = make_strategy(account, sizing_value="3")
    long_ = make_strategy(account, sizing_value="1", stop_loss_mode="percent", stop_loss_value="2",
                          protective_orders="on")
    set_price("BTC/USD", "100")
    _signal(short, "open_short", "s1")
    _signal(long_, "open_long", "l1")  # the net is short 2: a reduce-only sell would be refused by the venue
    assert _resting(long_) == {}
    set_price("BTC/USD", "97")
    positions_monitor()  # the bot's monitor guards it instead
    exits_drive()
    assert Position.objects.get(strategy=long_).quantity == 0
    assert Position.objects.get(strategy=short).quantity == Decimal("-3")
    assert PaperPosition.objects.get(account=account, symbol="BTC/USD").quantity == Decimal("-3")


def test_a_trailing_stop_follows_the_price_moves_the_venue_stop_and_exits(make_account, make_strategy,
                                                                         set_price) -> None:
    account = make_account()
    strategy = make_strategy(account, sizing_value="1", trailing_stop_percent="2", trailing_activation_percent="1",
                             protective_orders="on")
    set_price("BTC/USD", "100")
    _signal(strategy, "open_long", "t1")
    assert _resting(strategy) == {}  # no stop until the trail activates
    set_price("BTC/USD", "100.5")
    positions_monitor()
    assert Position.objects.get(strategy=strategy).stop_loss is None  # not yet 1% in profit
    set_price("BTC/USD", "110")
    positions_monitor()
    position = Position.objects.get(strategy=strategy)
    assert position.stop_loss == Decimal("107.80") and position.trail_peak == Decimal("110")
    assert _resting(strategy)["stop_loss"] == ("sell", Decimal("1"), Decimal("107.80"), True)
    set_price("BTC/USD", "108.5")
    positions_monitor()
    assert Position.objects.get(strategy=strategy).stop_loss == Decimal("107.80")  # a stop never loosens
    set_price("BTC/USD", "120")
    positions_monitor()
    assert _resting(strategy)["stop_loss"][2] == Decimal("117.60")
    set_price("BTC/USD", "117")
    positions_monitor()
    position = Position.objects.get(strategy=strategy)
    assert position.quantity == 0 and position.realized_pnl == Decimal("17")  # sold at 117, the venue's price
    assert not PaperOrder.objects.filter(account=account, is_open=True).exists()


def test_protection_settings_are_checked_per_field(make_account) -> None:
    from django.core.exceptions import ValidationError

    from trading import services

    account = make_account()
    base = {"name": "p", "slug": "p-1", "kind": "webhook", "symbol": "BTC/USD", "account": account, "mode": "paper"}
    with pytest.raises(ValidationError) as refused:
        services.strategy_create(data={**base, "protective_orders": "sometimes", "trailing_stop_percent": "100",
                                       "trailing_activation_percent": "-1"}, by="test")
    errors = refused.value.message_dict
    assert set(errors) == {"protective_orders", "trailing_stop_percent", "trailing_activation_percent"}
    with pytest.raises(ValidationError) as refused:
        services.strategy_create(data={**base, "trailing_activation_percent": "1"}, by="test")
    assert "trailing_activation_percent" in refused.value.message_dict


def test_a_protective_order_another_strategys_trade_leaves_larger_than_the_net_is_removed(
        make_account, make_strategy, set_price) -> None:
    account = make_account()
    long_ = make_strategy(account, sizing_value="3", stop_loss_mode="percent", stop_loss_value="2",
                          protective_orders="on")
    short = make_strategy(account, sizing_value="2", protective_orders="on")
    set_price("BTC/USD", "100")
    _signal(long_, "open_long", "l1")
    assert _resting(long_) == {"stop_loss": ("sell", Decimal("3"), Decimal("98"), True)}
    _signal(short, "open_short", "s1")  # the net is 1 now: a reduce-only sell of 3 would be clipped when it fires
    assert _resting(long_) == {}
    assert not PaperOrder.objects.filter(account=account, is_open=True).exists()
    set_price("BTC/USD", "97")
    positions_monitor()  # the bot's monitor guards it instead
    exits_drive()
    assert Position.objects.get(strategy=long_).quantity == 0
    assert Position.objects.get(strategy=short).quantity == Decimal("-2")
    assert PaperPosition.objects.get(account=account, symbol="BTC/USD").quantity == Decimal("-2")
