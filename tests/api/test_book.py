"""Orders, positions, signals, P&L, kill switch and backtests."""

from __future__ import annotations

from datetime import timedelta, UTC
from decimal import Decimal
from typing import Any

from django.utils import timezone

from strategies.models import BacktestRun
from trading.models import AuditEvent, EquitySnapshot, KillSwitch, MarketPrice, Signal


def test_orders_list_filters_and_retrieve(api: Any, make_book: Any) -> None:
    book = make_book(3)
    body = api.get("/api/orders/").json()
    assert body["count"] == 3 and body["results"][0]["quantity"] == "0.1"
    assert api.get(f"/api/orders/?strategy={book.strategy.pk}").json()["count"] == 1
    assert api.get("/api/orders/?status=filled").json()["count"] == 0
    assert api.get("/api/orders/?symbol=BTC/USD&status=new").json()["count"] == 3
    after = (timezone.now() - timedelta(milliseconds=500)).isoformat()
    assert api.get("/api/orders/", {"created_after": after}).json()["count"] == 1
    assert api.get(f"/api/orders/{book.orders[0].pk}/").json()["client_order_id"] == book.orders[0].client_order_id
    assert api.get("/api/orders/999999/").status_code == 404


def test_orders_bad_filters_are_400_per_parameter(api: Any) -> None:
    response = api.get("/api/orders/?status=nope&created_after=yesterday&strategy=x")
    assert response.status_code == 400
    assert set(response.json()) == {"status", "created_after", "strategy"}


def test_cancel_a_new_order_and_409_when_final(api: Any, make_book: Any) -> None:
    order = make_book(1).orders[0]
    response = api.post(f"/api/orders/{order.pk}/cancel/")
    assert response.status_code == 200 and response.json()["status"] == "canceled"
    assert AuditEvent.objects.filter(entity="order", entity_id=str(order.pk), action="order.canceled").exists()
    assert api.post(f"/api/orders/{order.pk}/cancel/").status_code == 409
    assert api.post("/api/orders/999999/cancel/").status_code == 404


def test_positions_open_by_default_all_includes_flat(api: Any, make_book: Any) -> None:
    make_book(3)
    assert api.get("/api/positions/").json()["count"] == 2
    body = api.get("/api/positions/?all=1").json()
    assert body["count"] == 3 and body["results"][0]["realized_pnl"] == "8.5"


def test_close_position_queues_a_manual_close_signal(api: Any, make_book: Any) -> None:
    book = make_book(2)
    response = api.post(f"/api/positions/{book.positions[1].pk}/close/")
    assert response.status_code == 202
    signal = Signal.objects.get(pk=response.json()["signal"])
    assert (signal.source, signal.action, signal.strategy_id) == ("manual", "close", book.positions[1].strategy_id)
    again = api.post(f"/api/positions/{book.positions[1].pk}/close/")
    assert again.status_code == 202 and again.json()["signal"] != signal.pk  # a fresh idempotency key each time
    assert AuditEvent.objects.filter(action="position.close_requested", actor="api:admin").count() == 2
    flat = api.post(f"/api/positions/{book.positions[0].pk}/close/")
    assert flat.status_code == 400 and "position" in flat.json()
    assert api.post("/api/positions/999999/close/").status_code == 404


def test_signals_show_the_decision_trail_latencies_and_orders(api: Any, make_book: Any) -> None:
    book = make_book(2)
    body = api.get(f"/api/signals/{book.signals[0].pk}/").json()
    assert body["decision_rule"] == "accepted" and body["decision_detail"] == "ok"
    assert body["latency_ms"]["accept"] == 5 and body["latency_ms"]["total"] is None
    assert [o["id"] for o in body["orders"]] == [book.orders[0].pk]
    assert api.get("/api/signals/?source=webhook&status=executed&decision_rule=accepted").json()["count"] == 2
    assert api.get("/api/signals/?source=manual").json()["count"] == 0
    assert api.get("/api/signals/?source=carrier-pigeon").status_code == 400
    assert api.get("/api/signals/999999/").status_code == 404


def test_pnl_per_strategy_and_account(api: Any, make_book: Any) -> None:
    book = make_book(2)
    MarketPrice.objects.create(symbol="BTC/USD", price=Decimal("51000"), time=timezone.now())
    body = api.get("/api/pnl/").json()
    line = next(s for s in body["strategies"] if s["id"] == book.positions[1].strategy_id)
    assert line == {"id": line["id"], "name": line["name"], "account": book.account.pk, "realized_pnl": "8.5",
                    "fees": "1.5", "unrealized_pnl": "100", "equity": "108.5", "open_positions": 1}
    account = body["accounts"][0]
    assert account["realized_pnl"] == "17" and account["fees"] == "3" and account["unrealized_pnl"] == "100"
    assert account["equity"] == "10100"


def test_equity_series(api: Any, make_book: Any) -> None:
    book = make_book(3)
    EquitySnapshot.objects.create(account=book.account, strategy=book.strategy, time=timezone.now(),
                                  equity=Decimal("5"), cash=Decimal("1"), realized_pnl=Decimal(0),
                                  unrealized_pnl=Decimal(0))
    series = api.get(f"/api/pnl/equity/?account={book.account.pk}").json()
    assert series["count"] == 3 and series["results"][0]["equity"] == "10000"
    times = [p["time"] for p in series["results"]]
    assert times == sorted(times)
    assert api.get(f"/api/pnl/equity/?strategy={book.strategy.pk}").json()["count"] == 1
    since = (timezone.now() - timedelta(seconds=90)).isoformat()
    assert api.get("/api/pnl/equity/", {"since": since}).json()["count"] == 1
    assert api.get("/api/pnl/equity/?since=not-a-date").status_code == 400


