"""The intake role: the TradingView webhook on uvicorn (webhooks/intake_asgi.py), as the bootstrap starts it,
against the test PostgreSQL and Redis. It must answer exactly as the web role does, store and queue each alert
once, and fall back to the web role's code whenever its copy of a strategy may be stale."""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from django.db import connection

from tests.conftest import flush_broker, wait_for, worker_env
from tests.webhooks.server import gunicorn, intake, request
from tests.webhooks.test_corpus import CASES, corpus_check
from trading import services
from trading.models import Signal

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
URL = "/api/webhooks/tradingview/"


def _env(**extra: str) -> dict[str, str]:
    return worker_env(**{"TRADESITE_COMPONENT": "intake", "WEBHOOK_RATE_LIMIT_PER_IP": "1000000000",
                         "WEBHOOK_RATE_LIMIT_PER_STRATEGY": "1000000000", **extra})


@pytest.fixture(scope="module")
def server(django_db_setup: Any, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """One intake server process (one worker: its copy of each strategy is the one the tests reason about)."""
    with django_db_blocker.unblock():
        env = _env()
    with intake(env, workers=1, log_path=tmp_path_factory.mktemp("intake") / "intake.log") as port:
        yield port


class _Answer:
    def __init__(self, status: int, body: Any) -> None:
        self.status_code, self.body = status, body

    def json(self) -> Any:
        return self.body


def _post(port: int, body: Any, content_type: str = "application/json") -> _Answer:
    raw = json.dumps(body).encode() if isinstance(body, dict) else body.encode() if isinstance(body, str) else body
    return _Answer(*request(port, "POST", URL, raw, content_type))


def _health(port: int) -> dict[str, Any]:
    status, body = request(port, "GET", "/healthz")
    assert status == 200
    return body  # type: ignore[no-any-return]


def _queued_ids() -> list[int]:
    """The signal ids of the signal_process messages in the execution queue, oldest first."""
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    key = os.environ.get("REDIS_KEY_PREFIX", "") + "execution"
    out = []
    for raw in reversed(client.lrange(key, 0, -1)):
        envelope = json.loads(raw)
        assert envelope["headers"]["task"] == "trading.tasks.signal_process"
        out.append(json.loads(base64.b64decode(envelope["body"]))[0][0])
    client.close()
    return out


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_corpus_case_on_the_intake_server(case, make_hook, server) -> None:  # type: ignore[no-untyped-def]
    corpus_check(case, make_hook, lambda text, content_type: _post(server, text, content_type))


def test_alerts_of_a_known_strategy_are_stored_and_queued_once_in_the_event_loop(make_hook, server) -> None:
    flush_broker()
    hook = make_hook()
    assert _health(server)["fast_path"] is True
    first = _post(server, hook.body(id="k-0", contracts="0.01"))  # this process learns the strategy
    assert first.status_code == 202, first.body
    before = _health(server)["alerts"]
    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(lambda i: _post(server, hook.body(id=f"k-{i}", contracts="0.015", order_id="L")),
                                range(1, 41)))
    assert [a.status_code for a in answers] == [202] * 40, answers[0].body
    ids = [a.body["signal_id"] for a in answers]
    assert len(set(ids)) == 40
    after = _health(server)["alerts"]
    assert after["fast"] - before["fast"] == 40 and after["slow"] == before["slow"]
    rows = Signal.objects.filter(pk__in=ids)
    assert rows.count() == 40
    for signal in rows:
        assert signal.quantity == Decimal("0.015") and signal.action == "open_long"
        assert signal.status == Signal.Status.RECEIVED and signal.source == Signal.Source.WEBHOOK
        assert signal.payload["passphrase"] == "[REDACTED]" and hook.secret not in json.dumps(signal.payload)
    # Each queued exactly once (the LPUSH goes out with the answers; its reply is not waited for).
    wait_for(lambda: len(_queued_ids()) >= 41, timeout=10, what="the messages queued")
    assert sorted(_queued_ids()) == sorted([first.body["signal_id"], *ids])
    # A repeat delivery: the first id, no new row, nothing queued.
    again = _post(server, hook.body(id="k-7", contracts="0.015", order_id="L"))
    assert (again.status_code, again.body) == (200, {"signal_id": ids[6], "duplicate": True})
    assert Signal.objects.count() == 41 and len(_queued_ids()) == 41


