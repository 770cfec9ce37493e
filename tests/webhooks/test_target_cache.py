"""Each web process keeps the strategies it authenticated alerts for; every INSERT from that copy re-checks the
strategy row and the kill switch in the same statement, so a change made anywhere (another process, psql) takes
effect on the next alert exactly as if the row had been read again."""

from __future__ import annotations

import hashlib

import psycopg
import pytest
from django.db import connection

from trading import services
from trading.models import Signal
from webhooks import targets as intake

pytestmark = pytest.mark.django_db(transaction=True)  # autocommit, as in production


def _elsewhere(sql: str, *params: object) -> None:
    """A change made by another session, as another process or an operator would make it (no in-process hook)."""
    s = connection.settings_dict
    dsn = f"host={s['HOST'] or '127.0.0.1'} port={s['PORT'] or 5432} user={s['USER']} dbname={s['NAME']}"
    with psycopg.connect(dsn, autocommit=True) as other:
        assert other.execute(sql, params).rowcount == 1


def _skip_unless_postgres() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("another session's change needs PostgreSQL")


def test_a_change_made_elsewhere_takes_effect_on_the_next_alert(make_hook, post) -> None:
    _skip_unless_postgres()
    hook = make_hook()
    sid = hook.strategy.pk
    assert post(hook.body(id="a1")).status_code == 202
    assert hook.strategy.slug in intake.targets  # this process now holds the strategy

    _elsewhere("UPDATE trading_strategy SET status = 'paused' WHERE id = %s", sid)
    paused = post(hook.body(id="a2"))
    assert (paused.status_code, paused.json()["error"]) == (409, "strategy_inactive"), paused.content
    assert Signal.objects.get(pk=int(paused.json()["fields"]["signal_id"])).status == Signal.Status.REJECTED
    _elsewhere("UPDATE trading_strategy SET status = 'active' WHERE id = %s", sid)
    assert post(hook.body(id="a3")).status_code == 202

    services.kill_switch_engage(by="test", reason="drill")
    assert post(hook.body(id="warm")).status_code == 409  # engaged in this process: refused, stored as rejected
    services.kill_switch_release(by="test")
    assert post(hook.body(id="a4")).status_code == 202
    _elsewhere("UPDATE trading_killswitch SET engaged = true WHERE id = 1")
    killed = post(hook.body(id="a5"))
    assert (killed.status_code, killed.json()["error"]) == (409, "kill_switch"), killed.content
    _elsewhere("UPDATE trading_killswitch SET engaged = false WHERE id = 1")

    assert post(hook.body(id="a6")).status_code == 202
    new_secret = "n" * 40
    _elsewhere("UPDATE trading_strategy SET webhook_secret_hash = %s WHERE id = %s",
               hashlib.sha256(new_secret.encode()).hexdigest(), sid)
    assert post(hook.body(id="a7")).status_code == 401  # the old passphrase, though this process knew it
    assert post(hook.body(id="a8", passphrase=new_secret)).status_code == 202

    _elsewhere("UPDATE trading_strategy SET symbol = 'ETH/USD' WHERE id = %s", sid)
    moved = post(hook.body(id="a9", passphrase=new_secret))  # still BTCUSD
    assert (moved.status_code, moved.json()["error"]) == (400, "ticker_mismatch"), moved.content
    stored = set(Signal.objects.filter(strategy_id=sid).values_list("idempotency_key", "status"))
    assert {status for _, status in stored} == {"received", "rejected"}
    assert len(stored) == 8  # a1 a3 a4 a6 a8, and the refusals stored as rejected: a2, warm, a5


def test_a_repeat_delivery_from_the_copy_answers_the_first_signal(make_hook, post) -> None:
    hook = make_hook()
    first = post(hook.body(id="same"))
    again = post(hook.body(id="same"))
    assert first.status_code == 202 and again.status_code == 200, (first.content, again.content)
    assert again.json() == {"signal_id": first.json()["signal_id"], "duplicate": True}
    assert Signal.objects.filter(strategy=hook.strategy).count() == 1


def test_an_unknown_strategy_is_never_kept(make_hook, post) -> None:
    hook = make_hook()
    assert post(hook.body(strategy="no-such-strategy", id="x")).status_code == 401
    assert post(hook.body(passphrase="w" * 40, id="y")).status_code == 401
    assert "no-such-strategy" not in intake.targets and hook.strategy.slug not in intake.targets
