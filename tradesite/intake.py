"""ASGI entry point of the intake role: the TradingView webhook on uvicorn (webhooks/intake_asgi.py).

    python -m uvicorn tradesite.intake:application --loop uvloop --http httptools ...

(the bootstrap's `intake` role runs it so). Each uvicorn worker process imports this module: Django is set up
once per process, before the first request.
"""

from __future__ import annotations

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tradesite.settings")
django.setup()

from webhooks.intake_asgi import IntakeApp  # noqa: E402 - needs Django set up

application = IntakeApp()
