"""Candles built from prices (`PriceCandles`, the demo feed's) and from shorter candles (`candles_resample`): pure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from exchanges.base import VenueCandle
from strategies.candles import PriceCandles, candles_read_csv, candles_resample, grid_floor

DATA = Path(__file__).resolve().parents[2] / "data" / "ETH_BTC-1m.csv"
GAP_ROW = 5784  # the bundled file's one missing minute follows this row
T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def test_resampled_candles_take_the_first_open_the_extremes_the_last_close_and_the_summed_volume() -> None:
    rows = candles_read_csv(DATA, form="rows", timeframe="1m").rows[GAP_ROW - 40:GAP_ROW + 40]
    fives = candles_resample(rows, "5m")
    assert [c.open_time for c in fives] == sorted({grid_floor(r.open_time, "5m") for r in rows})
    for candle in fives:
        held = [r for r in rows if grid_floor(r.open_time, "5m") == candle.open_time]
        assert candle == VenueCandle(candle.open_time, held[0].open, max(r.high for r in held),
                                     min(r.low for r in held), held[-1].close, sum(r.volume for r in held))
    held = [sum(1 for r in rows if grid_floor(r.open_time, "5m") == c.open_time) for c in fives]
    assert held[1:-1].count(4) == 1 and set(held[1:-1]) == {4, 5}  # the missing minute's bucket: from the four
    # Built from 5m candles or straight from the 1m ones, an hour is the same candle.
    whole = [r for r in rows if grid_floor(r.open_time, "1h") == grid_floor(rows[40].open_time, "1h")]
    assert candles_resample(fives, "1h")[1] == candles_resample(whole, "1h")[0]


def test_price_candles_hand_over_a_candle_only_once_its_bucket_has_ended() -> None:
    candles = PriceCandles("1m")
    assert candles.close(T0 + timedelta(minutes=5)) is None  # nothing built yet
    for second, price, volume in ((5, "10", "1"), (20, "12", "2"), (40, "9", "0.5"), (59, "11", "1")):
        assert candles.add(T0 + timedelta(seconds=second), Decimal(price), Decimal(volume)) is None
    assert candles.close(T0 + timedelta(seconds=59, microseconds=999_999)) is None  # the minute is not over
    first = candles.close(T0 + timedelta(minutes=1))
    assert first == VenueCandle(T0, Decimal("10"), Decimal("12"), Decimal("9"), Decimal("11"), Decimal("4.5"))
    assert candles.close(T0 + timedelta(minutes=3)) is None  # handed over once

    candles.add(T0 + timedelta(minutes=2, seconds=30), Decimal("13"), Decimal("1"))
    # A price of a later bucket closes the one being built (a feed that paused for minutes leaves a gap).
    second = candles.add(T0 + timedelta(minutes=5, seconds=1), Decimal("14"), Decimal("1"))
    assert second == VenueCandle(T0 + timedelta(minutes=2), *(Decimal("13"),) * 4, Decimal("1"))
