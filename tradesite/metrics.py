"""/metrics for Prometheus: django-prometheus' request metrics plus the platform's own, computed at scrape time.

Web, workers and beat are separate processes (separate containers under compose), so per-process counters would
each see a part of the story. The trading figures are therefore read from the database (the truth) and Redis at
scrape time, with bounded queries over a recent window (METRICS_WINDOW_SECONDS, newest rows first, capped): the
stage-latency histogram is a *gauge histogram* of that window (it can go down), the counts are gauges of that
window, the queue depths and breaker states are current values, and the task-latency histogram is a cumulative
one kept in Redis by every worker (tradesite/taskmetrics.py). django-prometheus' per-request metrics live in the
gunicorn workers: with PROMETHEUS_MULTIPROC_DIR set (the bootstrap sets it for the web role) prometheus_client's
multiprocess mode merges them, whichever worker answers the scrape.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, HttpResponseNotFound
from django.utils import timezone
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from tradesite import taskmetrics
from trading.models import Order, Signal, Strategy

log = logging.getLogger("tradesite.metrics")

QUEUES = ("execution", "strategies", "monitoring")
STAGES = (  # (stage label, from field, to field): the signal-to-order pipeline, one step at a time
    ("accepted", "received_at", "accepted_at"),
    ("submitted", "accepted_at", "submitted_at"),
    ("acknowledged", "submitted_at", "acknowledged_at"),
    ("filled", "acknowledged_at", "filled_at"),
    ("total", "received_at", "filled_at"),
)
LATENCY_BUCKETS = taskmetrics.BUCKETS
MAX_ROWS = 20000  # the most signals one scrape reads for the latency histogram
BREAKER_STATES = {"closed": 0, "half_open": 1, "half-open": 1, "open": 2}
# Lists/mappings of a reconciliation report that are differences with the venue (trading/reconcile.py).
RECONCILE_KINDS = ("position_differences", "unknown_venue_orders", "final_here_open_on_venue")


def _window() -> int:
    return int(settings.METRICS_WINDOW_SECONDS)


def _histogram(values: Iterable[float]) -> tuple[list[tuple[str, float]], float, int]:
    counts = [0] * len(LATENCY_BUCKETS)
    total, n = 0.0, 0
    for v in values:
        n += 1
        total += v
        for i, bound in enumerate(LATENCY_BUCKETS):
            if v <= bound:
                counts[i] += 1
    buckets = [(str(b), float(c)) for b, c in zip(LATENCY_BUCKETS, counts)] + [("+Inf", float(n))]
    return buckets, total, n


class TradingCollector:
    """Trading metrics from Postgres and Redis, computed when Prometheus scrapes."""

    def collect(self) -> Iterator[Metric]:
        now = timezone.now()
        window = _window()
        since = now - timedelta(seconds=window)
        yield GaugeMetricFamily("tradesite_metrics_window_seconds",
                                "Length of the recent window the windowed tradesite metrics cover.", value=window)
        yield from self._latency(since)
        yield from self._signals(since)
        yield from self._orders(since)
        yield from self._venues()
        yield from self._pnl()
        yield from self._prices(now)
        yield from self._queues()

    def _latency(self, since: Any) -> Iterator[Metric]:
        fields = ("received_at", "accepted_at", "submitted_at", "acknowledged_at", "filled_at")
        rows = list(Signal.objects.filter(received_at__gte=since).order_by("-received_at")
                    .values_list(*fields)[:MAX_ROWS])
        family = GaugeHistogramMetricFamily(
            "tradesite_signal_stage_latency_seconds",
            "Signal-to-order latency per stage (received->accepted->submitted->acknowledged->filled, and total) "
            "of the signals received in the recent window.", labels=["stage"])
        for stage, start, end in STAGES:
            a, b = fields.index(start), fields.index(end)
            values = [(r[b] - r[a]).total_seconds() for r in rows if r[a] is not None and r[b] is not None]
            buckets, total, _ = _histogram(values)
            family.add_metric([stage], buckets, gsum_value=total)
        yield family

    def _signals(self, since: Any) -> Iterator[Metric]:
        recent = Signal.objects.filter(received_at__gte=since)
        by_source = GaugeMetricFamily("tradesite_signals", "Signals received in the recent window by source and "
                                      "decision (status).", labels=["source", "decision"])
        rejects = GaugeMetricFamily("tradesite_signal_rejects", "Signals rejected in the recent window by risk "
                                    "rule.", labels=["rule"])
        rule_counts: Counter[str] = Counter()
        for source, status, rule, n in recent.values_list("source", "status", "decision_rule").annotate(
                n=Count("id")).order_by():
            by_source.add_metric([source, status], n)
            if status == Signal.Status.REJECTED:
                rule_counts[rule or "unknown"] += n
        for rule, n in sorted(rule_counts.items()):
            rejects.add_metric([rule], n)
        yield by_source
        yield rejects

    def _orders(self, since: Any) -> Iterator[Metric]:
        recent = GaugeMetricFamily("tradesite_orders", "Orders updated in the recent window by venue and status.",
                                   labels=["venue", "status"])
        for venue, status, n in Order.objects.filter(updated_at__gte=since).values_list(
                "account__venue", "status").annotate(n=Count("id")).order_by():
            recent.add_metric([venue, status], n)
        yield recent
        working = GaugeMetricFamily("tradesite_orders_working", "Orders not yet final, by venue and status (all "
                                    "time: these need the sweeper or a human).", labels=["venue", "status"])
        for venue, status, n in Order.objects.filter(status__in=Order.WORKING).values_list(
                "account__venue", "status").annotate(n=Count("id")).order_by():
            working.add_metric([venue, status], n)
        yield working

    def _venues(self) -> Iterator[Metric]:
        from trading import selectors

        breaker = GaugeMetricFamily("tradesite_venue_breaker_state", "Circuit breaker per venue account: 0 closed, "
                                    "1 half-open, 2 open (paper accounts have none).", labels=["account", "venue"])
        failures = GaugeMetricFamily("tradesite_venue_consecutive_failures", "Consecutive venue failures the "
                                     "breaker has counted per account.", labels=["account", "venue"])
        diffs = GaugeMetricFamily("tradesite_reconcile_differences", "Differences found by the last reconciliation "
                                  "per account and kind.", labels=["account", "venue", "kind"])
        errors = GaugeMetricFamily("tradesite_reconcile_error", "1 when the last reconciliation of an account "
                                   "failed.", labels=["account", "venue"])
        age = GaugeMetricFamily("tradesite_reconcile_age_seconds", "Seconds since an account was last reconciled.",
                                labels=["account", "venue"])
        snapshots = GaugeMetricFamily("tradesite_equity_snapshot_failures", "Consecutive equity snapshots that "
                                      "could not value an account (no row written; 0: the last one did).",
                                      labels=["account", "venue"])
        now = timezone.now()
        for line in selectors.venue_health_list():
            if line.breaker_state in BREAKER_STATES:  # "none": paper accounts have no breaker
                breaker.add_metric([line.account_name, line.venue], BREAKER_STATES[line.breaker_state])
                failures.add_metric([line.account_name, line.venue], line.consecutive_failures)
            snapshots.add_metric([line.account_name, line.venue], line.snapshot_failures)
        for account in selectors.account_list():
            labels = [account.name, account.venue]
            report = account.last_reconcile_report or {}
            for kind in RECONCILE_KINDS:
                diffs.add_metric(labels + [kind], len(report.get(kind) or ()))
            errors.add_metric(labels, 1 if report.get("error") else 0)
            if account.last_reconciled_at is not None:
                age.add_metric(labels, (now - account.last_reconciled_at).total_seconds())
        yield from (breaker, failures, snapshots, diffs, errors, age)

    def _pnl(self) -> Iterator[Metric]:
        from trading.selectors import pnl_summary

        names = dict(Strategy.objects.values_list("id", "slug"))
        realized = GaugeMetricFamily("tradesite_strategy_realized_pnl", "Realized P&L net of fees per strategy "
                                     "(quote currency).", labels=["strategy"])
        unrealized = GaugeMetricFamily("tradesite_strategy_unrealized_pnl", "Unrealized P&L per strategy at the "
                                       "latest marks (quote currency).", labels=["strategy"])
        open_positions = GaugeMetricFamily("tradesite_strategy_open_positions", "Open positions per strategy.",
                                           labels=["strategy"])
        for line in pnl_summary()["strategies"]:
            name = names.get(line.id, str(line.id))
            # Prometheus values are floats: these gauges are for dashboards, never for bookkeeping.
            realized.add_metric([name], float(line.realized_pnl))
            unrealized.add_metric([name], float(line.unrealized_pnl))
            open_positions.add_metric([name], line.open_positions)
        yield from (realized, unrealized, open_positions)

    def _prices(self, now: Any) -> Iterator[Metric]:
        from trading.selectors import prices_in_use

        limit = float(settings.TRADING["MAX_PRICE_AGE_SECONDS"])
        age = GaugeMetricFamily("tradesite_price_age_seconds", "Age of the latest price of each market in use "
                                "(open positions, active strategies) in its account's price feed; absent: no price.",
                                labels=["feed", "symbol"])
        stale = GaugeMetricFamily("tradesite_price_stale", f"1 when a market in use has no price younger than "
                                  f"TRADING_MAX_PRICE_AGE_SECONDS ({limit:g} s): its entries are refused "
                                  "(stale_price), its exits still go.", labels=["feed", "symbol"])
        for market in prices_in_use(now=now, max_age_seconds=limit):
            if market.age_seconds is not None:
                age.add_metric([market.feed, market.symbol], market.age_seconds)
            stale.add_metric([market.feed, market.symbol], 1.0 if market.stale else 0.0)
        yield from (age, stale)

    def _queues(self) -> Iterator[Metric]:
        client = taskmetrics.redis_client()
        if client is None:
            return
        prefix = taskmetrics.key_prefix()
        depth = GaugeMetricFamily("tradesite_queue_depth", "Messages waiting in each Celery queue (Redis list "
                                  "lengths, all priorities).", labels=["queue"])
        latency = HistogramMetricFamily("tradesite_task_latency_seconds", "Time from publishing a task to a worker "
                                        "starting it, per task (cumulative, kept in Redis).", labels=["task"])
        try:
            pipe = client.pipeline(transaction=False)
            for queue in QUEUES:
                # kombu's Redis transport keeps one list per priority step: name, then name\x06\x16<step>.
                for suffix in ("", "\x06\x163", "\x06\x166", "\x06\x169"):
                    pipe.llen(f"{prefix}{queue}{suffix}")
            lengths = pipe.execute()
            for i, queue in enumerate(QUEUES):
                depth.add_metric([queue], sum(lengths[i * 4:(i + 1) * 4]))
            keys = list(client.scan_iter(match=f"{prefix}metrics:task_latency:*", count=100))[:200]
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.hgetall(key)
            for key, data in zip(keys, pipe.execute()):
                task = key.decode().rsplit(":", 1)[-1]
                values = {k.decode(): v.decode() for k, v in data.items()}
                count = float(values.get("count", 0))
                buckets = [(str(b), float(values.get(f"le:{b}", 0))) for b in LATENCY_BUCKETS] + [("+Inf", count)]
                latency.add_metric([task], buckets, sum_value=float(values.get("sum", 0)))
        except Exception as exc:  # noqa: BLE001 - a scrape reports what it can
            log.warning("queue metrics unavailable: %s", type(exc).__name__)
            return
        yield depth
        yield latency


_trading_registry = CollectorRegistry(auto_describe=False)
_trading_registry.register(TradingCollector())


def scrape_allowed(request: HttpRequest) -> HttpResponse | None:
    """None when the scraper may read; else the answer (401 wrong token, 404 not an allowed address)."""
    token = settings.METRICS_TOKEN
    if token:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        given = header[7:] if header.startswith("Bearer ") else ""
        if hmac.compare_digest(given.encode(), token.encode()):
            return None
        response = HttpResponse("authentication required\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    # A request a proxy forwarded comes from the proxy's (often loopback) address: it is not an internal scraper.
    forwarded = any(k in request.META for k in ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP"))
    if not forwarded and request.META.get("REMOTE_ADDR", "") in settings.METRICS_ALLOWED_IPS:
        return None
    return HttpResponseNotFound("not found\n", content_type="text/plain")


def _process_metrics() -> bytes:
    multiproc = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if multiproc:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=multiproc)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus text exposition: request metrics of the web processes and the trading metrics."""
    denied = scrape_allowed(request)
    if denied is not None:
        return denied
    started = time.monotonic()
    body = _process_metrics() + generate_latest(_trading_registry)
    took = GaugeMetricFamily("tradesite_metrics_scrape_seconds", "Time this scrape took to compute.",
                             value=time.monotonic() - started)
    extra = CollectorRegistry(auto_describe=False)
    extra.register(_Static([took]))
    return HttpResponse(body + generate_latest(extra), content_type=CONTENT_TYPE_LATEST)


class _Static:
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return iter(self.metrics)


__all__ = ["TradingCollector", "metrics_view"]
