"""Market data in and out of the candle store: CSV parsing and validation, the replay feed, the ATR provider.

The replay plays stored (or file) candles on an accelerated clock. One step per candle t, in order:

1. candle t becomes "closed": it is inserted into the store (when replaying from a file), and in the same
   transaction the NEXT candle's open is published as the market's current price (`trading.venues.price_set`,
   stamped now, with the next candle's volume), so a signal from bar t's close fills at bar t+1's open --
   exactly the backtester's rule;
2. the strategies of that market and timeframe evaluate candle t (inline through the service, or as Celery
   tasks when the command runs against workers: then a slow worker may see a later price, so exact timing needs
   inline evaluation, as `parity` does);
3. optionally the positions monitor runs (paper limit orders, stop-loss / take-profit at the new price).

The last candle has no next open: it is stored but not evaluated (nothing could fill it), like the backtester.
Gaps are kept as they are: evaluation happens per stored candle, never on a forward-filled grid.
"""

from __future__ import annotations

import csv
import enum
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone as dt_timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path

from django.db import transaction
from django.utils import timezone

from trading.models import Strategy

log = logging.getLogger("strategies.marketdata")

CSV_COLUMNS = ("timestamp", "open", "high", "low", "close", "volume")
ATR_PERIOD = 14
_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 604800}
EPOCH = datetime(1970, 1, 1, tzinfo=dt_timezone.utc)


def timeframe_delta(timeframe: str) -> timedelta:
    """The length of one candle of a timeframe such as 1m, 15m, 4h, 1d."""
    unit, count = timeframe[-1:], timeframe[:-1]
    if unit not in _UNITS or not count.isdigit() or int(count) < 1:
        raise ValueError(f"unknown timeframe {timeframe!r} (use e.g. 1m, 5m, 1h, 1d)")
    return timedelta(seconds=int(count) * _UNITS[unit])


def ms_to_datetime(ms: int) -> datetime:
    """Epoch milliseconds (UTC) to an aware datetime."""
    return EPOCH + timedelta(milliseconds=ms)


def datetime_to_ms(value: datetime) -> int:
    """An aware datetime to epoch milliseconds (UTC)."""
    return (value - EPOCH) // timedelta(milliseconds=1)


# --------------------------------------------------------------------------------------------- CSV


@dataclass(frozen=True)
class CandleRow:
    """One candle as exact Decimals; open_time is the candle's open (aware UTC)."""

    open_time: datetime
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    line: int = 0  # line number in its file (1 = the header), 0 when not from a file


@dataclass(frozen=True)
class RowError:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass
class ParsedCsv:
    rows: list[CandleRow] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)


def _number(text: str) -> Decimal:
    value = Decimal(text.strip())
    if not value.is_finite():
        raise InvalidOperation
    return value


