"""The engine through real Celery worker processes, Redis and Postgres: cycles, concurrency, crashes."""

from __future__ import annotations

import threading
from decimal import ROUND_DOWN, ROUND_HALF_UP, ROUND_UP, Decimal

import pytest

from tests.conftest import run_threads, wait_for
from trading import services
from trading.execution import signal_process
from trading.intake import signal_create
from trading.models import Order, PaperOrder, Position, Signal, VenueAccount

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def _send(strategy, action: str, key: str, **fields):  # type: ignore[no-untyped-def]
    signal, created = signal_create(strategy=strategy, source="manual", idempotency_key=key, action=action,
                                           **fields)
    assert created
    return signal


def _status(signal_id: int) -> str:
    return Signal.objects.values_list("status", flat=True).get(pk=signal_id)


def test_full_cycle_through_a_worker_with_exact_pnl(workers, make_account, make_strategy, set_price) -> None:
    workers.start()
    account = make_account(paper_slippage_bps="5")
    strategy = make_strategy(account, sizing_mode="notional", sizing_value="2500", stop_loss_mode="percent",
                             stop_loss_value="3")
    set_price("ETH/USD", "2500", at=None)
    strategy.symbol = "ETH/USD"
    services.strategy_update(strategy=strategy, data={"symbol": "ETH/USD"}, by="test")

    opened = _send(strategy, "open_long", "w-open")
    wait_for(lambda: _status(opened.pk) == "executed", what="entry filled by the worker")
    signal = Signal.objects.get(pk=opened.pk)
    assert signal.received_at <= signal.accepted_at <= signal.submitted_at <= signal.acknowledged_at
    assert signal.filled_at is not None

    set_price("ETH/USD", "2400")
    from trading.tasks import positions_monitor_task

    positions_monitor_task.delay()
    wait_for(lambda: Position.objects.get(strategy=strategy).quantity == 0, what="stop-loss exit by the worker")

    qty = Decimal("1")  # 2500 / 2500, on a 0.0001 lot
    entry = (Decimal("2500") * Decimal("1.0005")).quantize(Decimal("0.01"), rounding=ROUND_UP)
    exit_ = (Decimal("2400") * Decimal("0.9995")).quantize(Decimal("0.01"), rounding=ROUND_DOWN)
    fees = sum(((qty * p * Decimal("0.0005")).quantize(Decimal("1e-8"), rounding=ROUND_HALF_UP)
                for p in (entry, exit_)), Decimal(0))
    position = Position.objects.get(strategy=strategy)
    assert position.realized_pnl == (exit_ - entry) * qty
    assert position.fees_paid == fees
    assert VenueAccount.objects.get(pk=account.pk).cash == Decimal("10000") + (exit_ - entry) * qty - fees


def test_kill_switch_end_to_end_through_the_worker(workers, make_account, make_strategy, set_price) -> None:
    workers.start()
    account = make_account()
    strategies = [make_strategy(account, sizing_value="0.01") for _ in range(3)]
    set_price("BTC/USD", "60000")
    sent = [_send(s, "open_long", f"ks-{i}") for i, s in enumerate(strategies)]
    resting = _send(strategies[0], "open_long", "ks-limit", order_type="limit", price=Decimal("50000"))
    wait_for(lambda: all(_status(s.pk) == "executed" for s in sent) and _status(resting.pk) == "accepted",
             what="entries filled and the limit resting")

    services.kill_switch_engage(by="test", reason="e2e drill")  # enforcement is queued to the worker
    wait_for(lambda: not Position.objects.exclude(quantity=0).exists(), what="positions closed by the kill switch")
    wait_for(lambda: Order.objects.get(signal=resting).status == Order.Status.CANCELED, what="limit canceled")
    assert Order.objects.filter(purpose=Order.Purpose.KILL_SWITCH, reduce_only=True,
                                status=Order.Status.FILLED).count() == 3

    refused = _send(strategies[1], "open_long", "ks-after")
    wait_for(lambda: _status(refused.pk) == "rejected", what="entry refused while engaged")
    assert Signal.objects.get(pk=refused.pk).decision_rule == "kill_switch"

    # The switch survives a worker restart and is released only by hand.
    workers.stop_all()
    workers.start()
    refused_again = _send(strategies[1], "open_long", "ks-after-restart")
    wait_for(lambda: _status(refused_again.pk) == "rejected", what="still refused after restart")
    services.kill_switch_release(by="test")
    allowed = _send(strategies[1], "open_long", "ks-released")
    wait_for(lambda: _status(allowed.pk) == "executed", what="entries allowed after release")


