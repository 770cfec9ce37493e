"""Candle history downloads from the loopback venues (Hyperliquid's candleSnapshot, Coinbase's public candles)
through the real connectors built for public data: pages, a failure part-way and the rerun, the forming candle,
the command, the task's slices and the backtest page's button."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from exchanges import registry
from exchanges.base import datetime_to_ms, ms_to_datetime
from exchanges.resilience import ResilientConnector, RetryPolicy
from strategies import download
from strategies.models import Candle
from tests.fakes.coinbase_venue import CoinbaseFake
from tests.fakes.faults import Fault, Request
from tests.fakes.hyperliquid_venue import HyperliquidFake

pytestmark = pytest.mark.django_db
HOUR = timedelta(hours=1)
HOUR_MS = 3_600_000
BTC = "BTC/USDC:USDC"


@pytest.fixture(autouse=True)
def _quick_retries_and_a_roomy_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two tries a read, a few milliseconds apart (a refused page fails the download at once), and a request budget
    that never makes a test wait (the weights spent are checked below, unchanged)."""
    monkeypatch.setattr(registry, "RETRY_POLICY", RetryPolicy(max_attempts=2, base_delay=0.001, max_delay=0.002))
    for venue in ("coinbase", "hyperliquid"):
        monkeypatch.setitem(registry.VENUE_RATES, venue, dataclasses.replace(registry.VENUE_RATES[venue],
                                                                             rate=1e6, burst=1e6))


@pytest.fixture
def hl(settings: Any) -> Iterator[HyperliquidFake]:
    with HyperliquidFake(mainnet=True) as fake:
        settings.PUBLIC_ENDPOINTS = {**settings.PUBLIC_ENDPOINTS, "hyperliquid": fake.url}
        yield fake


@pytest.fixture
def cb(settings: Any) -> Iterator[CoinbaseFake]:
    with CoinbaseFake() as fake:
        settings.PUBLIC_ENDPOINTS = {**settings.PUBLIC_ENDPOINTS, "coinbase": fake.url}
        yield fake


def _hour_now() -> tuple[datetime, int]:
    """Now, and the open (ms) of the hour candle forming now."""
    now = datetime.now(UTC)
    return now, datetime_to_ms(now) // HOUR_MS * HOUR_MS


def _hl_rows(first_ms: int, count: int) -> list[dict[str, Any]]:
    """1h BTC candles in candleSnapshot's recorded shape (tests/fixtures/venues/hyperliquid/candle_snapshot.json)."""
    rows = []
    for i in range(count):
        t, o = first_ms + i * HOUR_MS, Decimal(40000 + i)
        rows.append({"T": t + HOUR_MS - 1, "c": str(o + 3), "h": str(o + 7), "i": "1h", "l": str(o - 5),
                     "n": 100 + i, "o": str(o), "s": "BTC", "t": t, "v": f"{i}.125"})
    return rows


def _cb_rows(first_s: int, count: int, missing: set[int] = frozenset()) -> list[dict[str, str]]:  # type: ignore[assignment]
    """1h BTC-USD candles in the quoted shape of Coinbase's public candles (tests/fixtures/venues/coinbase/quoted)."""
    return [{"start": str(first_s + i * 3600), "low": f"{50000 + i - 5}.5", "high": f"{50000 + i + 9}",
             "open": f"{50000 + i}", "close": f"{50000 + i + 2}.25", "volume": f"{i}.5"}
            for i in range(count) if i not in missing]


def _stored(venue: str, symbol: str) -> list[tuple[int, str, str, str, str, str]]:
    return [(datetime_to_ms(t), *(str(v.normalize()) for v in values)) for t, *values in
            Candle.objects.filter(venue=venue, symbol=symbol, timeframe="1h").order_by("open_time")
            .values_list("open_time", "open", "high", "low", "close", "volume")]


def _expected_hl(rows: list[dict[str, Any]]) -> list[tuple[int, str, str, str, str, str]]:
    return [(r["t"], *(str(Decimal(r[k]).normalize()) for k in "ohlcv")) for r in rows]


def _expected_cb(rows: list[dict[str, str]]) -> list[tuple[int, str, str, str, str, str]]:
    return [(int(r["start"]) * 1000, *(str(Decimal(r[k]).normalize()) for k in ("open", "high", "low", "close",
                                                                                "volume"))) for r in rows]


def _snapshots(fake: HyperliquidFake) -> list[int]:
    """startTime of every candleSnapshot request the fake received, in order."""
    bodies = [r.json() for r in fake.requests(lambda r: b"candleSnapshot" in r.body)]
    return [int(b["req"]["startTime"]) for b in bodies]


