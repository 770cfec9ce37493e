"""The connector interface every venue implements, with its Decimal value types."""

from __future__ import annotations

import abc
import enum
import threading
from contextlib import AbstractContextManager, nullcontext
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, UTC
from typing import Any, Protocol
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, ROUND_UP, Context, Decimal

from exchanges.errors import InvalidOrderError


class Side(str, enum.Enum):
    BUY = "buy"
    SELL = "sell"

    @property
    def sign(self) -> int:
        """+1 for a buy, -1 for a sell."""
        return 1 if self is Side.BUY else -1

    @property
    def opposite(self) -> Side:
        return Side.SELL if self is Side.BUY else Side.BUY


class OrderType(str, enum.Enum):
    MARKET = "market"
    LIMIT = "limit"
    STOP = "stop"  # stop-market: triggers when price crosses trigger_price against the position
    TAKE_PROFIT = "take_profit"  # take-profit-market: triggers when price crosses in favour


class VenueOrderStatus(str, enum.Enum):
    OPEN = "open"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELED = "canceled"
    REJECTED = "rejected"

    @property
    def is_final(self) -> bool:
        return self in (VenueOrderStatus.FILLED, VenueOrderStatus.CANCELED, VenueOrderStatus.REJECTED)


@dataclass(frozen=True)
class Market:
    """A tradable market and its precision rules; sizes in base asset, prices in quote."""

    symbol: str
    base: str
    quote: str
    tick_size: Decimal
    lot_size: Decimal
    min_qty: Decimal
    min_notional: Decimal = Decimal("0")
    max_leverage: Decimal = Decimal("1")
    kind: str = "spot"  # spot | perp
    maker_fee: Decimal = Decimal("0")  # fraction of notional, 0.001 = 10 bps
    taker_fee: Decimal = Decimal("0")
    # A venue that allows at most this many significant figures in a price, whole numbers always (Hyperliquid: 5):
    # the step is then the coarser of the tick and the last significant figure. None: the tick alone.
    price_sig_figs: int | None = None

    def round_qty(self, qty: Decimal) -> Decimal:
        """Round a quantity down to the lot size (never up: rounding up can exceed a balance or a limit)."""
        return round_down(qty, self.lot_size)

    def round_price(self, price: Decimal, side: Side | None = None) -> Decimal:
        """Round a price to the market's rules: down for sells, up for buys, to the nearest (half-even) when no side
        is given."""
        if self.price_sig_figs is not None:
            rounding = ROUND_UP if side is Side.BUY else ROUND_DOWN if side is Side.SELL else ROUND_HALF_EVEN
            return round_sig_price(price, tick=self.tick_size, sig_figs=self.price_sig_figs, rounding=rounding)
        if side is Side.BUY:
            return round_up(price, self.tick_size)
        if side is Side.SELL:
            return round_down(price, self.tick_size)
        return (price / self.tick_size).quantize(Decimal(1)) * self.tick_size


def sig_price_step(price: Decimal, *, tick: Decimal, sig_figs: int) -> Decimal:
    """The price increment at this price's magnitude: `sig_figs` significant figures (whole numbers always allowed),
    never finer than the tick."""
    sig_step = Decimal(1).scaleb(price.adjusted() - (sig_figs - 1))
    return max(min(sig_step, Decimal(1)), tick)


def round_sig_price(price: Decimal, *, tick: Decimal, sig_figs: int, rounding: str = ROUND_HALF_EVEN) -> Decimal:
    """Round a positive price to at most `sig_figs` significant figures (whole numbers always allowed) on the tick
    (ROUND_DOWN / ROUND_UP / ROUND_HALF_EVEN); 0 when nothing valid is left."""
    step = sig_price_step(price, tick=tick, sig_figs=sig_figs)
    rounded = (price / step).to_integral_value(rounding=rounding) * step
    if rounded > 0 and rounded.adjusted() > price.adjusted():
        # Rounding up crossed a power of ten: the coarser step there may need one more rounding (never changes
        # a value that is already valid, so the result stays on the same side of `price`).
        step = sig_price_step(rounded, tick=tick, sig_figs=sig_figs)
        rounded = (rounded / step).to_integral_value(rounding=rounding) * step
    return rounded if rounded else Decimal(0)


