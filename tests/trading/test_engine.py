"""The engine in-process against the real database: decisions, orders, fills, positions, P&L, recovery."""

from __future__ import annotations

from datetime import timedelta
from decimal import ROUND_DOWN, ROUND_HALF_UP, ROUND_UP, Decimal

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.test import TestCase
from django.utils import timezone

from trading import decision, services
from trading.execution import signal_process
from trading.intake import signal_create
from trading.killswitch import kill_switch_enforce
from trading.monitor import positions_monitor
from trading.recovery import orders_sweep
from trading.models import AuditEvent, Fill, Order, PaperOrder, Position, Signal, VenueAccount

pytestmark = pytest.mark.django_db
TICK = Decimal("0.01")
TAKER = Decimal("0.0005")


def _signal(strategy, action: str, key: str, **fields):  # type: ignore[no-untyped-def]
    signal, created = signal_create(strategy=strategy, source="manual", idempotency_key=key, action=action,
                                           enqueue=False, **fields)
    assert created
    return signal_process(signal_id=signal.pk)


def test_full_cycle_stop_loss_realizes_exact_pnl(make_account, make_strategy, set_price) -> None:
    account = make_account(paper_slippage_bps="10")
    strategy = make_strategy(account, sizing_mode="quantity", sizing_value="0.1", stop_loss_mode="percent",
                             stop_loss_value="2", take_profit_mode="percent", take_profit_value="5")
    set_price("BTC/USD", "50000")

    opened = _signal(strategy, "open_long", "k1")
    assert opened.status == Signal.Status.EXECUTED, opened.decision_detail
    position = Position.objects.get(strategy=strategy)
    entry = (Decimal("50000") * (1 + Decimal("10") / 10000)).quantize(TICK, rounding=ROUND_UP)
    entry_fee = (Decimal("0.1") * entry * TAKER).quantize(Decimal("0.00000001"), rounding=ROUND_HALF_UP)
    assert position.quantity == Decimal("0.1")
    assert position.average_entry == entry
    assert position.stop_loss == Decimal("49000") and position.take_profit == Decimal("52500")

    set_price("BTC/USD", "48900")
    assert positions_monitor()["exits"] == 1
    assert positions_monitor()["exits"] == 0  # the same stop never fires twice

    exit_price = (Decimal("48900") * (1 - Decimal("10") / 10000)).quantize(TICK, rounding=ROUND_DOWN)
    exit_fee = (Decimal("0.1") * exit_price * TAKER).quantize(Decimal("0.00000001"), rounding=ROUND_HALF_UP)
    realized = (exit_price - entry) * Decimal("0.1")
    position.refresh_from_db()
    assert position.quantity == 0
    assert position.realized_pnl == realized
    assert position.fees_paid == entry_fee + exit_fee
    account.refresh_from_db()
    expected_cash = Decimal("10000") + realized - entry_fee - exit_fee
    assert account.cash == expected_cash
    assert account.paper_cash == expected_cash  # the venue's books agree with ours to the last digit
    stop_order = Order.objects.get(purpose=Order.Purpose.STOP_LOSS)
    assert stop_order.reduce_only and stop_order.status == Order.Status.FILLED
    assert Fill.objects.filter(strategy=strategy).count() == 2


def test_take_profit_fires_when_price_rises(make_account, make_strategy, set_price) -> None:
    account = make_account()
    strategy = make_strategy(account, take_profit_mode="price", take_profit_value="51000")
    set_price("BTC/USD", "50000")
    _signal(strategy, "open_long", "tp1")
    set_price("BTC/USD", "51000.5")
    positions_monitor()
    position = Position.objects.get(strategy=strategy)
    assert position.quantity == 0
    assert position.realized_pnl == Decimal("0.1") * Decimal("1000.5")
    assert Order.objects.filter(purpose=Order.Purpose.TAKE_PROFIT, status=Order.Status.FILLED).count() == 1


