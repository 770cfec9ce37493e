"""Paging through a venue's candle history (pure: no Django; the candle store and the venue come in as functions).

`history_page_through` asks the venue for `page` candles at a time from a cursor and hands every *closed* candle in
the range to `store`, page by page, so a failure part-way keeps every page stored before it. The cursor moves to the
candle after the last one received (a reply may hold fewer candles than asked: Hyperliquid caps its replies), or a
whole page further when a page is empty (Coinbase answers a fixed window and sends nothing for a window before the
market existed). It stops at the first candle that is still forming or that opens at or after `until`.

Resuming is the caller's `stored` range: when the store already holds the range's first candle (or the venue's
first one, seen on the first page), the walk goes on after the last stored candle instead of reading it all again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from exchanges.base import VenueCandle

Fetch = Callable[[datetime, int], Sequence[VenueCandle]]  # (since, limit) -> candles from `since`, oldest first
Store = Callable[[Sequence[VenueCandle]], int]  # closed candles, oldest first -> how many were new to the store
Progress = Callable[[int, int], None]  # (candle slots walked, slots in the range)
Stop = Callable[[], bool]  # asked before each request: True ends the walk there (a time budget)


@dataclass(frozen=True)
class HistoryResult:
    """What a walk did: candles received and newly stored, requests made, and where the venue's data begins."""

    start: datetime  # where the walk began (after the stored candles when it resumed)
    received: int  # closed candles in the range handed to the store
    stored: int  # of those, new to the store
    requests: int
    first: datetime | None  # open time of the first candle the venue sent (None: it sent none)
    last: datetime | None  # open time of the last closed candle received
    resumed: bool  # the walk skipped candles the store already held
    gaps: int  # grid slots missing between consecutive candles received (a venue without trades sends none)
    complete: bool  # the walk reached the end of the range (False: `stop` ended it first)
    next: datetime  # where a walk that continues this one starts: every candle before it was walked


class HistoryError(Exception):
    """A walk that cannot go on; what was stored before it stays stored."""


def history_page_through(*, fetch: Fetch, store: Store, step: timedelta, since: datetime, until: datetime | None,
                         now: datetime, page: int, stored: tuple[datetime, datetime] | None = None,
                         progress: Progress | None = None, stop: Stop | None = None) -> HistoryResult:
    """Walk the venue's candles opening in [since, until) that closed by `now`, `page` a request, into `store`.

    `stored`: the first stored open time in that range and the last of the run of candles stored without a gap from
    it, to resume after them. Exceptions of `fetch` and `store` propagate; everything stored before them stays.
    """
    if step <= timedelta(0) or page < 1:
        raise ValueError("step and page must be positive")
    if until is not None and until <= since:
        raise HistoryError(f"until {until.isoformat()} is not after since {since.isoformat()}")

    def in_range(open_time: datetime) -> bool:
        return open_time + step <= now and (until is None or open_time < until)

    horizon = now - step if until is None else min(now - step, until - step)  # about the last candle in range
    cursor, resumed = since, False
    if stored is not None and stored[0] < since + step:
        cursor, resumed = stored[1] + step, True  # the store holds the range's start: go on after its last candle
    start = cursor
    slots = max(1, _slots(since, horizon, step) + 1)

    received = new = requests = gaps = 0
    first: datetime | None = None
    last: datetime | None = None
    complete = True
    while in_range(cursor):
        if stop is not None and stop():
            complete = False
            break
        batch = fetch(cursor, page)
        requests += 1
        fresh = sorted({c.open_time: c for c in batch if c.open_time >= cursor}.values(), key=lambda c: c.open_time)
        if not fresh:
            cursor += step * page  # nothing in this window: the next one
            _report(progress, since, cursor, step, slots)
            continue
        if first is None:
            first = fresh[0].open_time
            if stored is not None and not resumed and first >= stored[0] and stored[1] >= first:
                # The store begins where the venue's data begins: it holds this page up to its last candle already.
                cursor, resumed, start = stored[1] + step, True, stored[1] + step
                _report(progress, since, cursor, step, slots)
                continue
        closed = [c for c in fresh if in_range(c.open_time)]
        for candle in closed:
            problem = candle_problem(candle)
            if problem:
                raise HistoryError(f"the venue sent an impossible candle opening {candle.open_time.isoformat()} "
                                   f"({problem}): nothing of its page was stored")
        previous = last
        for candle in closed:
            if previous is not None:
                gaps += max(0, _slots(previous, candle.open_time, step) - 1)
            previous = candle.open_time
        if closed:
            new += store(closed)
            received += len(closed)
            last = closed[-1].open_time
        if len(closed) < len(fresh):
            break  # the forming candle, or past `until`: done
        cursor = fresh[-1].open_time + step
        _report(progress, since, cursor, step, slots)
    if progress is not None and complete:
        progress(slots, slots)
    return HistoryResult(start=start, received=received, stored=new, requests=requests, first=first, last=last,
                         resumed=resumed, gaps=gaps, complete=complete, next=cursor)


def candle_problem(candle: VenueCandle) -> str:
    """Why a candle cannot be true ("" when it can): prices finite and positive, high and low around open and close,
    volume finite and not negative."""
    prices = (candle.open, candle.high, candle.low, candle.close)
    if not all(p.is_finite() and p > 0 for p in prices):
        return "prices must be finite and greater than 0"
    if candle.high < max(candle.open, candle.close) or candle.low > min(candle.open, candle.close):
        return f"high {candle.high} / low {candle.low} do not bound open {candle.open} and close {candle.close}"
    if not candle.volume.is_finite() or candle.volume < 0:
        return f"volume {candle.volume} is not a finite number >= 0"
    return ""


def _slots(start: datetime, end: datetime, step: timedelta) -> int:
    """Whole steps from start to end (0 when end is not after start)."""
    return max(0, (end - start) // step)


def _report(progress: Progress | None, since: datetime, cursor: datetime, step: timedelta, slots: int) -> None:
    if progress is not None:
        progress(min(slots, _slots(since, cursor, step)), slots)