# Wide enough for any quotient of a money value (38 digits) by a step: the default 28 digits would round the
# quotient half-even first, and a "round down" could then go up.
_STEPS = Context(prec=80)


def round_down(value: Decimal, step: Decimal) -> Decimal:
    """Largest multiple of step not above value (for value >= 0)."""
    return _STEPS.multiply(_STEPS.divide_int(value, step), step)  # divide_int truncates: the floor for value >= 0


def round_up(value: Decimal, step: Decimal) -> Decimal:
    """Smallest multiple of step not below value (for value >= 0)."""
    down = round_down(value, step)
    return down if down == value else _STEPS.add(down, step)


@dataclass(frozen=True)
class OrderRequest:
    """An order as we send it: our client order id is the idempotency key on the venue."""

    client_order_id: str
    symbol: str
    side: Side
    type: OrderType
    quantity: Decimal
    price: Decimal | None = None  # limit price, or the reference price of a market order
    trigger_price: Decimal | None = None
    reduce_only: bool = False
    post_only: bool = False
    leverage: Decimal | None = None


@dataclass(frozen=True)
class VenueFill:
    fill_id: str
    quantity: Decimal
    price: Decimal
    fee: Decimal
    fee_currency: str
    time: datetime
    liquidity: str = "taker"  # maker | taker


@dataclass(frozen=True)
class VenueOrder:
    """The venue's view of one order, with every fill it knows of."""

    client_order_id: str
    venue_order_id: str
    symbol: str
    side: Side
    type: OrderType
    status: VenueOrderStatus
    quantity: Decimal
    filled_quantity: Decimal = Decimal("0")
    price: Decimal | None = None
    trigger_price: Decimal | None = None
    reduce_only: bool = False
    fills: tuple[VenueFill, ...] = ()
    reason: str = ""


@dataclass(frozen=True)
class Balance:
    asset: str
    free: Decimal
    total: Decimal


@dataclass(frozen=True)
class VenuePosition:
    symbol: str
    quantity: Decimal  # signed: > 0 long, < 0 short
    entry_price: Decimal


@dataclass(frozen=True)
class Ticker:
    symbol: str
    price: Decimal
    time: datetime
    volume: Decimal | None = None  # base volume of the current candle, when known


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ms_to_datetime(ms: int) -> datetime:
    """Epoch milliseconds (UTC) to an aware datetime."""
    return EPOCH + timedelta(milliseconds=ms)


def datetime_to_ms(value: datetime) -> int:
    """An aware datetime to epoch milliseconds (UTC)."""
    return (value - EPOCH) // timedelta(milliseconds=1)


@dataclass(frozen=True)
class VenueCandle:
    """One OHLCV candle (a venue's, a CSV row's or a stored one): open_time is its open (aware UTC), volume in base.

    The one candle row type of the code base; indicator maths reads candles as columns (`strategies.base.Candles`).
    """

    open_time: datetime
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal


@dataclass(frozen=True)
class FundingRate:
    """One funding rate a perp market applied: at `time` (aware UTC, as the venue stamps it), a fraction of the
    position's notional (> 0: longs pay shorts)."""

    symbol: str
    time: datetime
    rate: Decimal


@dataclass(frozen=True)
class VenueFunding:
    """One funding payment a venue booked on our account: `amount` in the quote asset, signed as the cash moved
    (> 0: received, < 0: paid), on a position of `size` (signed base qty) at `rate`; `ref` the venue's id for it."""

    symbol: str
    time: datetime
    amount: Decimal
    rate: Decimal
    size: Decimal
    ref: str = ""


