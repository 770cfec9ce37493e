"""`manage.py seed_demo`: a demo login (its password printed once) and demo paper strategies; safe to run again.

The demo login is the last line it prints (`manage.py run` shows it last, once every role is up)."""

from __future__ import annotations

import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from trading import services
from trading.models import Strategy, VenueAccount


class Command(BaseCommand):
    help = "Create the demo admin login and demo paper strategies if they do not exist."

    def handle(self, *args: Any, **options: Any) -> None:
        user_model = get_user_model()
        password = None
        if not user_model.objects.filter(username="demo").exists():
            password = secrets.token_urlsafe(12)
            user_model.objects.create_superuser("demo", "demo@localhost", password)
        try:
            self._strategies_seed()
        finally:  # a password never printed would be lost: shown even when the rest failed
            if password is not None:
                self.stdout.write(self.style.WARNING(f"Demo login (shown once): user demo, password {password}"))
            else:
                self.stdout.write(self.style.WARNING("Demo login: user demo (its password was shown when it was "
                                                     "created; `manage.py changepassword demo` sets a new one)"))

    def _strategies_seed(self) -> None:
        account = VenueAccount.objects.filter(name="demo-paper").first()
        if account is None:
            account = services.account_create(
                data={"name": "demo-paper", "venue": "paper", "network": "paper", "quote_asset": "BTC",
                      "paper_initial_cash": "1", "paper_slippage_bps": "5", "max_leverage": "2",
                      "max_open_positions": 4, "daily_loss_limit": "0.05"},
                by="seed_demo",
            )
        for slug, action_note in (("demo-eth-btc", "long/flat demo"), ("demo-eth-btc-short", "short/flat demo")):
            if not Strategy.objects.filter(slug=slug).exists():
                strategy = services.strategy_create(
                    data={"name": f"ETH/BTC {action_note}", "slug": slug, "kind": "webhook", "symbol": "ETH/BTC",
                          "account": account, "mode": "paper", "sizing_mode": "notional", "sizing_value": "0.2",
                          "stop_loss_mode": "percent", "stop_loss_value": "1.5", "take_profit_mode": "percent",
                          "take_profit_value": "3"},
                    by="seed_demo",
                )
                services.strategy_start(strategy=strategy, by="seed_demo")
        self.stdout.write("demo account and strategies ready")
