"""Task latency (publish -> start) as a cumulative histogram kept in Redis, shared by every process.

The publisher stamps a `sent_at` header; the worker notes when the task starts and, once it has run (so the Redis
round trip never delays the work), adds the wait to per-task bucket counters. A process sends what it has counted
about once a second, from a thread of its own (one pipelined HINCRBY batch): a Redis round trip per task cost a
no-op task a fifth of its CPU. What a process counted in its last second before it is killed may be lost: the
histogram is a metric, not a ledger. The /metrics collector reads the counters: kept in Redis they survive worker
restarts and need no per-process state, so web and workers in separate containers report one histogram.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from celery.signals import before_task_publish, task_postrun, task_prerun, worker_process_shutdown

log = logging.getLogger("tradesite.metrics")

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_client: list[Any] = []


def key_prefix() -> str:
    """The prefix kombu puts before this installation's Redis keys (REDIS_KEY_PREFIX)."""
    from django.conf import settings

    return str(getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", {}).get("global_keyprefix", ""))


def redis_client() -> Any:
    """This process's Redis client (None without REDIS_URL: the embedded broker has no queue lists to count)."""
    from django.conf import settings

    if not settings.REDIS_URL:
        return None
    if not _client:
        import redis

        _client.append(redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2))
    return _client[0]


def latency_key(task_name: str) -> str:
    return f"{key_prefix()}metrics:task_latency:{task_name}"


@before_task_publish.connect
def _stamp(headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is not None:
        headers.setdefault("sent_at", time.time())


@task_prerun.connect
def _started(task: Any = None, **_: Any) -> None:
    try:
        sent_at = getattr(task.request, "sent_at", None)
        if sent_at is not None:
            task.request.tradesite_wait = max(0.0, time.time() - float(sent_at))
    except Exception as exc:  # noqa: BLE001 - metrics never break a task
        log.debug("task start not noted: %s", type(exc).__name__)


FLUSH_EVERY_SECONDS = 1.0
_pending: dict[str, list[float]] = {}  # task name -> [count per bucket..., count, sum]


@task_postrun.connect
def _observe(task: Any = None, **_: Any) -> None:
    try:
        wait = getattr(task.request, "tradesite_wait", None)
        if wait is None:
            return
        with _lock:
            counts = _pending.setdefault(task.name, [0.0] * (len(BUCKETS) + 2))
            for i, bound in enumerate(BUCKETS):
                if wait <= bound:
                    counts[i] += 1
            counts[-2] += 1
            counts[-1] += wait
        _flusher_ensure()
    except Exception as exc:  # noqa: BLE001 - metrics never break a task
        log.debug("task latency not recorded: %s", type(exc).__name__)


_flusher: list[int] = []  # the pid whose flusher thread runs (a forked pool child starts its own)
_lock = threading.Lock()


def _flusher_ensure() -> None:
    if _flusher and _flusher[0] == os.getpid():
        return
    with _lock:
        if _flusher and _flusher[0] == os.getpid():
            return
        _flusher[:] = [os.getpid()]
        threading.Thread(target=_flush_loop, name="task-metrics", daemon=True).start()


def _flush_loop() -> None:
    while True:
        time.sleep(FLUSH_EVERY_SECONDS)
        if _pending:
            flush()


@worker_process_shutdown.connect
def _flush_at_exit(**_: Any) -> None:
    flush()


def flush() -> None:
    """Add what this process has counted to the shared counters in Redis."""
    client = redis_client()
    with _lock:
        taken = dict(_pending)
        _pending.clear()
    if client is None or not taken:
        return
    try:
        pipe = client.pipeline(transaction=False)
        for name, counts in taken.items():
            key = latency_key(name)
            for bound, count in zip(BUCKETS, counts):
                if count:
                    pipe.hincrby(key, f"le:{bound}", int(count))
            pipe.hincrby(key, "count", int(counts[-2]))
            pipe.hincrbyfloat(key, "sum", counts[-1])
        pipe.execute()
    except Exception as exc:  # noqa: BLE001 - metrics never break a task
        log.debug("task latency not recorded: %s", type(exc).__name__)
