"""Market prices: the latest price of each market of each price feed in the database (what the paper venue, the
monitor, the marks and the webhook's price guard read). A feed is the bundled demo replay or a venue's public
prices; a paper account names its feed, a live account reads its own venue's."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from collections.abc import Sequence
from typing import Protocol

from django.db import connection
from django.db.models import Q

from exchanges.base import Ticker
from exchanges.errors import TemporaryError
from infra import rows
from infra.rows import Rows
from trading.models import MarketPrice, PriceFeed, VenueAccount

_PRICE_ROWS = Rows(MarketPrice, ["price", "time", "volume"])
_price_sql: str | None = None


def price_feed_of(account: VenueAccount) -> str:
    """The price feed an account's markets are priced from: a paper account's chosen feed; a live account's own
    venue (with its network when not mainnet)."""
    return feed_name(account.venue, account.network, account.price_feed)


def feed_name(venue: str, network: str, price_feed: str) -> str:
    """price_feed_of for an account read as its three columns."""
    if venue == VenueAccount.Venue.PAPER:
        return price_feed
    if network == VenueAccount.Network.TESTNET:
        return f"{venue}-testnet"
    return venue


def accounts_priced_by(feed: str) -> Q:
    """The accounts (a filter on VenueAccount) whose markets `feed` prices: price_feed_of's inverse."""
    venue, _, testnet = feed.partition("-")
    network = VenueAccount.Network.TESTNET if testnet == "testnet" else VenueAccount.Network.MAINNET
    return Q(venue=VenueAccount.Venue.PAPER, price_feed=feed) | Q(venue=venue, network=network) & ~Q(
        venue=VenueAccount.Venue.PAPER)


def price_sql() -> str:
    """The statement that reads one market's price, time and volume (parameters: the feed, the symbol); the same
    text each time, so that a read batched ahead (`rows.prefetch`) is found by the read that follows."""
    global _price_sql
    if _price_sql is None:
        q = connection.ops.quote_name
        _price_sql = (f"SELECT m.{q('price')}, m.{q('time')}, m.{q('volume')} FROM {q(MarketPrice._meta.db_table)} m "
                      f"WHERE m.{q('feed')} = %s AND m.{q('symbol')} = %s")
    return _price_sql


class UnitPrices(Protocol):
    """Where prices read in one unit of work are kept (the paper store), so that one transaction sees one price."""

    def unit_prices(self) -> dict[str, Ticker] | None:
        """The current unit of work's prices by symbol, or None outside one."""
        ...


def price_set(symbol: str, price: Decimal, *, time: datetime, volume: Decimal | None = None,
              feed: str = PriceFeed.DEMO) -> None:
    """Publish the latest price of a market of `feed` (the paper venue, the monitor and the marks read it)."""
    MarketPrice.objects.update_or_create(feed=feed, symbol=symbol,
                                         defaults={"price": price, "volume": volume, "time": time})


def prices_store(feed: str, prices: Sequence[tuple[str, Decimal, datetime]]) -> None:
    """Publish the latest (symbol, price, time) of several markets of `feed` in one upsert (the market-data
    role's coalesced write)."""
    if prices:
        MarketPrice.objects.bulk_create(
            [MarketPrice(feed=feed, symbol=symbol, price=price, time=time) for symbol, price, time in prices],
            update_conflicts=True, unique_fields=["feed", "symbol"], update_fields=["price", "time"])


class DbPriceSource:
    """Prices of one feed from the MarketPrice table (written by the demo feed, the market-data role, or tests).

    Inside one unit of work of `store` a market's price is read once: one transaction sees one price.
    """

    def __init__(self, store: UnitPrices | None = None, feed: str = PriceFeed.DEMO) -> None:
        self.store = store
        self.feed = feed

    def ticker(self, symbol: str) -> Ticker:
        prices = self.store.unit_prices() if self.store is not None else None
        if prices is not None and symbol in prices:
            return prices[symbol]
        found = rows.fetch_all(price_sql(), [self.feed, symbol])
        if not found:
            raise TemporaryError(f"no price for {symbol}", venue="paper")
        price, when, volume = _PRICE_ROWS.values(found[0])
        tick = Ticker(symbol=symbol, price=price, time=when, volume=volume)
        if prices is not None:
            prices[symbol] = tick
        return tick