@dataclass(frozen=True)
class Capabilities:
    """Venue quirks as data, so callers never branch on the venue's name."""

    venue: str
    live: bool
    post_only: bool = True
    reduce_only: bool = True
    stop_orders: bool = True
    leverage: bool = True
    positions: bool = True
    candles: bool = True  # serves public candles (the live candle feed reads them)
    # The candle timeframes the venue serves ("1m", "1h", ...): a strategy or download on another one is refused.
    # None: not limited by the venue (candles come from our own store: the paper venue); (): it serves none.
    timeframes: tuple[str, ...] | None = None
    candle_page: int = 300  # candles one request answers at most (a history download pages by it)
    # Perps pay funding this often, on the venue's clock (Hyperliquid: every hour, on the hour); None: no funding.
    funding_interval: timedelta | None = None
    # The venue keeps its state in our own database and its calls join the caller's transaction (the paper venue
    # on the Django store): the engine may decide, send and record in one transaction, since nothing leaves it.
    in_database: bool = False
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckItem:
    """One line of `check_venues`: what was checked, whether it passed, and why (never a secret)."""

    name: str
    ok: bool
    detail: str = ""


class Connector(abc.ABC):
    """What every venue must implement. Quantities in base asset, prices in quote, all Decimal.

    Orders: a venue implements `_create_order`; `create_order` (checks, rounding, then the hook) is shared."""

    capabilities: Capabilities
    # Set by the resilience wrapper on a connector that meters its own requests (`meters_requests`): called with a
    # request's budget key (and its weight when the venue weighs it by size) right before it goes on the wire.
    meters_requests: bool = False
    request_meter: Callable[[str, float | None], None] | None = None

    def _metered(self, key: str, units: float | None = None) -> None:
        """Spend the rate budget of one request about to be sent (waits when the budget says so)."""
        meter = self.request_meter
        if meter is not None:
            meter(key, units)

    @abc.abstractmethod
    def markets(self) -> Sequence[Market]:
        """List the venue's markets with tick, lot and minimum sizes."""

    def market(self, symbol: str) -> Market:
        """Return one market, or raise MarketNotFoundError."""
        from exchanges.errors import MarketNotFoundError

        for m in self.markets():
            if m.symbol == symbol:
                return m
        raise MarketNotFoundError(f"unknown market {symbol!r}", venue=self.capabilities.venue)

    @abc.abstractmethod
    def balances(self) -> Sequence[Balance]:
        """Return balances per asset."""

    @abc.abstractmethod
    def ticker(self, symbol: str) -> Ticker:
        """Return the current price of a market."""

    def tickers(self, symbols: Sequence[str]) -> dict[str, Ticker]:
        """Return the current prices of several markets, in one request where the venue quotes them all at once.

        A market whose price cannot be read is left out (its `ticker` raises the reason); this default asks one
        market at a time."""
        from exchanges.errors import VenueError

        found: dict[str, Ticker] = {}
        for symbol in dict.fromkeys(symbols):
            try:
                found[symbol] = self.ticker(symbol)
            except VenueError:
                continue
        return found

    def create_order(self, request: OrderRequest) -> VenueOrder:
        """Place an order: checked, rounded to the market's lot and tick, then sent by the venue's `_create_order`.

        An order the venue already holds under this client id is returned as it is. Raise InvalidOrderError for an
        order no venue could take, OrderStatusUnknownError when the outcome is ambiguous."""
        placed = self._order_placed(request)
        if placed is not None:
            return placed
        self._check_order(request)
        market = self.market(request.symbol)
        rounded = self.quantize(request)
        self._check_rounded(request, rounded, market)
        return self._create_order(rounded, market)

    def _create_order(self, request: OrderRequest, market: Market) -> VenueOrder:
        """Send a checked order, already rounded to the market, and return the venue's view of it (the venue's hook).

        Raise InvalidOrderError for what this venue refuses, OrderStatusUnknownError when the outcome is ambiguous.
        """
        # Not abstract: wrappers (resilience, latency) and test fakes override create_order itself.
        raise NotImplementedError(f"{type(self).__name__} must implement _create_order")

    def _order_placed(self, request: OrderRequest) -> VenueOrder | None:
        """Return the order already placed under this client id when the venue can tell without a request, else None.

        It is answered before any check: a retry of an order the venue took is never refused because the market's
        rules moved since. A venue that keeps no local record answers in `_create_order` (or on the venue) instead.
        """
        return None

    def _check_order(self, request: OrderRequest) -> None:
        """Refuse, before any request, an order no venue could take; a venue extends it with its own checks."""
        venue = self.capabilities.venue
        if not request.client_order_id:
            raise InvalidOrderError("client_order_id is required", venue=venue)
        for name in ("quantity", "price", "trigger_price", "leverage"):
            value = getattr(request, name)
            if value is not None and not value.is_finite():
                raise InvalidOrderError(f"{name} must be a finite number, got {value}", venue=venue)
        for name in ("price", "trigger_price", "leverage"):
            value = getattr(request, name)
            if value is not None and value <= 0:
                raise InvalidOrderError(f"{name} must be positive, got {value}", venue=venue)
        if request.type is OrderType.LIMIT and request.price is None:
            raise InvalidOrderError("a limit order needs a price", venue=venue)
        if request.type in (OrderType.STOP, OrderType.TAKE_PROFIT) and request.trigger_price is None:
            raise InvalidOrderError(f"a {request.type.value} order needs a trigger_price", venue=venue)
        if request.post_only and request.type is not OrderType.LIMIT:
            raise InvalidOrderError("post-only needs a limit order", venue=venue)

    def _check_rounded(self, request: OrderRequest, rounded: OrderRequest, market: Market) -> None:
        """Refuse an order whose size falls below the market's minimum, or a price to zero, once rounded."""
        venue = self.capabilities.venue
        if rounded.quantity <= 0 or rounded.quantity < market.min_qty:
            raise InvalidOrderError(
                f"quantity {request.quantity} is below the minimum {market.min_qty} (lot {market.lot_size}) "
                f"on {market.symbol}",
                venue=venue,
            )
        for name in ("price", "trigger_price"):
            value = getattr(rounded, name)
            if value is not None and value <= 0:
                raise InvalidOrderError(f"{name} {getattr(request, name)} is below the smallest price of "
                                        f"{market.symbol}", venue=venue)

    @abc.abstractmethod
    def cancel_order(self, symbol: str, venue_order_id: str) -> VenueOrder:
        """Cancel an order by venue id and return its final state."""

    @abc.abstractmethod
    def fetch_order(self, symbol: str, venue_order_id: str) -> VenueOrder:
        """Return an order by venue id, or raise OrderNotFoundError."""

    @abc.abstractmethod
    def fetch_order_by_client_id(self, symbol: str, client_order_id: str) -> VenueOrder | None:
        """Return an order by our client order id, or None when the venue has never seen it."""

    @abc.abstractmethod
    def open_orders(self, symbol: str | None = None) -> Sequence[VenueOrder]:
        """Return orders still working on the venue."""

    @abc.abstractmethod
    def positions(self) -> Sequence[VenuePosition]:
        """Return open positions (net quantity per market)."""

    @abc.abstractmethod
    def set_leverage(self, symbol: str, leverage: Decimal) -> None:
        """Set the leverage used for new orders on a market."""

    def candles(self, symbol: str, timeframe: str, *, since: datetime | None = None,
                limit: int = 300) -> Sequence[VenueCandle]:
        """Return recent candles (oldest first, the current unfinished one included) from the venue's public data."""
        from exchanges.errors import VenueError

        raise VenueError(f"{self.capabilities.venue} serves no candles", venue=self.capabilities.venue)

    def funding_rates(self, symbol: str, *, since: datetime, until: datetime | None = None) -> Sequence[FundingRate]:
        """Return the funding rates a perp market applied from `since` to `until` (now), oldest first, from the venue's
        public data; a time the venue skipped is simply absent."""
        from exchanges.errors import VenueError

        raise VenueError(f"{self.capabilities.venue} publishes no funding rates", venue=self.capabilities.venue)

    def funding_payments(self, *, since: datetime, until: datetime | None = None) -> Sequence[VenueFunding]:
        """Return the funding payments the venue booked on our account from `since` to `until` (now), oldest first."""
        from exchanges.errors import VenueError

        raise VenueError(f"{self.capabilities.venue} reports no funding payments", venue=self.capabilities.venue)

    def unit_of_work(self) -> AbstractContextManager[None]:
        """Group calls into one unit; an `in_database` venue opens its transaction and takes its locks here."""
        return nullcontext()

    def prefetch(self, *, symbols: Sequence[str] = (), client_order_ids: Sequence[str] = ()) -> None:  # noqa: B027 - optional hook, no-op by default
        """Hint that the next unit of work reads these prices (a venue may read them together) and places orders
        under these freshly generated client ids (which no order can have yet)."""

    def verify(self) -> Sequence[CheckItem]:
        """Check credentials, signature, permissions and connectivity; venues add their own checks."""
        from exchanges.errors import VenueError

        try:
            self.balances()
        except VenueError as exc:
            return [CheckItem("credentials accepted", False, f"{type(exc).__name__}: {exc}")]
        return [CheckItem("credentials accepted", True, "balances read")]

    def quantize(self, request: OrderRequest) -> OrderRequest:
        """Round a request to the market's lot and tick as the last step before the wire."""
        from dataclasses import replace

        m = self.market(request.symbol)
        # A limit price is the worst the trader accepts: onto the tick towards a better price (a buy down, a sell
        # up). A market order's reference price bounds slippage: onto the tick the other way, leaving room.
        side = request.side.opposite if request.type is OrderType.LIMIT else request.side
        return replace(
            request,
            quantity=m.round_qty(request.quantity),
            price=None if request.price is None else m.round_price(request.price, side),
            trigger_price=None if request.trigger_price is None else m.round_price(request.trigger_price),
        )


