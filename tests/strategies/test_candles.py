"""The shared candle CSV read as float columns (`strategies.candles.load_csv`): exact digits, bad lines named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from strategies.candles import CsvError, load_csv

ETH_1M = Path(__file__).resolve().parents[2] / "data" / "ETH_BTC-1m.csv"


def test_load_csv_reads_the_shared_format_exactly() -> None:
    data = load_csv(ETH_1M)
    assert len(data) == 14_397
    assert data.time.dtype == np.int64 and data.open.dtype == np.float64
    first = ETH_1M.read_text().splitlines()[1].split(",")
    assert [repr(float(v)) for v in (data.open[0], data.high[0], data.low[0], data.close[0])] == first[1:5]


@pytest.mark.parametrize(("body", "message"), [
    ("1,1,1,1,1,1\n2,1,1,x,1,1\n3,1,1,1,1,1\n4,1\n", r"2 bad line\(s\): line 3: .*; line 5: expected 6 fields"),
    ("1,1,1,1,1,1\n3,1,1,1,1,1\n2,1,1,1,1,1\n", r"sorted and unique: not after the previous row at line\(s\) 4"),
    ("1,1,1,1,1,1\n2,1,1,1,1,1\n2,1,1,1,1,1\n", r"sorted and unique: not after the previous row at line\(s\) 4"),
    ("1,1,1,1,1,1\n2,2,1.5,1,1,1\n", r"high below open or close at line\(s\) 3"),
    ("1,1,1,1,1,1\n2,1,1,0,1,1\n", r"low above open or close at line\(s\) 3|positive"),
    ("1,1,1,1,1,1\n2,1,1,1,,1\n", r"close is missing or not finite at line\(s\) 3"),
])
def test_load_csv_names_the_bad_lines(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("timestamp,open,high,low,close,volume\n" + body)
    with pytest.raises(CsvError, match=message):
        load_csv(path)


def test_load_csv_wants_the_header(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("time,o,h,l,c,v\n1,1,1,1,1,1\n")
    with pytest.raises(CsvError, match="line 1: header must be"):
        load_csv(path)
