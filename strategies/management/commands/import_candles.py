"""`manage.py import_candles FILE.csv --symbol ETH/BTC --timeframe 1m [--venue paper]`: validated, all or nothing."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from strategies.candles import candles_read_csv, timeframe_delta
from strategies.replay import ProgressBar
from strategies.services import CandleImportError, candles_import

MAX_LISTED = 50


class Command(BaseCommand):
    help = ("Import a timestamp,open,high,low,close,volume CSV (epoch ms UTC, candle open) into the candle store. "
            "Every row is checked first; any bad row (listed by line number) means nothing is imported. "
            "Re-importing the same candles changes nothing; a candle that differs from the stored one is refused.")

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("file")
        parser.add_argument("--symbol", required=True, help="market symbol, e.g. ETH/BTC")
        parser.add_argument("--timeframe", required=True, help="e.g. 1m, 5m, 1h")
        parser.add_argument("--venue", default="paper", help="whose market data this is (default: paper)")
        parser.add_argument("--quiet-progress", action="store_true", help="no progress bar on stderr")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            timeframe_delta(options["timeframe"])
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        bar = (lambda label: None) if options["quiet_progress"] else (lambda label: ProgressBar(self.stderr, label))
        try:
            parsed = candles_read_csv(options["file"], form="rows", timeframe=options["timeframe"],
                                      progress=bar("checking"))
        except OSError as exc:
            raise CommandError(f"cannot read {options['file']}: {exc}") from exc
        if parsed.errors:
            self._fail(parsed.errors, what="bad row(s)")
        try:
            result = candles_import(venue=options["venue"], symbol=options["symbol"], timeframe=options["timeframe"],
                                    rows=parsed.rows, lines=parsed.lines, by="import_candles",
                                    progress=bar("importing"))
        except CandleImportError as exc:
            self._fail(exc.errors, what="row(s) that differ from stored candles")
        self.stdout.write(f"imported {result.inserted} candle(s), {result.unchanged} already stored "
                          f"({options['venue']} {options['symbol']} {options['timeframe']})")

    def _fail(self, errors: list[Any], *, what: str) -> None:
        for error in errors[:MAX_LISTED]:
            self.stderr.write(str(error))
        if len(errors) > MAX_LISTED:
            self.stderr.write(f"... and {len(errors) - MAX_LISTED} more")
        raise CommandError(f"{len(errors)} {what}; nothing imported")