def test_kill_switch_engage_and_release(api: Any, db: Any) -> None:
    assert api.get("/api/kill-switch/").json()["engaged"] is False
    assert api.post("/api/kill-switch/engage/", {}, format="json").json() == {"reason": ["This field is required."]}
    engaged = api.post("/api/kill-switch/engage/", {"reason": "venue outage"}, format="json")
    assert engaged.status_code == 200 and engaged.json()["engaged"] is True
    assert KillSwitch.objects.get().changed_by == "api:admin"
    assert api.get("/api/kill-switch/").json()["reason"] == "venue outage"
    assert api.post("/api/kill-switch/release/").json()["engaged"] is False
    assert list(AuditEvent.objects.filter(entity="kill_switch").values_list("action", flat=True).order_by("id")) == [
        "kill_switch.engaged", "kill_switch.released"]


def _one_candle(symbol: str, timeframe: str) -> None:
    from datetime import datetime

    from strategies.models import Candle

    Candle.objects.create(venue="paper", symbol=symbol, timeframe=timeframe,
                          open_time=datetime(2024, 1, 1, tzinfo=UTC), open=Decimal("100"),
                          high=Decimal("101"), low=Decimal("99"), close=Decimal("100.5"), volume=Decimal("3"))


def test_backtest_launch_list_and_retrieve(api: Any, db: Any) -> None:
    response = api.post("/api/backtests/", {"kind": "rsi", "symbol": "BTC/USD", "timeframe": "5m"}, format="json")
    assert response.status_code == 400 and "no stored 5m candles of 'BTC/USD'" in response.json()["symbol"][0]
    assert not BacktestRun.objects.exists()
    _one_candle("BTC/USD", "5m")
    response = api.post("/api/backtests/", {"kind": "rsi", "params": {"period": 10}, "symbol": "BTC/USD",
                                            "timeframe": "5m", "config": {"cash": "1000"}}, format="json")
    assert response.status_code == 202 and response.json()["status"] == "queued"
    run = BacktestRun.objects.get(pk=response.json()["id"])
    assert run.created_by == "api:admin" and run.params == {"period": 10}
    assert AuditEvent.objects.filter(action="backtest.queued", entity_id=str(run.pk)).exists()
    listed = api.get("/api/backtests/").json()
    assert listed["count"] == 1 and "trades" not in listed["results"][0]
    detail = api.get(f"/api/backtests/{run.pk}/").json()
    assert detail["trades"] == [] and detail["progress"] == 0.0
    assert api.get("/api/backtests/999999/").status_code == 404


def test_backtest_config_errors_name_the_field_and_change_nothing(api: Any, db: Any) -> None:
    _one_candle("BTC/USD", "5m")
    cases = {"cash": ["abc", "1e400", "1e-400", "0", True], "fee": ["5", "-0.1", "NaN"],
             "slippage_bps": ["1e30", "-1"], "allow_short": ["yes", 1]}
    for field, values in cases.items():
        for value in values:
            response = api.post("/api/backtests/", {"kind": "rsi", "symbol": "BTC/USD", "timeframe": "5m",
                                                    "config": {field: value}}, format="json")
            assert response.status_code == 400, (field, value, response.content)
            assert response.json()["config"][0].startswith(f"{field}: "), (field, value, response.json())
    for body in ({"timeframe": "7q"}, {"venue": "kraken"}, {"symbol": "NOPE/XXX"}):
        response = api.post("/api/backtests/", {"kind": "rsi", "symbol": "BTC/USD", "timeframe": "5m", **body},
                            format="json")
        assert response.status_code == 400 and set(response.json()) <= {"timeframe", "symbol"}, response.json()
    assert not BacktestRun.objects.exists()
    response = api.post("/api/backtests/", {"kind": "rsi", "symbol": "BTC/USD", "timeframe": "5m",
                                            "config": {"allow_short": "false", "fee": "0.002"}}, format="json")
    assert response.status_code == 202
    from strategies.backtest import config_from_json

    run = BacktestRun.objects.get()
    assert config_from_json(run.kind, run.params, run.config).allow_short is False  # "false" is not true


def test_backtest_errors_per_field(api: Any, db: Any) -> None:
    response = api.post("/api/backtests/", {"kind": "nope", "symbol": "BTC/USD", "config": {"cash": "-1"}},
                        format="json")
    assert response.status_code == 400 and set(response.json()) == {"kind", "config"}
    response = api.post("/api/backtests/", {"kind": "rsi", "params": {"period": 1}, "symbol": "BTC/USD"},
                        format="json")
    assert response.status_code == 400 and "params.period" in response.json()
    assert api.post("/api/backtests/", {}, format="json").json().keys() == {"kind", "symbol"}
    assert not BacktestRun.objects.exists()


def test_page_size_is_capped(api: Any, make_book: Any) -> None:
    make_book(3)
    body = api.get("/api/orders/?limit=100000&offset=1").json()
    assert body["count"] == 3 and len(body["results"]) == 2
