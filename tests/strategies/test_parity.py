"""Paper vs backtest: the same candles through the paper engine (real worker) and the backtester, trade for trade."""

from __future__ import annotations

import io
import json
import re
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from strategies.models import Candle, StrategyEvaluation
from strategies.parity import ParityReport, TradeRow, report_lines, trades_diff
from tests.conftest import WorkerGroup
from trading.models import Fill, MarketPrice, Signal, Strategy, VenueAccount

DATA = Path(__file__).resolve().parents[2] / "data" / "ETH_BTC-1m.csv"
# RSI(7) crossing 25 / 75: 8 round trips in the 2,000 candles from row 4,800 (which span the file's one gap).
PARAMS = {"period": 7, "oversold": 25, "overbought": 75}


def _compare(*extra: str) -> str:
    out = io.StringIO()
    call_command("compare_paper_backtest", "--strategy-kind", "rsi", "--params", json.dumps(PARAMS), "--file",
                 str(DATA), "--symbol", "ETH/BTC", "--slippage-bps", "5", *extra, stdout=out, stderr=io.StringIO())
    return out.getvalue()


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_paper_trading_through_a_worker_matches_the_backtest_trade_for_trade(workers: WorkerGroup) -> None:
    workers.start()
    text = _compare("--start", "4800", "--limit", "2000", "--workers")

    assert text.splitlines()[-1] == "differences: 0", text
    summary = re.search(r"candles: (\d+)\s+signals: (\d+)\s+trades compared: (\d+)", text)
    assert summary is not None, text
    candles, signals, compared = map(int, summary.groups())
    assert candles == 2000
    assert compared >= 5
    # The paper side really traded: every strategy signal settled by the worker, every fill in the books.
    strategy = Strategy.objects.get(slug__startswith="parity-")
    assert Signal.objects.filter(strategy=strategy).count() == signals
    assert set(Signal.objects.filter(strategy=strategy).values_list("status", flat=True)) == {"executed"}
    assert Fill.objects.filter(strategy=strategy).count() >= 2 * compared - 1
    assert StrategyEvaluation.objects.filter(strategy=strategy).count() == 1999  # all but the last candle
    assert "trading.tasks.signal_process" in workers.logs()


@pytest.mark.django_db(transaction=True)
def test_inline_comparison_agrees_and_leaves_nothing_behind() -> None:
    text = _compare("--limit", "400")
    assert text.splitlines()[-1] == "differences: 0", text
    assert "trades compared: 0" not in text
    assert not VenueAccount.objects.exists() and not Strategy.objects.exists()
    assert not Candle.objects.exists() and not MarketPrice.objects.exists()


def _trade(**overrides: object) -> TradeRow:
    values: dict[str, object] = dict(entry_time=60_000, exit_time=180_000, side="long", quantity=Decimal("1"),
                                     entry_price=Decimal("0.09"), exit_price=Decimal("0.091"),
                                     fees=Decimal("0.00009050"), pnl=Decimal("0.0009095"), exit_reason="signal")
    values.update(overrides)
    return TradeRow(**values)  # type: ignore[arg-type]


def test_trades_diff_names_each_differing_field_and_unmatched_trades() -> None:
    same = _trade()
    assert trades_diff([same, _trade(entry_time=240_000)], [_trade(quantity=Decimal("1.000")),
                                                           _trade(entry_time=240_000)]) == []
    differences = trades_diff([same, _trade(exit_price=Decimal("0.0911"), pnl=Decimal("0.001")), same],
                              [same, _trade()])
    assert [(d.trade, d.field) for d in differences] == [(2, "exit_price"), (2, "pnl"), (3, "trade")]
    # A trade the backtest closes at the end of the data is compared on its entry with the open paper trade.
    still_open = _trade(exit_time=None, exit_price=None, pnl=None, fees=Decimal("0.000045"), exit_reason="open")
    assert trades_diff([still_open], [_trade(exit_reason="end")]) == []
    report = ParityReport(1, 3, [same], [same, _trade()], differences=trades_diff([same], [same, _trade()]))
    assert report_lines(report)[-1] == "differences: 1"


@pytest.mark.django_db
def test_bad_params_are_refused_by_field() -> None:
    with pytest.raises(CommandError, match="params.period"):
        call_command("compare_paper_backtest", "--strategy-kind", "rsi", "--params", '{"period": 1}', "--file",
                     str(DATA), "--symbol", "ETH/BTC", "--limit", "50", stdout=io.StringIO(), stderr=io.StringIO())
