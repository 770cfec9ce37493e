"""Settings for benchmarks/webhook_load.py: the project's, with a URL map that adds two bare JSON endpoints."""

from tradesite.settings import *  # noqa: F403 - the project's settings, unchanged except the URL map and lanes
from tradesite.settings import LEAN_URL_NAMES

ROOT_URLCONF = "benchmarks.webhook_urls"
LEAN_URL_NAMES = [*LEAN_URL_NAMES, "bench-bare-lane"]
