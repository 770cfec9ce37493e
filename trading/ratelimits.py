"""Venue request budgets shared by every process: one token bucket per (venue, account) in Redis."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings

from exchanges.resilience import RateLimiter, RateSpec

log = logging.getLogger("venues")

# One token bucket in Redis per (venue, account): every process (workers, web, commands) spends the same budget,
# so N processes together stay below the venue's limit. Redis's own clock refills it.
_BUCKET_SCRIPT = """
local rate, burst, cost, max_wait = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local wait = math.max(0, (cost - tokens) / rate)
if wait > max_wait then return '-1' end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens - cost), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate + wait) + 60)
return tostring(math.ceil(wait * 1000000))
"""


class SharedRateLimiter(RateLimiter):
    """A token bucket kept in Redis, shared by every process; a local bucket stands in while Redis is unreachable."""

    LOCAL_FOR = 30.0  # seconds on the local bucket after Redis failed, before trying Redis again

    def __init__(self, name: str, spec: RateSpec, *, client: Any, prefix: str = "",
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(spec, clock=clock)
        self.key = f"{prefix}venue-bucket:{name}"
        self._script = client.register_script(_BUCKET_SCRIPT)
        self._now = clock
        self._local_until = 0.0

    def reserve(self, cost: float, *, max_wait: float = 1e9) -> float | None:
        if self._now() < self._local_until:
            return super().reserve(cost, max_wait=max_wait)
        try:
            micros = int(self._script(keys=[self.key], args=[
                repr(self.spec.rate), repr(self.spec.burst), repr(cost), repr(min(max_wait, 1e9))]))
        except Exception as exc:  # redis down: keep a per-process budget rather than stop trading
            log.warning("shared rate budget %s unavailable (%s): this process uses its own for %gs", self.key,
                        type(exc).__name__, self.LOCAL_FOR)
            self._local_until = self._now() + self.LOCAL_FOR
            return super().reserve(cost, max_wait=max_wait)
        return None if micros < 0 else micros / 1_000_000


_redis_clients: dict[str, Any] = {}


def shared_limiter(name: str, spec: RateSpec) -> RateLimiter:
    """A venue account's rate budget shared in Redis (settings.REDIS_URL) by every process."""
    import redis

    url = settings.REDIS_URL
    client = _redis_clients.get(url)
    if client is None:
        # No client-side retries: a venue call must not wait seconds on a Redis outage (the local bucket steps in).
        client = _redis_clients[url] = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1,
                                                            retry=None)
    return SharedRateLimiter(name, spec, client=client, prefix=settings.CACHES["default"].get("KEY_PREFIX", ""))