def test_short_closed_by_signal(make_account, make_strategy, set_price) -> None:
    account = make_account()
    strategy = make_strategy(account, sizing_mode="notional", sizing_value="1000")
    set_price("BTC/USD", "40000")
    _signal(strategy, "open_short", "s1")
    position = Position.objects.get(strategy=strategy)
    assert position.quantity == Decimal("-0.025")
    set_price("BTC/USD", "38000")
    closed = _signal(strategy, "close", "s2")
    assert closed.status == Signal.Status.EXECUTED
    position.refresh_from_db()
    fees = (Decimal("0.025") * 40000 * TAKER) + (Decimal("0.025") * 38000 * TAKER)
    assert position.quantity == 0 and position.realized_pnl == Decimal("50")
    assert position.net_realized_pnl == Decimal("50") - fees


def test_reverse_and_target_trade_the_difference(make_account, make_strategy, set_price) -> None:
    account = make_account()
    strategy = make_strategy(account, sizing_value="0.2")
    set_price("BTC/USD", "30000")
    _signal(strategy, "target", "t1", target=Decimal("0.3"))
    assert Position.objects.get(strategy=strategy).quantity == Decimal("0.3")
    _signal(strategy, "target", "t2", target=Decimal("0.1"))
    assert Position.objects.get(strategy=strategy).quantity == Decimal("0.1")
    _signal(strategy, "reverse", "t3")
    assert Position.objects.get(strategy=strategy).quantity == Decimal("-0.2")
    orders = list(Order.objects.filter(signal__idempotency_key="t3").order_by("pk"))
    assert [(o.side, o.reduce_only, o.quantity) for o in orders] == [
        ("sell", True, Decimal("0.1")), ("sell", False, Decimal("0.2"))]


def test_duplicate_idempotency_key_creates_one_signal_and_one_order(make_account, make_strategy, set_price) -> None:
    strategy = make_strategy(make_account())
    set_price("BTC/USD", "50000")
    first, created = signal_create(strategy=strategy, source="manual", idempotency_key="dup",
                                          action="open_long", enqueue=False)
    again, created_again = signal_create(strategy=strategy, source="manual", idempotency_key="dup",
                                                action="open_long", enqueue=False)
    assert created and not created_again and again.pk == first.pk
    signal_process(signal_id=first.pk)
    signal_process(signal_id=first.pk)  # a redelivered task does nothing
    assert Order.objects.count() == 1 and PaperOrder.objects.count() == 1


def test_rejected_signal_records_the_rule_and_creates_no_order(make_account, make_strategy, set_price) -> None:
    account = make_account(max_symbol_exposure="1000")
    strategy = make_strategy(account, sizing_value="0.1")
    set_price("BTC/USD", "50000")
    signal = _signal(strategy, "open_long", "r1")
    assert signal.status == Signal.Status.REJECTED
    assert signal.decision_rule == "max_symbol_exposure"
    assert "1000" in signal.decision_detail
    assert Order.objects.count() == 0


def test_stale_price_refuses_entries(make_account, make_strategy, set_price) -> None:
    strategy = make_strategy(make_account())
    set_price("BTC/USD", "50000", at=timezone.now() - timedelta(minutes=10))
    signal = _signal(strategy, "open_long", "stale")
    assert signal.status == Signal.Status.REJECTED and signal.decision_rule == "stale_price"


def test_paused_strategy_signal_is_rejected(make_account, make_strategy, set_price) -> None:
    strategy = make_strategy(make_account())
    services.strategy_pause(strategy=strategy, by="test")
    set_price("BTC/USD", "50000")
    signal = _signal(strategy, "open_long", "p1")
    assert signal.status == Signal.Status.REJECTED and signal.decision_rule == "strategy_inactive"


def test_daily_loss_limit_halts_entries_but_allows_exits(make_account, make_strategy, set_price) -> None:
    account = make_account(daily_loss_limit="100")
    strategy = make_strategy(account, sizing_value="1")
    set_price("BTC/USD", "1000")
    _signal(strategy, "open_long", "d1")
    set_price("BTC/USD", "880")  # unrealized -120 (+ fees) since the day started
    blocked = _signal(strategy, "open_long", "d2")
    assert blocked.status == Signal.Status.REJECTED and blocked.decision_rule == "daily_loss_limit"
    closed = _signal(strategy, "close", "d3")
    assert closed.status == Signal.Status.EXECUTED
    assert Position.objects.get(strategy=strategy).quantity == 0


