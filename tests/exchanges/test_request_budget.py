"""The rate budget is spent per request on the wire, weighed as each venue weighs it, not per connector call.

Each real connector runs behind the resilience wrapper with a tight budget against its loopback fake; the fake's own
journal of what it received is weighed here independently (from the venue's published rules) and no one-second
window may hold more than the budget allows.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from exchanges.base import OrderRequest, OrderType, Side
from exchanges.resilience import CircuitBreaker, RateLimiter, RateSpec, ResilientConnector, RetryPolicy
from tests.fakes import venues as fake_venues
from tests.fakes.faults import FakeHTTPServer, Request
from tests.fakes.live import bare_connector, small_quantity
from tests.fakes.venues import VenueHarness

_HL_LIGHT = {"allMids", "l2Book", "clearinghouseState", "orderStatus", "spotClearinghouseState", "exchangeStatus"}


def weight(venue: str, request: Request) -> float:
    """A request's weight by the venue's published rules."""
    if venue == "coinbase":  # public market data: 10/s per IP; private: 30/s per key
        public = "/brokerage/market/" in request.path or "authorization" not in request.headers
        return 3.0 if public else 1.0
    if venue == "hyperliquid":
        body = request.json()
        if request.path.startswith("/exchange"):
            action = body["action"]
            return 1 + len(action.get("orders") or action.get("cancels") or ()) // 40
        return 2.0 if body.get("type") in _HL_LIGHT else 20.0
    body = request.json()  # JSON-RPC: every call of a batch counts
    return float(len(body)) if isinstance(body, list) else 1.0


SPECS = {  # tight budgets, so that a few orders must be paced: units a second, burst
    "coinbase": RateSpec(rate=8.0, burst=4.0, request_costs={"public": 3.0, "private": 1.0}),
    "hyperliquid": RateSpec(rate=40.0, burst=25.0, request_costs={f"info:{t}": 2.0 for t in _HL_LIGHT},
                            default_request_cost=20.0),
    "synthetix": RateSpec(rate=25.0, burst=10.0, request_costs={"rpc": 1.0}),
}


@pytest.fixture(params=sorted(fake_venues.HARNESSES))
def harness(request: pytest.FixtureRequest) -> Iterator[VenueHarness]:
    with fake_venues.harness(request.param) as running:
        yield running


def _server(h: VenueHarness) -> FakeHTTPServer:
    server = h.extra.get("fake") if isinstance(h.extra.get("fake"), FakeHTTPServer) else h.extra.get("front")
    assert isinstance(server, FakeHTTPServer), h.extra
    return server


def test_requests_on_the_wire_stay_within_the_budget_by_their_weight(harness: VenueHarness) -> None:
    spec = SPECS[harness.venue]
    inner = bare_connector(harness)
    assert inner.meters_requests
    wrapped = ResilientConnector(inner, RetryPolicy(max_attempts=1), RateLimiter(spec),
                                 CircuitBreaker(venue=harness.venue, account="budget"), max_queue_wait=60.0)
    market = wrapped.market(harness.symbol)
    quantity = small_quantity(market, harness.price)
    server = _server(harness)
    started = time.monotonic()
    before = len(server.requests())

    for i in range(4):
        side = Side.BUY if i % 2 == 0 else Side.SELL
        order = wrapped.create_order(OrderRequest(client_order_id=f"budget{i}", symbol=harness.symbol, side=side,
                                                  type=OrderType.MARKET, quantity=quantity, price=harness.price))
        wrapped.fetch_order_by_client_id(harness.symbol, order.client_order_id)
        wrapped.balances()

    sent = [(r.at, weight(harness.venue, r)) for r in server.requests()[before:] if r.at >= started]
    total = sum(w for _, w in sent)
    assert total > 2 * spec.burst, (harness.venue, total)  # enough traffic that the budget had to pace it
    # No one-second window holds more than a full bucket plus one second of refill.
    worst = max(sum(w for t, w in sent if s <= t < s + 1.0) for s, _ in sent)
    assert worst <= spec.burst + spec.rate + 1e-9, (harness.venue, worst, spec)
    # And the pacing really happened: spending `total` units takes at least (total - burst) / rate seconds.
    elapsed = sent[-1][0] - started
    assert elapsed >= 0.9 * (total - spec.burst) / spec.rate, (harness.venue, elapsed, total)
    assert sorted(harness.created_client_ids()) == [f"budget{i}" for i in range(4)]


def test_the_published_request_weights_are_what_the_connectors_meter() -> None:
    from exchanges.resilience import VENUE_RATES

    hl = VENUE_RATES["hyperliquid"]
    assert hl.request_cost("info:allMids") == 2 and hl.request_cost("info:userFillsByTime") == 20
    cb = VENUE_RATES["coinbase"]
    assert cb.request_cost("public") == 3 * cb.request_cost("private")
    assert VENUE_RATES["synthetix"].request_cost("rpc") == 1
