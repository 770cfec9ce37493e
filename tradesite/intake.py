"""ASGI entry point of the intake role: the TradingView webhook on uvicorn (webhooks/intake_asgi.py), and its
own `GET /metrics` (this process's intake counters and process metrics, under the web role's access rule:
METRICS_TOKEN, else METRICS_ALLOWED_IPS).

    python -m uvicorn tradesite.intake:application --loop uvloop --http httptools ...

(the bootstrap's `intake` role runs it so). Each uvicorn worker process imports this module: Django is set up
once per process, before the first request.
"""

from __future__ import annotations

import gc
import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tradesite.settings")
django.setup()

from typing import Any  # noqa: E402

from django.http import HttpRequest  # noqa: E402
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric  # noqa: E402

from tradesite.metrics import scrape_allowed  # noqa: E402
from webhooks.intake_asgi import IntakeApp, request_meta  # noqa: E402 - needs Django set up


class _IntakeCollector:
    def __init__(self, app: IntakeApp) -> None:
        self.app = app

    def collect(self) -> list[Metric]:
        app = self.app
        alerts = CounterMetricFamily("tradesite_intake_alerts", "Alerts stored by the event loop (fast) or decided by "
                                     "the web role's code in a thread (slow).", labels=["path"])
        for path, n in app.counts.items():
            alerts.add_metric([path], n)
        answers = CounterMetricFamily("tradesite_intake_answers", "The webhook's answers by HTTP status.",
                                      labels=["status"])
        for status, n in sorted(app.answers.items()):
            answers.add_metric([str(status)], n)
        return [alerts, answers,
                CounterMetricFamily("tradesite_intake_batches", "INSERTs of the fast path.", value=app.batcher.batches),
                CounterMetricFamily("tradesite_intake_rows", "Rows those INSERTs carried.", value=app.batcher.rows),
                GaugeMetricFamily("tradesite_intake_fast_path", "1 when this process runs the fast path.",
                                  value=int(app.fast))]


class _WithMetrics:
    """The intake application, plus GET /metrics for this process (with several workers, a scrape reaches one)."""

    def __init__(self, app: IntakeApp) -> None:
        self.app = app
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_IntakeCollector(app))

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/metrics":
            await self.app(scope, receive, send)
            return
        request = HttpRequest()
        request.META = request_meta(scope)
        denied = scrape_allowed(request)
        if denied is not None:
            status, headers, body = denied.status_code, list(denied.items()), denied.content
        elif scope["method"] not in ("GET", "HEAD"):
            status, headers, body = 405, [("Allow", "GET"), ("Content-Type", "text/plain")], b"use GET\n"
        else:
            status, headers = 200, [("Content-Type", CONTENT_TYPE_LATEST)]
            body = generate_latest(REGISTRY) + generate_latest(self.registry)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(k.lower().encode(), v.encode()) for k, v in headers]})
        await send({"type": "http.response.body", "body": body})


application = _WithMetrics(IntakeApp())
# What start-up made (Django, the app registry, the URL map) lives as long as the process: out of the collector's
# way, so that a full collection does not walk it between two alerts.
gc.freeze()
