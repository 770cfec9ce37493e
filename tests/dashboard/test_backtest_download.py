"""The backtest page offers a candle download when the market it names has no stored candles, and queues it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from exchanges.base import datetime_to_ms
from strategies import download

BTC = "BTC/USDC:USDC"


def _launch(client: Any, **values: str) -> Any:
    data = {"kind": "rsi", "params": "{}", "symbol": BTC, "timeframe": "1h", "venue": "hyperliquid", "start": "",
            "end": "", "cash": "10000", "fee": "0.001", "slippage_bps": "0"}
    return client.post("/backtests/", {**data, **values})


def test_the_backtest_form_offers_the_download_when_the_market_has_no_candles_and_queues_it(
        staff_client: Any, monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any) -> None:
    queued: list[tuple[str, dict[str, Any]]] = []

    class Task:
        def __init__(self, name: str) -> None:
            self.name = name

        def delay(self, **kwargs: Any) -> None:
            queued.append((self.name, kwargs))

    monkeypatch.setattr(download.dispatch, "task", Task)
    page = _launch(staff_client)
    assert page.status_code == 400 and b'id="download-candles"' in page.content
    assert b'id="download-candles"' not in _launch(staff_client, venue="paper").content  # paper: import only
    assert b'id="download-candles"' not in _launch(staff_client, timeframe="6h").content  # hyperliquid has no 6h

    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post("/backtests/download/", {"venue": "hyperliquid", "symbol": BTC,
                                                              "timeframe": "1h", "start": "2026-01-01T00:00",
                                                              "end": "2026-01-02T00:00"})
    assert response.status_code == 302 and response["Location"] == "/backtests/"
    assert queued == [("strategies.tasks.candles_download", {
        "venue": "hyperliquid", "symbol": BTC, "timeframe": "1h",
        "since_ms": datetime_to_ms(datetime(2026, 1, 1, tzinfo=UTC)),
        "until_ms": datetime_to_ms(datetime(2026, 1, 2, 1, tzinfo=UTC)), "network": "mainnet", "by": "web:boss"})]
    assert b"Download queued: hyperliquid" in staff_client.get("/backtests/").content

    refused = staff_client.post("/backtests/download/", {"venue": "synthetix", "symbol": "ETH-PERP",
                                                         "timeframe": "1h"}, follow=True)
    assert b"Nothing was queued: venue: synthetix serves no public market data" in refused.content
    assert len(queued) == 1