class VenueJournal(Protocol):
    """Durable key/value state a connector keeps outside the venue (e.g. a signed transaction before broadcast).

    `put` returns only once the value is durable; values are JSON-shaped mappings.
    """

    def put(self, key: str, value: Mapping[str, Any]) -> None: ...

    def get(self, key: str) -> Mapping[str, Any] | None: ...

    def items(self, prefix: str = "") -> list[tuple[str, Mapping[str, Any]]]: ...

    def delete(self, key: str) -> None: ...

    def lock(self, name: str) -> AbstractContextManager[object]:
        """Hold `name` against every other holder of this journal's store (other processes too); re-entrant."""
        ...


class InMemoryVenueJournal:
    """A VenueJournal for tests and tools that need no durability."""

    def __init__(self) -> None:
        self._data: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._named: dict[str, threading.RLock] = {}

    def put(self, key: str, value: Mapping[str, Any]) -> None:
        with self._lock:
            self._data[key] = dict(value)

    def get(self, key: str) -> Mapping[str, Any] | None:
        with self._lock:
            value = self._data.get(key)
            return None if value is None else dict(value)

    def items(self, prefix: str = "") -> list[tuple[str, Mapping[str, Any]]]:
        with self._lock:
            return sorted((k, dict(v)) for k, v in self._data.items() if k.startswith(prefix))

    def delete(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)

    def lock(self, name: str) -> AbstractContextManager[object]:
        """A lock in this process only (as the data itself)."""
        with self._lock:
            return self._named.setdefault(name, threading.RLock())


@dataclass(frozen=True)
class VenueConfig:
    """Everything a live venue module's `build(config)` needs to construct its connector."""

    venue: str
    network: str  # "testnet" or "mainnet"
    credentials: Mapping[str, str] = field(repr=False, default_factory=dict)
    # Base URL (or RPC URL) override; None means the venue's published URL for `network`. Tests point it at a fake.
    endpoint: str | None = None
    journal: VenueJournal | None = None
    account: str = ""  # a stable name of the account, for per-account rate limits, breakers and logs
