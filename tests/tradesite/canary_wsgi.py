"""gunicorn app for the canary test: the real WSGI application on the canary URL map (adds one failing route)."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tradesite.settings")

from django.conf import settings  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
settings.ROOT_URLCONF = "tests.tradesite.canary_urls"
