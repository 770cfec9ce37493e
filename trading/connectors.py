"""Connectors for accounts: built from an account's settings (the paper venue on the database, or a live venue
with its journal, shared rate budget and health reports) and cached per process; and the public market-data
connector of a price feed's venue (no credentials), whose markets a paper account on that feed trades."""

from __future__ import annotations

import math
import os
import threading
import time
from datetime import datetime

from django.conf import settings

from exchanges import registry
from exchanges.base import Connector, Market
from exchanges.paper import DEFAULT_MARKETS, PaperConfig, PaperVenue
from trading.feedmarkets import feed_markets
from trading.journal import DjangoVenueJournal
from trading.latency import LatentConnector
from trading.models import PriceFeed, VenueAccount
from trading.paperstore import DjangoPaperStore
from trading.prices import DbPriceSource, price_feed_of
from trading.ratelimits import shared_limiter
from trading.venuehealth import health_reporter

# A paper connector on a venue's feed reads its feed's stored market list again after this long (another process
# may have reloaded it: trading/feedmarkets.py reloads a list once a day).
FEED_MARKETS_RECHECK_SECONDS = 3600.0

_cache: dict[int, tuple[datetime, float, Connector]] = {}  # account -> (its updated_at, expiry (monotonic), connector)
_cache_lock = threading.Lock()
_public: dict[tuple[str, str, str | None], Connector] = {}  # (venue, network, endpoint) -> public connector
_public_lock = threading.Lock()


def connector_for(account: VenueAccount) -> Connector:
    """Return this process's connector for an account, rebuilt when the account's settings change."""
    with _cache_lock:
        hit = _cache.get(account.pk)
        if hit is not None and hit[0] == account.updated_at and hit[1] > time.monotonic():
            return hit[2]
        connector = connector_build(account)
        on_feed = account.venue == VenueAccount.Venue.PAPER and price_feed_of(account) != PriceFeed.DEMO
        expires = time.monotonic() + FEED_MARKETS_RECHECK_SECONDS if on_feed else math.inf
        _cache[account.pk] = (account.updated_at, expires, connector)
        return connector


def connector_for_id(account_id: int, updated_at: datetime) -> Connector:
    """The connector of an account known by id and its `updated_at` (reads the account only to build one)."""
    with _cache_lock:
        hit = _cache.get(account_id)
    if hit is not None and hit[0] == updated_at and hit[1] > time.monotonic():
        return hit[2]
    return connector_for(VenueAccount.objects.get(pk=account_id))


def public_connector(feed: str) -> Connector:
    """This process's connector for the public market data of a price feed's venue ("hyperliquid-testnet": Hyperliquid's
    testnet): no credentials, behind the venue's shared request budget, retries and breaker; at the venue's published
    URL, or `<VENUE>_PUBLIC_ENDPOINT` (settings.PUBLIC_ENDPOINTS: a mirror, a loopback fake). Raise VenueError for a
    feed whose venue serves no public market data."""
    venue, _, testnet = feed.partition("-")
    network = "testnet" if testnet == "testnet" else "mainnet"
    registry.limiters_use(shared_limiter if settings.REDIS_URL else None)
    endpoint = (getattr(settings, "PUBLIC_ENDPOINTS", {}) or {}).get(venue) or None
    key = (venue, network, endpoint)
    with _public_lock:
        found = _public.get(key)
        # Rebuilt when the registry's guards were replaced (another limiter factory, a reset): never two budgets.
        if found is not None and getattr(found, "breaker", None) is not registry.guards(
                venue, registry.PUBLIC_ACCOUNT)[1]:
            found = None
        if found is None:
            found = _public[key] = registry.build_public(venue=venue, network=network, endpoint=endpoint)
        return found


def paper_markets(feed: str) -> tuple[Market, ...]:
    """The markets a paper account on `feed` trades: the bundled list on the demo feed, else the feed venue's own
    (trading/feedmarkets.py: stored, reloaded daily). Raise TemporaryError when they cannot be had yet."""
    if feed == PriceFeed.DEMO:
        return DEFAULT_MARKETS
    return feed_markets(feed, load=lambda: public_connector(feed).markets())


def connector_build(account: VenueAccount) -> Connector:
    """A new connector for an account (uncached; `connector_for` keeps one per account). A paper account on a
    venue's feed whose markets cannot be loaded raises TemporaryError."""
    if account.venue == VenueAccount.Venue.PAPER:
        feed = price_feed_of(account)
        config = PaperConfig(
            markets=paper_markets(feed),
            markets_from="" if feed == PriceFeed.DEMO else feed,
            quote_asset=account.quote_asset,
            slippage_bps=account.paper_slippage_bps,
            max_volume_share=account.paper_max_volume_share,
        )
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
