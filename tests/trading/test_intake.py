"""trading/intake.py's signal_store: the one function that writes a signal row, for the webhook and everyone else."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone

from trading import intake
from trading.models import Signal

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[2]


def _values(strategy: Any, key: str) -> dict[str, Any]:
    return {"strategy_id": strategy.pk, "account_id": strategy.account_id, "source": "webhook",
            "idempotency_key": key, "action": "open_long", "symbol": strategy.symbol, "payload": {"id": key},
            "received_at": timezone.now(), "status": Signal.Status.RECEIVED.value}


@pytest.mark.parametrize("direct", [False, True])
def test_a_key_is_stored_once_and_a_repeat_stores_nothing(make_account, make_strategy, direct: bool) -> None:
    strategy = make_strategy(make_account())
    with transaction.atomic():
        first = intake.signal_store(values=_values(strategy, "once"), enqueue=False, direct=direct)
        again = intake.signal_store(values=_values(strategy, "once"), enqueue=False, direct=direct)
    assert first == Signal.objects.get(idempotency_key="once").pk and again is None


def test_a_guard_that_no_longer_matches_the_strategy_stores_nothing(make_account, make_strategy) -> None:
    strategy = make_strategy(make_account())
    strategy.refresh_from_db()
    good = [strategy.pk, strategy.symbol, strategy.account_id, strategy.webhook_secret_hash]
    stale = [strategy.pk, strategy.symbol, strategy.account_id, "0" * 64]
    assert intake.signal_store(values=_values(strategy, "stale"), checks=stale, enqueue=False, direct=True) is None
    stored = intake.signal_store(values=_values(strategy, "good"), checks=good, enqueue=False, direct=True)
    assert set(Signal.objects.values_list("pk", "idempotency_key")) == {(stored, "good")}


def test_signal_create_answers_the_first_signal_for_a_repeated_key(make_account, make_strategy) -> None:
    strategy = make_strategy(make_account())
    first, created = intake.signal_create(strategy=strategy, source="manual", idempotency_key="k", action="close",
                                          payload={"passphrase": "x"}, enqueue=False)
    again, created_again = intake.signal_create(strategy=strategy, source="manual", idempotency_key="k",
                                                action="open_long", enqueue=False)
    assert created and not created_again and again.pk == first.pk and again.action == "close"
    assert Signal.objects.get(pk=first.pk).payload == {"passphrase": "[REDACTED]"}
    assert not first._state.adding


def test_no_other_module_writes_a_signal_row() -> None:
    """Every signal is stored by trading/intake.py: no INSERT into the signal table, no ORM create elsewhere."""
    writers = re.compile(r"INSERT INTO \{q\(Signal\._meta|Signal\.objects\.(create|bulk_create|get_or_create|"
                         r"update_or_create)\b|Signal\(.*\)\.save\(|rows\.insert(_new)?\(\s*\[?signal")
    found = [str(path.relative_to(ROOT)) for package in ("trading", "webhooks", "strategies", "tradesite")
             for path in (ROOT / package).rglob("*.py")
             if "migrations" not in path.parts and writers.search(path.read_text())]
    assert found == ["trading/intake.py"], found
