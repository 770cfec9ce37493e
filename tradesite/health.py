"""Liveness and readiness probes (no authentication, no detail beyond ok/failing)."""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse

_stores: dict[tuple[str, str, str], Any] = {}


def healthz(request: HttpRequest) -> JsonResponse:
    """Answer 200 while the process is up."""
    return JsonResponse({"status": "ok"})


def _heartbeats() -> Any:
    """This process's heartbeat store, kept across requests (its Redis connection pool with it)."""
    from tradesite.celery import heartbeat_store

    key = (settings.CELERY_BROKER_URL, settings.HEARTBEAT_REDIS_PREFIX, str(settings.VAR_DIR))
    if key not in _stores:
        _stores[key] = heartbeat_store()
    return _stores[key]


def readyz(request: HttpRequest) -> JsonResponse:
    """Answer 200 when the database and the broker answer, a worker of each queue has a fresh heartbeat and beat
    ticked recently; else 503, naming each check that failed (`worker:<queue>`, `beat`). The `prices` check says
    whether every market in use has a fresh price ("stale" makes the status "degraded", still 200: entries on a
    stale market are refused, the rest of the process serves)."""
    from tradesite.celery import app
    from tradesite.heartbeat import QUEUES, verdicts

    checks: dict[str, str] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception:  # noqa: BLE001 - any failure means not ready
        checks["database"] = "failing"
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        checks["broker"] = "ok"
    except Exception:  # noqa: BLE001
        checks["broker"] = "failing"
    try:
        seen = _heartbeats().seen(QUEUES)
        checks.update(verdicts(seen, now=time.time(), stale_after=settings.HEARTBEAT_STALE_SECONDS))
    except Exception:  # noqa: BLE001 - heartbeats unreadable: no worker or beat can be vouched for
        checks.update({**{f"worker:{q}": "failing" for q in QUEUES}, "beat": "failing"})
    ready = all(v == "ok" for v in checks.values())
    prices = _prices_check()  # market data: reported, never a reason to take the process out of service
    checks["prices"] = prices
    status = "failing" if not ready else ("ok" if prices == "ok" else "degraded")
    return JsonResponse({"status": status, "checks": checks}, status=200 if ready else 503)


def _prices_check() -> str:
    """'ok' when every market in use has a fresh price, 'stale' when one has not (which one: /metrics,
    `tradesite_price_stale`, and the dashboard), 'unknown' when the database cannot say."""
    from django.utils import timezone

    from trading.selectors import prices_in_use

    try:
        markets = prices_in_use(now=timezone.now(), max_age_seconds=float(settings.TRADING["MAX_PRICE_AGE_SECONDS"]))
    except Exception:  # noqa: BLE001 - the database check above already says what is wrong
        return "unknown"
    return "stale" if any(m.stale for m in markets) else "ok"
