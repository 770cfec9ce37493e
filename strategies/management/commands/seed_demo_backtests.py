"""`manage.py seed_demo_backtests`: the demo's stored candles and two backtest runs (once), for the dashboard."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from strategies import services
from strategies.candles import candles_read_csv
from strategies.models import BacktestRun, Candle

DEMO_CANDLES = 3000


class Command(BaseCommand):
    help = "Store the first bundled ETH/BTC candles and queue two demo backtest runs, if there are none yet."

    def handle(self, *args: Any, **options: Any) -> None:
        if BacktestRun.objects.exists():
            return
        if not Candle.objects.filter(venue="paper", symbol="ETH/BTC", timeframe="1m").exists():
            parsed = candles_read_csv(settings.BASE_DIR / "data" / "ETH_BTC-1m.csv", form="rows", timeframe="1m")
            services.candles_import(venue="paper", symbol="ETH/BTC", timeframe="1m",
                                    rows=parsed.rows[:DEMO_CANDLES], by="seed_demo")
        for period in (14, 7):  # a worker runs them; the dashboard compares the two
            services.backtest_run_create(kind="rsi", params={"period": period}, symbol="ETH/BTC", timeframe="1m",
                                         config={"cash": "1", "fee": "0.001"}, by="seed_demo")
        self.stdout.write("demo backtests queued")
