"""Candles, pure: the shared CSV format, the timeframe grid, and ATR(14) of a window of candles.

The shared CSV is `timestamp,open,high,low,close,volume` (epoch ms UTC of the candle's open). `candles_read_csv` is
its one reader, in two forms: exact Decimal rows, each bad line named (`form="rows"`, for the candle store: imports,
replays), or float columns at pandas speed (`form="columns"`, for the backtester: a million rows in a second).
A candle row is `exchanges.base.VenueCandle` and epoch milliseconds convert through `exchanges.base.ms_to_datetime` /
`datetime_to_ms`, the one candle type and the one epoch helper of the code base (exchanges, the bottom layer,
imports nothing of ours); indicator maths reads candles as columns, `strategies.base.Candles`. Candles are built
here too: from a stream of prices (`PriceCandles`, the demo feed) and from shorter candles (`candles_resample`).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from itertools import groupby
from os import PathLike
from typing import Literal, overload

import numpy as np
import numpy.typing as npt

from exchanges.base import EPOCH, VenueCandle, ms_to_datetime
from strategies.base import Candles

CSV_COLUMNS = ("timestamp", "open", "high", "low", "close", "volume")
ATR_PERIOD = 14  # the live engine sends ATR(14) at the signal bar with ATR-multiple exits; the backtester too
_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 604800}


def timeframe_delta(timeframe: str) -> timedelta:
    """The length of one candle of a timeframe such as 1m, 15m, 4h, 1d."""
    unit, count = timeframe[-1:], timeframe[:-1]
    if unit not in _UNITS or not count.isdigit() or int(count) < 1:
        raise ValueError(f"unknown timeframe {timeframe!r} (use e.g. 1m, 5m, 1h, 1d)")
    return timedelta(seconds=int(count) * _UNITS[unit])


def grid_floor(time: datetime, timeframe: str) -> datetime:
    """The open of the `timeframe` candle that holds `time` (the grid counts from the epoch, UTC)."""
    step = timeframe_delta(timeframe)
    return EPOCH + (time - EPOCH) // step * step


# --------------------------------------------------------------------------------------------- building candles


def candles_resample(rows: Iterable[VenueCandle], timeframe: str) -> list[VenueCandle]:
    """Candles (oldest first) aggregated into `timeframe` candles on its grid: each bucket's first open, highest
    high, lowest low, last close and summed volume, from the candles it holds (a bucket holding none is no candle).

    Pass only the candles of closed buckets: the candle of a bucket still filling is not final.
    """
    return [_merged(start, list(part))
            for start, part in groupby(rows, key=lambda row: grid_floor(row.open_time, timeframe))]


def _merged(open_time: datetime, part: list[VenueCandle]) -> VenueCandle:
    return VenueCandle(open_time, part[0].open, max(r.high for r in part), min(r.low for r in part), part[-1].close,
                       sum((r.volume for r in part), Decimal(0)))


class PriceCandles:
    """Candles of one timeframe built from a stream of prices, on its grid: a candle's open is its bucket's first
    price, high and low its extremes, close its last, and volume the sum of the volumes the prices came with.

    `close(now)` hands over the candle being built once its bucket has ended; a price of a later bucket does too.
    """

    def __init__(self, timeframe: str) -> None:
        self.timeframe = timeframe
        self.step = timeframe_delta(timeframe)
        self._open_time: datetime | None = None
        self._values: list[Decimal] = []  # open, high, low, close, volume

    def add(self, time: datetime, price: Decimal, volume: Decimal = Decimal(0)) -> VenueCandle | None:
        """Count a price seen at `time`; return the candle it closed (the previous bucket's), if any."""
        closed = self.close(time)
        if self._open_time is None:
            self._open_time = grid_floor(time, self.timeframe)
            self._values = [price, price, price, price, volume]
        else:
            values = self._values
            values[1], values[2] = max(values[1], price), min(values[2], price)
            values[3], values[4] = price, values[4] + volume
        return closed

    def close(self, now: datetime) -> VenueCandle | None:
        """The candle being built, when its bucket has ended by `now` (None: nothing built, or still open)."""
        if self._open_time is None or now < self._open_time + self.step:
            return None
        candle = VenueCandle(self._open_time, *self._values)
        self._open_time, self._values = None, []
        return candle


# --------------------------------------------------------------------------------------------- CSV: the reader


class CsvError(ValueError):
    """A candle file that does not follow the shared CSV format; the message names the bad lines."""


@dataclass(frozen=True)
class RowError:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass
class ParsedCsv:
    """The good rows of a file (with each one's line number, 1 = the header) and every bad row's problem."""

    rows: list[VenueCandle] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)