def test_limit_order_rests_then_fills_when_price_crosses(make_account, make_strategy, set_price) -> None:
    strategy = make_strategy(make_account())
    set_price("BTC/USD", "50000")
    signal = _signal(strategy, "open_long", "l1", order_type="limit", price=Decimal("49000"))
    order = Order.objects.get(signal=signal)
    assert order.status == Order.Status.OPEN and signal.status == Signal.Status.ACCEPTED
    set_price("BTC/USD", "48999")
    positions_monitor()
    order.refresh_from_db()
    assert order.status == Order.Status.FILLED and order.average_fill_price == Decimal("49000")
    assert order.fees == Decimal("0.1") * 49000 * Decimal("0.0002")  # maker fee
    assert Signal.objects.get(pk=signal.pk).status == Signal.Status.EXECUTED


def test_kill_switch_blocks_entries_cancels_orders_and_closes_positions(make_account, make_strategy,
                                                                         set_price) -> None:
    account = make_account()
    strategy = make_strategy(account)
    set_price("BTC/USD", "50000")
    _signal(strategy, "open_long", "k-open")
    resting = _signal(strategy, "open_long", "k-limit", order_type="limit", price=Decimal("40000"))
    services.kill_switch_engage(by="test", reason="drill")
    counts = kill_switch_enforce()
    assert counts == {"canceled": 1, "closing": 1}
    assert Order.objects.get(signal=resting).status == Order.Status.CANCELED
    assert Position.objects.get(strategy=strategy).quantity == 0
    refused = _signal(strategy, "open_long", "k-after")
    assert refused.status == Signal.Status.REJECTED and refused.decision_rule == "kill_switch"
    assert kill_switch_enforce() == {"canceled": 0, "closing": 0}
    services.kill_switch_release(by="test")
    assert _signal(strategy, "open_long", "k-released").status == Signal.Status.EXECUTED
    actions = list(AuditEvent.objects.filter(entity="kill_switch").values_list("action", flat=True))
    assert actions == ["kill_switch.engaged", "kill_switch.released"]


def _decide_only(signal: Signal) -> list[Order]:
    """Commit the decision and its SUBMITTING orders, and stop there (a worker that died before sending)."""
    with transaction.atomic():
        _, orders, _ = decision._signal_decide(signal_id=signal.pk, account_id=signal.account_id, now=timezone.now())
    return orders


def test_ambiguous_submit_is_recovered_by_client_id_without_a_second_order(make_account, make_strategy,
                                                                            set_price) -> None:
    strategy = make_strategy(make_account())
    set_price("BTC/USD", "50000")
    signal, _ = signal_create(strategy=strategy, source="manual", idempotency_key="amb", action="open_long",
                                     enqueue=False)
    orders = _decide_only(signal)
    order = Order.objects.get(pk=orders[0].pk)
    assert order.status == Order.Status.SUBMITTING  # committed with the decision, before any venue call
    # The venue got the order but the reply was lost: the row says UNKNOWN, the venue has it.
    from trading.orders import _request
    from trading.connectors import connector_for

    connector_for(order.account).create_order(_request(order))
    Order.objects.filter(pk=order.pk).update(status=Order.Status.UNKNOWN)
    orders_sweep(now=timezone.now() + timedelta(seconds=30))
    order.refresh_from_db()
    assert order.status == Order.Status.FILLED and order.attempts == 1
    assert PaperOrder.objects.count() == 1
    assert Position.objects.get(strategy=strategy).quantity == Decimal("0.1")


