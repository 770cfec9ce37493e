"""The per-process limiter and outage state the webhook falls back on while Redis is down (pure, fixed clock)."""

from __future__ import annotations

import pytest

from webhooks.ratelimit import LocalLimiter, Outage


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_admits_a_burst_of_the_limit_then_the_windows_average_rate() -> None:
    clock = Clock()
    limiter = LocalLimiter(clock=clock)
    assert [limiter.admit("s", limit=3, window=60) for _ in range(5)] == [True, True, True, False, False]
    clock.now += 19.9  # 3 per 60 s: a token every 20 s
    assert limiter.admit("s", limit=3, window=60) is False
    clock.now += 0.1
    assert limiter.admit("s", limit=3, window=60) is True
    assert limiter.admit("s", limit=3, window=60) is False
    clock.now += 3600  # refilled, never past the limit
    assert [limiter.admit("s", limit=3, window=60) for _ in range(4)] == [True, True, True, False]


def test_buckets_are_per_key() -> None:
    limiter = LocalLimiter(clock=Clock())
    assert limiter.admit("a", limit=1, window=60) and not limiter.admit("a", limit=1, window=60)
    assert limiter.admit("b", limit=1, window=60)


def test_the_least_recently_used_bucket_goes_past_max_keys() -> None:
    limiter = LocalLimiter(clock=Clock(), max_keys=2)
    assert limiter.admit("a", limit=1, window=60) and limiter.admit("b", limit=1, window=60)
    assert not limiter.admit("a", limit=1, window=60)  # a is now the most recently used
    assert limiter.admit("c", limit=1, window=60)  # b goes
    assert not limiter.admit("a", limit=1, window=60)  # a kept its empty bucket
    assert limiter.admit("b", limit=1, window=60)  # b starts again


def test_an_outage_skips_the_service_and_lets_one_caller_try_it_again_per_interval() -> None:
    clock = Clock()
    outage = Outage("redis", retry_after=5, clock=clock)
    assert outage.skip() is False
    outage.failed(ConnectionError("refused"))
    assert outage.down and outage.outages == 1
    assert outage.skip() is True
    clock.now += 5
    assert outage.skip() is False  # this caller tries Redis
    assert outage.skip() is True  # the others meanwhile do not
    outage.failed(ConnectionError("refused"))  # still down: the same outage
    assert outage.outages == 1 and outage.skip() is True
    clock.now += 5
    assert outage.skip() is False
    outage.answered()
    assert not outage.down and outage.skip() is False
    outage.failed(TimeoutError("no answer"))
    assert outage.outages == 2


@pytest.mark.parametrize("limit", [1, 2, 120])
def test_a_bucket_never_admits_more_than_the_limit_at_once(limit: int) -> None:
    limiter = LocalLimiter(clock=Clock())
    assert sum(limiter.admit("k", limit=limit, window=60) for _ in range(limit * 3)) == limit