def test_a_download_over_several_capped_pages_stores_every_closed_candle_once_and_not_the_forming_one(
        hl: HyperliquidFake) -> None:
    now, forming = _hour_now()
    rows = _hl_rows(forming - 1200 * HOUR_MS, 1201)  # 1200 closed candles and the forming one
    hl.candles[("BTC", "1h")] = rows
    hl.candles_page = 500
    result = download.candles_download(venue="hyperliquid", symbol="BTC", timeframe="1h",
                                       since=ms_to_datetime(rows[0]["t"]), by="test", now=now)
    assert result.symbol == BTC and result.walk.complete
    assert _stored("hyperliquid", BTC) == _expected_hl(rows[:-1])
    assert Candle.objects.filter(open_time=ms_to_datetime(forming)).count() == 0
    first = rows[0]["t"]
    assert _snapshots(hl) == [first, first + 500 * HOUR_MS, first + 1000 * HOUR_MS]

    again = download.candles_download(venue="hyperliquid", symbol="BTC", timeframe="1h",
                                      since=ms_to_datetime(rows[0]["t"]), by="test", now=now)
    assert again.walk.resumed and again.walk.stored == 0 and again.walk.requests == 0  # nothing asked twice
    assert len(_stored("hyperliquid", BTC)) == 1200


def test_a_download_that_loses_a_page_keeps_what_it_stored_and_the_rerun_completes_without_duplicate_or_gap(
        hl: HyperliquidFake) -> None:
    now, forming = _hour_now()
    rows = _hl_rows(forming - 1200 * HOUR_MS, 1201)
    hl.candles[("BTC", "1h")] = rows
    hl.candles_page = 500
    first = rows[0]["t"]

    def later_page(request: Request) -> bool:
        body = request.json() if request.body else None
        return isinstance(body, dict) and body.get("type") == "candleSnapshot" and body["req"]["startTime"] != first

    hl.plan.next(2, Fault.DROP, match=later_page)  # the connection closes unanswered, both tries
    with pytest.raises(download.DownloadError) as failed:
        download.candles_download(venue="hyperliquid", symbol="BTC", timeframe="1h", since=ms_to_datetime(first),
                                  by="test", now=now)
    assert failed.value.stored == 500
    assert _stored("hyperliquid", BTC) == _expected_hl(rows[:500])

    asked_before = len(_snapshots(hl))
    result = download.candles_download(venue="hyperliquid", symbol="BTC", timeframe="1h",
                                       since=ms_to_datetime(first), by="test", now=now)
    assert result.walk.resumed and result.walk.stored == 700
    assert _snapshots(hl)[asked_before:] == [first + 500 * HOUR_MS, first + 1000 * HOUR_MS]
    assert _stored("hyperliquid", BTC) == _expected_hl(rows[:-1])


def test_coinbase_pages_by_300_through_public_endpoints_keeps_the_venues_gaps_and_resumes_after_a_refusal(
        cb: CoinbaseFake) -> None:
    now, forming = _hour_now()
    first_s = (forming - 700 * HOUR_MS) // 1000
    rows = _cb_rows(first_s, 701, missing={100, 450})  # no trade in two hours: Coinbase sends no candle
    cb.candle_rows["BTC-USD"] = rows

    def later_page(request: Request) -> bool:
        return "/candles" in request.path and f"start={first_s}&" not in request.path

    cb.plan.next(2, Fault.SERVER_ERROR, match=later_page)
    with pytest.raises(download.DownloadError) as failed:
        download.candles_download(venue="coinbase", symbol="BTC-USD", timeframe="1h",
                                  since=datetime.fromtimestamp(first_s, UTC), by="test", now=now)
    assert failed.value.stored == 299  # the first window of 300 slots, one of them empty
    result = download.candles_download(venue="coinbase", symbol="BTC-USD", timeframe="1h",
                                       since=datetime.fromtimestamp(first_s, UTC), by="test", now=now)
    assert result.symbol == "BTC/USD" and result.walk.complete and result.walk.gaps == 1  # hour 450
    assert _stored("coinbase", "BTC/USD") == _expected_cb(rows[:-1])
    assert cb.requests(lambda r: r.headers.get("authorization") is not None) == []  # no credentials anywhere
    for request in cb.requests(lambda r: "/candles" in r.path):
        assert "limit=300" in request.path


def test_the_command_shows_progress_and_says_where_the_venues_history_begins(hl: HyperliquidFake) -> None:
    _, forming = _hour_now()
    rows = _hl_rows(forming - 1200 * HOUR_MS, 1201)
    hl.candles[("BTC", "1h")] = rows
    hl.candles_depth = 800  # the venue keeps its last 800 candles only
    since, until = ms_to_datetime(rows[0]["t"]), ms_to_datetime(rows[1100]["t"])
    out, err = io.StringIO(), io.StringIO()
    call_command("download_candles", "--venue", "hyperliquid", "--symbol", "BTC", "--timeframe", "1h",
                 "--since", since.isoformat(), "--until", until.isoformat(), stdout=out, stderr=err)
    assert _stored("hyperliquid", BTC) == _expected_hl(rows[401:1100])
    assert "100%" in err.getvalue()
    assert f"begins at {ms_to_datetime(rows[401]['t']):%Y-%m-%d %H:%M} UTC" in err.getvalue()
    assert f"downloaded 699 closed candle(s) of hyperliquid {BTC} 1h" in out.getvalue()


