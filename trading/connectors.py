"""Connectors for accounts: built from an account's settings (the paper venue on the database, or a live venue
with its journal, shared rate budget and health reports) and cached per process."""

from __future__ import annotations

import os
import threading
from datetime import datetime

from django.conf import settings

from exchanges import registry
from exchanges.base import Connector
from exchanges.paper import DEFAULT_MARKETS, PaperConfig, PaperVenue
from trading.journal import DjangoVenueJournal
from trading.latency import LatentConnector
from trading.models import VenueAccount
from trading.paperstore import DjangoPaperStore
from trading.prices import DbPriceSource, price_feed_of
from trading.ratelimits import shared_limiter
from trading.venuehealth import health_reporter

_cache: dict[int, tuple[datetime, Connector]] = {}
_cache_lock = threading.Lock()


def connector_for(account: VenueAccount) -> Connector:
    """Return this process's connector for an account, rebuilt when the account's settings change."""
    with _cache_lock:
        hit = _cache.get(account.pk)
        if hit is not None and hit[0] == account.updated_at:
            return hit[1]
        connector = connector_build(account)
        _cache[account.pk] = (account.updated_at, connector)
        return connector


def connector_for_id(account_id: int, updated_at: datetime) -> Connector:
    """The connector of an account known by id and its `updated_at` (reads the account only to build one)."""
    with _cache_lock:
        hit = _cache.get(account_id)
    if hit is not None and hit[0] == updated_at:
        return hit[1]
    return connector_for(VenueAccount.objects.get(pk=account_id))


def connector_build(account: VenueAccount) -> Connector:
    """A new connector for an account (uncached; `connector_for` keeps one per account)."""
    if account.venue == VenueAccount.Venue.PAPER:
        config = PaperConfig(
            markets=DEFAULT_MARKETS,
            quote_asset=account.quote_asset,
            slippage_bps=account.paper_slippage_bps,
            max_volume_share=account.paper_max_volume_share,
        )
        feed = price_feed_of(account)
        store = DjangoPaperStore(account.pk, feed)
        venue = PaperVenue(store=store, prices=DbPriceSource(store, feed), config=config)
        return LatentConnector(venue, account.paper_latency_ms) if account.paper_latency_ms else venue
    prefix = f"{account.credentials_env}_"
    credentials = {k[len(prefix):].lower(): v for k, v in os.environ.items() if k.startswith(prefix)}
    # <PREFIX>_ENDPOINT is not a secret: it points the account at another base URL (a testnet mirror, a loopback fake).
    endpoint = credentials.pop("endpoint", None) or None
    rate_limit = credentials.pop("rate_limit", None)  # <PREFIX>_RATE_LIMIT: the account's own request budget
    registry.limiters_use(shared_limiter if settings.REDIS_URL else None)
    return registry.build(
        venue=account.venue, network=account.network, credentials=credentials, endpoint=endpoint,
        journal=DjangoVenueJournal(account.pk), account=account.name, rate_limit=rate_limit,
        on_breaker=health_reporter(account.pk, secrets=[v for k, v in credentials.items() if len(v) >= 6]),
    )
