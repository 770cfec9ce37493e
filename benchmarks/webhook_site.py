"""Settings for benchmarks/webhook_load.py: the project's, with a URL map that adds a bare JSON endpoint."""

from tradesite.settings import *  # noqa: F403 - the project's settings, unchanged except the URL map

ROOT_URLCONF = "benchmarks.webhook_urls"
