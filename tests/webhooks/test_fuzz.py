"""Fuzzing malformed bodies: the parser never raises and never accepts; the view answers 4xx and stores nothing."""

from __future__ import annotations

import json
from datetime import datetime, UTC
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from trading.models import Order, Signal
from webhooks import parsers

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
CONTENT_TYPES = st.sampled_from(["application/json", "text/plain", "text/plain; charset=utf-8", "application/xml",
                                 "", "multipart/form-data", "APPLICATION/JSON"])
# Invalid for every field they are put in (0, -5 or null would be valid for position_size or optional fields).
JUNK_NUMBERS = st.sampled_from(["1e309", "-1e309", "NaN", "Infinity", "-Infinity", "1" * 5000, "1e-400", "1e15",
                                "-1e15", '"nan"', '"inf"', '"1e999"', '"{{close}}"', "true", "false", "[]", "{}",
                                '"0x10"', '"1,5"', '"1e15"', '{"value": 1}'])
FIELDS = ["contracts", "position_size", "price", "sl", "tp", "leverage", "atr"]


def _deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def _malformed() -> st.SearchStrategy[bytes]:
    base = '{"passphrase": "p", "strategy": "s", "action": "buy", "ticker": "BTCUSD", "time": "2026-11-25T12:00:00Z"'
    return st.one_of(
        st.binary(max_size=200),
        st.tuples(st.integers(min_value=8193, max_value=12_000), st.binary(max_size=16)).map(
            lambda t: (t[1] * (t[0] // max(len(t[1]), 1) + 1) if t[1] else b" " * t[0])[: t[0]]),
        st.integers(min_value=1, max_value=20_000).map(_deep),
        st.integers(min_value=1, max_value=2000).map(lambda n: ('{"a":' * n + "1" + "}" * n).encode()),
        st.tuples(st.sampled_from(FIELDS), JUNK_NUMBERS).map(lambda t: (base + f', "{t[0]}": {t[1]}}}').encode()),
        st.sampled_from(["action", "ticker", "strategy", "time", "order_type"]).flatmap(
            lambda k: JUNK_NUMBERS.map(lambda v: (base + f', "{k}": {v}}}').encode())),
        st.sampled_from(["action", "ticker", "time", "contracts"]).map(
            lambda k: (base + f', "{k}": "a", "{k}": "b"}}').encode()),
        st.recursive(st.none() | st.booleans() | st.floats(allow_nan=True) | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                  max_size=4),
                     max_leaves=20).map(lambda v: json.dumps(v).encode()),
        st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass")),
    )


def _parse(body: bytes, content_type: str) -> parsers.Alert | parsers.Rejection:
    data = parsers.body_decode(body, content_type)
    if isinstance(data, parsers.Rejection):
        return data
    return parsers.alert_validate(data, now=NOW)


@settings(max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(body=_malformed(), content_type=CONTENT_TYPES)
def test_parser_refuses_malformed_bodies_with_4xx(body: bytes, content_type: str) -> None:
    result = _parse(body, content_type)
    assert isinstance(result, parsers.Rejection)
    assert 400 <= result.status < 500
    json.dumps(result.body())  # always serializable


@settings(max_examples=2_000, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(fields=st.dictionaries(st.sampled_from(FIELDS + ["action", "order_type", "time", "id", "order_id"]),
                              st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                                        st.text(max_size=30), st.lists(st.integers(), max_size=2)), max_size=6))
def test_parser_outputs_are_finite_and_bounded_or_refused(fields: dict[str, Any]) -> None:
    body = {"strategy": "s", "action": "buy", "ticker": "BTCUSD", "id": "k", **fields}
    result = _parse(json.dumps(body).encode(), "application/json")
    if isinstance(result, parsers.Alert):
        for value in (result.quantity, result.price, result.stop_loss, result.take_profit, result.leverage):
            assert value is None or (value.is_finite() and 0 < value < parsers._MAX_ABS)
        assert result.target is None or result.target.is_finite()
        assert result.action in ("open_long", "open_short", "close", "reverse", "target")
    else:
        assert 400 <= result.status < 500


@pytest.mark.django_db
def test_view_refuses_malformed_bodies_and_stores_nothing(make_hook, client) -> None:
    hook = make_hook()
    seen: list[int] = []

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(body=_malformed(), content_type=CONTENT_TYPES, authenticated=st.booleans())
    def check(body: bytes, content_type: str, authenticated: bool) -> None:
        if authenticated and body.startswith(b'{"passphrase": "p", "strategy": "s"'):
            body = body.replace(b'"passphrase": "p", "strategy": "s"',
                                f'"passphrase": "{hook.secret}", "strategy": "{hook.strategy.slug}"'.encode(), 1)
        response = client.generic("POST", "/api/webhooks/tradingview/", data=body, content_type=content_type)
        seen.append(response.status_code)
        assert 400 <= response.status_code < 500, (body[:200], response.content)

    check()
    assert Signal.objects.count() == 0 and Order.objects.count() == 0
    assert len(seen) >= 200
