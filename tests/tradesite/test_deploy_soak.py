"""The soak command, short (`pytest -m soak`): the platform under load reports memory, CPU, queues, latency."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.soak


def test_short_soak_reports_figures_and_fills_every_alert(tmp_path: Path) -> None:
    name = f"tradesite_soak_{uuid.uuid4().hex[:8]}"
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    env = {**os.environ, "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{name}",
           "REDIS_KEY_PREFIX": f"soak-{uuid.uuid4().hex[:8]}:", "TRADESITE_VAR_DIR": str(tmp_path / "var")}
    out = tmp_path / "soak.json"
    try:
        result = subprocess.run([sys.executable, "manage.py", "soak", "--minutes", "0.75", "--sample", "10",
                                 "--json", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    finally:
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
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
