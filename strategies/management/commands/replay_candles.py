"""`manage.py replay_candles --symbol ETH/BTC --timeframe 1m [--file CSV] [--speed N] [--limit N]`: a replay feed.

See `strategies.replay` for what one step does. Without --file the candles come from the store; with it,
the file is checked first (any bad row: nothing happens) and each candle is stored as it closes.
"""

from __future__ import annotations

import itertools
import time
from datetime import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.utils.dateparse import parse_datetime

from exchanges.base import ms_to_datetime
from strategies.candles import candles_read_csv, timeframe_delta
from strategies.replay import Dispatch, ProgressBar, replay_pairs, replay_step
from strategies.selectors import candle_rows_read, candles_count


def _when(text: str) -> datetime:
    if text.isdigit():
        return ms_to_datetime(int(text))
    value = parse_datetime(text)
    if value is None or value.tzinfo is None:
        raise CommandError(f"--since {text!r}: give epoch ms or an ISO 8601 time with a zone")
    return value


class Command(BaseCommand):
    help = ("Replay candles on an accelerated clock: each candle closes, the next one's open becomes the price, "
            "and the market's active strategies evaluate the closed candle (as Celery tasks unless --inline).")

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--symbol", required=True)
        parser.add_argument("--timeframe", required=True)
        parser.add_argument("--venue", default="demo",
                            help="candle-store venue key (default demo: what paper accounts on the demo feed read)")
        parser.add_argument("--file", help="replay this CSV (stored as it plays) instead of the store")
        parser.add_argument("--since", help="first candle (epoch ms or ISO 8601), store replays only")
        parser.add_argument("--speed", type=float, default=1.0, help="candles per second (0: as fast as possible)")
        parser.add_argument("--limit", type=int, default=0, help="replay at most this many candles (0: all)")
        parser.add_argument("--inline", action="store_true",
                            help="evaluate and fill in this process (no worker needed) instead of queuing tasks")
        parser.add_argument("--monitor", action="store_true", help="run the positions monitor after each candle")

    def handle(self, *args: Any, **options: Any) -> None:
        venue, symbol, timeframe = options["venue"], options["symbol"], options["timeframe"]
        try:
            timeframe_delta(timeframe)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        limit = options["limit"] or None
        if options["file"]:
            parsed = candles_read_csv(options["file"], form="rows", timeframe=timeframe)
            if parsed.errors:
                for error in parsed.errors[:50]:
                    self.stderr.write(str(error))
                raise CommandError(f"{len(parsed.errors)} bad row(s) in {options['file']}; nothing replayed")
            rows = parsed.rows[:limit + 1] if limit else parsed.rows
            total = min(limit, len(rows)) if limit else len(rows)
            source: Any = iter(rows)
        else:
            since = _when(options["since"]) if options["since"] else None
            source = candle_rows_read(venue, symbol, timeframe, since=since, limit=limit + 1 if limit else None)
            stored = candles_count(venue, symbol, timeframe, since=since)
            total = min(limit, stored) if limit else stored
        dispatch = Dispatch.INLINE if options["inline"] else Dispatch.TASKS
        pause = 1 / options["speed"] if options["speed"] > 0 else 0.0
        bar = ProgressBar(self.stderr, "replaying")
        steps = signals = 0
        started = time.monotonic()
        pairs = replay_pairs(source)
        for candle, following in itertools.islice(pairs, limit):
            result = replay_step(venue=venue, symbol=symbol, timeframe=timeframe, candle=candle, next_candle=following,
                                 store=bool(options["file"]), dispatch=dispatch, monitor=options["monitor"])
            steps += 1
            signals += len(result.signal_ids)
            if total:
                bar(steps, total)
            if pause:
                # An accelerated clock: step k starts k/speed seconds after the first, whatever a step took.
                time.sleep(max(0.0, started + steps * pause - time.monotonic()))
        self.stdout.write(f"replayed {steps} candle(s) of {venue} {symbol} {timeframe}"
                          + (f", {signals} signal(s)" if dispatch is Dispatch.INLINE else ", evaluations queued"))
