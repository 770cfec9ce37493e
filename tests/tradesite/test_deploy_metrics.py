"""/metrics: access control, and the Prometheus exposition after a real cycle through a worker."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import wait_for
from trading import services
from trading.execution import signal_process
from trading.intake import signal_create
from trading.models import Signal


def _scrape(**headers: str) -> tuple[int, str]:
    response = Client(REMOTE_ADDR=headers.pop("REMOTE_ADDR", "127.0.0.1")).get("/metrics", **headers)
    return response.status_code, response.content.decode()


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def _value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    found = [v for got, v in samples.get(name, []) if all(got.get(k) == x for k, x in labels.items())]
    assert found, f"no {name} {labels}"
    return sum(found)


def test_metrics_is_hidden_from_other_addresses_without_a_token(db) -> None:
    assert _scrape(REMOTE_ADDR="203.0.113.5")[0] == 404
    status, text = _scrape(REMOTE_ADDR="127.0.0.1")
    assert status == 200 and "tradesite_metrics_window_seconds" in text
    # Through a reverse proxy on the same host the peer is loopback too: forwarded requests are refused.
    assert _scrape(REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.5")[0] == 404
    assert _scrape(REMOTE_ADDR="127.0.0.1", HTTP_X_REAL_IP="203.0.113.5")[0] == 404


def test_metrics_needs_the_bearer_token_when_one_is_set(db, settings) -> None:
    settings.METRICS_TOKEN = "metrics-token-0123456789abcdef"
    assert _scrape()[0] == 401  # even from loopback
    assert _scrape(HTTP_AUTHORIZATION="Bearer wrong")[0] == 401
    assert _scrape(HTTP_AUTHORIZATION="metrics-token-0123456789abcdef")[0] == 401  # not a bearer header
    status, _ = _scrape(REMOTE_ADDR="203.0.113.5", HTTP_AUTHORIZATION="Bearer metrics-token-0123456789abcdef")
    assert status == 200


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_exposition_after_a_real_cycle(workers, make_account, make_strategy, set_price) -> None:
    workers.start()
    account = make_account()
    strategy = make_strategy(account, sizing_value="0.01")
    set_price("BTC/USD", "60000")
    filled, _ = signal_create(strategy=strategy, source="manual", idempotency_key="m-open",
                                     action="open_long")
    wait_for(lambda: Signal.objects.get(pk=filled.pk).status == "executed", what="entry filled by the worker")
    services.kill_switch_engage(by="test", reason="metrics drill")
    refused, _ = signal_create(strategy=strategy, source="manual", idempotency_key="m-refused",
                                      action="open_long")
    wait_for(lambda: Signal.objects.get(pk=refused.pk).status == "rejected", what="entry refused")
    wait_for(lambda: not strategy.positions.exclude(quantity=0).exists(), what="kill switch closed the position")
    set_price("BTC/USD", "60000")

    # Workers add their task latencies to Redis about once a second.
    def scraped() -> tuple[int, str] | None:
        found = _scrape()
        counts = _samples(found[1]).get("tradesite_task_latency_seconds_count", [])
        done = [v for labels, v in counts if labels.get("task") == "trading.tasks.signal_process"]
        return found if done and done[0] >= 2 else None

    status, text = wait_for(scraped, timeout=10, every=0.2, what="task latencies flushed by the worker")
    assert status == 200
    samples = _samples(text)
    # Every stage of the filled signal is in the window's histogram.
    for stage in ("accepted", "submitted", "acknowledged", "filled", "total"):
        assert _value(samples, "tradesite_signal_stage_latency_seconds_bucket", stage=stage, le="+Inf") >= 1, stage
        assert _value(samples, "tradesite_signal_stage_latency_seconds_gsum", stage=stage) >= 0
    assert _value(samples, "tradesite_signal_stage_latency_seconds_bucket", stage="total", le="60.0") >= 1
    assert _value(samples, "tradesite_signals", source="manual", decision="executed") >= 1
    assert _value(samples, "tradesite_signals", source="manual", decision="rejected") == 1
    assert _value(samples, "tradesite_signal_rejects", rule="kill_switch") == 1
    assert _value(samples, "tradesite_orders", venue="paper", status="filled") >= 2  # entry and kill-switch exit
    assert _value(samples, "tradesite_queue_depth", queue="execution") >= 0
    assert {labels["queue"] for labels, _ in samples["tradesite_queue_depth"]} == {"execution", "strategies",
                                                                                   "monitoring"}
    # The worker recorded how long signal_process waited in the queue (published here, started there).
    assert _value(samples, "tradesite_task_latency_seconds_count", task="trading.tasks.signal_process") >= 2
    assert _value(samples, "tradesite_task_latency_seconds_bucket", task="trading.tasks.signal_process",
                  le="+Inf") >= 2
    realized = _value(samples, "tradesite_strategy_realized_pnl", strategy=strategy.slug)
    position = strategy.positions.get()
    assert Decimal(str(realized)).quantize(Decimal("0.01")) == position.net_realized_pnl.quantize(Decimal("0.01"))
    # The kill switch closed the position: nothing open, nothing unrealized.
    assert _value(samples, "tradesite_strategy_open_positions", strategy=strategy.slug) == 0
    assert _value(samples, "tradesite_strategy_unrealized_pnl", strategy=strategy.slug) == 0
    assert _value(samples, "tradesite_reconcile_differences", account=account.name,
                  kind="position_differences") == 0
    assert "tradesite_venue_breaker_state" in text
    # django-prometheus' own request metrics are there too.
    assert "django_http_requests_total_by_method" in samples or "django_http_requests_total_by_method_total" in \
        samples


def test_queue_depth_counts_waiting_messages_under_the_key_prefix(db) -> None:
    from tests.conftest import flush_broker
    from trading.tasks import positions_monitor_task

    flush_broker()
    try:
        for _ in range(3):
            positions_monitor_task.delay()  # no worker consumes in this test
        samples = _samples(_scrape()[1])
        assert _value(samples, "tradesite_queue_depth", queue="monitoring") == 3
        assert _value(samples, "tradesite_queue_depth", queue="execution") == 0
    finally:
        flush_broker()


def test_breaker_state_and_reconcile_differences_per_account(db, make_account) -> None:
    from django.utils import timezone

    from trading.models import VenueAccount

    paper = make_account(name="paper-metrics")
    live = VenueAccount.objects.create(name="cb-metrics", venue="coinbase", network="testnet", credentials_env="CBM")
    VenueAccount.objects.filter(pk=live.pk).update(last_reconciled_at=timezone.now(), last_reconcile_report={
        "position_differences": {"BTC/USD": {"ours": "1", "venue": "0"}}, "unknown_venue_orders": ["x", "y"]})
    samples = _samples(_scrape()[1])
    assert _value(samples, "tradesite_reconcile_differences", account="cb-metrics",
                  kind="position_differences") == 1
    assert _value(samples, "tradesite_reconcile_differences", account="cb-metrics", kind="unknown_venue_orders") == 2
    assert _value(samples, "tradesite_reconcile_differences", account=paper.name, kind="unknown_venue_orders") == 0
    assert _value(samples, "tradesite_venue_breaker_state", account="cb-metrics") == 0  # closed
    assert not [labels for labels, _ in samples.get("tradesite_venue_breaker_state", [])
                if labels["account"] == paper.name]  # paper has no breaker
    from trading.models import VenueHealth

    now = timezone.now()
    VenueHealth.objects.create(account=live, state="open", since=now, consecutive_failures=5, updated_at=now)
    samples = _samples(_scrape()[1])
    assert _value(samples, "tradesite_venue_breaker_state", account="cb-metrics", venue="coinbase") == 2
    assert _value(samples, "tradesite_venue_consecutive_failures", account="cb-metrics") == 5


def test_pnl_gauges_follow_an_open_position(db, make_account, make_strategy, set_price) -> None:
    strategy = make_strategy(make_account(), sizing_mode="quantity", sizing_value="0.1")
    set_price("BTC/USD", "50000")
    signal, _ = signal_create(strategy=strategy, source="manual", idempotency_key="pnl-open",
                                     action="open_long", enqueue=False)
    signal_process(signal_id=signal.pk)
    position = strategy.positions.get()
    set_price("BTC/USD", "51000")
    samples = _samples(_scrape()[1])
    assert _value(samples, "tradesite_strategy_open_positions", strategy=strategy.slug) == 1
    expected = (Decimal("51000") - position.average_entry) * position.quantity
    unrealized = _value(samples, "tradesite_strategy_unrealized_pnl", strategy=strategy.slug)
    assert Decimal(str(unrealized)).quantize(Decimal("0.01")) == expected.quantize(Decimal("0.01"))
