"""Redis down, PostgreSQL up: PostgreSQL is the system of record, so every authenticated, valid alert is still stored
and answered 202 (the rate limits counted by each process on its own meanwhile), and its signal is executed once
Redis is back, by a real worker and the sweeper. Both servers that take alerts, as real processes, against a
redis-server of the test's own that it stops and starts (connections refused) or freezes and thaws (nothing
answered: each call waits for its timeout)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
from django.test import Client

from tests.conftest import WorkerGroup, wait_for, worker_env
from tests.webhooks.server import RedisServer, free_port, gunicorn, intake, request
from trading.models import Signal

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
URL = "/api/webhooks/tradingview/"


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _post(port: int, body: dict[str, Any]) -> tuple[int, Any]:
    return request(port, "POST", URL, json.dumps(body).encode())


def _sweep(redis_url: str) -> None:
    """Send the sweeper's task to the worker, as beat does every SWEEP_EVERY_SECONDS."""
    from tradesite.celery import app
    from infra.broker import TaskPublisher
    from trading.tasks import orders_sweep_task

    client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    publisher = TaskPublisher(app=app, task_name=orders_sweep_task.name, client=client)
    try:
        publisher.publish()
    finally:
        publisher.link.close()
        client.close()


def _statuses(ids: list[int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for status in Signal.objects.filter(pk__in=ids).values_list("status", flat=True):
        out[status] = out.get(status, 0) + 1
    return out


@pytest.mark.parametrize("outage", ["stopped", "frozen"])
@pytest.mark.parametrize("role", ["web", "intake"])
def test_alerts_sent_while_redis_is_down_are_stored_answered_202_and_executed_once_it_is_back(
        role: str, outage: str, make_hook: Callable[..., Any], set_price: Callable[..., None],
        private_redis: RedisServer, tmp_path: Path) -> None:
    known, fresh = make_hook(), make_hook()  # `known`: alerted before the outage; `fresh`: first seen during it
    env = worker_env(REDIS_URL=private_redis.url, CELERY_BROKER_URL=private_redis.url, TRADESITE_COMPONENT=role,
                     WEBHOOK_RATE_LIMIT_PER_IP="100000", WEBHOOK_RATE_LIMIT_PER_STRATEGY="100000",
                     TRADING_STUCK_AFTER_SECONDS="1", METRICS_TOKEN="")
    group = WorkerGroup(env={**env, "TRADESITE_COMPONENT": "worker"}, log_dir=tmp_path)
    serving = (gunicorn(env, workers=2, threads=4, log_path=tmp_path / "web.log") if role == "web"
               else intake(env, workers=1, log_path=tmp_path / "intake.log"))
    try:
        group.start()
        with serving as port:
            before = [_post(port, known.body(id=f"up-{i}", contracts="0.001")) for i in range(3)]
            assert [status for status, _ in before] == [202] * 3, before
            before_ids = [body["signal_id"] for _, body in before]
            wait_for(lambda: _statuses(before_ids) == {"executed": 3}, timeout=60,
                     what=f"the alerts sent with Redis up executed: {_statuses(before_ids)}")

            private_redis.stop() if outage == "stopped" else private_redis.pause()

            def send(i: int) -> tuple[int, Any, float]:
                started = time.monotonic()
                status, body = _post(port, (fresh if i % 3 == 0 else known).body(id=f"down-{i}", contracts="0.001"))
                return status, body, time.monotonic() - started

            try:
                with ThreadPoolExecutor(max_workers=8) as pool:
                    down = list(pool.map(send, range(60)))
                if role == "intake":
                    status, text = request(port, "GET", "/metrics")
            finally:
                if outage == "frozen":
                    private_redis.resume()
            assert [status for status, _, _ in down] == [202] * 60, [a for a in down if a[0] != 202][:3]
            down_ids = [body["signal_id"] for _, body, _ in down]
            assert len(set(down_ids)) == 60
            assert Signal.objects.filter(pk__in=down_ids).count() == 60
            # Only the requests in flight when Redis froze wait for its timeouts; the others answer at once.
            latencies = sorted(took for _, _, took in down)
            assert latencies[30] < 1, latencies
            if role == "intake":
                assert status == 200
                assert "tradesite_webhook_rate_limit_local_total" in text.decode(), text[:2000]

            if outage == "stopped":
                # Stored and waiting: nothing could queue them.
                assert _statuses(down_ids) == {"received": 60}
                private_redis.start()  # empty: the messages queued before the outage are gone, as on a cold restart
            back = _post(port, known.body(id="back", contracts="0.001"))
            assert back[0] == 202, back
        set_price("BTC/USD", "50000")  # fresh for the entries the sweeper now makes
        ids = [*down_ids, back[1]["signal_id"]]

        def executed() -> bool:
            if _statuses(ids) == {"executed": len(ids)}:
                return True
            _sweep(private_redis.url)  # as beat would, every few seconds, until the worker has taken them all
            return False

        wait_for(executed, timeout=90, every=2, what=f"signals executed after Redis returned: {_statuses(ids)}")
    except BaseException:
        print(group.logs()[-6000:])
        raise
    finally:
        group.stop_all()
    assert Signal.objects.filter(strategy__in=[known.strategy, fresh.strategy]).count() == 64


def test_rate_limits_still_hold_in_the_process_while_redis_is_down(make_hook: Callable[..., Any],
                                                                   settings: Any) -> None:
    hook = make_hook()
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                                   "LOCATION": f"redis://127.0.0.1:{free_port()}/0"}}  # nothing listens there
    settings.WEBHOOK_RATE_LIMIT_PER_STRATEGY = 3
    settings.WEBHOOK_RATE_LIMIT_PER_IP = 6
    client = Client()

    def post(**fields: Any) -> int:
        return client.post(URL, data=json.dumps(hook.body(**fields)), content_type="application/json").status_code

    statuses = [post(id=f"b-{i}") for i in range(5)]
    assert statuses == [202, 202, 202, 429, 429]
    assert Signal.objects.filter(strategy=hook.strategy).count() == 3
    # The source's budget (6): one more request, whatever it carries, then every request from it is refused.
    assert post(id="b-x", passphrase="wrong" * 9) == 401
    assert [post(id=f"c-{i}") for i in range(3)] == [429, 429, 429]
    assert Signal.objects.filter(strategy=hook.strategy).count() == 3
