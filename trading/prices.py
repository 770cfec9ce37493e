"""Market prices: the latest price of each market in the database (the feed the paper venue and the monitor read)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Protocol

from django.db import connection

from exchanges.base import Ticker
from exchanges.errors import TemporaryError
from infra import rows
from infra.rows import Rows
from trading.models import MarketPrice

_PRICE_ROWS = Rows(MarketPrice, ["price", "time", "volume"])
_price_sql: str | None = None


def price_sql() -> str:
    """The statement that reads one market's price, time and volume (parameter: the symbol); the same text each
    time, so that a read batched ahead (`rows.prefetch`) is found by the read that follows."""
    global _price_sql
    if _price_sql is None:
        q = connection.ops.quote_name
        _price_sql = (f"SELECT m.{q('price')}, m.{q('time')}, m.{q('volume')} FROM {q(MarketPrice._meta.db_table)} m "
                      f"WHERE m.{q('symbol')} = %s")
    return _price_sql


class UnitPrices(Protocol):
    """Where prices read in one unit of work are kept (the paper store), so that one transaction sees one price."""

    def unit_prices(self) -> dict[str, Ticker] | None:
        """The current unit of work's prices by symbol, or None outside one."""
        ...


def price_set(symbol: str, price: Decimal, *, time: datetime, volume: Decimal | None = None) -> None:
    """Publish the latest price of a market to the feed the paper venue and the monitor read."""
    MarketPrice.objects.update_or_create(symbol=symbol, defaults={"price": price, "volume": volume, "time": time})


class DbPriceSource:
    """Prices from the MarketPrice table (written by the replay feed, a venue's public prices, or tests).

    Inside one unit of work of `store` a market's price is read once: one transaction sees one price.
    """

    def __init__(self, store: UnitPrices | None = None) -> None:
        self.store = store

    def ticker(self, symbol: str) -> Ticker:
        prices = self.store.unit_prices() if self.store is not None else None
        if prices is not None and symbol in prices:
            return prices[symbol]
        found = rows.fetch_all(price_sql(), [symbol])
        if not found:
            raise TemporaryError(f"no price for {symbol}", venue="paper")
        price, when, volume = _PRICE_ROWS.values(found[0])
        tick = Ticker(symbol=symbol, price=price, time=when, volume=volume)
        if prices is not None:
            prices[symbol] = tick
        return tick
