"""`manage.py demo_feed`: replay the bundled candles as the paper price feed, with demo signals now and then."""

from __future__ import annotations

import csv
import time
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand
from django.utils import timezone

from exchanges.base import ms_to_datetime
from trading.intake import signal_create
from trading.models import Strategy
from trading.prices import price_set
from trading.tasks import price_arrived


class Command(BaseCommand):
    help = "Replay data/ETH_BTC-1m.csv into the ETH/BTC paper price (one candle per --interval seconds)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--file", default=str(settings.BASE_DIR / "data" / "ETH_BTC-1m.csv"))
        parser.add_argument("--symbol", default="ETH/BTC")
        parser.add_argument("--interval", type=float, default=1.0)
        parser.add_argument("--signal-every", type=int, default=20, help="candles between demo signals (0: none)")
        parser.add_argument("--limit", type=int, default=0, help="stop after this many candles (0: loop forever)")

    def handle(self, *args: Any, **options: Any) -> None:
        with open(options["file"], newline="") as fh:
            rows = list(csv.DictReader(fh))
        strategies = list(Strategy.objects.filter(slug__startswith="demo-", status=Strategy.Status.ACTIVE))
        count = 0
        while True:
            for row in rows:
                # The replay's clock is now: each candle is published as the current price.
                price = Decimal(row["close"])
                price_set(options["symbol"], price, volume=Decimal(row["volume"]), time=timezone.now())
                price_arrived(options["symbol"], price)  # a stop this price crosses leaves now, not at the next tick
                count += 1
                demo_signal(strategies, row, count=count, every=options["signal_every"])
                if options["limit"] and count >= options["limit"]:
                    return
                time.sleep(options["interval"])


def demo_signal(strategies: list[Strategy], row: dict[str, str], *, count: int, every: int,
                enqueue: bool = True) -> int | None:
    """Every `every` candles, one demo strategy in turn opens (long or short, by its slug) or closes; return the
    stored signal's id (None when this candle sends none)."""
    if not (every and strategies and count % every == 0):
        return None
    strategy = strategies[(count // every) % len(strategies)]
    opening = (count // every // len(strategies)) % 2 == 0
    action = ("open_short" if strategy.slug.endswith("short") else "open_long") if opening else "close"
    stamp = ms_to_datetime(int(row["timestamp"])).isoformat()
    signal, _ = signal_create(strategy=strategy, source="manual", action=action,
                              idempotency_key=f"demo:{strategy.slug}:{stamp}:{count}",
                              payload={"demo": True, "candle": stamp}, enqueue=enqueue)
    return signal.pk
