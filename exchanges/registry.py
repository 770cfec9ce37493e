"""The only module that knows the concrete live connector classes.

Each live venue is a module `exchanges.<venue>` with a `build(config: VenueConfig) -> Connector` function; it is
imported on first use, so a missing optional library only breaks the venue that needs it.

Every live connector is returned wrapped in a ResilientConnector (retries for safe calls, a rate budget and a
circuit breaker); the limiter and breaker are shared by every connector of one (venue, account) in this process.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import threading
from collections.abc import Callable, Mapping

from exchanges.base import Connector, VenueConfig, VenueJournal
from exchanges.errors import LiveVenueForbiddenError, VenueError
from exchanges.resilience import (
    DEFAULT_RATE,
    VENUE_RATES,
    BreakerEvent,
    CircuitBreaker,
    RateLimiter,
    RateSpec,
    ResilientConnector,
    RetryPolicy,
)

log = logging.getLogger("exchanges.registry")

Builder = Callable[[VenueConfig], Connector]

_MODULES = {"coinbase": "exchanges.coinbase", "hyperliquid": "exchanges.hyperliquid",
            "synthetix": "exchanges.synthetix"}
# Explicit registrations (tests, plug-ins) win over the module convention.
_LIVE: dict[str, Builder] = {}
# One limiter and one breaker per (venue, account) in this process, whichever connector instance is in use.
_GUARDS: dict[tuple[str, str], tuple[RateLimiter, CircuitBreaker]] = {}
_LIMITERS: dict[tuple[str, str], RateLimiter] = {}  # by (venue, account), or (venue, "") for per-IP limits
LimiterFactory = Callable[[str, RateSpec], RateLimiter]  # (bucket name, budget) -> limiter


def _local_limiter(name: str, spec: RateSpec) -> RateLimiter:
    return RateLimiter(spec)


_limiter_factory: LimiterFactory = _local_limiter


def limiters_use(factory: LimiterFactory | None) -> None:
    """Make new limiters with `factory` (e.g. one bucket shared by every process through Redis); None: local ones."""
    global _limiter_factory
    with _guards_lock:
        if (factory or _local_limiter) is not _limiter_factory:  # None is the local one: not a change
            _limiter_factory = factory or _local_limiter
            _GUARDS.clear()
            _LIMITERS.clear()
_guards_lock = threading.Lock()
RETRY_POLICY = RetryPolicy()


def register(venue: str, builder: Builder) -> None:
    """Make a live venue's connector available under `venue`."""
    _LIVE[venue] = builder


def _builder(venue: str) -> Builder:
    builder = _LIVE.get(venue)
    if builder is not None:
        return builder
    module_name = _MODULES.get(venue)
    if module_name is None:
        raise VenueError(f"no connector for venue {venue!r}", venue=venue)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise VenueError(f"the {venue} connector is not installed ({exc.name})", venue=venue) from exc
    built: Builder = module.build
    return built


def build(
    *,
    venue: str,
    network: str,
    credentials: Mapping[str, str],
    endpoint: str | None = None,
    journal: VenueJournal | None = None,
    account: str = "",
    on_breaker: Callable[[BreakerEvent], None] | None = None,
    resilient: bool = True,
    rate_limit: str | None = None,
) -> Connector:
    """Build a live venue's connector behind retries, its rate budget and its breaker; paper can never reach one.

    `on_breaker` receives this (venue, account)'s breaker transitions (the latest one given wins);
    `resilient=False` returns the bare connector (for tools and tests that need the venue's raw answers).
    """
    if network == "paper" or venue == "paper":
        raise LiveVenueForbiddenError("paper accounts use the paper connector, never a live venue", venue=venue)
    if network not in ("testnet", "mainnet"):
        raise VenueError(f"unknown network {network!r}", venue=venue)
    config = VenueConfig(
        venue=venue, network=network, credentials=dict(credentials), endpoint=endpoint, journal=journal,
        account=account,
    )
    inner = _builder(venue)(config)
    if not resilient:
        return inner
    limiter, breaker = guards(venue, account, spec=rate_override(venue, rate_limit))
    if on_breaker is not None:
        breaker.on_transition = on_breaker
    return ResilientConnector(inner, RETRY_POLICY, limiter, breaker)


