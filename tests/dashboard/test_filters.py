"""The dashboard's template filters (trading/templatetags/dashboard.py)."""

from __future__ import annotations

from datetime import datetime, UTC

import pytest

from trading.templatetags.dashboard import from_ms


@pytest.mark.parametrize(("value", "expected"), [
    (1_512_086_400_000, datetime(2017, 12, 1, tzinfo=UTC)),
    ("1512086400123", datetime(2017, 12, 1, 0, 0, 0, 123_000, tzinfo=UTC)),
    (-1_000, datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC)),
])
def test_from_ms_reads_epoch_milliseconds_as_aware_utc(value: object, expected: datetime) -> None:
    assert from_ms(value) == expected


@pytest.mark.parametrize("value", [None, "", "soon", "1.5", 10**20])
def test_from_ms_gives_none_for_what_is_not_a_time(value: object) -> None:
    assert from_ms(value) is None
