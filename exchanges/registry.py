"""The only module that knows the concrete live connector classes.

Each live venue is a module `exchanges.<venue>` with a `build(config: VenueConfig) -> Connector` function; it is
imported on first use, so a missing optional library only breaks the venue that needs it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping

from exchanges.base import Connector, VenueConfig, VenueJournal
from exchanges.errors import LiveVenueForbiddenError, VenueError

Builder = Callable[[VenueConfig], Connector]

_MODULES = {"coinbase": "exchanges.coinbase", "hyperliquid": "exchanges.hyperliquid", "synthetix": "exchanges.synthetix"}
# Explicit registrations (tests, plug-ins) win over the module convention.
_LIVE: dict[str, Builder] = {}


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
) -> Connector:
    """Build a live venue's connector; a paper network can never reach one."""
    if network == "paper" or venue == "paper":
        raise LiveVenueForbiddenError("paper accounts use the paper connector, never a live venue", venue=venue)
    if network not in ("testnet", "mainnet"):
        raise VenueError(f"unknown network {network!r}", venue=venue)
    config = VenueConfig(
        venue=venue, network=network, credentials=dict(credentials), endpoint=endpoint, journal=journal,
        account=account,
    )
    return _builder(venue)(config)
