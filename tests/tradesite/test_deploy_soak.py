"""The soak command: its indicator replay (default suite, fast) and a short soak (`pytest -m soak`): the platform
under load reports memory, CPU, queues, latency and strategy evaluations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import ROOT, scratch_database
from trading.management.commands import soak
from trading.management.commands.soak import replay_rows


def test_replay_plays_forwards_then_backwards_with_no_price_jump() -> None:
    # Three candles whose opens continue the previous close, as a gap-free file's do.
    rows = [["0", "1.0", "1.3", "0.9", "1.2", "10"], ["300000", "1.2", "1.5", "1.1", "1.4", "11"],
            ["600000", "1.4", "1.4", "1.0", "1.1", "12"]]
    played = replay_rows(rows, count=14, first_ms=1_000_000_200_000)
    assert [int(r[0]) for r in played] == [1_000_000_200_000 + i * 300_000 for i in range(14)]
    assert [r[1:] for r in played[:3]] == [r[1:] for r in rows]  # the file as it is first
    assert played[3][1:] == ["1.1", "1.4", "1.0", "1.4", "12"]  # then the last candle backwards
    assert [r[1:] for r in played[6:9]] == [r[1:] for r in rows]  # and forwards again
    for previous, candle in zip(played, played[1:]):
        assert candle[1] == previous[4]  # each open is the previous close: the price never jumps
        assert float(candle[2]) >= max(float(candle[1]), float(candle[4])) >= min(
            float(candle[1]), float(candle[4])) >= float(candle[3])


def test_a_second_soak_on_the_same_database_evaluates_bars_of_its_own(db, settings, tmp_path: Path) -> None:
    """The RSI strategy evaluates each bar once: a rerun must replay new bars, or it would evaluate nothing."""
    from django.core.management import call_command

    from strategies.candles import candles_read_csv
    from strategies.models import StrategyEvaluation

    settings.VAR_DIR = tmp_path
    command = soak.Command()
    strategy = command._indicator_strategy()
    stamps = []
    for run in range(2):
        path = command._indicator_candles(seconds=60, interval=1)
        parsed = candles_read_csv(path, form="rows", timeframe="5m")
        assert not parsed.errors and len(parsed.rows) == 360  # the run and 5 minutes of start-up, a candle a second
        stamps.append(parsed.rows[0].open_time)
        before = StrategyEvaluation.objects.filter(strategy=strategy).count()
        call_command("replay_candles", symbol=soak.INDICATOR_SYMBOL, timeframe="5m", file=str(path), speed=0,
                     limit=40, inline=True)
        # 40 candles closed and stored, each evaluated once (none of them twice, none of them skipped).
        assert StrategyEvaluation.objects.filter(strategy=strategy).count() - before == 40, run
    # The second run starts right after the last bar the first one stored.
    assert (stamps[1] - stamps[0]).total_seconds() == 40 * 300


@pytest.mark.soak
def test_short_soak_reports_figures_and_fills_every_alert(tmp_path: Path) -> None:
    with scratch_database("tradesite_soak") as url:
        env = {**os.environ, "DATABASE_URL": url, "REDIS_KEY_PREFIX": f"soak-{uuid.uuid4().hex[:8]}:",
               "TRADESITE_VAR_DIR": str(tmp_path / "var")}
        out = tmp_path / "soak.json"
        result = subprocess.run([sys.executable, "manage.py", "soak", "--minutes", "0.75", "--sample", "10",
                                 "--json", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert len(report["windows"]) >= 4
    assert set(report["rss_last_mib"]) == {"web", "worker-execution", "worker-monitoring", "beat", "feed", "replay"}
    assert all(v > 10 for v in report["rss_last_mib"].values())
    assert report["webhook_answers"].get("202", 0) >= 60 and set(report["webhook_answers"]) == {"202"}
    assert report["fill_ms"]["p50"] is not None and report["fill_ms"]["p99"] >= report["fill_ms"]["p50"]
    assert "signal->fill ms" in result.stdout and "MiB/h" in result.stdout
    # The replayed XRP candles were evaluated by the RSI strategy on the strategies queue, one per candle.
    assert report["strategy_evaluations"] >= 20, report["strategy_evaluations"]
    assert 0 < sum(w["strategy_evaluations"] for w in report["windows"]) <= report["strategy_evaluations"]
    assert set(report["max_queue_depth"]) == {"execution", "strategies", "monitoring"}
