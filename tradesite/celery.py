"""The Celery app: queues execution, strategies and monitoring; tasks take ids only."""

from __future__ import annotations

import os

from celery import Celery
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tradesite.settings")

app = Celery("tradesite")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = (Queue("execution"), Queue("strategies"), Queue("monitoring"))
app.autodiscover_tasks()

import tradesite.taskmetrics  # noqa: E402,F401  (task latency histogram: connects Celery signals)
