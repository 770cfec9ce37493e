"""Health probes, JSON logs with ids, and the value-based secret redaction."""

from __future__ import annotations

import json
import logging

import pytest
from django.test import Client

from trading.logcontext import log_context
from tradesite.logging import JsonFormatter, RedactSecretsFilter, register_secret


def test_healthz_answers_without_authentication(db) -> None:
    response = Client().get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_readyz_reports_a_broker_that_is_down(db, settings) -> None:
    from tradesite.celery import app

    previous = app.conf.broker_url
    app.conf.broker_url = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    try:
        response = Client().get("/readyz")
    finally:
        app.conf.broker_url = previous
    assert response.status_code == 503
    assert response.json()["checks"]["broker"] == "failing"


def _record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("trading.engine", logging.INFO, __file__, 1, message, args, None)


def test_log_lines_are_json_with_component_and_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADESITE_COMPONENT", "worker")
    with log_context(signal_id=7, order_id=9):
        line = JsonFormatter().format(_record("order %s filled", 9))
    payload = json.loads(line)
    assert payload["component"] == "worker" and payload["level"] == "INFO"
    assert payload["signal_id"] == 7 and payload["order_id"] == 9 and payload["message"] == "order 9 filled"


def test_secrets_are_redacted_by_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COINBASE_MAIN_API_SECRET", "canary-secret-0123456789")
    monkeypatch.setenv("DATABASE_URL", "postgres://app:canary-db-pass@db:5432/x")
    register_secret("canary-webhook-passphrase-abcdef")
    record = _record("leaked %s %s %s", "canary-secret-0123456789", "canary-db-pass",
                     "canary-webhook-passphrase-abcdef")
    assert RedactSecretsFilter().filter(record)
    text = JsonFormatter().format(record)
    assert "canary" not in text and text.count("[REDACTED]") == 3
