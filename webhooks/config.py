"""The webhook's settings: Django settings, else the environment, else the defaults here (README lists them)."""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

DEFAULTS: dict[str, Any] = {
    "WEBHOOK_ALLOWED_IPS": "",  # "" = any source; "tradingview" = TradingView's four addresses; or a list / CSV
    "WEBHOOK_TRUSTED_PROXY_HEADER": "",  # e.g. "X-Forwarded-For"; ignored unless the peer is a trusted proxy
    "WEBHOOK_TRUSTED_PROXIES": "",  # addresses or networks of the proxies allowed to set that header
    "WEBHOOK_MAX_ALERT_AGE_SECONDS": 120,
    "WEBHOOK_MAX_FUTURE_SECONDS": 60,
    "WEBHOOK_MAX_PRICE_DEVIATION_PCT": "5",
    "WEBHOOK_RATE_LIMIT_PER_IP": 600,  # requests per window from one source address
    "WEBHOOK_RATE_LIMIT_PER_STRATEGY": 120,  # authenticated alerts per window for one strategy
    "WEBHOOK_RATE_LIMIT_WINDOW_SECONDS": 60,
    # Queue accepted alerts with one raw LPUSH of a pre-built Celery message when the broker is Redis ("0": .delay()).
    "WEBHOOK_RAW_ENQUEUE": True,
    # Store the alerts of concurrent requests (gthread workers) with one INSERT and one COMMIT ("0": one each).
    "WEBHOOK_GROUP_COMMIT": True,
}

_resolved: dict[str, Any] = {}


def setting(name: str) -> Any:
    """A webhook setting: Django settings, else the environment, else the default.

    Resolved once per process and again whenever a setting changes (override_settings, tests); the environment of
    a running process does not change.
    """
    try:
        return _resolved[name]
    except KeyError:
        pass
    value = getattr(settings, name, None)
    if value is None:
        value = os.environ.get(name)
    _resolved[name] = value = DEFAULTS[name] if value is None else value
    return value


def flag(name: str) -> bool:
    """A yes/no webhook setting: anything but 0/false/no/off is yes."""
    return str(setting(name)).lower() not in ("0", "false", "no", "off")


@receiver(setting_changed)
def _settings_changed(**kwargs: Any) -> None:
    _resolved.clear()