@pytest.mark.parametrize("on_venue", [False, True])
def test_an_order_left_new_by_an_older_release_is_asked_for_then_sent_once(on_venue, make_account, make_strategy,
                                                                         set_price) -> None:
    """Orders are committed SUBMITTING with their decision; a NEW row can only come from an older release's
    database. Recovery asks the venue by its client id first, and sends it (same id) only if the venue never saw it."""
    strategy = make_strategy(make_account())
    set_price("BTC/USD", "50000")
    signal, _ = signal_create(strategy=strategy, source="manual", idempotency_key="legacy", action="open_long",
                                     enqueue=False)
    order = _decide_only(signal)[0]
    earlier = timezone.now() - timedelta(seconds=60)
    Order.objects.filter(pk=order.pk).update(status=Order.Status.NEW, attempts=0, submitted_at=None,
                                             updated_at=earlier)
    if on_venue:  # it did reach the venue before the upgrade
        from trading.orders import _request
        from trading.connectors import connector_for

        connector_for(order.account).create_order(_request(order))
    orders_sweep(now=timezone.now() + timedelta(seconds=60))
    order.refresh_from_db()
    assert order.status == Order.Status.FILLED
    assert list(PaperOrder.objects.values_list("client_order_id", flat=True)) == [order.client_order_id]
    assert Position.objects.get(strategy=strategy).quantity == Decimal("0.1")


def test_order_the_venue_never_saw_is_resent_with_the_same_client_id(make_account, make_strategy,
                                                                       set_price) -> None:
    strategy = make_strategy(make_account())
    set_price("BTC/USD", "50000")
    signal, _ = signal_create(strategy=strategy, source="manual", idempotency_key="lost", action="open_long",
                                     enqueue=False)
    orders = _decide_only(signal)
    order = orders[0]
    earlier = timezone.now() - timedelta(seconds=60)  # the worker crashed right after the commit, before sending
    Order.objects.filter(pk=order.pk).update(submitted_at=earlier, updated_at=earlier)
    orders_sweep(now=timezone.now() + timedelta(seconds=60))
    order.refresh_from_db()
    assert order.status == Order.Status.FILLED and order.attempts == 2
    assert list(PaperOrder.objects.values_list("client_order_id", flat=True)) == [order.client_order_id]


def test_invalid_strategy_settings_are_refused_per_field_and_nothing_saved(make_account) -> None:
    account = make_account()
    with pytest.raises(ValidationError) as excinfo:
        services.strategy_create(data={"name": "x", "slug": "Bad Slug", "kind": "nope", "symbol": "DOGE/XYZ",
                                       "account": account, "sizing_mode": "risk", "sizing_value": "-1",
                                       "leverage": "50"}, by="test")
    errors = excinfo.value.message_dict
    assert {"slug", "kind", "symbol", "sizing_value", "stop_loss_mode", "leverage"} <= set(errors)
    from trading.models import Strategy

    assert Strategy.objects.count() == 0


def test_invalid_account_settings_are_refused_per_field(db) -> None:
    with pytest.raises(ValidationError) as excinfo:
        services.account_create(data={"name": "", "venue": "coinbase", "network": "paper", "max_leverage": "NaN",
                                      "daily_loss_limit": "-5", "paper_slippage_bps": "abc"}, by="test")
    assert {"name", "network", "max_leverage", "daily_loss_limit", "paper_slippage_bps"} <= set(
        excinfo.value.message_dict)
    assert VenueAccount.objects.count() == 0


def test_reconcile_reports_no_difference_after_trading(make_account, make_strategy, set_price) -> None:
    from trading.reconcile import account_reconcile

    account = make_account()
    strategy = make_strategy(account)
    set_price("BTC/USD", "50000")
    _signal(strategy, "open_long", "rec1")
    report = account_reconcile(account=account)
    assert report["position_differences"] == {} and report["unknown_venue_orders"] == []
    # A position changed behind our back on the venue is flagged, never silently adopted.
    from trading.models import PaperPosition

    PaperPosition.objects.filter(account=account, symbol="BTC/USD").update(quantity=Decimal("0.5"))
    report = account_reconcile(account=account)
    assert report["position_differences"] == {"BTC/USD": {"ours": "0.1", "venue": "0.5"}}
    assert Position.objects.get(strategy=strategy).quantity == Decimal("0.1")


