"""The shared candle CSV's one reader (`strategies.candles.candles_read_csv`): exact digits, bad lines named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from exchanges.base import datetime_to_ms
from strategies.candles import CsvError, candles_read_csv

ETH_1M = Path(__file__).resolve().parents[2] / "data" / "ETH_BTC-1m.csv"


def test_columns_read_the_shared_format_exactly() -> None:
    data = candles_read_csv(ETH_1M, form="columns")
    assert len(data) == 14_397
    assert data.time.dtype == np.int64 and data.open.dtype == np.float64
    first = ETH_1M.read_text().splitlines()[1].split(",")
    assert [repr(float(v)) for v in (data.open[0], data.high[0], data.low[0], data.close[0])] == first[1:5]


def test_rows_and_columns_are_the_same_candles() -> None:
    parsed = candles_read_csv(ETH_1M, form="rows", timeframe="1m")
    columns = candles_read_csv(ETH_1M, form="columns")
    assert not parsed.errors and len(parsed.rows) == len(columns)
    assert [datetime_to_ms(r.open_time) for r in parsed.rows] == columns.time.tolist()
    for name in ("open", "high", "low", "close", "volume"):
        assert [float(getattr(r, name)) for r in parsed.rows] == getattr(columns, name).tolist(), name


def test_rows_need_a_timeframe() -> None:
    with pytest.raises(TypeError, match="timeframe"):
        candles_read_csv(ETH_1M, form="rows")  # type: ignore[call-overload]


@pytest.mark.parametrize(("body", "message"), [
    ("1,1,1,1,1,1\n2,1,1,x,1,1\n3,1,1,1,1,1\n4,1\n", r"2 bad line\(s\): line 3: .*; line 5: expected 6 fields"),
    ("1,1,1,1,1,1\n3,1,1,1,1,1\n2,1,1,1,1,1\n", r"sorted and unique: not after the previous row at line\(s\) 4"),
    ("1,1,1,1,1,1\n2,1,1,1,1,1\n2,1,1,1,1,1\n", r"sorted and unique: not after the previous row at line\(s\) 4"),
    ("1,1,1,1,1,1\n2,2,1.5,1,1,1\n", r"high below open or close at line\(s\) 3"),
    ("1,1,1,1,1,1\n2,1,1,0,1,1\n", r"low above open or close at line\(s\) 3|positive"),
    ("1,1,1,1,1,1\n2,1,1,1,,1\n", r"close is missing or not finite at line\(s\) 3"),
])
def test_columns_name_the_bad_lines(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("timestamp,open,high,low,close,volume\n" + body)
    with pytest.raises(CsvError, match=message):
        candles_read_csv(path, form="columns")


def test_columns_want_the_header(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("time,o,h,l,c,v\n1,1,1,1,1,1\n")
    with pytest.raises(CsvError, match="line 1: header must be"):
        candles_read_csv(path, form="columns")