PUBLIC_ACCOUNT = "public"  # the (venue, account) name of public market-data connectors' limiter and breaker


def build_public(*, venue: str, network: str, endpoint: str | None = None) -> Connector:
    """Build a venue's connector for public market data (markets, prices, candles): no credentials needed.

    It runs behind the venue's retries, rate budget and breaker like an account's connector (one budget for all of a
    per-IP venue's connectors in this process); a venue module without `build_public` serves no public data.
    """
    if network not in ("testnet", "mainnet"):
        raise VenueError(f"unknown network {network!r}", venue=venue)
    module_name = _MODULES.get(venue)
    if module_name is None:
        raise VenueError(f"no public market data for venue {venue!r} (venues: {', '.join(sorted(_MODULES))})",
                         venue=venue)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise VenueError(f"the {venue} connector is not installed ({exc.name})", venue=venue) from exc
    builder: Builder | None = getattr(module, "build_public", None)
    if builder is None:
        raise VenueError(f"{venue} serves no public market data", venue=venue)
    config = VenueConfig(venue=venue, network=network, endpoint=endpoint, account=PUBLIC_ACCOUNT)
    limiter, breaker = guards(venue, PUBLIC_ACCOUNT)
    return ResilientConnector(builder(config), RETRY_POLICY, limiter, breaker)


def rate_override(venue: str, text: str | None) -> RateSpec | None:
    """An account's own budget from `<PREFIX>_RATE_LIMIT`: "units a second" or "units a second/burst", whole
    numbers (burst defaults to one second's worth), replacing the venue's default for that account; None when
    unset.

    For a venue that counts per IP (Hyperliquid) one budget serves every account, so an account's own is ignored
    with a warning. A value that is not a positive whole number is refused, naming the variable.
    """
    if text is None or not text.strip():
        return None
    default = VENUE_RATES.get(venue, DEFAULT_RATE)
    if default.per_ip:
        log.warning("%s counts requests per IP: one budget for all its accounts; RATE_LIMIT ignored", venue)
        return None
    per_second, _, burst = text.partition("/")
    try:
        rate = int(per_second)
        burst_value = int(burst) if burst.strip() else rate
    except ValueError:
        rate = burst_value = 0
    if rate <= 0 or burst_value <= 0:
        raise VenueError(f"RATE_LIMIT must be 'units a second' or 'units a second/burst', both positive whole "
                         f"numbers; got {text!r}", venue=venue)
    return dataclasses.replace(default, rate=rate, burst=burst_value, source="the account's RATE_LIMIT")


def guards(venue: str, account: str, *, spec: RateSpec | None = None) -> tuple[RateLimiter, CircuitBreaker]:
    """This process's rate limiter and circuit breaker of a (venue, account), created on first use.

    The limiter is shared by all of a venue's accounts when the venue's limit is per IP (Hyperliquid). `spec`, an
    account's own budget, replaces the venue's default for that account (it takes effect when the account's guards
    are first made: at start, since it comes from the environment).
    """
    with _guards_lock:
        found = _GUARDS.get((venue, account))
        if found is None:
            spec = spec or VENUE_RATES.get(venue, DEFAULT_RATE)
            bucket = (venue, "" if spec.per_ip else account)
            limiter = _LIMITERS.get(bucket)
            if limiter is None:
                limiter = _LIMITERS[bucket] = _limiter_factory(f"{venue}:{bucket[1] or '*'}", spec)
            found = _GUARDS[(venue, account)] = (limiter, CircuitBreaker(venue=venue, account=account))
        return found


def guards_reset() -> None:
    """Forget every limiter and breaker (tests: each starts with closed breakers and full buckets)."""
    with _guards_lock:
        _GUARDS.clear()
        _LIMITERS.clear()
