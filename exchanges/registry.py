"""The only module that knows the concrete live connector classes."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from exchanges.base import Connector
from exchanges.errors import LiveVenueForbiddenError, VenueError

Builder = Callable[[str, Mapping[str, str]], Connector]

# Live venues register here as their connectors land (venue -> builder(network, credentials)).
_LIVE: dict[str, Builder] = {}


def register(venue: str, builder: Builder) -> None:
    """Make a live venue's connector available."""
    _LIVE[venue] = builder


def build(*, venue: str, network: str, credentials: Mapping[str, str]) -> Connector:
    """Build a live venue's connector; a paper network can never reach one."""
    if network == "paper" or venue == "paper":
        raise LiveVenueForbiddenError("paper accounts use the paper connector, never a live venue", venue=venue)
    if network not in ("testnet", "mainnet"):
        raise VenueError(f"unknown network {network!r}", venue=venue)
    builder = _LIVE.get(venue)
    if builder is None:
        raise VenueError(f"no connector for venue {venue!r} is installed yet", venue=venue)
    return builder(network, credentials)
