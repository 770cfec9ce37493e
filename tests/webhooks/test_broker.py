"""The intake's Redis path: the raw-pushed Celery message, what a real worker does with it, and failures."""

from __future__ import annotations

import base64
import json
import os
from datetime import timedelta
from typing import Any

import pytest
import redis
from django.utils import timezone

from tests.conftest import flush_broker, wait_for
from tests.webhooks.server import free_port
from infra import broker
from trading.recovery import orders_sweep
from infra.broker import RedisLink, command
from trading.models import Signal
from webhooks import services

URL = "/api/webhooks/tradingview/"


def _client() -> redis.Redis:
    return redis.Redis.from_url(os.environ["REDIS_URL"])


def _queued(queue: str = "execution") -> list[dict[str, Any]]:
    key = os.environ.get("REDIS_KEY_PREFIX", "") + queue
    return [json.loads(m) for m in reversed(_client().lrange(key, 0, -1))]  # oldest first


def _flat(value: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, dict) and item:
            out.update(_flat(item, f"{prefix}{key}."))
        else:
            out[prefix + key] = item
    return out


def test_raw_message_is_the_message_delay_publishes() -> None:
    from trading.tasks import signal_process_task

    flush_broker()
    try:
        signal_process_task.delay(42)
        broker.publisher_for(signal_process_task).publish(42)
        by_delay, raw = (_flat(m) for m in _queued())
    finally:
        flush_broker()
    assert set(raw) == set(by_delay)  # the same envelope, headers and properties, no more, no less
    per_message = {"headers.id", "headers.root_id", "properties.correlation_id", "properties.delivery_tag",
                   "headers.sent_at"}
    assert {k: v for k, v in raw.items() if k not in per_message} == \
        {k: v for k, v in by_delay.items() if k not in per_message}
    assert raw["headers.id"] == raw["headers.root_id"] == raw["properties.correlation_id"] != by_delay["headers.id"]
    assert raw["properties.delivery_tag"] != by_delay["properties.delivery_tag"]
    assert abs(raw["headers.sent_at"] - by_delay["headers.sent_at"]) < 5
    assert json.loads(base64.b64decode(raw["body"])) == [[42], {}, {"callbacks": None, "errbacks": None,
                                                                    "chain": None, "chord": None}]


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_runs_a_raw_published_signal(workers, make_hook) -> None:
    hook = make_hook()
    result = services.alert_intake(data=hook.body(id="raw-1", contracts="0.01"), enqueue=False)
    assert result.status == 202
    workers.start()
    from trading.tasks import signal_process_task

    broker.publisher_for(signal_process_task).publish(result.signal_id)
    wait_for(lambda: Signal.objects.get(pk=result.signal_id).status == Signal.Status.EXECUTED,
             what="the raw-published signal executed by the worker")
    # The worker read the sent_at header like a .delay() message's: the task latency metric counted it.
    from tradesite.taskmetrics import latency_key

    key = latency_key("trading.tasks.signal_process")
    wait_for(lambda: int(_client().hget(key, "count") or 0) >= 1, what="task latency recorded")


@pytest.mark.django_db(transaction=True)
def test_alert_is_stored_when_the_broker_is_down_and_the_sweeper_processes_it(make_hook, post, settings,
                                                                            caplog) -> None:
    settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    hook = make_hook()
    response = post(hook.body(id="broker-down"))
    assert response.status_code == 202, response.content
    signal = Signal.objects.get(pk=response.json()["signal_id"])
    assert signal.status == Signal.Status.RECEIVED  # durable before the 202, whatever happened to the enqueue
    assert "the sweeper will pick" in caplog.text  # it (one by one) or them (the group commit's one LPUSH)
    orders_sweep(now=timezone.now() + timedelta(minutes=5))
    signal.refresh_from_db()
    assert signal.status == Signal.Status.EXECUTED


@pytest.mark.django_db(transaction=True)
def test_without_raw_enqueue_delay_is_used(make_hook, post, settings) -> None:
    settings.WEBHOOK_RAW_ENQUEUE = "0"
    flush_broker()
    try:
        hook = make_hook()
        response = post(hook.body(id="via-delay"))
        assert response.status_code == 202
        (message,) = _queued()
        assert json.loads(base64.b64decode(message["body"]))[0] == [response.json()["signal_id"]]
    finally:
        flush_broker()


def test_link_reconnects_after_its_connection_is_killed() -> None:
    client = _client()
    link = RedisLink(client)
    key = os.environ.get("REDIS_KEY_PREFIX", "") + "link-test"
    try:
        assert link.call(command("INCR", key) + command("EXPIRE", key, 60, "NX"), 2) == [1, 1]
        (link_id,) = link.call(command("CLIENT", "ID"), 1)
        assert client.client_kill_filter(_id=link_id) == 1  # as a Redis restart would drop it
        assert link.call(command("INCR", key), 1) == [2]
        assert link.call(command("CLIENT", "ID"), 1) != [link_id]
    finally:
        client.delete(key)
        link.close()