def candles_parse_csv(path: str | Path, *, timeframe: str,
                      progress: Callable[[int, int], None] | None = None) -> ParsedCsv:
    """Read and check every row of a `timestamp,open,high,low,close,volume` file (epoch ms UTC, candle open).

    A row is bad when a value is not a finite number, a price is not positive, high < max(open, close),
    low > min(open, close), volume < 0, its timestamp is not on the timeframe's grid, or timestamps do not
    strictly increase. Every bad row is reported with its line number; gaps in time are fine.
    """
    step_ms = int(timeframe_delta(timeframe).total_seconds() * 1000)
    result = ParsedCsv()
    with open(path, newline="") as fh:
        lines = fh.read().splitlines()
    total = max(len(lines) - 1, 0)
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None or tuple(h.strip().lower() for h in header) != CSV_COLUMNS:
        result.errors.append(RowError(1, f"header must be {','.join(CSV_COLUMNS)}, got {','.join(header or [])}"))
        return result
    previous_ms: int | None = None
    for index, cells in enumerate(reader):
        line = index + 2
        if progress is not None and (index % 1000 == 0 or index + 1 == total):
            progress(index + 1, total)
        if not cells or not any(c.strip() for c in cells):
            continue
        if len(cells) != len(CSV_COLUMNS):
            result.errors.append(RowError(line, f"expected {len(CSV_COLUMNS)} columns, got {len(cells)}"))
            continue
        problems: list[str] = []
        try:
            ms = int(cells[0].strip())
        except ValueError:
            problems.append(f"timestamp {cells[0]!r} is not whole epoch milliseconds")
            ms = None
        values: dict[str, Decimal] = {}
        for name, text in zip(CSV_COLUMNS[1:], cells[1:]):
            try:
                values[name] = _number(text)
            except (InvalidOperation, ValueError):
                problems.append(f"{name} {text.strip()!r} is not a finite number")
        if len(values) == 5:
            o, h, lo, c, v = (values[k] for k in CSV_COLUMNS[1:])
            if min(o, h, lo, c) <= 0:
                problems.append("prices must be greater than 0")
            if h < max(o, c):
                problems.append(f"high {h} is below max(open, close) {max(o, c)}")
            if lo > min(o, c):
                problems.append(f"low {lo} is above min(open, close) {min(o, c)}")
            if v < 0:
                problems.append(f"volume {v} is negative")
        if ms is not None:
            if ms <= 0:
                problems.append(f"timestamp {ms} is not after 1970")
            elif ms % step_ms:
                problems.append(f"timestamp {ms} is not on the {timeframe} grid")
            if previous_ms is not None and ms <= previous_ms:
                problems.append(f"timestamp {ms} does not increase (previous row {previous_ms})")
            previous_ms = ms if previous_ms is None else max(previous_ms, ms)
        if problems:
            result.errors.append(RowError(line, "; ".join(problems)))
            continue
        assert ms is not None
        result.rows.append(CandleRow(ms_to_datetime(ms), values["open"], values["high"], values["low"],
                                     values["close"], values["volume"], line))
    return result


# --------------------------------------------------------------------------------------------- replay


class Dispatch(str, enum.Enum):
    """How a replay step runs strategy evaluation and the signals it creates."""

    INLINE = "inline"  # evaluate here, process signals here (deterministic; no worker needed)
    WORKER_SIGNALS = "worker_signals"  # evaluate here, queue signals to the execution workers
    TASKS = "tasks"  # queue the evaluation itself to the strategies workers


@dataclass(frozen=True)
class StepResult:
    candle: CandleRow
    evaluated: int  # evaluations recorded by this step (inline dispatch), or tasks queued
    signal_ids: tuple[int, ...] = ()  # signals created by this step (inline dispatches)


def replay_step(
    *,
    venue: str,
    symbol: str,
    timeframe: str,
    candle: CandleRow,
    next_candle: CandleRow | None,
    store: bool = False,
    dispatch: Dispatch = Dispatch.INLINE,
    strategy_ids: Sequence[int] | None = None,
    monitor: bool = False,
    now: datetime | None = None,
) -> StepResult:
    """Close candle t, publish candle t+1's open as the price, and have the market's strategies evaluate t."""
    from strategies import services
    from strategies.models import Candle
    from trading.monitor import positions_monitor
    from trading.venues import price_set

    now = now or timezone.now()
    with transaction.atomic():
        if store:
            Candle.objects.bulk_create([Candle(venue=venue, symbol=symbol, timeframe=timeframe,
                                               open_time=candle.open_time, open=candle.open, high=candle.high,
                                               low=candle.low, close=candle.close, volume=candle.volume)],
                                       ignore_conflicts=True)
        if next_candle is not None:
            price_set(symbol, next_candle.open, volume=next_candle.volume, time=now)
    if next_candle is None:
        return StepResult(candle, 0)
    if dispatch is Dispatch.TASKS:
        from trading.tasks import price_arrived

        price_arrived(symbol, next_candle.open)  # a stop this price crosses leaves now, not at the next tick

    if strategy_ids is None:
        from strategies.selectors import strategies_for_market

        strategy_ids = strategies_for_market(venue=venue, symbol=symbol, timeframe=timeframe)
    evaluated, signal_ids = 0, []
    for strategy_id in strategy_ids:
        if dispatch is Dispatch.TASKS:
            from strategies.tasks import strategy_evaluate_task

            strategy_evaluate_task.delay(strategy_id, datetime_to_ms(candle.open_time))
            evaluated += 1
            continue
        inline = dispatch is Dispatch.INLINE
        evaluation = services.strategy_evaluate(strategy_id=strategy_id, candle_open_time=candle.open_time, now=now,
                                                enqueue=not inline)
        if evaluation is None:
            continue
        evaluated += 1
        if evaluation.signal_id is not None:
            signal_ids.append(evaluation.signal_id)
            if inline:
                from trading.execution import signal_process

                signal_process(signal_id=evaluation.signal_id, now=now)
    if monitor:
        positions_monitor(now=now)
    return StepResult(candle, evaluated, tuple(signal_ids))


