"""The candle store: validated all-or-nothing imports, exact reads, gaps kept, the replay step, the ATR provider."""

from __future__ import annotations

import io
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from exchanges.base import Side, datetime_to_ms, ms_to_datetime
from exchanges.fills import slipped_price
from exchanges.paper import DEFAULT_MARKETS
from strategies import indicators
from strategies.management.commands.import_candles import Command as ImportCommand
from strategies.candles import candles_read_csv
from strategies.models import Candle
from strategies.replay import Dispatch, replay_pairs, replay_step
from strategies.selectors import atr_from_store, candles_closed_after, candles_last_closed, candles_read
from trading.models import AuditEvent, Fill, MarketPrice

pytestmark = pytest.mark.django_db
DATA = Path(__file__).resolve().parents[2] / "data" / "ETH_BTC-1m.csv"
HEADER = "timestamp,open,high,low,close,volume"
ROWS = DATA.read_text().splitlines()[1:]
GAP_ROW = 5784  # the one missing minute of the bundled file is after this row (0-based)


def _write(tmp_path: Path, lines: list[str], name: str = "candles.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join([HEADER, *lines]) + "\n")
    return path


def _import(path: Path, **extra: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("import_candles", str(path), "--symbol", extra.get("symbol", "ETH/BTC"), "--timeframe",
                 extra.get("timeframe", "1m"), "--venue", extra.get("venue", "paper"), stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_good_file_imports_every_row_exactly() -> None:
    out, err = _import(DATA)
    assert "imported 14397 candle(s), 0 already stored" in out
    assert "100% 14397/14397" in err  # the progress bar reached the end
    assert Candle.objects.filter(venue="paper", symbol="ETH/BTC", timeframe="1m").count() == 14397
    first = Candle.objects.order_by("open_time").first()
    assert first is not None
    assert datetime_to_ms(first.open_time) == 1516423980000
    assert (first.open, first.high, first.low, first.close, first.volume) == (
        Decimal("0.08939998"), Decimal("0.08939998"), Decimal("0.08909372"), Decimal("0.08909374"),
        Decimal("81.45320695"))
    assert AuditEvent.objects.filter(action="candles.imported", entity_id="paper:ETH/BTC:1m").count() == 1


def test_bad_rows_are_reported_by_line_number_and_nothing_is_imported(tmp_path: Path) -> None:
    good = ROWS[:6]
    t = [int(r.split(",")[0]) for r in good]
    lines = [
        good[0],
        f"{t[1]},0.0891,0.0890,0.0888,0.0889,10",  # line 3: high below open
        f"{t[2]},nan,0.09,0.08,0.085,10",  # line 4: not finite
        f"{t[3]},0.0891,0.0899,0.0890,0.0889,10",  # line 5: low above close
        f"{t[4]},0.0891,0.0899,0.0880,0.0889,-1",  # line 6: negative volume
        good[5],
        good[4],  # line 8: timestamp goes back
        f"{t[5] + 60000},abc,0.09,0.08,0.085,10",  # line 9: not a number
        f"{t[5] + 120000},0.0891,0.0899,0.0880",  # line 10: missing columns
    ]
    path = _write(tmp_path, lines)
    err = io.StringIO()
    with pytest.raises(CommandError, match="7 bad row"):
        call_command("import_candles", str(path), "--symbol", "ETH/BTC", "--timeframe", "1m", stderr=err)
    report = err.getvalue()
    for line, words in ((3, "high"), (4, "open 'nan'"), (5, "low"), (6, "volume"), (8, "does not increase"),
                        (9, "open 'abc'"), (10, "expected 6 columns")):
        assert f"line {line}: " in report and words in report.split(f"line {line}: ")[1].splitlines()[0]
    assert "line 2:" not in report and "line 7:" not in report
    assert Candle.objects.count() == 0

    # From the shell the command exits non-zero.
    with pytest.raises(SystemExit) as exited:
        ImportCommand(stderr=io.StringIO()).run_from_argv(
            ["manage.py", "import_candles", str(path), "--symbol", "ETH/BTC", "--timeframe", "1m"])
    assert exited.value.code == 1


def test_reimport_is_idempotent_and_a_differing_candle_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, ROWS[:500])
    assert "imported 500 candle(s), 0 already stored" in _import(path)[0]
    assert "imported 0 candle(s), 500 already stored" in _import(path)[0]
    overlapping = _write(tmp_path, ROWS[400:600], "overlap.csv")
    assert "imported 100 candle(s), 100 already stored" in _import(overlapping)[0]
    assert Candle.objects.count() == 600

    changed = ROWS[590:610]
    stamp, o, h, lo, c, v = changed[3].split(",")
    changed[3] = ",".join([stamp, o, h, lo, c, str(Decimal(v) + 1)])  # line 5 of the new file
    err = io.StringIO()
    with pytest.raises(CommandError, match="1 row"):
        call_command("import_candles", str(_write(tmp_path, changed, "changed.csv")), "--symbol", "ETH/BTC",
                     "--timeframe", "1m", stderr=err)
    assert "line 5: differs from the stored candle" in err.getvalue()
    assert Candle.objects.count() == 600  # the 10 new candles of that file were not imported either


def test_timestamps_off_the_timeframe_grid_are_bad_rows(tmp_path: Path) -> None:
    parsed = candles_read_csv(_write(tmp_path, ROWS[:3]), form="rows", timeframe="5m")  # 04:53, 04:54, 04:55
    assert [e.line for e in parsed.errors] == [2, 3]
    assert all("not on the 5m grid" in e.message for e in parsed.errors)
    assert parsed.lines == [4]


def test_gaps_are_kept_without_forward_fill() -> None:
    _import(DATA)
    gap_open = ms_to_datetime(int(ROWS[GAP_ROW + 1].split(",")[0]))
    candles = candles_read("paper", "ETH/BTC", "1m", until=gap_open, limit=3)
    assert len(candles) == 3
    assert list(np.diff(candles.time)) == [60_000, 120_000]
    assert int(candles.time[-1]) == datetime_to_ms(gap_open)
    assert candles.close[-2] == float(ROWS[GAP_ROW].split(",")[4])  # the bar before the hole, not a filled one


def test_candles_read_converts_exactly_and_honours_until_and_limit() -> None:
    _import(DATA)
    everything = candles_read("paper", "ETH/BTC", "1m")
    expected = np.loadtxt(DATA, delimiter=",", skiprows=1)
    assert len(everything) == 14397
    assert np.array_equal(everything.time, expected[:, 0].astype(np.int64))
    for i, name in enumerate(("open", "high", "low", "close", "volume"), start=1):
        assert np.array_equal(getattr(everything, name), expected[:, i]), name  # float(str) of the CSV digits
    until = ms_to_datetime(int(everything.time[99]))
    head = candles_read("paper", "ETH/BTC", "1m", until=until, limit=10)
    assert np.array_equal(head.time, everything.time[90:100])
    assert len(candles_read("paper", "ETH/BTC", "1m", until=until)) == 100


def test_last_closed_candle_depends_on_now(tmp_path: Path) -> None:
    _import(_write(tmp_path, ROWS[:5]))
    opens = [ms_to_datetime(int(r.split(",")[0])) for r in ROWS[:5]]
    minute = timedelta(minutes=1)
    assert candles_last_closed("paper", "ETH/BTC", "1m", now=opens[0]) is None
    assert candles_last_closed("paper", "ETH/BTC", "1m", now=opens[2] + minute - timedelta(seconds=1)) == opens[1]
    assert candles_last_closed("paper", "ETH/BTC", "1m", now=opens[2] + minute) == opens[2]
    assert candles_closed_after("paper", "ETH/BTC", "1m", after=opens[0], now=opens[4], limit=5) == opens[1:4]
    assert candles_closed_after("paper", "ETH/BTC", "1m", after=None, now=opens[4], limit=2) == opens[2:4]


def test_replay_step_closes_the_candle_and_prices_the_next_open(tmp_path: Path) -> None:
    rows = candles_read_csv(_write(tmp_path, ROWS[:3]), form="rows", timeframe="1m").rows
    (first, second), (last, after_last) = list(replay_pairs(rows))[0], list(replay_pairs(rows))[-1]
    result = replay_step(venue="paper", symbol="ETH/BTC", timeframe="1m", candle=first, next_candle=second,
                         store=True)
    assert Candle.objects.get().open_time == first.open_time
    price = MarketPrice.objects.get(symbol="ETH/BTC")
    assert (price.price, price.volume) == (second.open, second.volume)
    assert result.evaluated == 0  # no strategy trades this market

    assert after_last is None
    replay_step(venue="paper", symbol="ETH/BTC", timeframe="1m", candle=last, next_candle=None, store=True)
    assert MarketPrice.objects.get(symbol="ETH/BTC").price == second.open  # nothing after the last candle


def test_a_signal_from_bar_t_fills_at_the_open_of_bar_t_plus_1(make_account, make_strategy) -> None:
    account = make_account(quote_asset="BTC", paper_initial_cash="1", paper_slippage_bps="5")
    strategy = make_strategy(account, kind="rsi", symbol="ETH/BTC", sizing_mode="quantity", sizing_value="1",
                             params={"period": 7, "oversold": 25, "overbought": 75})
    rows = candles_read_csv(DATA, form="rows", timeframe="1m").rows[:40]
    signal_steps = []
    for candle, following in replay_pairs(rows):
        result = replay_step(venue="demo", symbol="ETH/BTC", timeframe="1m", candle=candle, next_candle=following,
                             store=True, dispatch=Dispatch.INLINE)
        if result.signal_ids:
            signal_steps.append((following, result.signal_ids))
    assert signal_steps, "period 7 RSI crosses 25 within the first 40 bundled candles"
    following, (signal_id,) = signal_steps[0]
    fill = Fill.objects.get(order__signal_id=signal_id)
    market = next(m for m in DEFAULT_MARKETS if m.symbol == "ETH/BTC")
    assert fill.side == "buy"
    assert fill.price == slipped_price(market, Side.BUY, following.open, Decimal("5"))
    assert strategy.evaluations.count() == 39  # every candle but the last, which has no next open


def test_atr_provider_reads_the_store_at_the_last_closed_candle(make_account, make_strategy) -> None:
    _import(DATA, venue="demo")  # the candles of the demo feed, which a paper account prices from by default
    account = make_account(quote_asset="BTC", paper_initial_cash="1")
    strategy = make_strategy(account, kind="rsi", symbol="ETH/BTC", sizing_mode="quantity", sizing_value="1")
    candles = candles_read("demo", "ETH/BTC", "1m")
    now = ms_to_datetime(int(candles.time[999])) + timedelta(minutes=1, seconds=5)  # candle 999 just closed
    expected = indicators.atr(candles.high[:1000], candles.low[:1000], candles.close[:1000], 14)[-1]
    assert atr_from_store(strategy, now) == Decimal(repr(float(expected)))
    behind = ms_to_datetime(int(candles.time[-1])) + timedelta(hours=1)
    assert atr_from_store(strategy, behind) is None  # the store is an hour behind: no stale ATR
    assert atr_from_store(strategy, ms_to_datetime(int(candles.time[5]))) is None  # too few candles


def test_replay_command_from_a_file_stores_and_prices(make_account, make_strategy) -> None:
    account = make_account(quote_asset="BTC", paper_initial_cash="1")
    make_strategy(account, kind="rsi", symbol="ETH/BTC", sizing_mode="quantity", sizing_value="1",
                  params={"period": 7, "oversold": 25, "overbought": 75})
    out = io.StringIO()
    call_command("replay_candles", "--symbol", "ETH/BTC", "--timeframe", "1m", "--file", str(DATA), "--limit", "60",
                 "--speed", "0", "--inline", stdout=out, stderr=io.StringIO())
    assert "replayed 60 candle(s)" in out.getvalue()
    assert Candle.objects.count() == 60
    assert MarketPrice.objects.get(symbol="ETH/BTC").price == Decimal(ROWS[60].split(",")[1])

    # From the store: the next 20 after a given time (the stored ones replay without being stored again).
    out = io.StringIO()
    call_command("replay_candles", "--symbol", "ETH/BTC", "--timeframe", "1m", "--since", ROWS[10].split(",")[0],
                 "--limit", "20", "--speed", "0", "--inline", stdout=out, stderr=io.StringIO())
    assert "replayed 20 candle(s)" in out.getvalue()
    assert MarketPrice.objects.get(symbol="ETH/BTC").price == Decimal(ROWS[30].split(",")[1])


def test_the_engine_takes_atr_exits_from_the_candle_store(make_account, make_strategy, set_price) -> None:
    from exchanges.base import round_up
    from trading.execution import signal_process
    from trading.intake import signal_create

    _import(DATA, venue="demo")
    account = make_account(quote_asset="BTC", paper_initial_cash="1")
    strategy = make_strategy(account, symbol="ETH/BTC", sizing_mode="quantity", sizing_value="1",
                             stop_loss_mode="atr", stop_loss_value="2")
    candles = candles_read("demo", "ETH/BTC", "1m", limit=1000)
    now = ms_to_datetime(int(candles.time[-1])) + timedelta(minutes=1, seconds=10)
    set_price("ETH/BTC", "0.09", at=now)
    signal, _ = signal_create(strategy=strategy, source="manual", idempotency_key="atr-1",
                                     action="open_long", enqueue=False, now=now)
    signal = signal_process(signal_id=signal.pk, now=now)
    assert signal.status == "executed", signal.decision_detail
    atr = Decimal(repr(float(indicators.atr(candles.high, candles.low, candles.close, 14)[-1])))
    assert signal.stop_loss == round_up(Decimal("0.09") - 2 * atr, Decimal("0.00000001"))