def test_atr_multiple_stop_uses_the_atr_sent_with_the_signal(make_account, make_strategy, set_price) -> None:
    strategy = make_strategy(make_account(), stop_loss_mode="atr", stop_loss_value="2", take_profit_mode="atr",
                             take_profit_value="3")
    set_price("BTC/USD", "50000")
    signal = _signal(strategy, "open_long", "atr1", atr=Decimal("250.5"))
    assert signal.status == Signal.Status.EXECUTED
    position = Position.objects.get(strategy=strategy)
    assert position.stop_loss == Decimal("50000") - 2 * Decimal("250.5")
    assert position.take_profit == Decimal("50000") + 3 * Decimal("250.5")
    missing = _signal(strategy, "open_long", "atr2")
    assert missing.status == Signal.Status.REJECTED and "ATR" in missing.decision_detail


def test_stored_payload_never_holds_secrets(make_account, make_strategy) -> None:
    strategy = make_strategy(make_account())
    signal, _ = signal_create(strategy=strategy, source="webhook", idempotency_key="red", action="close",
                                     payload={"passphrase": "hunter2-hunter2", "nested": {"api_key": "k"}, "x": 1},
                                     enqueue=False)
    signal.refresh_from_db()
    assert signal.payload == {"passphrase": "[REDACTED]", "nested": {"api_key": "[REDACTED]"}, "x": 1}


def test_a_manual_close_runs_even_when_the_strategy_is_paused(make_account, make_strategy, set_price) -> None:
    strategy = make_strategy(make_account())
    set_price("BTC/USD", "50000")
    _signal(strategy, "open_long", "pc1")
    services.strategy_pause(strategy=strategy, by="test")
    assert _signal(strategy, "open_long", "pc2").decision_rule == "strategy_inactive"
    assert _signal(strategy, "close", "pc3").status == Signal.Status.EXECUTED
    assert Position.objects.get(strategy=strategy).quantity == 0


def test_signal_stages_are_stamped_where_each_happens(make_account, make_strategy, set_price) -> None:
    account = make_account()
    strategy = make_strategy(account)
    set_price("BTC/USD", "50000")
    signal = _signal(strategy, "open_long", "stages")
    signal.refresh_from_db()
    # accepted: the decision; submitted: the order going to the venue; acknowledged and filled: its reply.
    assert signal.received_at < signal.accepted_at < signal.submitted_at < signal.acknowledged_at
    assert signal.filled_at == signal.acknowledged_at
    order = Order.objects.get(signal=signal)
    assert order.submitted_at == signal.accepted_at  # committed as SUBMITTING with the decision


def test_a_broker_outage_at_enqueue_leaves_the_stored_signal_for_the_sweeper(make_account, make_strategy, set_price,
                                                                            monkeypatch) -> None:
    from kombu.exceptions import OperationalError

    from trading.tasks import signal_process_task

    def broker_down(*args: object, **kwargs: object) -> None:
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(signal_process_task, "delay", broker_down)
    strategy = make_strategy(make_account())
    set_price("BTC/USD", "50000")
    with TestCase.captureOnCommitCallbacks(execute=True):
        signal, created = signal_create(strategy=strategy, source="manual", idempotency_key="no-broker",
                                               action="open_long")
    assert created and Signal.objects.get(pk=signal.pk).status == Signal.Status.RECEIVED
    later = timezone.now() + timedelta(seconds=int(settings.TRADING["STUCK_AFTER_SECONDS"]) + 1)
    assert orders_sweep(now=later)["signals"] == 1
    assert Signal.objects.get(pk=signal.pk).status == Signal.Status.EXECUTED
    assert Order.objects.filter(signal=signal).count() == 1


def test_signal_create_queues_the_raw_message_a_worker_reads(make_account, make_strategy) -> None:
    import json

    import redis
    from tests.conftest import flush_broker

    strategy = make_strategy(make_account())
    flush_broker()
    try:
        with TestCase.captureOnCommitCallbacks(execute=True):
            signal, _ = signal_create(strategy=strategy, source="manual", idempotency_key="raw-q",
                                             action="open_long")
        key = (settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("global_keyprefix", "") + "execution").encode()
        queued = redis.Redis.from_url(settings.REDIS_URL).lrange(key, 0, -1)
    finally:
        flush_broker()
    assert len(queued) == 1
    message = json.loads(queued[0])
    assert message["headers"]["task"] == "trading.tasks.signal_process"
    assert message["headers"]["argsrepr"] == f"({signal.pk},)"


