"""The Celery app: queues execution, strategies and monitoring; tasks take ids only."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from celery import Celery, bootsteps
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tradesite.settings")

app = Celery("tradesite")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = (Queue("execution"), Queue("strategies"), Queue("monitoring"))
app.autodiscover_tasks()

log = logging.getLogger("tradesite.heartbeat")


def heartbeat_store() -> Any:
    """This installation's heartbeat store (tradesite/heartbeat.py), from the settings."""
    from django.conf import settings

    from tradesite.heartbeat import store_open

    return store_open(broker_url=settings.CELERY_BROKER_URL, redis_prefix=settings.HEARTBEAT_REDIS_PREFIX,
                      var_dir=settings.VAR_DIR)


class HeartbeatStep(bootsteps.StartStopStep):
    """While the worker consumes, its main process writes a heartbeat for each of its queues every HEARTBEAT_SECONDS;
    stopping (a warm shutdown, a lost broker connection) removes it, so /readyz and the probe see a worker gone at once.
    """

    requires = {"celery.worker.consumer.tasks:Tasks"}  # started once the worker consumes its queues

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.tref: Any = None
        self.store: Any = None
        self.queues: list[str] = []
        self.failing = False

    def start(self, parent: Any) -> None:
        from django.conf import settings

        self.store = heartbeat_store()
        self.queues = sorted(parent.app.amqp.queues.consume_from)
        self.beat(parent)
        self.tref = parent.timer.call_repeatedly(settings.HEARTBEAT_SECONDS, self.beat, (parent,), priority=10)

    def beat(self, parent: Any) -> None:
        try:
            self.store.worker_beat(parent.hostname, self.queues, time.time())
        except Exception as exc:  # noqa: BLE001 - a missed heartbeat must never stop the worker
            if not self.failing:
                log.warning("worker heartbeat not written: %s: %s", type(exc).__name__, exc)
            self.failing = True
        else:
            self.failing = False

    def stop(self, parent: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None
        if self.store is not None:
            try:
                self.store.worker_gone(parent.hostname, self.queues)
            except Exception:  # noqa: BLE001 - the heartbeat then goes stale on its own
                pass

    shutdown = stop


app.steps["consumer"].add(HeartbeatStep)

import tradesite.taskmetrics  # noqa: E402,F401  (task latency histogram: connects Celery signals)
