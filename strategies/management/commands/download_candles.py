"""`manage.py download_candles --venue hyperliquid --symbol BTC --timeframe 1h --since 2024-01-01 [--until ...]
[--network mainnet|testnet]`: a market's closed candles from the venue's public data into the store, resumably."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.utils.dateparse import parse_date, parse_datetime

from strategies.candles import timeframe_delta
from strategies.download import NETWORKS, DownloadError, candles_download, history_start_note
from strategies.replay import ProgressBar


def _instant(text: str, name: str) -> datetime:
    """A date (2024-01-01: its midnight) or a date and time, UTC unless it says otherwise."""
    try:
        value = parse_datetime(text)
        if value is None:
            day = parse_date(text)
            value = None if day is None else datetime(day.year, day.month, day.day, tzinfo=UTC)
    except ValueError:
        value = None
    if value is None:
        raise CommandError(f"--{name}: a date such as 2024-01-01 or a time such as 2024-01-01T12:00, not {text!r}")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Command(BaseCommand):
    help = ("Download a market's candles from a venue's public market data (no credentials) into the candle store: "
            "closed candles only, page by page within the venue's request budget. A rerun resumes after the candles "
            "already stored; nothing is stored twice, and a candle that differs from a stored one stops the run.")

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--venue", required=True, help="hyperliquid or coinbase")
        parser.add_argument("--symbol", required=True,
                            help="the venue's market (BTC/USDC:USDC, BTC/USD), a product id (BTC-USD) or a base asset "
                                 "naming one market (BTC on Hyperliquid)")
        parser.add_argument("--timeframe", required=True, help="e.g. 1m, 15m, 1h, 1d (the venue's own)")
        parser.add_argument("--since", help="first candle's day or time, UTC (default: the last 5000 candles)")
        parser.add_argument("--until", help="candles opening before this day or time, UTC (default: now)")
        parser.add_argument("--network", default="mainnet", choices=NETWORKS)
        parser.add_argument("--quiet-progress", action="store_true", help="no progress bar on stderr")

    def handle(self, *args: Any, **options: Any) -> None:
        since = _instant(options["since"], "since") if options["since"] else None
        until = _instant(options["until"], "until") if options["until"] else None
        bar = None if options["quiet_progress"] else ProgressBar(self.stderr, "candles")
        try:
            result = candles_download(venue=options["venue"], symbol=options["symbol"],
                                      timeframe=options["timeframe"], since=since, until=until,
                                      network=options["network"], by="download_candles", progress=bar)
        except ValidationError as exc:
            problems = [f"--{field}: {m}" for field, messages in exc.message_dict.items() for m in messages]
            raise CommandError("; ".join(problems)) from exc
        except DownloadError as exc:
            if bar is not None:
                self.stderr.write("")
            raise CommandError(f"{exc}; {exc.stored} new candle(s) were stored before it: run the same command "
                               "again to resume") from exc
        walk = result.walk
        note = history_start_note(result, timeframe_delta(result.timeframe))
        if note:
            self.stderr.write(note)
        span = (f", last {walk.last:%Y-%m-%d %H:%M} UTC" if walk.last else "")
        self.stdout.write(f"downloaded {walk.received} closed candle(s) of {result.venue} {result.symbol} "
                          f"{result.timeframe} in {walk.requests} request(s): {walk.stored} new, "
                          f"{walk.received - walk.stored} already stored"
                          f"{', resumed after the stored ones' if walk.resumed else ''}{span}"
                          f"{f' (stored under {result.store})' if result.store != result.venue else ''}")
        if walk.gaps:
            self.stdout.write(f"{walk.gaps} candle slot(s) had no candle at the venue (no trades): left as gaps")
