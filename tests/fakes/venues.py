"""One harness shape for every loopback fake venue, so suites can be parametrized over venues.

Each venue module under tests/fakes exposes `harness() -> contextmanager[VenueHarness]` that starts its fake on
127.0.0.1, funds a test account, and yields the harness; `HARNESSES` names them for parametrized suites.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from decimal import Decimal

from tests.fakes.faults import FaultPlan, OrderFaultPlan

# venue -> "module:function" returning a context manager that yields a VenueHarness
HARNESSES: dict[str, str] = {
    "coinbase": "tests.fakes.coinbase_venue:harness",
    "hyperliquid": "tests.fakes.hyperliquid_venue:harness",
    "synthetix": "tests.fakes.synthetix_venue:harness",
}


@dataclass
class VenueHarness:
    """A running fake venue and what a test needs to trade on it through the real connector."""

    venue: str  # registry name, e.g. "coinbase"
    network: str  # "testnet" or "mainnet"
    endpoint: str  # base URL / RPC URL of the fake (goes to VenueConfig.endpoint or <PREFIX>_ENDPOINT)
    credentials: dict[str, str]  # lower-case keys as registry.build takes them (env <PREFIX>_<KEY upper>)
    symbol: str  # a market the fake trades
    price: Decimal  # its price when the harness starts
    set_price: Callable[[str, Decimal], None]  # move the fake's market (working orders react before it returns)
    plan: FaultPlan  # fault injection
    # client order ids of every create order the fake accepted (one entry per venue order created)
    created_client_ids: Callable[[], list[str]]
    # make the next `n` market/limit orders fill only `fraction` of their size now (the rest later or never)
    partial_fills: Callable[[int, Decimal], None] = field(default=lambda n, fraction: None)
    # the venue's own order faults (refuse, cancel, partial, expire, drop) on its next matching creates
    order_faults: OrderFaultPlan = field(default_factory=OrderFaultPlan)
    extra: dict[str, object] = field(default_factory=dict)

    def env(self, prefix: str) -> dict[str, str]:
        """The environment variables an account with `credentials_env=prefix` needs to reach this fake."""
        values = {f"{prefix}_{key.upper()}": value for key, value in self.credentials.items()}
        values[f"{prefix}_ENDPOINT"] = self.endpoint
        return values


def harness(venue: str) -> AbstractContextManager[VenueHarness]:
    """Start the named venue's fake and return its harness context manager."""
    module_name, func = HARNESSES[venue].split(":")
    factory: Callable[[], AbstractContextManager[VenueHarness]] = getattr(importlib.import_module(module_name), func)
    return factory()


def available() -> Iterator[str]:
    """Every venue with a fake; a fake module that fails to import fails the run (never a silently smaller suite)."""
    for venue, target in HARNESSES.items():
        importlib.import_module(target.split(":")[0])
        yield venue
