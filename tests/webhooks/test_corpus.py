"""Replay the TradingView-shaped corpus in tests/fixtures/tradingview/cases.json through the webhook."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.utils import timezone

from trading.models import Order, Signal

CASES = json.loads(
    (Path(__file__).resolve().parents[1] / "fixtures" / "tradingview" / "cases.json").read_text())["cases"]


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 30
    assert len({c["name"] for c in CASES}) == len(CASES)


def _fill(text: str, hook) -> str:  # type: ignore[no-untyped-def]
    now = timezone.now()
    iso = "%Y-%m-%dT%H:%M:%SZ"
    for key, value in {"%SECRET%": hook.secret, "%SLUG%": hook.strategy.slug, "%NOW%": now.strftime(iso),
                       "%NOW_MS%": str(int(now.timestamp() * 1000)),
                       "%OLD%": (now - timedelta(minutes=10)).strftime(iso),
                       "%FUTURE%": (now + timedelta(minutes=10)).strftime(iso)}.items():
        text = text.replace(key, value)
    return text


@pytest.mark.django_db
@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_corpus_case(case, make_hook, post) -> None:  # type: ignore[no-untyped-def]
    corpus_check(case, make_hook, post)


def corpus_check(case, make_hook, post) -> None:  # type: ignore[no-untyped-def]
    """Send the case's body (and, when accepted, again); check the answers and what was stored. `post(text,
    content_type=...)` answers with .status_code and .json(), as Django's test client does."""
    hook = make_hook(symbol=case["symbol"], price=case.get("market_price", "50000"), account=case.get("account"))
    expect = case["expect"]
    text = _fill(case["body"], hook)
    response = post(text, content_type=case["content_type"])
    body = response.json()
    assert response.status_code == expect["status"], body
    assert Order.objects.count() == 0  # intake never trades: the worker does
    if expect["status"] == 202:
        signal = Signal.objects.get(pk=body["signal_id"])
        assert body == {"signal_id": signal.pk, "status": "accepted"}
        assert signal.status == Signal.Status.RECEIVED and signal.source == Signal.Source.WEBHOOK
        assert signal.payload["passphrase"] == "[REDACTED]"
        assert hook.secret not in json.dumps(signal.payload)
        assert signal.symbol == case["symbol"]
        for name in ("action", "order_type"):
            if name in expect:
                assert getattr(signal, name) == expect[name]
        for name in ("quantity", "target", "price", "stop_loss", "take_profit", "leverage", "atr"):
            if name in expect:
                assert getattr(signal, name) == Decimal(expect[name]), name
        # A second delivery of the same alert is a duplicate, not a second signal.
        again = post(text, content_type=case["content_type"])
        assert again.status_code == 200 and again.json() == {"signal_id": signal.pk, "duplicate": True}
        assert Signal.objects.count() == 1
    else:
        assert Signal.objects.count() == 0
        assert set(body) == {"error", "detail", "fields"}
        if "error" in expect:
            assert body["error"] == expect["error"]
        for name in expect.get("fields", []):
            assert name in body["fields"], body
