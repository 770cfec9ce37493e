"""Per-process rate limits for the webhook while the shared counters in Redis cannot be reached (pure: no Django).

PostgreSQL is the system of record and Redis only counts requests, so a Redis outage must not refuse alerts that
could be stored: each process then counts on its own, with token buckets of the same size and average rate as the
shared fixed windows, until Redis answers again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

log = logging.getLogger("webhooks.ratelimit")


class LocalLimiter:
    """Token buckets by key, thread-safe: each holds up to `limit` tokens and gains `limit` per `window` seconds,
    so it admits a burst of `limit` and then the shared window's average rate.

    At most `max_keys` buckets are kept; past that the least recently used one is dropped (its owner starts again
    with a full bucket), so a flood from many sources cannot grow the process without bound.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, max_keys: int = 10_000) -> None:
        self._clock = clock
        self.max_keys = max_keys
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()  # key -> [tokens, when counted], LRU first

    def admit(self, key: str, *, limit: int, window: float) -> bool:
        """Take one token from `key`'s bucket: True when it had one (the request is within the limit)."""
        with self._lock:
            now = self._clock()
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = [limit, now]
                while len(self._buckets) > self.max_keys:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(key)
                bucket[0] = min(limit, bucket[0] + (now - bucket[1]) * limit / window)
                bucket[1] = now
            if bucket[0] < 1:
                return False
            bucket[0] -= 1
            return True

    def clear(self) -> None:
        """Forget every bucket (each starts full again)."""
        with self._lock:
            self._buckets.clear()


class Outage:
    """Whether a shared service (Redis) is failing, as one process sees it.

    After a failure callers skip the service for `retry_after` seconds; then one caller at a time tries it again
    (the others keep skipping), so a Redis that hangs costs one request its timeout per `retry_after`, not every
    request. The start and the end of an outage are logged once each, never once per request.
    """

    def __init__(self, name: str, *, retry_after: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.retry_after = retry_after
        self._clock = clock
        self._lock = threading.Lock()
        self.down = False
        self.since = 0.0
        self.outages = 0  # outages this process has seen begin
        self._next_try = 0.0

    def skip(self) -> bool:
        """True when the caller should not try the service now; False to try it (always while it is up)."""
        if not self.down:
            return False
        with self._lock:
            now = self._clock()
            if not self.down or now >= self._next_try:
                self._next_try = now + self.retry_after  # this caller tries it; the others keep skipping meanwhile
                return False
            return True

    def failed(self, error: BaseException) -> bool:
        """The service failed a call: skip it for `retry_after` seconds. True when this began an outage (logged)."""
        with self._lock:
            now = self._clock()
            self._next_try = now + self.retry_after
            if self.down:
                return False
            self.down, self.since = True, now
            self.outages += 1
        log.warning("%s unavailable (%s: %s): this process counts on its own until it answers again", self.name,
                    type(error).__name__, error)
        return True

    def answered(self) -> None:
        """The service answered a call: the outage, if any, is over (logged once)."""
        if not self.down:
            return
        with self._lock:
            if not self.down:
                return
            self.down = False
            lasted = self._clock() - self.since
        log.warning("%s answers again after %.1f s: counting there again", self.name, lasted)

    def reset(self) -> None:
        """Back to 'up', as at process start."""
        with self._lock:
            self.down, self.since, self.outages, self._next_try = False, 0.0, 0, 0.0
