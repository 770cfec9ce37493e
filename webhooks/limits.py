"""The webhook's rate limits: per source address and per strategy, counted in fixed windows on the cache's Redis
(one round trip for both), or by each process on its own while that Redis fails (webhooks/ratelimit.py)."""

from __future__ import annotations

import time
from typing import Any

import redis
from django.core.cache import caches
from django.core.signals import setting_changed
from django.dispatch import receiver
from prometheus_client import Counter

from infra.broker import RedisLink, command
from webhooks.config import setting
from webhooks.parsers import Rejection
from webhooks.ratelimit import LocalLimiter, Outage

IP_LIMITED = Rejection(429, "rate_limited", "too many requests from this address")
STRATEGY_LIMITED = Rejection(429, "rate_limited", "too many alerts for this strategy")


@receiver(setting_changed)
def _settings_changed(**kwargs: Any) -> None:
    _links.clear()  # a new CACHES setting is a new backend object (whose id may be an old one's)
    _outage.reset()
    for limiter in _local.values():
        limiter.clear()


_links: dict[int, RedisLink | None] = {}
# A healthy Redis counts a request in well under a millisecond: one that has not answered in this long (unless the
# cache's OPTIONS set socket_timeout) is treated as down and the process counts on its own (see `_outage`).
LINK_TIMEOUT_SECONDS = 1.0


def _cache_link(backend: Any) -> RedisLink | None:
    """The cache's Redis as a RedisLink (one per cache backend object), or None when the cache is not Redis."""
    key = id(backend)
    if key not in _links:
        client: Any = getattr(backend, "_cache", None)  # django's RedisCacheClient
        _links[key] = (RedisLink(client.get_client(None, write=True), timeout=LINK_TIMEOUT_SECONDS)
                       if hasattr(client, "get_client") else None)
    return _links[key]


def cache_redis_link() -> RedisLink | None:
    """The default cache's Redis as a RedisLink, or None when the cache is not Redis."""
    return _cache_link(caches["default"])


def _window_key(scope: str, key: object, now: float | None) -> tuple[str, int]:
    """The cache key counting (scope, key) in the current fixed window, and the window in seconds."""
    window = int(setting("WEBHOOK_RATE_LIMIT_WINDOW_SECONDS"))
    return f"wh:rl:{scope}:{key}:{int((now or time.time()) // window)}", window


# While the cache's Redis fails, the rate limits are counted by each process on its own (token buckets of the same
# limits): PostgreSQL is the system of record, so an alert it can store is never refused because Redis is down.
_outage = Outage("webhook rate limits: the cache's Redis")
_local = {"ip": LocalLimiter(), "strategy": LocalLimiter()}
_LOCAL_COUNTED = Counter("tradesite_webhook_rate_limit_local", "Webhook requests whose rate limits this process "
                         "counted on its own because the cache's Redis was failing.")
_OUTAGES = Counter("tradesite_webhook_rate_limit_outages", "Times this process began counting the webhook's rate "
                   "limits on its own (the cache's Redis failing).")


def rate_limits_local() -> bool:
    """True while the cache's Redis is failing and this request is to be counted by `rate_pair_local` without
    trying Redis; False to count on Redis (always while it is up; during an outage, one request every few seconds
    tries it again)."""
    return _outage.skip()


def rate_limits_down() -> bool:
    """Whether this process is counting the rate limits on its own (the cache's Redis failing)."""
    return _outage.down


def rate_limits_failed(error: BaseException) -> None:
    """The cache's Redis failed a rate-limit call: count in this process for a while (logged once per outage)."""
    if _outage.failed(error):
        _OUTAGES.inc()


def rate_limits_answered() -> None:
    """The cache's Redis counted a request: an outage, if any, is over."""
    if _outage.down:
        _outage.answered()


def _local_limited(scope: str, key: object, limit: int) -> bool:
    """Count one request in this process's own bucket for (scope, key); True when over the limit."""
    _LOCAL_COUNTED.inc()
    return not _local[scope].admit(str(key), limit=int(limit), window=int(setting("WEBHOOK_RATE_LIMIT_WINDOW_SECONDS")))


