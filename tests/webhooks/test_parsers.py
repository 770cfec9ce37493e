"""The pure parser: ticker matching, idempotency keys, numbers and times (no database)."""

from __future__ import annotations

from datetime import datetime, timedelta, UTC
from decimal import Decimal

import pytest

from webhooks import parsers

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("ticker", "symbol", "match"), [
    ("BTCUSD", "BTC/USD", True), ("btcusd", "BTC/USD", True), ("COINBASE:BTCUSD", "BTC/USD", True),
    ("BTCUSD_DL", "BTC/USD", True), ("BTCUSDT.P", "BTC/USDT:USDT", True), ("BINANCE:XRPUSDT.P", "XRP/USDT:USDT", True),
    ("BTCUSDTPERP", "BTC/USDT:USDT", True), ("ETHBTC", "ETH/BTC", True), ("BTC/USD", "BTC/USD", True),
    ("BTCUSDT", "BTC/USDT:USDT", False), ("BTCUSD.P", "BTC/USD", False), ("ETHUSD", "BTC/USD", False),
    ("BTCUSDT", "BTC/USD", False), ("ETHUSD.P", "ETH-PERP", True), ("ETH-PERP", "ETH-PERP", True),
    ("SNX:ETHUSDPERP", "ETH-PERP", True), ("ETHUSD", "ETH-PERP", False), ("BTCUSD.P", "ETH-PERP", False),
])
def test_ticker_matches_the_strategy_market(ticker: str, symbol: str, match: bool) -> None:
    assert parsers.ticker_matches(ticker, symbol) is match


def _alert(**fields):  # type: ignore[no-untyped-def]
    data = {"strategy": "s", "action": "buy", "ticker": "BTCUSD", "time": "2026-11-25T12:00:00Z", **fields}
    result = parsers.alert_validate(data, now=NOW)
    assert isinstance(result, parsers.Alert), result
    return result


def test_idempotency_key_is_stable_and_distinguishes_alerts() -> None:
    key = parsers.idempotency_key(_alert(contracts="1", order_id="L"))
    assert key == parsers.idempotency_key(_alert(contracts=Decimal("1.0"), order_id="L", ticker="COINBASE:btcusd"))
    assert key != parsers.idempotency_key(_alert(contracts="2", order_id="L"))
    assert key != parsers.idempotency_key(_alert(contracts="1", order_id="L", time="2026-11-25T12:00:01Z"))
    assert key != parsers.idempotency_key(_alert(contracts="1", order_id="S"))
    explicit = parsers.idempotency_key(_alert(id="abc"))
    assert explicit.startswith("tv:id:") and explicit == parsers.idempotency_key(_alert(id="abc", contracts="3"))
    assert len(explicit) <= 200


def test_position_size_makes_a_target_and_sell_to_zero_closes() -> None:
    assert _alert(action="sell", position_size="0").action == "target"
    assert _alert(action="sell", position_size="0").target == 0
    assert _alert(action="buy", position_size="-1").target == Decimal("-1")
    assert _alert(action="close", position_size="0").action == "close"


def test_times_in_iso_and_epoch_forms() -> None:
    assert parsers.time_parse("2026-11-25T12:00:00Z") == NOW
    assert parsers.time_parse(Decimal(int(NOW.timestamp() * 1000))) == NOW
    assert parsers.time_parse(str(int(NOW.timestamp()))) == NOW
    assert parsers.time_parse("{{timenow}}") is None
    old = parsers.alert_validate({"strategy": "s", "action": "buy", "ticker": "BTCUSD",
                                  "time": (NOW - timedelta(seconds=121)).isoformat()}, now=NOW)
    assert isinstance(old, parsers.Rejection) and old.error == "stale_alert"


def test_parser_is_pure() -> None:
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(parsers))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"django", "rest_framework", "celery", "trading"}


@pytest.mark.parametrize("field", ["strategy", "action", "ticker"])
def test_a_required_field_of_blanks_is_missing(field: str) -> None:
    data = {"strategy": "s", "action": "buy", "ticker": "BTCUSD", "time": "2026-11-25T12:00:00Z", field: " \t "}
    result = parsers.alert_validate(data, now=NOW)
    assert isinstance(result, parsers.Rejection) and result.status == 400, result
    assert result.fields == {field: "is required"}