def test_a_testnet_download_is_stored_under_the_testnet_feeds_name(hl: HyperliquidFake) -> None:
    now, forming = _hour_now()
    rows = _hl_rows(forming - 20 * HOUR_MS, 20)
    hl.candles[("BTC", "1h")] = rows
    out = io.StringIO()
    call_command("download_candles", "--venue", "hyperliquid", "--symbol", BTC, "--timeframe", "1h", "--network",
                 "testnet", "--since", ms_to_datetime(rows[0]["t"]).isoformat(), "--quiet-progress", stdout=out)
    assert _stored("hyperliquid-testnet", BTC) == _expected_hl(rows)
    assert not Candle.objects.filter(venue="hyperliquid").exists()
    assert "(stored under hyperliquid-testnet)" in out.getvalue()


def test_the_command_refuses_a_timeframe_the_venue_lacks_and_a_venue_without_public_candles(
        cb: CoinbaseFake) -> None:
    with pytest.raises(CommandError, match=r"--timeframe: coinbase serves candles in 1m, 5m, 15m, 30m, 1h, 2h, 6h, "
                                           r"1d; not 4h"):
        call_command("download_candles", "--venue", "coinbase", "--symbol", "BTC-USD", "--timeframe", "4h")
    with pytest.raises(CommandError, match="--venue: synthetix serves no public market data"):
        call_command("download_candles", "--venue", "synthetix", "--symbol", "ETH-PERP", "--timeframe", "1h")
    assert cb.requests() == [] and not Candle.objects.exists()


def test_the_task_downloads_in_slices_each_queueing_the_rest_from_where_it_stopped(
        hl: HyperliquidFake, monkeypatch: pytest.MonkeyPatch) -> None:
    _, forming = _hour_now()
    rows = _hl_rows(forming - 1200 * HOUR_MS, 1200)  # all closed (none forming: the real clock decides here)
    hl.candles[("BTC", "1h")] = rows
    hl.candles_page = 500

    class Clock:  # every reading is a second later: a 1.5 s slice makes one request
        t = 0.0

        def monotonic(self) -> float:
            self.t += 1.0
            return self.t

    queued: list[dict[str, Any]] = []

    class Task:
        def delay(self, **kwargs: Any) -> None:
            queued.append(kwargs)

    monkeypatch.setattr(download, "time", Clock())
    monkeypatch.setattr(download, "TASK_SLICE_SECONDS", 1.5)
    monkeypatch.setattr(download.dispatch, "task", lambda name: Task())
    outcomes = [download.candles_download_slice(venue="hyperliquid", symbol="BTC", timeframe="1h",
                                                since_ms=rows[0]["t"], until_ms=None, network="mainnet", by="t")]
    while outcomes[-1] == "continued":
        outcomes.append(download.candles_download_slice(**queued[-1]))
    assert outcomes == ["continued", "continued", "done"]
    assert [q["since_ms"] for q in queued] == [rows[500]["t"], rows[1000]["t"]]
    assert _stored("hyperliquid", BTC) == _expected_hl(rows)


def test_a_backfill_fetches_what_a_feed_missed_after_its_last_stored_candle(hl: HyperliquidFake) -> None:
    now, forming = _hour_now()
    rows = _hl_rows(forming - 10 * HOUR_MS, 11)
    hl.candles[("BTC", "1h")] = rows
    download.candles_download(venue="hyperliquid", symbol=BTC, timeframe="1h", since=ms_to_datetime(rows[0]["t"]),
                              until=ms_to_datetime(rows[4]["t"]), by="test", now=now)
    assert download.candles_backfill(feed="hyperliquid", symbol=BTC, timeframe="1h", now=now) == 6
    assert _snapshots(hl)[-1] == rows[4]["t"]
    assert _stored("hyperliquid", BTC) == _expected_hl(rows[:-1])


def test_a_download_spends_the_venues_request_weight_for_every_page_and_its_candles(
        hl: HyperliquidFake, monkeypatch: pytest.MonkeyPatch) -> None:
    spent: list[tuple[str, float | None]] = []
    spend = ResilientConnector._spend

    def spy(self: ResilientConnector, key: str, units: float | None) -> None:
        spent.append((key, units))
        spend(self, key, units)

    monkeypatch.setattr(ResilientConnector, "_spend", spy)
    now, forming = _hour_now()
    rows = _hl_rows(forming - 1200 * HOUR_MS, 1200)
    hl.candles[("BTC", "1h")] = rows
    hl.candles_page = 500
    download.candles_download(venue="hyperliquid", symbol="BTC", timeframe="1h", since=ms_to_datetime(rows[0]["t"]),
                              by="test", now=now)
    # meta, then each page: 20 for the request and 1 more per 60 candles in the reply (Hyperliquid's weights)
    assert spent == [("info:meta", None), ("info:candleSnapshot", None), ("info:candleSnapshot:rows", 8.0),
                     ("info:candleSnapshot", None), ("info:candleSnapshot:rows", 8.0),
                     ("info:candleSnapshot", None), ("info:candleSnapshot:rows", 3.0)]
