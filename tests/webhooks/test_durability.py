"""Intake's database path: committed before the answer, a lost connection replaced, storage down."""

from __future__ import annotations

import psycopg
import pytest
from django.db import connection

from trading.models import Signal

pytestmark = pytest.mark.django_db(transaction=True)  # autocommit, as in production: no test transaction around


def _dsn(dbname: str = "") -> str:
    s = connection.settings_dict
    return f"host={s['HOST'] or '127.0.0.1'} port={s['PORT'] or 5432} user={s['USER']} dbname={dbname or s['NAME']}"


def test_an_accepted_alert_is_committed_before_the_answer(make_hook, post) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only")
    hook = make_hook()
    response = post(hook.body(id="durable"))
    assert response.status_code == 202
    with psycopg.connect(_dsn(), autocommit=True) as other:  # another session sees only committed rows
        row = other.execute("SELECT status FROM trading_signal WHERE id = %s",
                            [response.json()["signal_id"]]).fetchone()
    assert row == ("received",)


def test_intake_reconnects_when_the_database_dropped_its_connection(make_hook, post) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only")
    hook = make_hook()
    assert post(hook.body(id="before")).status_code == 202
    pid = connection.connection.info.backend_pid
    with psycopg.connect(_dsn(), autocommit=True) as other:
        assert other.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone() == (True,)
    response = post(hook.body(id="after"))  # as after a PostgreSQL restart: the stale connection is replaced
    assert response.status_code == 202, response.content
    assert connection.connection.info.backend_pid != pid
    assert Signal.objects.filter(status=Signal.Status.RECEIVED).count() == 2


def test_database_down_is_503(make_hook, post) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only")
    hook = make_hook()
    assert post(hook.body(id="up")).status_code == 202
    name = connection.settings_dict["NAME"]
    pid = connection.connection.info.backend_pid
    with psycopg.connect(_dsn("postgres"), autocommit=True) as other:
        other.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        try:
            other.execute("SELECT pg_terminate_backend(%s)", [pid])
            response = post(hook.body(id="down"))  # the read fails, and so does the reconnect
        finally:
            other.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    assert response.status_code == 503
    assert response.json() == {"error": "unavailable", "detail": "storage is unavailable; retry", "fields": {}}
    assert Signal.objects.count() == 1