def test_a_changed_strategy_or_kill_switch_is_decided_on_a_fresh_read(make_hook, server) -> None:
    hook = make_hook()
    strategy = hook.strategy
    assert _post(server, hook.body(id="c-0")).status_code == 202
    assert _post(server, hook.body(id="c-1")).status_code == 202  # from the copy

    services.strategy_pause(strategy=strategy, by="test")
    paused = _post(server, hook.body(id="c-2"))
    assert paused.status_code == 409 and paused.body["error"] == "strategy_inactive", paused.body
    assert Signal.objects.get(pk=int(paused.body["fields"]["signal_id"])).status == Signal.Status.REJECTED
    services.strategy_start(strategy=strategy, by="test")
    assert _post(server, hook.body(id="c-3")).status_code == 202

    new_secret = services.strategy_webhook_secret_rotate(strategy=strategy, by="test")
    assert _post(server, hook.body(id="c-4")).status_code == 401  # the old secret, which the copy still holds
    hook.secret = new_secret
    assert _post(server, hook.body(id="c-5")).status_code == 202

    services.kill_switch_engage(by="test", reason="test")
    killed = _post(server, hook.body(id="c-6"))
    assert killed.status_code == 409 and killed.body["error"] == "kill_switch"
    services.kill_switch_release(by="test")
    assert _post(server, hook.body(id="c-7")).status_code == 202
    assert set(Signal.objects.values_list("status", flat=True)) == {"received", "rejected"}
    assert Signal.objects.filter(status="received").count() == 5


def test_a_lost_database_connection_stores_each_alert_once(make_hook, server) -> None:
    hook = make_hook()
    assert _post(server, hook.body(id="d-0")).status_code == 202
    assert _post(server, hook.body(id="d-1")).status_code == 202
    with connection.cursor() as cursor:  # a database restart, as the server's connections see it
        cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                       "AND pid <> pg_backend_pid()")
    lost = _post(server, hook.body(id="d-2"))
    assert lost.status_code == 202, lost.body
    before = _health(server)["alerts"]["fast"]
    assert _post(server, hook.body(id="d-3")).status_code == 202  # the event loop's connection is back
    assert _health(server)["alerts"]["fast"] == before + 1
    assert Signal.objects.filter(strategy=hook.strategy).count() == 4
    assert Signal.objects.filter(pk=lost.body["signal_id"]).exists()


def test_answers_and_headers_are_the_web_roles(make_hook, server, tmp_path: Path) -> None:
    hook = make_hook()
    cases: list[tuple[str, bytes, str]] = [
        ("POST", json.dumps(hook.body(id="h-1")).encode(), "application/json"),
        ("POST", json.dumps(hook.body(id="h-1")).encode(), "application/json"),  # repeat
        ("POST", json.dumps(hook.body(id="h-2", passphrase="x" * 43)).encode(), "application/json"),
        ("POST", json.dumps(hook.body(id="h-3", ticker="ETHUSD")).encode(), "application/json"),
        ("POST", b"{not json", "application/json"),
        ("POST", b"<xml/>", "application/xml"),
        ("POST", b"x" * 9000, "text/plain"),
        ("GET", b"", "application/json"),
    ]
    skip = {"date", "server", "connection", "content-length", "keep-alive", "transfer-encoding"}

    def answers(port: int, tag: str) -> list[tuple[int, Any, dict[str, str]]]:
        import http.client

        out = []
        for method, body, content_type in cases:
            body = body.replace(b'"h-', f'"{tag}-'.encode())
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request(method, URL, body=body or None, headers={"Content-Type": content_type})
            response = conn.getresponse()
            data = json.loads(response.read())
            conn.close()
            data.pop("signal_id", None)
            data.get("fields", {}).pop("signal_id", None)
            headers = {k.lower(): v for k, v in response.getheaders() if k.lower() not in skip}
            out.append((response.status, data, headers))
        return out

    on_intake = answers(server, "i")
    with gunicorn(_env(TRADESITE_COMPONENT="web"), workers=1, threads=2, log_path=tmp_path / "g.log") as web:
        on_web = answers(web, "w")
    assert [a[0] for a in on_intake] == [202, 200, 401, 400, 400, 415, 413, 405]
    assert on_intake == on_web


def test_rate_limits_are_counted_in_the_event_loop(make_hook, tmp_path: Path) -> None:
    hook = make_hook()
    env = _env(WEBHOOK_RATE_LIMIT_PER_STRATEGY="3", WEBHOOK_RATE_LIMIT_WINDOW_SECONDS="3600")
    with intake(env, log_path=tmp_path / "intake.log") as port:
        while time.time() % 3600 > 3580:  # fixed windows: all five alerts in one (a new window would admit more)
            time.sleep(1)
        statuses = [_post(port, hook.body(id=f"r-{i}")).status_code for i in range(5)]
        assert _health(port)["alerts"]["fast"] == 2  # the first from a fresh read, then two from the copy
    assert statuses == [202, 202, 202, 429, 429]
    assert Signal.objects.count() == 3


def test_other_paths_are_not_served(server) -> None:
    status, body = request(server, "GET", "/admin/")
    assert status == 404 and body["error"] == "not_found"


