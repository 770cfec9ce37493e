"""A live account and strategy trading on a fake venue through its real connector, for the venue suites.

The account reaches the fake the way production reaches a venue: its credentials and `<PREFIX>_ENDPOINT` are
environment variables (`VenueHarness.env`), so real Celery workers started with the same environment use the
same fake. Only `tests/` uses this.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from exchanges import registry
from exchanges.base import Connector, InMemoryVenueJournal, Market, round_up
from exchanges.resilience import CircuitBreaker
from tests.fakes.faults import FakeHTTPServer, Request
from tests.fakes.venues import VenueHarness

PREFIX = "SUITE_VENUE"


def _body(request: Request) -> Any:
    try:
        return request.json()
    except ValueError:
        return None


def _hyperliquid_order(request: Request) -> bool:
    body = _body(request)
    return request.path.startswith("/exchange") and isinstance(body, dict) and \
        isinstance(body.get("action"), dict) and body["action"].get("type") == "order"


def _rpc_send(request: Request) -> bool:
    body = _body(request)
    calls = body if isinstance(body, list) else [body]
    return any(isinstance(c, dict) and c.get("method") == "eth_sendRawTransaction" for c in calls)


# Which request of each venue creates an order (a harness may name its own with extra["create_match"]).
CREATE_MATCH: dict[str, Callable[[Request], bool]] = {
    "coinbase": lambda r: r.method == "POST" and r.path.split("?")[0].rstrip("/").endswith("/brokerage/orders"),
    "hyperliquid": _hyperliquid_order,
    "synthetix": _rpc_send,
}


def create_match(harness: VenueHarness) -> Callable[[Request], bool]:
    """The matcher of the requests that create an order on this harness's venue."""
    found = harness.extra.get("create_match") or CREATE_MATCH[harness.venue]
    return found  # type: ignore[return-value]


def fake_server(harness: VenueHarness) -> FakeHTTPServer:
    """The harness's loopback HTTP server (its fault plan and request journal)."""
    for value in harness.extra.values():
        if isinstance(value, FakeHTTPServer) and value.plan is harness.plan:
            return value
    raise LookupError(f"the {harness.venue} harness exposes no FakeHTTPServer in extra")


def creates_received(harness: VenueHarness) -> int:
    """How many order-creating requests reached the fake (before any fault was applied to them)."""
    return len(fake_server(harness).requests(create_match(harness)))


def client_timeout_of(harness: VenueHarness) -> float:
    """Seconds the harness's connector waits for a reply (what a Fault.TIMEOUT hold must exceed)."""
    for value in (harness.extra.get("client_timeout"), harness.credentials.get("timeout"),
                  harness.credentials.get("rpc_timeout")):
        if value is not None:
            return float(value)  # type: ignore[arg-type]
    return 10.0


def bare_connector(harness: VenueHarness) -> Connector:
    """The venue's connector on the fake without retries, limiter or breaker (the venue's raw answers)."""
    return registry.build(venue=harness.venue, network=harness.network, credentials=harness.credentials,
                          endpoint=harness.endpoint, journal=InMemoryVenueJournal(), account="suite-bare",
                          resilient=False)


def small_quantity(market: Market, price: Decimal) -> Decimal:
    """Twice the smallest quantity that clears the market's lot, minimum size and minimum notional."""
    smallest = max(market.lot_size, round_up(market.min_qty, market.lot_size))
    if market.min_notional > 0:
        smallest = max(smallest, round_up(market.min_notional / price, market.lot_size))
    return smallest * 2


@dataclass
class LiveSetup:
    """What a venue suite trades with: the harness, its account and strategy, and the order size."""

    harness: VenueHarness
    account: Any  # VenueAccount
    strategy: Any  # Strategy
    market: Market
    quantity: Decimal
    env: dict[str, str]

    def breaker(self) -> CircuitBreaker:
        """This process's circuit breaker of the account's venue."""
        return registry.guards(self.account.venue, self.account.name)[1]

    def created(self, client_order_id: str) -> int:
        """How many orders the fake venue created with this client order id."""
        return self.harness.created_client_ids().count(client_order_id)


def live_setup(harness: VenueHarness, *, setenv: Callable[[str, str], None], make_strategy: Callable[..., Any],
               name: str | None = None, prefix: str = PREFIX, **strategy: Any) -> LiveSetup:
    """Create a funded live account on the harness (credentials set with `setenv`) and a live strategy on it."""
    from trading import reconcile, services

    env = harness.env(prefix)
    for key, value in env.items():
        setenv(key, value)
    market = bare_connector(harness).market(harness.symbol)
    account = services.account_create(data={
        "name": name or f"{harness.venue}-{uuid.uuid4().hex[:6]}", "venue": harness.venue,
        "network": harness.network, "credentials_env": prefix, "quote_asset": market.quote, "max_leverage": "5",
    }, by="test")
    report = reconcile.account_reconcile(account=account)  # opens the cash book at the venue's balance
    account.refresh_from_db()
    assert account.cash > 0, f"the fake funded no {market.quote}: {json.dumps(report, default=str)}"
    quantity = small_quantity(market, harness.price)
    fields = {"symbol": harness.symbol, "mode": "live", "sizing_mode": "quantity", "sizing_value": str(quantity),
              "leverage": "1"}
    fields.update(strategy)
    return LiveSetup(harness=harness, account=account, strategy=make_strategy(account, **fields), market=market,
                     quantity=quantity, env=env)


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for a block and restore the previous values after it."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def drive(until: Callable[[], Any], *, timeout: float, every: float = 0.2, sweep: bool = True,
          monitor: bool = True, seen: Callable[[], None] | None = None) -> Any:
    """Run the beat's periodic work in this process (sweeper, exit driver, monitor) until `until()` is truthy."""
    from trading.exits import exits_drive
    from trading.monitor import positions_monitor
    from trading.recovery import orders_sweep

    deadline = time.monotonic() + timeout
    while True:
        if seen is not None:
            seen()
        value = until()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {until}")
        if sweep:
            orders_sweep()
            exits_drive()
        if monitor:
            positions_monitor()
        time.sleep(every)