def test_a_strategys_signals_are_decided_in_arrival_order(make_account, make_strategy, set_price) -> None:
    """A close that overtakes its open (two workers, a retried task) first decides the open: the position ends
    flat instead of an ignored close and an open position; another strategy's waiting signal is left alone."""
    account = make_account()
    strategy, other = make_strategy(account, sizing_value="0.1"), make_strategy(account, sizing_value="0.1")
    set_price("BTC/USD", "30000")
    t0 = timezone.now()
    created = {}
    for key, who, action, at in (("o1", strategy, "open_long", t0), ("x1", other, "open_long", t0),
                                 ("o2", strategy, "open_long", t0 + timedelta(milliseconds=1)),
                                 ("c1", strategy, "close", t0 + timedelta(milliseconds=2))):
        created[key] = signal_create(strategy=who, source="manual", idempotency_key=key, action=action,
                                            now=at, enqueue=False)[0]
    close = signal_process(signal_id=created["c1"].pk)
    assert close.status == Signal.Status.EXECUTED, (close.status, close.decision_rule, close.decision_detail)
    statuses = dict(Signal.objects.values_list("idempotency_key", "status"))
    assert statuses == {"o1": "executed", "o2": "executed", "c1": "executed", "x1": "received"}, statuses
    decided = list(Order.objects.filter(strategy=strategy).order_by("pk").values_list(
        "signal__idempotency_key", "side"))
    assert decided == [("o1", "buy"), ("o2", "buy"), ("c1", "sell")]
    assert Position.objects.get(strategy=strategy).quantity == 0
    assert signal_process(signal_id=created["o2"].pk).status == Signal.Status.EXECUTED  # its own task: no-op
    assert Order.objects.filter(strategy=strategy).count() == 3


def test_an_internal_error_fails_that_signal_only(make_account, make_strategy, set_price, monkeypatch, caplog) -> None:
    """A fault of ours while deciding one signal (here: a bug in building its intent) rolls its transaction back,
    marks it FAILED with the exception's type, and holds up neither its strategy's next signal nor the sweeper."""
    account = make_account()
    strategy = make_strategy(account, sizing_value="0.1")
    set_price("BTC/USD", "30000")
    real_intent = decision._intent

    def intent_with_a_bug(signal):  # type: ignore[no-untyped-def]
        if signal.idempotency_key == "poison":
            raise ValueError("secret-looking detail that must not reach the signal row")
        return real_intent(signal)

    monkeypatch.setattr(decision, "_intent", intent_with_a_bug)
    t0 = timezone.now() - timedelta(minutes=10)  # old enough for the sweeper
    poison, _ = signal_create(strategy=strategy, source="manual", idempotency_key="poison",
                                     action="open_long", now=t0, enqueue=False)
    later, _ = signal_create(strategy=strategy, source="manual", idempotency_key="later", action="open_long",
                                    now=t0 + timedelta(milliseconds=1), enqueue=False)
    other, _ = signal_create(strategy=make_strategy(account, sizing_value="0.1"), source="manual",
                                    idempotency_key="other", action="open_long", now=t0, enqueue=False)

    assert orders_sweep()["signals"] == 3  # the first one (the poison) fails; the sweep goes on
    poison.refresh_from_db()
    assert (poison.status, poison.decision_rule) == (Signal.Status.FAILED, "internal_error")
    assert "ValueError" in poison.decision_detail and "secret" not in poison.decision_detail
    assert not Order.objects.filter(signal=poison).exists()
    assert Signal.objects.get(pk=later.pk).status == Signal.Status.EXECUTED
    assert Signal.objects.get(pk=other.pk).status == Signal.Status.EXECUTED
    assert Position.objects.get(strategy=strategy).quantity == Decimal("0.1")
    assert AuditEvent.objects.filter(action="signal.failed", entity_id=str(poison.pk)).exists()
    assert any(r.levelname == "ERROR" and f"signal {poison.pk} failed inside the engine" in r.getMessage()
               for r in caplog.records if r.name == "trading.engine")
    assert signal_process(signal_id=poison.pk).status == Signal.Status.FAILED  # a redelivery: no change
