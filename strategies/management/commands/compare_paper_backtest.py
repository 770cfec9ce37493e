"""`manage.py compare_paper_backtest --strategy-kind rsi --params JSON --file CSV --symbol ETH/BTC`: parity check.

Replays the file's candles through a fresh paper account and strategy and backtests the same candles, prints
both trade lists, every difference and `differences: N`; exits 1 when N > 0. By default everything runs in
this process inside one transaction that is rolled back at the end (no account, strategy, candle or price
is left behind; the market's MarketPrice row stays locked meanwhile). With --workers the signals are
processed by running Celery workers instead, and the rows stay (use a scratch database).
"""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from strategies.candles import candles_read_csv, timeframe_delta
from strategies.replay import ProgressBar
from strategies.parity import ParityError, ParityReport, paper_backtest_compare, report_lines


def _decimal(name: str, text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise CommandError(f"--{name} {text!r} is not a number") from None
    if not value.is_finite() or value < 0:
        raise CommandError(f"--{name} must be a finite number >= 0")
    return value


class Command(BaseCommand):
    help = "Replay candles through the paper engine and the backtester with one strategy; diff their trades."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--strategy-kind", required=True, help="a strategy rule, e.g. rsi, macd, bollinger")
        parser.add_argument("--params", default="{}", help="the rule's params as JSON")
        parser.add_argument("--file", required=True, help="timestamp,open,high,low,close,volume CSV")
        parser.add_argument("--symbol", required=True, help="a paper market, e.g. ETH/BTC")
        parser.add_argument("--timeframe", default="1m")
        parser.add_argument("--venue", default="demo",
                            help="candle-store venue key (the demo feed's: what the parity account's strategy reads)")
        parser.add_argument("--start", type=int, default=0, help="skip this many candles of the file")
        parser.add_argument("--limit", type=int, default=0, help="replay at most this many candles (0: all)")
        parser.add_argument("--quantity", default="1", help="base quantity per entry (quantity sizing)")
        parser.add_argument("--cash", default="1", help="the paper account's starting cash, in the market's quote")
        parser.add_argument("--slippage-bps", default="5")
        parser.add_argument("--workers", action="store_true",
                            help="let running Celery workers process the signals (rows are kept)")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            params = json.loads(options["params"])
        except json.JSONDecodeError as exc:
            raise CommandError(f"--params is not JSON: {exc}") from exc
        if not isinstance(params, dict):
            raise CommandError("--params must be a JSON object")
        try:
            timeframe_delta(options["timeframe"])
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        parsed = candles_read_csv(options["file"], form="rows", timeframe=options["timeframe"])
        if parsed.errors:
            for error in parsed.errors[:50]:
                self.stderr.write(str(error))
            raise CommandError(f"{len(parsed.errors)} bad row(s) in {options['file']}")
        rows, lines = parsed.rows[options["start"]:], parsed.lines[options["start"]:]
        if options["limit"]:
            rows, lines = rows[:options["limit"]], lines[:options["limit"]]
        kwargs = dict(kind=options["strategy_kind"], params=params, rows=rows, lines=lines, symbol=options["symbol"],
                      timeframe=options["timeframe"], venue=options["venue"],
                      cash=_decimal("cash", options["cash"]), slippage_bps=_decimal("slippage-bps",
                                                                                   options["slippage_bps"]),
                      sizing_value=_decimal("quantity", options["quantity"]), workers=options["workers"],
                      progress=ProgressBar(self.stderr, "replaying"))
        try:
            if options["workers"]:
                report = paper_backtest_compare(**kwargs)
            else:
                report = self._rolled_back(kwargs)
        except ParityError as exc:
            raise CommandError(str(exc)) from exc
        except Exception as exc:
            from django.core.exceptions import ValidationError

            if isinstance(exc, ValidationError):  # bad kind or params: named per field by the services
                raise CommandError(f"invalid strategy: {exc.message_dict}") from exc
            raise
        for line in report_lines(report):
            self.stdout.write(line)
        if report.differences:
            raise CommandError(f"paper and backtest differ in {len(report.differences)} place(s)")

    def _rolled_back(self, kwargs: dict[str, Any]) -> ParityReport:
        with transaction.atomic():
            report = paper_backtest_compare(clear_store=True, **kwargs)
            transaction.set_rollback(True)
        return report
