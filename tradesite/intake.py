"""ASGI entry point of the intake role: the TradingView webhook on uvicorn (webhooks/intake_asgi.py).

    python -m uvicorn tradesite.intake:application --loop uvloop --http httptools ...

(the bootstrap's `intake` role runs it so). Each uvicorn worker process imports this module: Django is set up
once per process, before the first request.
"""

from __future__ import annotations

import gc
import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tradesite.settings")
django.setup()

from webhooks.intake_asgi import IntakeApp  # noqa: E402 - needs Django set up

application = IntakeApp()
# What start-up made (Django, the app registry, the URL map) lives as long as the process: out of the collector's
# way, so that a full collection does not walk it between two alerts.
gc.freeze()