def test_concurrent_strategies_on_one_account_never_exceed_its_limits(make_account, make_strategy,
                                                                       set_price, transactional_db) -> None:
    account = make_account(max_open_positions=3, max_account_exposure="5000", max_symbol_exposure="3000",
                           max_leverage="1")
    strategies = [make_strategy(account, sizing_mode="notional", sizing_value="1000") for _ in range(5)]
    set_price("BTC/USD", "50000")
    signals = [
        signal_create(strategy=strategies[i % 5], source="manual", idempotency_key=f"c-{i}",
                             action="open_long", enqueue=False)[0]
        for i in range(200)
    ]
    queue = list(reversed(signals))
    lock = threading.Lock()

    def run() -> None:
        while True:
            with lock:
                if not queue:
                    return
                signal = queue.pop()
            signal_process(signal_id=signal.pk)

    errors = run_threads(run, 12)
    assert not errors, errors
    open_positions = Position.objects.filter(account=account).exclude(quantity=0)
    exposure = sum((abs(p.quantity) * 50000 for p in open_positions), Decimal(0))
    assert open_positions.count() <= 3
    assert exposure <= 3000  # the tighter of the symbol and account limits
    assert Signal.objects.filter(status="executed").count() == 3
    rules = set(Signal.objects.filter(status="rejected").values_list("decision_rule", flat=True))
    assert rules <= {"max_open_positions", "max_symbol_exposure", "max_account_exposure"}
    assert Order.objects.count() == PaperOrder.objects.count() == 3


@pytest.mark.parametrize("when", ["before_venue", "after_venue"])
def test_worker_killed_between_commit_and_fill_leaves_exactly_one_order(workers, make_account, make_strategy,
                                                                         set_price, when: str) -> None:
    workers.env["TRADING_RESEND_AFTER_SECONDS"] = "1"
    first = workers.start()
    account = make_account(paper_latency_ms=4000)
    strategy = make_strategy(account, sizing_value="0.05")
    set_price("BTC/USD", "50000")
    signal = _send(strategy, "open_long", f"kill-{when}")
    wait_for(lambda: Order.objects.filter(signal=signal, status=Order.Status.SUBMITTING).exists(),
             what="order committed as SUBMITTING")
    if when == "after_venue":
        wait_for(lambda: PaperOrder.objects.filter(account=account).exists(), timeout=10,
                 what="the venue took the order")
    else:
        assert not PaperOrder.objects.filter(account=account).exists()
    workers.kill(first)  # SIGKILL the whole worker group mid-flight
    order = Order.objects.get(signal=signal)
    assert order.status == Order.Status.SUBMITTING

    workers.start()  # start-up recovery asks the venue by client id, then resends only if it never saw it
    wait_for(lambda: Order.objects.get(pk=order.pk).status == Order.Status.FILLED, timeout=60,
             what="order recovered after restart")
    assert Order.objects.filter(account=account).count() == 1
    assert PaperOrder.objects.filter(account=account).count() == 1
    assert PaperOrder.objects.get(account=account).client_order_id == order.client_order_id
    assert Position.objects.get(strategy=strategy).quantity == Decimal("0.05")
    wait_for(lambda: _status(signal.pk) == "executed", what="signal settled")
