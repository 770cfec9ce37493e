"""`manage.py demo_feed`: the demo feed. The bundled candles replayed as the demo's prices, the candles of those prices
stored as they close, and a demo signal now and then.

* Prices: one CSV row every --interval seconds, its close published as the price of --symbol on the `demo` price
  feed (stamped with the wall clock), the file looping forever.
* Candles: the prices it publishes are built into wall-clock 1m candles (open, high, low, close of the prices
  published in the minute; the volume of their CSV rows), each stored under the candle venue `demo` once its minute
  has closed; the longer timeframes (every one a strategy may choose, 3m to 1d) are built from the stored 1m candles
  once their bucket has closed. Each closed candle is handed to `strategies.services.candles_closed`: the
  strategies reading it (paper accounts on the demo feed) evaluate it at once.
* History: at start it stores what the feed would have built had it been running for the last --history bars of
  its longest timeframe up to 1h (300 hours: 75 4h bars, 12 daily ones), the rows before the first one played, the
  file looping as the feed does, ending at the last closed minute. An indicator strategy created now has its warm-up
  at once, on history continuous with the prices that follow; a restart keeps every candle already stored and fills
  only the minutes it was away.
* Demo signals: every --signal-every rows one of the seeded `demo-*` webhook strategies opens or closes.

The bundled 2018 candles that the demo backtests use stay under the candle venue `paper`, apart from these.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from exchanges.base import VenueCandle
from strategies import services
from strategies.candles import PriceCandles, candles_read_csv, grid_floor, timeframe_delta
from trading.intake import signal_create
from trading.models import PriceFeed, Strategy, VenueAccount
from trading.prices import accounts_priced_by, price_set
from trading.services import TIMEFRAMES
from trading.tasks import price_arrived

log = logging.getLogger("strategies.demo_feed")

VENUE = PriceFeed.DEMO  # the price feed and the candle venue key of everything this feed writes
HISTORY_BARS = 300  # more than the built-in rules' warm-up with their defaults (MACD: 35)
MAX_HISTORY_MINUTES = 50_000  # about 35 days of 1m candles, written at start: more is a typo, not a demo
MINUTE = timedelta(minutes=1)
HISTORY_UP_TO = timedelta(hours=1)  # --history counts bars of the longest timeframe up to this one


class Clock(Protocol):
    """What the feed needs of time (tests pass a fake that moves on when slept)."""

    def now(self) -> datetime: ...

    def sleep(self, seconds: float) -> None: ...


class WallClock:
    """The real clock."""

    def now(self) -> datetime:
        return timezone.now()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def history_candles(rows: Sequence[VenueCandle], *, end: datetime, minutes: int,
                    interval: float) -> list[VenueCandle]:
    """The 1m candles of [end - minutes, end) the feed would have built had it been running: rows[-1] published just
    before `end`, each row before it `interval` seconds earlier, the file looping (oldest first; a minute in which no
    row falls has no candle)."""
    step = max(1, round(interval * 1000))  # ms between two rows
    count = len(rows)
    closes = [r.close for r in rows]
    volumes = [r.volume for r in rows]
    out = []
    for k in range(minutes, 0, -1):  # minute [end - k, end - k + 1), oldest first
        # Row s steps back (s >= 1) is published at end - s * step: those that fall inside this minute.
        first, last = ((k - 1) * 60_000) // step + 1, (k * 60_000) // step
        if first > last:
            continue
        picked = [(-s) % count for s in range(last, first - 1, -1)]
        prices = [closes[i] for i in picked]
        out.append(VenueCandle(end - k * MINUTE, prices[0], max(prices), min(prices), prices[-1],
                               sum((volumes[i] for i in picked), Decimal(0))))
    return out


@dataclass
class DemoFeed:
    """The feed's state between two rows: the minute being built and how far each longer timeframe is built."""

    rows: Sequence[VenueCandle]
    symbol: str
    interval: float
    clock: Clock
    timeframes: tuple[str, ...] = TIMEFRAMES  # 1m first
    history: int = HISTORY_BARS
    minute: PriceCandles = field(default_factory=lambda: PriceCandles("1m"))
    built: dict[str, datetime] = field(default_factory=dict)  # timeframe -> every bucket before it is built
    warned: set[int] = field(default_factory=set)

    @property
    def longer(self) -> list[str]:
        return [t for t in self.timeframes if t != "1m"]

    def history_store(self) -> int:
        """Store the history candles of every timeframe, ending at the last closed minute; return the new 1m ones."""
        end = grid_floor(self.clock.now(), "1m")
        # From the longest timeframe's grid: every bucket of the history is whole.
        start = grid_floor(end - history_span(self.timeframes, self.history), max(self.timeframes, key=timeframe_delta))
        rows = history_candles(self.rows, end=end, minutes=(end - start) // MINUTE, interval=self.interval)
        with transaction.atomic():
            new = services.candles_append(venue=VENUE, symbol=self.symbol, timeframe="1m", rows=rows)
            services.candles_build(venue=VENUE, symbol=self.symbol, timeframes=self.longer, since=start, until=end)
        self.built = {t: grid_floor(end, t) for t in self.longer}
        return len(new)

    def step(self, row: VenueCandle) -> VenueCandle | None:
        """Publish one row's close as the price now; return the 1m candle that closed first, if any."""
        now = self.clock.now()
        closed = self.minute.close(now)
        if closed is not None:
            self.candle_closed(closed)
        price_set(self.symbol, row.close, volume=row.volume, time=now)
        price_arrived(self.symbol, row.close)  # a stop this price crosses leaves now, not at the next tick
        self.minute.add(now, row.close, row.volume)
        return closed

    def candle_closed(self, candle: VenueCandle) -> None:
        """Store a closed 1m candle and every longer candle it closes; the strategies reading them evaluate them."""
        end = candle.open_time + MINUTE
        with transaction.atomic():
            closed = {"1m": services.candles_append(venue=VENUE, symbol=self.symbol, timeframe="1m", rows=[candle])}
            for timeframe in self.longer:
                until = grid_floor(end, timeframe)
                if until > self.built[timeframe]:
                    closed |= services.candles_build(venue=VENUE, symbol=self.symbol, timeframes=[timeframe],
                                                     since=self.built[timeframe], until=until)
                    self.built[timeframe] = until
            for timeframe, open_times in closed.items():
                services.candles_closed(venue=VENUE, symbol=self.symbol, timeframe=timeframe, open_times=open_times)
        self.unbuilt_warn()

    def unbuilt_warn(self) -> None:
        """Log once per strategy an indicator strategy on the demo feed that reads candles this feed does not build."""
        from strategies.library import RULES

        accounts = VenueAccount.objects.filter(accounts_priced_by(VENUE)).values("pk")
        unbuilt = (Strategy.objects.filter(status=Strategy.Status.ACTIVE, kind__in=list(RULES), account__in=accounts)
                   .exclude(symbol=self.symbol, timeframe__in=self.timeframes).exclude(pk__in=self.warned)
                   .values_list("pk", "slug", "symbol", "timeframe"))
        for pk, slug, symbol, timeframe in unbuilt:
            self.warned.add(pk)
            log.warning("strategy %s reads %s %s candles of the demo feed, which builds %s %s only: it is not "
                        "evaluated", slug, symbol, timeframe, self.symbol, ", ".join(self.timeframes))


def demo_signal(strategies: list[Strategy], row: VenueCandle, *, count: int, every: int,
                enqueue: bool = True) -> int | None:
    """Every `every` candles, one demo strategy in turn opens (long or short, by its slug) or closes; return the
    stored signal's id (None when this candle sends none)."""
    if not (every and strategies and count % every == 0):
        return None
    strategy = strategies[(count // every) % len(strategies)]
    opening = (count // every // len(strategies)) % 2 == 0
    action = ("open_short" if strategy.slug.endswith("short") else "open_long") if opening else "close"
    stamp = row.open_time.isoformat()
    signal, _ = signal_create(strategy=strategy, source="manual", action=action,
                              idempotency_key=f"demo:{strategy.slug}:{stamp}:{count}",
                              payload={"demo": True, "candle": stamp}, enqueue=enqueue)
    return signal.pk


def history_span(timeframes: Sequence[str], bars: int) -> timedelta:
    """How far back the history goes: `bars` of the longest of `timeframes` up to HISTORY_UP_TO."""
    return bars * max(d for d in map(timeframe_delta, timeframes) if d <= HISTORY_UP_TO)


def timeframes_parse(text: str) -> tuple[str, ...]:
    """The --timeframes list: 1m first, each a whole number of minutes (CommandError otherwise)."""
    wanted = [t.strip() for t in text.split(",") if t.strip()]
    for timeframe in wanted:
        try:
            step = timeframe_delta(timeframe)
        except ValueError as exc:
            raise CommandError(f"--timeframes: {exc}") from None
        if step % MINUTE:
            raise CommandError(f"--timeframes: {timeframe} is not a whole number of minutes")
    return tuple(sorted({"1m", *wanted}, key=timeframe_delta))


class Command(BaseCommand):
    help = ("Replay data/ETH_BTC-1m.csv as the demo feed's ETH/BTC price (one candle per --interval seconds), store "
            "the candles of those prices as they close (with history at start), and send demo signals.")

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--file", default=str(settings.BASE_DIR / "data" / "ETH_BTC-1m.csv"))
        parser.add_argument("--symbol", default="ETH/BTC")
        parser.add_argument("--interval", type=float, default=1.0)
        parser.add_argument("--signal-every", type=int, default=20, help="candles between demo signals (0: none)")
        parser.add_argument("--limit", type=int, default=0, help="stop after this many candles (0: loop forever)")
        parser.add_argument("--timeframes", default=",".join(TIMEFRAMES),
                            help="candles to build, comma-separated (1m always; longer ones from it)")
        parser.add_argument("--history", type=int, default=HISTORY_BARS,
                            help="bars of history of the longest timeframe up to 1h stored at start (0: none)")

    def handle(self, *args: Any, **options: Any) -> None:
        feed = feed_from_options(options, WallClock())
        feed_run(feed, limit=options["limit"], signal_every=options["signal_every"])


def feed_from_options(options: dict[str, Any], clock: Clock) -> DemoFeed:
    """The feed the command's options describe (CommandError on a bad file or option)."""
    if options["interval"] <= 0:
        raise CommandError("--interval must be positive")
    parsed = candles_read_csv(options["file"], form="rows", timeframe="1m")
    if parsed.errors or not parsed.rows:
        raise CommandError(f"{options['file']}: {parsed.errors[0] if parsed.errors else 'no candles'}")
    feed = DemoFeed(rows=parsed.rows, symbol=options["symbol"], interval=options["interval"], clock=clock,
                    timeframes=timeframes_parse(options["timeframes"]), history=max(0, options["history"]))
    minutes = history_span(feed.timeframes, feed.history) / MINUTE
    if minutes > MAX_HISTORY_MINUTES:
        raise CommandError(f"--history {feed.history} is {minutes:.0f} minutes of 1m candles; at most "
                           f"{MAX_HISTORY_MINUTES} (fewer bars)")
    return feed


def feed_run(feed: DemoFeed, *, limit: int = 0, signal_every: int = 20) -> int:
    """Store the history, then play the rows (looping) until `limit` rows were played (0: forever); return how many."""
    stored = feed.history_store()
    log.info("demo feed: %s %s candles of history stored under venue %s; %s candles built as %s prices arrive "
             "every %s s", stored, "1m", VENUE, ", ".join(feed.timeframes), feed.symbol, feed.interval)
    strategies = list(Strategy.objects.filter(slug__startswith="demo-", status=Strategy.Status.ACTIVE))
    count = 0
    while True:
        for row in feed.rows:
            feed.step(row)
            count += 1
            demo_signal(strategies, row, count=count, every=signal_every)
            if limit and count >= limit:
                return count
            feed.clock.sleep(feed.interval)

