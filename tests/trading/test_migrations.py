"""Migrations on a database of their own: upgrading in steps keeps every signal key unique, and a partial
`migrate trading` (before django-celery-beat's tables exist) finishes and the schedule appears with the rest."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import psycopg
import pytest

from tests.conftest import ROOT, scratch_database

pytestmark = pytest.mark.integration


@pytest.fixture
def fresh_db() -> Iterator[str]:
    with scratch_database("tradesite_mig") as url:
        yield url


def _manage(url: str, *args: str) -> None:
    env = {**os.environ, "DATABASE_URL": url}
    result = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


# An account and a strategy made by the models as they were at 0004 (later migrations add columns to both).
BOOK = ("from django.db import connection; from django.db.migrations.loader import MigrationLoader; "
        "apps = MigrationLoader(connection).project_state(('trading', '0004_order_working_index')).apps; "
        "a = apps.get_model('trading', 'VenueAccount').objects.create(name='a'); "
        "apps.get_model('trading', 'Strategy').objects.create(id=1, name='s', slug='s', symbol='BTC/USD', account=a)")


def _signal_row(conn: psycopg.Connection, key: str) -> None:
    conn.execute(
        "INSERT INTO trading_signal (strategy_id, account_id, source, idempotency_key, action, symbol, order_type,"
        " payload, status, decision_rule, decision_detail, attempts, received_at)"
        " SELECT 1, account_id, 'manual', %s, 'close', 'BTC/USD', 'market', '{}', 'received', '', '', 0, now()"
        " FROM trading_strategy WHERE id = 1", (key,))


def test_stepwise_upgrade_keeps_keys_unique_and_drops_the_indexes_intake_paid_for(fresh_db: str) -> None:
    _manage(fresh_db, "migrate", "-v0", "trading", "0004")  # no beat tables yet: post_migrate must not fail
    _manage(fresh_db, "shell", "-c", BOOK)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        _signal_row(conn, "k1")
    _manage(fresh_db, "migrate", "-v0")
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        indexes = {row[0] for row in conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'trading_signal'")}
        assert not any("varchar_pattern_ops" in d for d in indexes), indexes
        assert not any(d.endswith("(strategy_id)") for d in indexes), indexes
        assert any("UNIQUE" in d and d.endswith("(idempotency_key)") for d in indexes), indexes
        assert any("signal_waiting_by_strategy" in d and "(strategy_id, received_at) WHERE" in d and "'received'" in d
                   for d in indexes), indexes
        # pk, key, (status, received_at), (strategy_id, received_at), account, waiting
        assert len(indexes) == 6, indexes
        with pytest.raises(psycopg.errors.UniqueViolation):
            _signal_row(conn, "k1")
        _signal_row(conn, "k2")
        tasks = {row[0] for row in conn.execute("SELECT name FROM django_celery_beat_periodictask")}
    assert {"orders sweep", "accounts reconcile", "strategies evaluate due"} <= tasks, tasks
