"""Synthetix perps v3 through web3 against anvil running the Vyper MockPerpsMarket (tests/fakes/synthetix_venue.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from exchanges import registry
from exchanges.base import InMemoryVenueJournal
from tests.exchanges.contract import ConnectorContract, ContractVenue
from tests.fakes.synthetix_venue import harness


class TestSynthetixConnectorContract(ConnectorContract):
    @pytest.fixture
    def venue(self) -> Iterator[ContractVenue]:
        with harness() as h:
            connector = registry.build(venue="synthetix", network=h.network, credentials=h.credentials,
                                       endpoint=h.endpoint, journal=InMemoryVenueJournal())
            yield ContractVenue(connector=connector, symbol=h.symbol, price=h.price, set_price=h.set_price)
