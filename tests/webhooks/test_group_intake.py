"""The webhook's group commit on PostgreSQL: concurrent alerts share INSERTs and COMMITs, each is stored once,
repeats inside one batch answer the first, and a row the database refuses fails only its own request."""

from __future__ import annotations

import base64
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import pytest
from django.db import DatabaseError, connection, connections
from django.utils import timezone

from tests.conftest import flush_broker
from tests.webhooks.test_broker import _queued
from trading.models import Signal
from trading import intake as store
from webhooks import services as intake

pytestmark = pytest.mark.django_db(transaction=True)  # autocommit, as in production


@pytest.fixture(autouse=True)
def _postgres_only() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("the group commit runs on PostgreSQL")


def _deliver(hook: Any, bodies: list[dict[str, Any]]) -> list[Any]:
    """Each body by its own thread (its own database connection), all released at once."""
    gate = threading.Barrier(len(bodies))

    def one(body: dict[str, Any]) -> Any:
        try:
            gate.wait(10)
            return intake.body_intake(body=json.dumps(body).encode(), content_type="application/json",
                                      meta={"REMOTE_ADDR": "127.0.0.1"})
        finally:
            connections.close_all()

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(one, bodies))


def test_concurrent_alerts_share_commits_and_each_is_stored_and_queued_once(make_hook) -> None:
    hook = make_hook()
    flush_broker()
    try:
        # This process now holds the strategy: guarded INSERTs from here on.
        (warm,) = _deliver(hook, [hook.body(id="warm")])
        group = store.group_commit()
        batches, rows = group.batches, group.rows
        bodies = [hook.body(id=f"u{i}") for i in range(24)] + [hook.body(id=f"d{i % 4}") for i in range(16)]
        results = _deliver(hook, bodies)

        assert all(r.status in (200, 202) for r in results), [r.body() for r in results]
        assert group.rows - rows >= 40 and group.batches - batches < group.rows - rows  # rows shared writes
        by_key: dict[str, list[Any]] = {}
        for body, result in zip(bodies, results, strict=True):
            by_key.setdefault(body["id"], []).append(result)
        for key, answers in by_key.items():
            new = [a for a in answers if not a.duplicate]
            assert len(new) == 1, (key, [a.body() for a in answers])  # one 202 per alert, the repeats answer 200
            assert {a.signal_id for a in answers} == {new[0].signal_id}
        stored = Signal.objects.filter(strategy=hook.strategy).exclude(pk=warm.signal_id)
        assert stored.count() == 28 and stored.filter(status=Signal.Status.RECEIVED).count() == 28
        queued = sorted(json.loads(base64.b64decode(m["body"]))[0][0] for m in _queued())
        assert queued == sorted([*stored.values_list("id", flat=True), warm.signal_id])  # each queued once
    finally:
        flush_broker()


def _row(hook: Any, key: str, quantity: str = "0.01", secret_hash: str | None = None) -> store.SignalRow:
    strategy = hook.strategy
    values = {"strategy_id": strategy.pk, "account_id": strategy.account_id, "source": "webhook",
              "idempotency_key": key, "action": "buy", "symbol": strategy.symbol, "quantity": Decimal(quantity),
              "payload": {"id": key}, "received_at": timezone.now(), "status": Signal.Status.RECEIVED.value}
    checks = [] if secret_hash is None else [strategy.pk, strategy.symbol, strategy.account_id, secret_hash]
    return store.SignalRow(values, checks, enqueue=False)


def test_a_row_the_database_refuses_fails_alone_and_a_stale_guard_stores_nothing(make_hook) -> None:
    hook = make_hook()
    hook.strategy.refresh_from_db()
    good = hook.strategy.webhook_secret_hash
    rows = [_row(hook, "k1"), _row(hook, "k2", quantity="1e30"),  # numeric(38, 18) overflows
            _row(hook, "k3", secret_hash=good), _row(hook, "k4", secret_hash="0" * 64), _row(hook, "k1")]
    results = store.signals_write(rows)

    assert isinstance(results[1], (DatabaseError, ArithmeticError))  # refused by the database or its adapter
    k1, k3 = Signal.objects.get(idempotency_key="k1"), Signal.objects.get(idempotency_key="k3")
    assert results[0] == (k1.pk, False) and results[2] == (k3.pk, False)
    assert results[3] == (None, False)  # the guard's secret hash is not the row's: not written
    assert results[4] == (None, False)  # k1 again: a repeat
    assert k1.quantity == Decimal("0.01") and k1.payload == {"id": "k1"}
    assert set(Signal.objects.values_list("idempotency_key", flat=True)) == {"k1", "k3"}


def test_one_batch_statement_writes_new_rows_skips_a_repeat_and_a_stale_guard(make_hook) -> None:
    hook = make_hook()
    hook.strategy.refresh_from_db()
    good = hook.strategy.webhook_secret_hash
    rows = [_row(hook, "b1"), _row(hook, "b2", quantity="0.123456789012345678", secret_hash=good),
            _row(hook, "b3", secret_hash="0" * 64), _row(hook, "b1")]
    results = store.signals_write(rows)  # no row is refused: one INSERT for all four

    b1, b2 = Signal.objects.get(idempotency_key="b1"), Signal.objects.get(idempotency_key="b2")
    assert results == [(b1.pk, False), (b2.pk, False), (None, False), (None, False)]
    assert b2.quantity == Decimal("0.123456789012345678")  # exact through the JSON parameter: never a float
    assert set(Signal.objects.values_list("idempotency_key", flat=True)) == {"b1", "b2"}