def rate_pair_local(ip: str, strategy_pk: int) -> Rejection | None:
    """`rate_limited_pair` counted in this process (while Redis is down): the source's budget, then, only if that
    admits the request, its strategy's. The 429 to answer, or None."""
    if _local_limited("ip", ip, int(setting("WEBHOOK_RATE_LIMIT_PER_IP"))):
        return IP_LIMITED
    if _local_limited("strategy", strategy_pk, int(setting("WEBHOOK_RATE_LIMIT_PER_STRATEGY"))):
        return STRATEGY_LIMITED
    return None


def rate_limited(scope: str, key: str, *, limit: int, now: float | None = None) -> bool:
    """Count one request in a fixed window (atomic INCR with expiry in the cache); True when over the limit.

    While the cache's Redis fails, the request is counted in this process instead (`rate_limits_local`)."""
    name, window = _window_key(scope, key, now)
    backend = caches["default"]  # once: each attribute read through the `cache` proxy costs a lookup
    link = _cache_link(backend)
    if link is not None:  # django RedisCache: INCR and EXPIRE NX in one write, one round trip
        if _outage.down and _outage.skip():
            return _local_limited(scope, key, limit)
        full = backend.make_key(name)  # the key cache.incr() would use (validation only warns about memcached)
        try:
            count = int(link.call(command("INCR", full) + command("EXPIRE", full, window + 1, "NX"), 2)[0])
        except redis.RedisError as exc:
            rate_limits_failed(exc)
            return _local_limited(scope, key, limit)
        rate_limits_answered()
    else:
        backend.add(name, 0, window + 1)
        try:
            count = backend.incr(name)
        except ValueError:
            backend.set(name, 1, window + 1)
            count = 1
    return count > int(limit)


# INCR the source's counter; only when it is within its limit, INCR the strategy's too (a request refused for its
# source never spends its strategy's budget). Returns 0 when the source is over, else the strategy's count.
_PAIR_SCRIPT = ("local n = redis.call('INCR', KEYS[1]) redis.call('EXPIRE', KEYS[1], ARGV[1], 'NX') "
                "if n > tonumber(ARGV[2]) then return 0 end "
                "n = redis.call('INCR', KEYS[2]) redis.call('EXPIRE', KEYS[2], ARGV[1], 'NX') return n")


def rate_limited_pair(ip: str, strategy_pk: int, *, now: float | None = None) -> Rejection | None:
    """Count an authenticated request against its source's budget and, if that admits it, its strategy's: one
    round trip on Redis (a script), or `rate_pair_local` while Redis fails. The 429 to answer, or None."""
    backend = caches["default"]
    link = _cache_link(backend)
    if link is None:
        if rate_limited("ip", ip, limit=int(setting("WEBHOOK_RATE_LIMIT_PER_IP")), now=now):
            return IP_LIMITED
        limited = rate_limited("strategy", str(strategy_pk), limit=int(setting("WEBHOOK_RATE_LIMIT_PER_STRATEGY")),
                               now=now)
        return STRATEGY_LIMITED if limited else None
    if _outage.down and _outage.skip():
        return rate_pair_local(ip, strategy_pk)
    try:
        (count,) = link.call(rate_pair_command(ip, strategy_pk, now=now), 1)
        verdict = rate_pair_verdict(count)
    except redis.RedisError as exc:
        rate_limits_failed(exc)
        return rate_pair_local(ip, strategy_pk)
    rate_limits_answered()
    return verdict


def rate_pair_command(ip: str, strategy_pk: int, *, now: float | None = None, backend: Any = None) -> bytes:
    """The Redis command (RESP) counting a request against its source's and its strategy's budgets (the cache's
    keys); its integer reply goes to `rate_pair_verdict`. For a cache on Redis only. `backend`: the default cache
    object to name the keys with (an event loop passes the one it keeps: in async code each task would make its
    own)."""
    (ip_name, window), (strategy_name, _) = _window_key("ip", ip, now), _window_key("strategy", strategy_pk, now)
    backend = backend or caches["default"]
    keys = [backend.make_key(ip_name), backend.make_key(strategy_name)]
    return command("EVAL", _PAIR_SCRIPT, 2, *keys, window + 1, int(setting("WEBHOOK_RATE_LIMIT_PER_IP")))


def rate_pair_verdict(count: Any) -> Rejection | None:
    """The 429 to answer for `rate_pair_command`'s reply, or None."""
    if isinstance(count, Exception):
        raise count
    if int(count) == 0:
        return IP_LIMITED
    return STRATEGY_LIMITED if int(count) > int(setting("WEBHOOK_RATE_LIMIT_PER_STRATEGY")) else None

