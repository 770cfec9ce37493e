"""Task latency (publish -> start) as a cumulative histogram kept in Redis, shared by every process.

The publisher stamps a `sent_at` header; the worker notes when the task starts and, once it has run (so the Redis
round trip never delays the work), adds the wait to per-task bucket counters (one pipelined HINCRBY batch). The /metrics collector reads them: counters in Redis survive worker restarts and
need no per-process state, so web and workers in separate containers report one histogram.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery.signals import before_task_publish, task_postrun, task_prerun

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


@task_postrun.connect
def _observe(task: Any = None, **_: Any) -> None:
    try:
        wait = getattr(task.request, "tradesite_wait", None)
        client = redis_client()
        if wait is None or client is None:
            return
        key = latency_key(task.name)
        pipe = client.pipeline(transaction=False)
        for bound in BUCKETS:
            if wait <= bound:
                pipe.hincrby(key, f"le:{bound}", 1)
        pipe.hincrby(key, "count", 1)
        pipe.hincrbyfloat(key, "sum", wait)
        pipe.execute()
    except Exception as exc:  # noqa: BLE001 - metrics never break a task
        log.debug("task latency not recorded: %s", type(exc).__name__)