def test_link_raises_an_error_reply_and_stays_in_step() -> None:
    client = _client()
    link = RedisLink(client)
    key = os.environ.get("REDIS_KEY_PREFIX", "") + "link-test"
    try:
        client.set(key, "not a number")
        with pytest.raises(redis.ResponseError):
            link.call(command("INCR", key) + command("GET", key), 2)
        assert link.call(command("GET", key), 1) == [b"not a number"]
    finally:
        client.delete(key)
        link.close()


@pytest.fixture
def password_redis(tmp_path) -> Any:  # type: ignore[no-untyped-def]
    """A redis-server of our own that wants a password."""
    import signal
    import subprocess

    password = "pw+/=" + os.urandom(6).hex()
    port = free_port()
    conf = tmp_path / "redis.conf"
    conf.write_text(f'port {port}\nbind 127.0.0.1\nsave ""\nappendonly no\nrequirepass "{password}"\n'
                    f"dir {tmp_path}\n")
    proc = subprocess.Popen(["redis-server", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    client = redis.Redis(host="127.0.0.1", port=port, password=password, db=3)

    def up() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    wait_for(up, timeout=20, what="redis-server up")
    try:
        yield client, password
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


def test_link_authenticates_and_selects_the_db(password_redis) -> None:
    client, password = password_redis
    link = RedisLink(client)
    try:
        assert link.call(command("INCR", "k") + command("INCR", "k"), 2) == [1, 2]
        assert client.get("k") == b"2"  # in db 3, where the client looks
        port = client.connection_pool.connection_kwargs["port"]
        wrong = RedisLink(redis.Redis(host="127.0.0.1", port=port, password=password + "x"))
        with pytest.raises(redis.ResponseError):
            wrong.call(command("INCR", "k"), 1)
    finally:
        link.close()


def test_command_is_resp() -> None:
    assert command("SET", b"k\r\n", 5) == b"*3\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$1\r\n5\r\n"


def _async_link_run(client: redis.Redis, body: Any) -> Any:  # type: ignore[type-arg]
    """Run `body(link)` (a coroutine function) on a fresh event loop with an AsyncRedisLink to `client`'s Redis."""
    import asyncio

    from infra.broker import AsyncRedisLink

    async def main() -> Any:
        link = AsyncRedisLink(RedisLink(client))
        try:
            return await body(link)
        finally:
            link.close()

    return asyncio.run(main())


def test_async_link_pipelines_concurrent_calls_each_answered_with_its_own_replies() -> None:
    import asyncio

    client = _client()
    prefix = os.environ.get("REDIS_KEY_PREFIX", "") + "alink-"

    async def body(link: Any) -> list[list[Any]]:
        # 200 calls in flight at once on one connection, each with its own key and 2 replies.
        return list(await asyncio.gather(*(link.call(command("INCRBY", f"{prefix}{i}", i) + command(
            "GET", f"{prefix}{i}"), 2) for i in range(200))))

    try:
        answers = _async_link_run(client, body)
        assert answers == [[i, str(i).encode()] for i in range(200)]
    finally:
        client.delete(*[f"{prefix}{i}" for i in range(200)])


def test_async_link_reconnects_after_its_connection_is_killed_and_raises_error_replies() -> None:
    client = _client()
    key = os.environ.get("REDIS_KEY_PREFIX", "") + "alink-test"

    async def body(link: Any) -> None:
        assert await link.call(command("INCR", key), 1) == [1]
        (link_id,) = await link.call(command("CLIENT", "ID"), 1)
        assert client.client_kill_filter(_id=link_id) == 1  # as a Redis restart would drop it
        assert await link.call(command("INCR", key), 1) == [2]  # sent again on a new connection
        assert await link.call(command("CLIENT", "ID"), 1) != [link_id]
        client.set(key, "not a number")
        with pytest.raises(redis.ResponseError):
            await link.call(command("INCR", key) + command("GET", key), 2)
        assert await link.call(command("GET", key), 1) == [b"not a number"]  # still in step

    try:
        _async_link_run(client, body)
    finally:
        client.delete(key)


def test_async_link_authenticates_and_selects_the_db(password_redis) -> None:
    client, password = password_redis

    async def body(link: Any) -> list[Any]:
        return await link.call(command("INCR", "k") + command("INCR", "k"), 2)  # type: ignore[no-any-return]

    assert _async_link_run(client, body) == [1, 2]
    assert client.get("k") == b"2"  # in db 3, where the client looks
    port = client.connection_pool.connection_kwargs["port"]
    with pytest.raises(redis.ResponseError):
        _async_link_run(redis.Redis(host="127.0.0.1", port=port, password=password + "x"), body)