@overload
def candles_read_csv(path: str | PathLike[str], *, form: Literal["rows"], timeframe: str,
                     progress: Callable[[int, int], None] | None = None) -> ParsedCsv: ...


@overload
def candles_read_csv(path: str | PathLike[str], *, form: Literal["columns"]) -> Candles: ...


def candles_read_csv(path: str | PathLike[str], *, form: Literal["rows", "columns"], timeframe: str | None = None,
                     progress: Callable[[int, int], None] | None = None) -> ParsedCsv | Candles:
    """Read the shared candle CSV (`timestamp,open,high,low,close,volume`, epoch ms UTC of the candle open).

    `form="rows"`: every row checked (on the timeframe's grid too) into exact Decimal `VenueCandle`s, each bad row
    in `ParsedCsv.errors` with its line; progress, when given, is called with (rows done, rows). `form="columns"`:
    float columns (`Candles`) at pandas speed; raise CsvError naming the bad lines.
    """
    if form == "rows":
        if timeframe is None:
            raise TypeError("form='rows' needs the timeframe its timestamps must be on")
        return _rows_read(path, timeframe=timeframe, progress=progress)
    if form == "columns":
        return _columns_read(path)
    raise ValueError(f"unknown form {form!r} (use 'rows' or 'columns')")


# --------------------------------------------------------------------------------------------- CSV: exact rows


def _number(text: str) -> Decimal:
    value = Decimal(text.strip())
    if not value.is_finite():
        raise InvalidOperation
    return value


