"""A hand-written price source for the paper venue's tests: prices, candle volumes and time set by hand."""

from __future__ import annotations

from datetime import datetime, timedelta, UTC
from decimal import Decimal

from exchanges.base import Ticker
from exchanges.errors import TemporaryError

T0 = datetime(2024, 1, 2, 3, 4, tzinfo=UTC)


class FakePrices:
    """A PriceSource whose prices and candle volumes a test sets; `now` is the candle time and the clock."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now
        self._quotes: dict[str, tuple[Decimal, Decimal | None]] = {}

    def set(self, symbol: str, price: str | Decimal, *, volume: str | Decimal | None = None) -> None:
        """Set a symbol's price, and the base volume of its current candle when given."""
        self._quotes[symbol] = (Decimal(price), None if volume is None else Decimal(volume))

    def remove(self, symbol: str) -> None:
        """Forget a symbol's price."""
        del self._quotes[symbol]

    def next_candle(self, minutes: int = 1) -> None:
        """Move time on to a later candle."""
        self.now += timedelta(minutes=minutes)

    def clock(self) -> datetime:
        """Return the current time."""
        return self.now

    def ticker(self, symbol: str) -> Ticker:
        """Return the price set for a symbol, or raise TemporaryError."""
        if symbol not in self._quotes:
            raise TemporaryError(f"no price for {symbol}", venue="fake")
        price, volume = self._quotes[symbol]
        return Ticker(symbol=symbol, price=price, time=self.now, volume=volume)
