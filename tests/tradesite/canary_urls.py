"""The real URL map plus one route that fails with secrets in its locals and in its exception (canary test only)."""

from __future__ import annotations

import os

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import path

from tradesite.urls import urlpatterns as real_patterns


def boom(request: HttpRequest) -> HttpResponse:
    """Fail the way careless code would: secrets in local variables and in the error message."""
    venue_secret = os.environ.get("CANARYCB_API_SECRET", "")
    wallet_keys = [os.environ.get("CANARYHL_SECRET_KEY", ""), os.environ.get("CANARYSNX_PRIVATE_KEY", "")]
    database_password = settings.DATABASES["default"].get("PASSWORD", "")
    broker_url = settings.CELERY_BROKER_URL
    raise RuntimeError(f"venue call failed with key {venue_secret} via {broker_url} ({database_password}), "
                       f"wallets {wallet_keys}")


urlpatterns = [path("__canary/boom", boom), *real_patterns]