def replay_pairs(candles: Iterable[CandleRow]) -> Iterator[tuple[CandleRow, CandleRow | None]]:
    """Each candle with the one after it (None for the last)."""
    iterator = iter(candles)
    current = next(iterator, None)
    while current is not None:
        following = next(iterator, None)
        yield current, following
        current = following


# --------------------------------------------------------------------------------------------- ATR


def atr_from_store(strategy: Strategy, now: datetime) -> Decimal | None:
    """ATR(14) of the strategy's market at its last closed candle (None without enough fresh candles)."""
    from strategies.selectors import candles_read

    step = timeframe_delta(strategy.timeframe)
    candles = candles_read(strategy.account.venue, strategy.symbol, strategy.timeframe, until=now - step,
                           limit=ATR_WINDOW)
    if len(candles) <= ATR_PERIOD:
        return None
    last_close = ms_to_datetime(int(candles.time[-1])) + step
    if now - last_close > ATR_MAX_AGE_BARS * step:
        return None  # the store is behind: no ATR rather than a stale one
    return atr_value(candles)


# Wilder smoothing forgets its start at (13/14)^n: 500 bars leave nothing a float can see.
ATR_WINDOW = 500
ATR_MAX_AGE_BARS = 3


def atr_value(candles: object) -> Decimal | None:
    """The last ATR(14) of candles as a Decimal (from its shortest repr), or None when too short or not finite."""
    import math

    from strategies import indicators

    if len(candles) <= ATR_PERIOD:  # type: ignore[arg-type]
        return None
    values = indicators.atr(candles.high, candles.low, candles.close, ATR_PERIOD)  # type: ignore[attr-defined]
    last = float(values[-1])
    if not math.isfinite(last) or last <= 0:
        return None
    return Decimal(repr(last))


_connected = False


def atr_provider_connect() -> None:
    """Let the engine take ATR-multiple exits' ATR from the candle store (once per process)."""
    global _connected
    if _connected:
        return
    from trading.decision import atr_provider_register

    atr_provider_register(atr_from_store)
    _connected = True


# --------------------------------------------------------------------------------------------- progress


class ProgressBar:
    """A one-line progress bar on a text stream (stderr), redrawn at most every 1 %."""

    def __init__(self, stream: object, label: str, width: int = 30) -> None:
        self.stream, self.label, self.width = stream, label, width
        self._shown = -1

    def __call__(self, done: int, total: int) -> None:
        percent = 100 if total <= 0 else min(100, done * 100 // total)
        if percent == self._shown:
            return
        self._shown = percent
        filled = self.width * percent // 100
        bar = "#" * filled + "-" * (self.width - filled)
        end = "\n" if percent == 100 else ""
        text = f"\r{self.label:<10} [{bar}] {percent:3d}% {done}/{total}{end}"
        if hasattr(self.stream, "style_func"):  # Django's OutputWrapper ends every write with a newline unless told
            self.stream.write(text, ending="")  # type: ignore[attr-defined]
        else:
            self.stream.write(text)  # type: ignore[attr-defined]
        self.stream.flush()  # type: ignore[attr-defined]
