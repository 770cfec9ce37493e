"""Paging through a venue's candle history (strategies.history, pure): pages, resume, forming candle, windows."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from exchanges.base import VenueCandle
from strategies.history import HistoryError, history_page_through

HOUR = timedelta(hours=1)
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _candle(i: int, *, high: str | None = None) -> VenueCandle:
    price = Decimal(100 + i)
    return VenueCandle(T0 + i * HOUR, price, Decimal(high) if high else price + 1, price - 1, price, Decimal(i))


class Venue:
    """Answers `cap` candles from `since` (Hyperliquid-like), or a fixed window of `limit` slots (Coinbase-like)."""

    def __init__(self, candles: list[VenueCandle], *, cap: int = 10_000, window: bool = False,
                 fail_on: set[int] | None = None) -> None:
        self.candles, self.cap, self.window, self.fail_on = candles, cap, window, fail_on or set()
        self.asked: list[tuple[datetime, int]] = []

    def fetch(self, since: datetime, limit: int) -> Sequence[VenueCandle]:
        self.asked.append((since, limit))
        if len(self.asked) in self.fail_on:
            raise ConnectionError("the venue dropped the page")
        end = since + limit * HOUR if self.window else datetime.max.replace(tzinfo=UTC)
        return [c for c in self.candles if since <= c.open_time < end][:min(limit, self.cap)]


class Store:
    def __init__(self) -> None:
        self.rows: dict[datetime, VenueCandle] = {}
        self.calls = 0

    def put(self, rows: Sequence[VenueCandle]) -> int:
        self.calls += 1
        new = [r for r in rows if r.open_time not in self.rows]
        self.rows.update((r.open_time, r) for r in rows)
        return len(new)

    def span(self) -> tuple[datetime, datetime] | None:
        return (min(self.rows), max(self.rows)) if self.rows else None


def test_several_capped_pages_store_every_closed_candle_once_and_not_the_forming_one() -> None:
    candles = [_candle(i) for i in range(1201)]  # 1200 closed, the last one still forming
    now = candles[-1].open_time + timedelta(minutes=20)
    venue, store = Venue(candles, cap=500), Store()
    seen: list[tuple[int, int]] = []
    result = history_page_through(fetch=venue.fetch, store=store.put, step=HOUR, since=T0, until=None, now=now,
                                  page=5000, progress=lambda done, total: seen.append((done, total)))
    assert sorted(store.rows) == [c.open_time for c in candles[:-1]]
    assert list(store.rows.values()) == candles[:-1]
    assert (result.received, result.stored, result.requests, result.complete) == (1200, 1200, 3, True)
    assert [since for since, _ in venue.asked] == [T0, T0 + 500 * HOUR, T0 + 1000 * HOUR]
    assert seen[-1][0] == seen[-1][1] and all(a[0] <= b[0] for a, b in zip(seen, seen[1:], strict=False))


def test_a_walk_that_fails_part_way_keeps_its_pages_and_a_rerun_resumes_with_no_duplicate_and_no_gap() -> None:
    candles = [_candle(i) for i in range(1200)]
    now = candles[-1].open_time + HOUR
    store = Store()
    with pytest.raises(ConnectionError):
        history_page_through(fetch=Venue(candles, cap=500, fail_on={2}).fetch, store=store.put, step=HOUR,
                             since=T0, until=None, now=now, page=5000)
    assert sorted(store.rows) == [c.open_time for c in candles[:500]]
    venue = Venue(candles, cap=500)
    result = history_page_through(fetch=venue.fetch, store=store.put, step=HOUR, since=T0, until=None, now=now,
                                  page=5000, stored=store.span())
    assert result.resumed and venue.asked[0][0] == T0 + 500 * HOUR  # nothing stored is asked for again
    assert (result.received, result.stored) == (700, 700)
    assert list(store.rows.values()) == candles


def test_a_store_that_begins_where_the_venues_history_begins_resumes_after_the_first_page() -> None:
    candles = [_candle(i) for i in range(100, 400)]  # the venue keeps nothing before candle 100
    store = Store()
    store.put(candles[:150])
    venue = Venue(candles, cap=100)
    result = history_page_through(fetch=venue.fetch, store=store.put, step=HOUR, since=T0, until=None,
                                  now=candles[-1].open_time + HOUR, page=5000, stored=store.span())
    assert [since for since, _ in venue.asked] == [T0, candles[150].open_time, candles[250].open_time]
    assert result.resumed and result.stored == 150 and list(store.rows.values()) == candles


def test_empty_windows_before_the_market_existed_are_skipped_and_until_is_left_out() -> None:
    candles = [_candle(i) for i in range(700, 1000) if i != 800]  # listed at 700; no trade in hour 800
    venue, store = Venue(candles, window=True), Store()
    until = T0 + 950 * HOUR
    result = history_page_through(fetch=venue.fetch, store=store.put, step=HOUR, since=T0, until=until,
                                  now=T0 + 2000 * HOUR, page=300)
    assert [since for since, _ in venue.asked][:3] == [T0, T0 + 300 * HOUR, T0 + 600 * HOUR]
    assert sorted(store.rows) == [c.open_time for c in candles if c.open_time < until]
    assert result.first == T0 + 700 * HOUR and result.gaps == 1


def test_an_impossible_candle_stops_the_walk_and_keeps_the_pages_before_it() -> None:
    candles = [_candle(i) for i in range(30)]
    candles[25] = _candle(25, high="1")  # high below open and close
    store = Store()
    with pytest.raises(HistoryError, match="impossible candle"):
        history_page_through(fetch=Venue(candles, cap=10).fetch, store=store.put, step=HOUR, since=T0, until=None,
                             now=T0 + 40 * HOUR, page=10)
    assert sorted(store.rows) == [c.open_time for c in candles[:20]]


def test_a_stopped_walk_says_where_to_go_on_and_going_on_from_there_completes_it() -> None:
    candles = [_candle(i) for i in range(50)]
    now = T0 + 50 * HOUR
    store = Store()
    asked = iter([False, False, True])  # a budget that runs out after two requests
    first = history_page_through(fetch=Venue(candles, cap=10).fetch, store=store.put, step=HOUR, since=T0,
                                 until=None, now=now, page=10, stop=lambda: next(asked))
    assert not first.complete and first.next == T0 + 20 * HOUR and len(store.rows) == 20
    rest = history_page_through(fetch=Venue(candles, cap=10).fetch, store=store.put, step=HOUR, since=first.next,
                                until=None, now=now, page=10)
    assert rest.complete and list(store.rows.values()) == candles