def test_an_insert_the_database_does_not_answer_is_cancelled_and_the_alert_stored_once(make_hook,
                                                                                        tmp_path: Path) -> None:
    import threading

    import psycopg

    hook = make_hook()
    settings = connection.settings_dict
    url = (f"postgres://{settings['USER']}@{settings['HOST'] or '127.0.0.1'}:{settings['PORT'] or 5432}"
           f"/{settings['NAME']}")
    with intake(_env(INTAKE_WRITE_TIMEOUT_SECONDS="1"), log_path=tmp_path / "intake.log") as port:
        assert _post(port, hook.body(id="t-0")).status_code == 202  # this process learns the strategy
        answers: list[_Answer] = []
        with psycopg.connect(url) as locker:  # holds the table until the block ends (a stuck database, as seen)
            locker.execute("LOCK TABLE trading_signal IN ACCESS EXCLUSIVE MODE")
            sender = threading.Thread(target=lambda: answers.append(_post(port, hook.body(id="t-1"))))
            sender.start()
            sender.join(timeout=2.5)  # past the 1 s write timeout: the fast INSERT was cancelled
            assert not answers  # still waiting: the fresh path's INSERT waits for the lock too

            def waiting() -> int:  # statements waiting for the lock: the fresh path's only, once it got there
                with psycopg.connect(url, autocommit=True) as probe:
                    return int(probe.execute(
                        "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                        "WHERE c.relname = 'trading_signal' AND NOT l.granted").fetchone()[0])  # type: ignore[index]

            wait_for(lambda: waiting() == 1, timeout=10, what="one INSERT waiting (the cancelled one is gone)")
            time.sleep(0.5)
            assert waiting() == 1
        sender.join(timeout=30)
        health = _health(port)
    assert answers and answers[0].status_code == 202, answers and answers[0].body
    assert health["alerts"] == {"fast": 0, "slow": 2}
    assert Signal.objects.filter(strategy=hook.strategy).count() == 2
    assert Signal.objects.filter(pk=answers[0].body["signal_id"]).exists()


def test_metrics_count_the_alerts_each_way_and_follow_the_web_roles_access_rule(make_hook, tmp_path: Path) -> None:
    import http.client

    hook = make_hook()

    def scrape(port: int, headers: dict[str, str]) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/metrics", headers=headers)
        response = conn.getresponse()
        text = response.read().decode()
        conn.close()
        return response.status, text

    with intake(_env(METRICS_TOKEN=""), log_path=tmp_path / "intake.log") as port:
        for i in range(3):
            assert _post(port, hook.body(id=f"m-{i}")).status_code == 202
        assert _post(port, hook.body(id="m-x", passphrase="x" * 43)).status_code == 401
        status, text = scrape(port, {})
        assert status == 200, text
        assert 'tradesite_intake_alerts_total{path="fast"} 2.0' in text  # the first alert taught the copy
        assert 'tradesite_intake_alerts_total{path="slow"} 2.0' in text
        assert 'tradesite_intake_answers_total{status="202"} 3.0' in text
        assert 'tradesite_intake_answers_total{status="401"} 1.0' in text
        assert "tradesite_intake_fast_path 1.0" in text and "process_cpu_seconds_total" in text
        assert scrape(port, {"X-Forwarded-For": "1.2.3.4"})[0] == 404  # through a proxy: not an internal scraper
    token = "t" * 40
    with intake(_env(METRICS_TOKEN=token), log_path=tmp_path / "intake2.log") as port:
        assert scrape(port, {})[0] == 401
        assert scrape(port, {"Authorization": f"Bearer {token}"})[0] == 200


def test_source_allowlist_and_trusted_proxy_hold_on_the_fast_path(make_hook, tmp_path: Path) -> None:
    import http.client

    hook = make_hook()

    def post_from(port: int, body: dict[str, Any], forwarded: str | None) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers = {"Content-Type": "application/json", **({"X-Forwarded-For": forwarded} if forwarded else {})}
        conn.request("POST", URL, body=json.dumps(body).encode(), headers=headers)
        status = conn.getresponse().status
        conn.close()
        return status

    env = _env(WEBHOOK_ALLOWED_IPS="tradingview", WEBHOOK_TRUSTED_PROXY_HEADER="X-Forwarded-For",
               WEBHOOK_TRUSTED_PROXIES="127.0.0.1")
    with intake(env, log_path=tmp_path / "intake.log") as port:
        assert post_from(port, hook.body(id="a-0"), "52.89.214.238") == 202  # TradingView, through our proxy
        assert post_from(port, hook.body(id="a-1"), "52.89.214.238") == 202  # now from the process's copy
        assert _health(port)["alerts"]["fast"] == 1
        # The right passphrase from elsewhere, or straight to the server (no proxy hop): refused, nothing stored.
        assert post_from(port, hook.body(id="a-2"), "1.2.3.4") == 403
        assert post_from(port, hook.body(id="a-3"), "52.89.214.238, 1.2.3.4") == 403  # the right-most untrusted hop
        assert post_from(port, hook.body(id="a-4"), None) == 403
    assert Signal.objects.filter(strategy=hook.strategy).count() == 2