def _rows_read(path: str | PathLike[str], *, timeframe: str,
               progress: Callable[[int, int], None] | None = None) -> ParsedCsv:
    """Read and check every row of the file as exact Decimal candles.

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
        result.rows.append(VenueCandle(ms_to_datetime(ms), values["open"], values["high"], values["low"],
                                       values["close"], values["volume"]))
        result.lines.append(line)
    return result


# --------------------------------------------------------------------------------------------- CSV: float columns


def _columns_read(path: str | PathLike[str]) -> Candles:
    """Read the file as float columns; raise CsvError naming bad lines."""
    import pandas as pd  # only here: the backtest itself needs numpy alone

    with open(path, encoding="utf-8") as f:
        header = f.readline().strip()
    if tuple(h.strip() for h in header.split(",")) != CSV_COLUMNS:
        raise CsvError(f"{path}: line 1: header must be {','.join(CSV_COLUMNS)!r}, got {header!r}")
    dtypes = {"timestamp": np.int64, **{name: np.float64 for name in CSV_COLUMNS[1:]}}
    try:
        frame = pd.read_csv(path, dtype=dtypes, engine="c", skip_blank_lines=False)
    except (ValueError, TypeError, pd.errors.ParserError):
        raise CsvError(_csv_errors(path)) from None
    if list(frame.columns) != list(CSV_COLUMNS):
        raise CsvError(_csv_errors(path))
    columns = [np.ascontiguousarray(frame[name].to_numpy(copy=True)) for name in CSV_COLUMNS]
    candles = Candles(*columns)
    problems = candle_problems(candles)
    if problems:
        raise CsvError(f"{path}: " + "; ".join(problems))
    return candles


def _csv_errors(path: str | PathLike[str], limit: int = 10) -> str:
    """Scan a file the fast parser refused and name its bad lines (1-based, header = line 1)."""
    bad: list[str] = []
    count = 0
    with open(path, encoding="utf-8") as f:
        next(f, None)
        for number, line in enumerate(f, start=2):
            fields = line.rstrip("\r\n").split(",")
            problem = ""
            if len(fields) != len(CSV_COLUMNS):
                problem = f"expected {len(CSV_COLUMNS)} fields, got {len(fields)}"
            else:
                try:
                    int(fields[0])
                    for value in fields[1:]:
                        float(value)
                except ValueError as exc:
                    problem = str(exc)
            if problem:
                count += 1
                if len(bad) < limit:
                    bad.append(f"line {number}: {problem}")
    if not bad:
        return f"{path}: unreadable CSV"
    more = f" (and {count - len(bad)} more)" if count > len(bad) else ""
    return f"{path}: {count} bad line(s): " + "; ".join(bad) + more


def _lines(mask: npt.NDArray[np.bool_], limit: int = 10) -> str:
    """Name the CSV lines (row index + 2) where mask is True."""
    rows = np.flatnonzero(mask)
    listed = ", ".join(str(int(r) + 2) for r in rows[:limit])
    more = f" and {rows.size - limit} more" if rows.size > limit else ""
    return f"line(s) {listed}{more}"


def candle_problems(candles: Candles) -> list[str]:
    """Describe what makes candles unusable: lengths, non-finite or non-positive prices, OHLC order, time order."""
    n = len(candles)
    columns = {"open": candles.open, "high": candles.high, "low": candles.low, "close": candles.close,
               "volume": candles.volume}
    if n == 0:
        return ["no candles"]
    if any(len(c) != n for c in columns.values()):
        return [f"columns differ in length: {dict((k, len(v)) for k, v in columns.items())}"]
    # Cheap whole-column tests first (a sum is NaN or infinite when any value is); lines only on failure.
    problems: list[str] = []
    for name, values in columns.items():
        if not math.isfinite(float(np.sum(values))):
            problems.append(f"{name} is missing or not finite at {_lines(~np.isfinite(values))}")
    if problems:
        return problems
    low, high = candles.low, candles.high
    body_low = np.minimum(candles.open, candles.close)
    if (low > body_low).any():
        problems.append(f"low above open or close at {_lines(low > body_low)}")
    body_high = np.maximum(candles.open, candles.close, out=body_low)
    if (high < body_high).any():
        problems.append(f"high below open or close at {_lines(high < body_high)}")
    if problems or float(low.min()) <= 0:  # once ordered, a positive low makes every price positive
        bad = (low <= 0) | (candles.open <= 0) | (candles.close <= 0) | (high <= 0)
        if bad.any():
            problems.append(f"prices must be positive at {_lines(bad)}")
    if float(candles.volume.min()) < 0:
        problems.append(f"volume must not be negative at {_lines(candles.volume < 0)}")
    time = candles.time
    if n > 1 and (time[1:] <= time[:-1]).any():
        unsorted = np.zeros(n, dtype=np.bool_)
        unsorted[1:] = time[1:] <= time[:-1]
        problems.append(f"timestamps must be sorted and unique: not after the previous row at {_lines(unsorted)}")
    return problems


# --------------------------------------------------------------------------------------------- ATR


# Wilder smoothing forgets its start at (13/14)^n: 500 bars leave nothing a float can see.
ATR_WINDOW = 500
ATR_MAX_AGE_BARS = 3  # the store's last candle may be this many bars old; older: no ATR rather than a stale one


def atr_value(candles: Candles) -> Decimal | None:
    """The last ATR(14) of candles as a Decimal (from its shortest repr), or None when too short or not finite."""
    from strategies import indicators  # TA-Lib, loaded by the first reader that needs it

    if len(candles) <= ATR_PERIOD:
        return None
    values = indicators.atr(candles.high, candles.low, candles.close, ATR_PERIOD)
    last = float(values[-1])
    if not math.isfinite(last) or last <= 0:
        return None
    return Decimal(repr(last))
