"""`manage.py marketdata`: the market-data role (strategies/feeds.py), in the foreground until stopped."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from django.core.management.base import BaseCommand

from strategies.feeds import MarketDataRole, stream_for


class Command(BaseCommand):
    help = ("Stream the live prices and closed candles of every price feed in use (paper accounts on a venue's "
            "prices, live accounts' marks, indicator strategies' candles) into the database.")

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--flush-seconds", type=float, default=None,
                            help="how often coalesced prices are written (MARKETDATA_FLUSH_SECONDS, 0.25)")
        parser.add_argument("--refresh-seconds", type=float, default=None,
                            help="how often what is in use is read again (MARKETDATA_REFRESH_SECONDS, 15)")

    def handle(self, *args: Any, **options: Any) -> None:
        role = MarketDataRole(streams=stream_for, flush_seconds=options["flush_seconds"],
                              refresh_seconds=options["refresh_seconds"])
        stopping = asyncio.Event()

        async def main() -> None:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stopping.set)
            await role.run(until=stopping.is_set)

        asyncio.run(main())
