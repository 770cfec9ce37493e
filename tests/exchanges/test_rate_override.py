"""An account's own request budget (`<PREFIX>_RATE_LIMIT`), e.g. a paid RPC plan for Synthetix or a Coinbase key
with a higher tier: it replaces the venue's default for that account only; bad values are refused by name."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from exchanges import registry
from exchanges.errors import VenueError
from exchanges.resilience import VENUE_RATES
from trading.connectors import connector_build
from trading.models import VenueAccount


@pytest.fixture(autouse=True)
def _fresh_guards() -> Iterator[None]:
    registry.guards_reset()
    yield
    registry.guards_reset()


@pytest.mark.parametrize(("text", "rate", "burst"), [("50", 50.0, 50.0), ("50/120", 50.0, 120.0),
                                                     (" 2 / 5 ", 2.0, 5.0)])
def test_a_budget_is_units_a_second_and_an_optional_burst(text: str, rate: float, burst: float) -> None:
    spec = registry.rate_override("synthetix", text)
    assert spec is not None and (spec.rate, spec.burst) == (rate, burst)
    assert spec.request_costs == VENUE_RATES["synthetix"].request_costs  # only the budget changes, not the weights


@pytest.mark.parametrize("text", ["fast", "0", "-3", "nan", "inf", "2.5", "5/0", "5/x", "/5"])
def test_a_bad_budget_is_refused_naming_the_variable(text: str) -> None:
    with pytest.raises(VenueError, match="RATE_LIMIT must be") as caught:
        registry.rate_override("coinbase", text)
    assert repr(text) in str(caught.value)


def test_a_per_ip_venue_keeps_its_one_budget(caplog: pytest.LogCaptureFixture) -> None:
    assert registry.rate_override("hyperliquid", "500") is None
    assert "per IP" in caplog.text


@pytest.mark.django_db
def test_the_accounts_environment_sets_its_budget_and_no_other(monkeypatch: pytest.MonkeyPatch, settings) -> None:
    settings.REDIS_URL = ""  # this process's buckets (the Redis-shared ones take the same spec)
    for prefix, limit in (("RATEFAST", "2/3"), ("RATEDEF", None)):
        monkeypatch.setenv(f"{prefix}_PRIVATE_KEY", "0x" + "11" * 32)
        monkeypatch.setenv(f"{prefix}_ACCOUNT_ID", "1")
        monkeypatch.setenv(f"{prefix}_ENDPOINT", "http://127.0.0.1:9")  # never called: building makes no request
        if limit:
            monkeypatch.setenv(f"{prefix}_RATE_LIMIT", limit)
    fast = VenueAccount.objects.create(name="fast", venue="synthetix", network="testnet", credentials_env="RATEFAST")
    plain = VenueAccount.objects.create(name="plain", venue="synthetix", network="testnet", credentials_env="RATEDEF")
    connector_build(fast), connector_build(plain)
    fast_limiter, _ = registry.guards("synthetix", "fast")
    plain_limiter, _ = registry.guards("synthetix", "plain")
    assert (fast_limiter.spec.rate, fast_limiter.spec.burst) == (2.0, 3.0)
    assert (plain_limiter.spec.rate, plain_limiter.spec.burst) == (VENUE_RATES["synthetix"].rate,
                                                                   VENUE_RATES["synthetix"].burst)
    assert fast_limiter.reserve(3.0) == 0.0  # the burst
    assert fast_limiter.reserve(2.0, max_wait=0.5) is None  # then 2 units a second: a second's wait


def test_building_another_connector_keeps_every_accounts_guards() -> None:
    """Without Redis (the embedded default) each build used to forget every breaker and bucket of the process."""
    registry.limiters_use(None)
    limiter, breaker = registry.guards("coinbase", "kept")
    registry.limiters_use(None)  # what every connector build does
    assert registry.guards("coinbase", "kept") == (limiter, breaker)
