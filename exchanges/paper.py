"""The paper-trading venue: simulated fills on real prices, with its state kept in a pluggable store.

Fill model (all Decimal, prices in the market's quote, quantities in base; its pure rules, shared with the
backtester, are in `exchanges/fills.py`). An order is worked once when
placed (so a stop whose trigger is already crossed fills at once) and then on every `match()` call:
- MARKET, and STOP / TAKE_PROFIT once triggered, fill at the current price moved `slippage_bps` against the
  taker (buys rounded up to the tick, sells down) and pay the taker fee.
- A LIMIT that is marketable when placed fills at once as taker at the better of its limit and the slipped
  price (min for buys, max for sells); a resting LIMIT fills at its limit price as maker when the price
  reaches it (buy: price <= limit, sell: price >= limit). A post-only limit that would take is rejected.
- STOP triggers against the taker's side (sell: price <= trigger, buy: price >= trigger), TAKE_PROFIT in
  its favour (sell: price >= trigger, buy: price <= trigger).
- With `max_volume_share` set and a ticker that carries the candle's volume, all orders on a market share a
  budget of round_down(share x volume, lot) per candle (a candle is a ticker time); the rest stays open
  and fills on later `match()` calls.
- Reduce-only orders are clipped to the position they reduce (when placed and at every fill), rejected when
  there is nothing to reduce, and canceled once their position is gone.
- Planned faults (`PaperFaults`, process-wide `PAPER_FAULTS`) make the venue say no as real ones do: refuse an
  order, cancel it unfilled (an IOC with nothing to match), fill it in part and cancel the rest, expire it, or
  take it and lose the reply. Tests and drills plan them; nothing plans them in normal running.

Accounting is linear and margin-style, so longs and shorts work the same: the account holds one cash
balance in `quote_asset`; a buy pays qty x price + fee, a sell receives qty x price - fee, and equity is
cash + sum(qty x mark). Amounts in another quote (ETH/BTC) are converted at the `<quote>/<quote_asset>`
price at the time of the fill; quotes in `par_assets` (USD, USDT, USDC) are taken 1:1. An order's new
exposure (the part that does not reduce the position) divided by its leverage must fit in the free margin:
equity less what positions and working orders hold at their market's max leverage. Reduce-only orders and
the closing part of any order need no margin.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, UTC
from decimal import Decimal
from typing import Any, Protocol

from exchanges.base import (
    Balance,
    Capabilities,
    Connector,
    Market,
    OrderRequest,
    OrderType,
    Side,
    Ticker,
    VenueFill,
    VenueOrder,
    VenueOrderStatus,
    VenuePosition,
    round_down,
)
from exchanges.errors import (
    InsufficientFundsError,
    InvalidOrderError,
    MarketNotFoundError,
    OrderNotFoundError,
    TemporaryError,
)
from exchanges.fills import FEE_QUANTUM, is_triggered, limit_crosses, reference_price, round_half_up, slipped_price

VENUE = "paper"
ZERO = Decimal("0")
ONE = Decimal("1")
BPS = Decimal("10000")


class PriceSource(Protocol):
    """Where the paper venue reads prices.

    A ticker that carries `volume` (base volume of the current candle) must be stamped with the candle's
    open time: the volume budget of partial fills is kept per ticker time.
    """

    def ticker(self, symbol: str) -> Ticker:
        """Return the current price of a symbol, or raise TemporaryError when there is none."""
        ...


class PaperStore(Protocol):
    """The simulated account's state. Every venue call that changes it runs inside one `atomic()`."""

    def atomic(self) -> AbstractContextManager[None]:
        """Open one unit of work: all or nothing, and no other unit interleaves; a nested one is a savepoint."""
        ...

    def get_order(self, client_order_id: str) -> VenueOrder | None:
        """Return the order with this client order id, or None."""
        ...

    def get_order_by_venue_id(self, venue_order_id: str) -> VenueOrder | None:
        """Return the order with this venue order id, or None."""
        ...

    def save_order(self, order: VenueOrder) -> None:
        """Insert or replace an order, keyed by its client order id."""
        ...

    def open_orders(self, symbol: str | None) -> list[VenueOrder]:
        """Return orders whose status is not final, of one symbol or of all."""
        ...

    def cash(self) -> Decimal:
        """Return the cash balance, in the account's quote asset."""
        ...

    def set_cash(self, value: Decimal) -> None:
        """Replace the cash balance."""
        ...

    def position(self, symbol: str) -> tuple[Decimal, Decimal]:
        """Return (signed qty in base, signed cost basis in quote); (0, 0) when flat or unknown."""
        ...

    def set_position(self, symbol: str, qty: Decimal, cost: Decimal) -> None:
        """Replace a position's signed qty and signed cost basis."""
        ...

    def all_positions(self) -> dict[str, tuple[Decimal, Decimal]]:
        """Return every stored position by symbol (flat ones may be included)."""
        ...

    def volume_taken(self, symbol: str) -> tuple[datetime, Decimal] | None:
        """Return (candle time, base qty filled in that candle) last recorded for a symbol, or None."""
        ...

    def set_volume_taken(self, symbol: str, candle: datetime, qty: Decimal) -> None:
        """Record the base qty filled so far in a symbol's candle (only the latest candle is needed)."""
        ...

    def next_id(self) -> int:
        """Return a new, strictly increasing integer (it need not roll back with a unit of work)."""
        ...


class InMemoryPaperStore:
    """A PaperStore in process memory: thread-safe; `atomic()` (re-entrant) rolls back its level on an exception."""

    def __init__(self, initial_cash: Decimal) -> None:
        self._lock = threading.RLock()
        self._cash = initial_cash
        self._orders: dict[str, VenueOrder] = {}
        self._client_ids: dict[str, str] = {}  # venue order id -> client order id
        self._positions: dict[str, tuple[Decimal, Decimal]] = {}
        self._volume: dict[str, tuple[datetime, Decimal]] = {}
        self._last_id = 0

    @contextmanager
    def atomic(self) -> Iterator[None]:
        """Hold the lock for one unit of work and restore the state if it raises."""
        with self._lock:
            # Values are immutable, so shallow copies are a full snapshot; ids never roll back, like a sequence.
            saved = (self._cash, dict(self._orders), dict(self._client_ids), dict(self._positions), dict(self._volume))
            try:
                yield
            except BaseException:
                self._cash, self._orders, self._client_ids, self._positions, self._volume = saved
                raise

    def get_order(self, client_order_id: str) -> VenueOrder | None:
        """Return the order with this client order id, or None."""
        with self._lock:
            return self._orders.get(client_order_id)

    def get_order_by_venue_id(self, venue_order_id: str) -> VenueOrder | None:
        """Return the order with this venue order id, or None."""
        with self._lock:
            client_order_id = self._client_ids.get(venue_order_id)
            return None if client_order_id is None else self._orders[client_order_id]

    def save_order(self, order: VenueOrder) -> None:
        """Insert or replace an order, keyed by its client order id."""
        with self._lock:
            self._orders[order.client_order_id] = order
            self._client_ids[order.venue_order_id] = order.client_order_id

    def open_orders(self, symbol: str | None) -> list[VenueOrder]:
        """Return orders whose status is not final, of one symbol or of all."""
        with self._lock:
            return [
                o
                for o in self._orders.values()
                if not o.status.is_final and (symbol is None or o.symbol == symbol)
            ]

    def cash(self) -> Decimal:
        """Return the cash balance, in the account's quote asset."""
        with self._lock:
            return self._cash

    def set_cash(self, value: Decimal) -> None:
        """Replace the cash balance."""
        with self._lock:
            self._cash = value

    def position(self, symbol: str) -> tuple[Decimal, Decimal]:
        """Return (signed qty in base, signed cost basis in quote); (0, 0) when flat or unknown."""
        with self._lock:
            return self._positions.get(symbol, (ZERO, ZERO))

    def set_position(self, symbol: str, qty: Decimal, cost: Decimal) -> None:
        """Replace a position's signed qty and signed cost basis."""
        with self._lock:
            self._positions[symbol] = (qty, cost)

    def all_positions(self) -> dict[str, tuple[Decimal, Decimal]]:
        """Return every stored position by symbol (flat ones may be included)."""
        with self._lock:
            return dict(self._positions)

    def volume_taken(self, symbol: str) -> tuple[datetime, Decimal] | None:
        """Return (candle time, base qty filled in that candle) last recorded for a symbol, or None."""
        with self._lock:
            return self._volume.get(symbol)

    def set_volume_taken(self, symbol: str, candle: datetime, qty: Decimal) -> None:
        """Record the base qty filled so far in a symbol's candle."""
        with self._lock:
            self._volume[symbol] = (candle, qty)

    def next_id(self) -> int:
        """Return a new, strictly increasing integer."""
        with self._lock:
            self._last_id += 1
            return self._last_id


def _market(
    symbol: str, base: str, quote: str, *, tick: str, lot: str, min_qty: str, min_notional: str = "0",
    kind: str = "spot", max_leverage: str = "1",
) -> Market:
    return Market(
        symbol=symbol, base=base, quote=quote, tick_size=Decimal(tick), lot_size=Decimal(lot),
        min_qty=Decimal(min_qty), min_notional=Decimal(min_notional), max_leverage=Decimal(max_leverage),
        kind=kind, maker_fee=Decimal("0.0002"), taker_fee=Decimal("0.0005"),
    )


DEFAULT_MARKETS: tuple[Market, ...] = (
    _market("BTC/USD", "BTC", "USD", tick="0.01", lot="0.00001", min_qty="0.00001", min_notional="1"),
    _market("ETH/USD", "ETH", "USD", tick="0.01", lot="0.0001", min_qty="0.0001", min_notional="1"),
    _market("SOL/USD", "SOL", "USD", tick="0.01", lot="0.001", min_qty="0.001", min_notional="1"),
    _market("ETH/BTC", "ETH", "BTC", tick="0.00000001", lot="0.001", min_qty="0.001", min_notional="0.00001"),
    _market(
        "BTC-PERP", "BTC", "USD", tick="0.1", lot="0.0001", min_qty="0.0001", min_notional="10",
        kind="perp", max_leverage="10",
    ),
    _market(
        "XRP/USDT:USDT", "XRP", "USDT", tick="0.0001", lot="1", min_qty="1", min_notional="5",
        kind="perp", max_leverage="20",
    ),
)


@dataclass(frozen=True)
class PaperConfig:
    """The simulated venue's markets and fill model."""

    markets: tuple[Market, ...]
    quote_asset: str = "USD"
    slippage_bps: Decimal = Decimal("0")  # against the taker, in basis points of the price
    max_volume_share: Decimal | None = None  # share of a candle's base volume all fills together may take
    fee_quantum: Decimal = FEE_QUANTUM  # fees and funding are rounded HALF_UP to this
    par_assets: frozenset[str] = frozenset({"USD", "USDT", "USDC"})  # quotes settled 1:1 with each other
    max_price_age: timedelta | None = None  # refuse prices older than this (by the venue's clock)
    markets_from: str = ""  # whose markets these are (a venue's price feed), named when a symbol is not among them

    def __post_init__(self) -> None:
        symbols = [m.symbol for m in self.markets]
        if len(set(symbols)) != len(symbols):
            raise ValueError(f"duplicate market symbols in {symbols}")
        if not ZERO <= self.slippage_bps < BPS:
            raise ValueError(f"slippage_bps must be in [0, 10000), got {self.slippage_bps}")
        if self.max_volume_share is not None and not ZERO < self.max_volume_share <= ONE:
            raise ValueError(f"max_volume_share must be in (0, 1], got {self.max_volume_share}")
        if not self.fee_quantum > ZERO:
            raise ValueError(f"fee_quantum must be positive, got {self.fee_quantum}")


class PaperFault(str, enum.Enum):
    REFUSE = "refuse"  # the venue's checks say no (InvalidOrderError): nothing on the venue
    CANCEL = "cancel"  # taken, then canceled with nothing filled (an IOC with nothing to match)
    PARTIAL = "partial"  # half filled (floored to the lot), the rest canceled
    EXPIRE = "expire"  # taken, then expired unfilled
    DROP = "drop"  # taken and worked as usual, but the reply is lost (TemporaryError): an unknown outcome


OrderMatcher = Callable[[OrderRequest], bool]


class PaperFaults:
    """Faults the paper venue plays on its next matching orders, in the order they were planned."""

    def __init__(self) -> None:
        self._planned: list[list[Any]] = []  # [fault, matcher, remaining]
        self._lock = threading.Lock()

    def next(self, count: int, fault: PaperFault, *, match: OrderMatcher | None = None) -> None:
        """Play `fault` on the next `count` orders that `match` accepts (every order when None)."""
        with self._lock:
            self._planned.append([fault, match or (lambda request: True), count])

    def take(self, request: OrderRequest) -> PaperFault | None:
        """Return the fault planned for this order, if any, and count it as played."""
        with self._lock:
            for planned in self._planned:
                fault, match, remaining = planned
                if int(remaining) > 0 and match(request):
                    planned[2] = int(remaining) - 1
                    return fault
        return None

    def clear(self) -> None:
        """Forget every planned fault."""
        with self._lock:
            self._planned.clear()


PAPER_FAULTS = PaperFaults()


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _sequence(order: VenueOrder) -> int:
    return int(order.venue_order_id.rsplit("-", 1)[1])


class PaperVenue(Connector):
    """A simulated venue: fills orders on the price source's prices and keeps its account in a PaperStore."""

    capabilities = Capabilities(
        venue=VENUE,
        live=False,
        candles=False,  # prices come from the replay or a venue's feed; candles from the store
        extra={"fills": "on match()", "reduce_only": "clipped to the position", "margin": "linear, one cash balance"},
    )

    def __init__(
        self,
        *,
        store: PaperStore,
        prices: PriceSource,
        config: PaperConfig,
        clock: Callable[[], datetime] | None = None,
        faults: PaperFaults | None = None,
    ) -> None:
        self._store = store
        self._faults = PAPER_FAULTS if faults is None else faults
        if getattr(store, "in_database", False):
            self.capabilities = replace(self.capabilities, in_database=True)
        self._prices = prices
        self._config = config
        self._by_symbol = {m.symbol: m for m in config.markets}  # a venue's feed lists hundreds
        self._clock = clock or _utc_now
        self._leverage: dict[str, Decimal] = {}

    def unit_of_work(self) -> AbstractContextManager[None]:
        """One unit of work of the store: the calls inside it read the venue's state once and write it once."""
        return self._store.atomic()

    def prefetch(self, *, symbols: Sequence[str] = (), client_order_ids: Sequence[str] = ()) -> None:
        """Pass the hint on to a store (and its price source) that can read ahead."""
        hint = getattr(self._store, "prefetch", None)
        if hint is not None:
            hint(symbols=symbols, client_order_ids=client_order_ids)

    # -- reads ---------------------------------------------------------------------------------------------

    def markets(self) -> Sequence[Market]:
        """List the paper markets."""
        return self._config.markets

    def market(self, symbol: str) -> Market:
        """Return one paper market, or raise MarketNotFoundError."""
        found = self._by_symbol.get(symbol)
        if found is None:
            source = self._config.markets_from
            listed = ", ".join(sorted(self._by_symbol)[:5]) + (", ..." if len(self._by_symbol) > 5 else "")
            raise MarketNotFoundError(f"unknown market {symbol!r}" + (
                f": paper trades {source}'s markets ({listed})" if source else ""), venue=VENUE)
        return found

    def ticker(self, symbol: str) -> Ticker:
        """Return the price source's current price, or raise TemporaryError when it is missing or unusable."""
        tick = self._prices.ticker(symbol)
        if not (tick.price.is_finite() and tick.price > 0):
            raise TemporaryError(f"no usable price for {symbol}: {tick.price}", venue=VENUE)
        if tick.volume is not None and not (tick.volume.is_finite() and tick.volume >= 0):
            raise TemporaryError(f"no usable volume for {symbol}: {tick.volume}", venue=VENUE)
        max_age = self._config.max_price_age
        if max_age is not None and self._clock() - tick.time > max_age:
            raise TemporaryError(f"stale price for {symbol} from {tick.time.isoformat()}", venue=VENUE)
        return tick

    def balances(self) -> Sequence[Balance]:
        """Return the one cash balance: free = cash, total = equity (cash + sum of qty x mark)."""
        with self._store.atomic():
            return [Balance(self._config.quote_asset, free=self._store.cash(), total=self._equity())]

    def positions(self) -> Sequence[VenuePosition]:
        """Return non-zero positions with entry price = cost basis / qty."""
        return [
            VenuePosition(symbol, qty, cost / qty)
            for symbol, (qty, cost) in sorted(self._store.all_positions().items())
            if qty != 0
        ]

    def fetch_order(self, symbol: str, venue_order_id: str) -> VenueOrder:
        """Return an order by venue id, or raise OrderNotFoundError."""
        order = self._store.get_order_by_venue_id(venue_order_id)
        if order is None or order.symbol != symbol:
            raise OrderNotFoundError(f"no order {venue_order_id} on {symbol}", venue=VENUE)
        return order

    def fetch_order_by_client_id(self, symbol: str, client_order_id: str) -> VenueOrder | None:
        """Return an order by client order id, or None when it was never placed."""
        order = self._store.get_order(client_order_id)
        return order if order is not None and order.symbol == symbol else None

    def open_orders(self, symbol: str | None = None) -> Sequence[VenueOrder]:
        """Return working orders in the order they were placed."""
        return sorted(self._store.open_orders(symbol), key=_sequence)

    # -- writes --------------------------------------------------------------------------------------------

    def set_leverage(self, symbol: str, leverage: Decimal) -> None:
        """Use this leverage for new orders on a market that do not name one (kept in this process only)."""
        market = self.market(symbol)
        if not (leverage.is_finite() and ZERO < leverage <= market.max_leverage):
            raise InvalidOrderError(
                f"leverage {leverage} is outside (0, {market.max_leverage}] on {symbol}", venue=VENUE
            )
        self._leverage[symbol] = leverage

    def _create_order(self, request: OrderRequest, market: Market) -> VenueOrder:
        """Place an order, filling what the current price allows; a known client order id returns its order."""
        with self._store.atomic():
            known = self._store.get_order(request.client_order_id)
            if known is not None:
                return known
            tick = self.ticker(market.symbol)
            reference = reference_price(request.type, request.price, request.trigger_price, tick.price)
            if request.quantity * reference < market.min_notional:
                raise InvalidOrderError(
                    f"notional {request.quantity * reference} is below the minimum {market.min_notional} "
                    f"on {market.symbol}",
                    venue=VENUE,
                )
            if request.post_only and limit_crosses(request.side, reference, tick.price):
                raise InvalidOrderError(
                    f"post-only limit {request.price} would take liquidity at {tick.price}", venue=VENUE
                )
            reducible = self._reducible(market.symbol, request.side)
            if request.reduce_only:
                if reducible == 0:
                    raise InvalidOrderError(
                        f"reduce-only {request.side.value} on {market.symbol} has no position to reduce", venue=VENUE
                    )
                request = replace(request, quantity=min(request.quantity, reducible))
            else:
                self._check_margin(request, market, reference, reducible)
            fault = self._faults.take(request)
            if fault is PaperFault.REFUSE:
                raise InvalidOrderError(f"{request.side.value} {request.quantity} {market.symbol} refused by the "
                                        f"venue (planned fault)", venue=VENUE)
            order = self._faulted(self._draft(request, f"{VENUE}-{self._store.next_id()}"), fault, market, tick)
            self._store.save_order(order)
        if fault is PaperFault.DROP:  # after the store's unit: the venue keeps the order, the reply is lost
            raise TemporaryError(f"reply to order {request.client_order_id} lost (planned fault)", venue=VENUE)
        return order

    def _faulted(self, order: VenueOrder, fault: PaperFault | None, market: Market, tick: Ticker) -> VenueOrder:
        """Work a new order as usual, or as the planned fault says."""
        if fault is PaperFault.CANCEL:
            return replace(order, status=VenueOrderStatus.CANCELED,
                           reason="IOC canceled: nothing to match (planned fault)")
        if fault is PaperFault.EXPIRE:
            return replace(order, status=VenueOrderStatus.CANCELED, reason="expired (planned fault)")
        if fault is PaperFault.PARTIAL:
            half = round_down(order.quantity / 2, market.lot_size)
            worked = self._work(replace(order, quantity=half), market, tick, placing=True) if half > 0 else order
            return replace(worked, quantity=order.quantity, status=VenueOrderStatus.CANCELED,
                           reason="IOC partly filled, the rest canceled (planned fault)")
        return self._work(order, market, tick, placing=True)

    def cancel_order(self, symbol: str, venue_order_id: str) -> VenueOrder:
        """Cancel a working order; an order already final is returned as it is."""
        with self._store.atomic():
            order = self.fetch_order(symbol, venue_order_id)
            if order.status.is_final:
                return order
            order = replace(order, status=VenueOrderStatus.CANCELED, reason="canceled by user")
            self._store.save_order(order)
            return order

    def match(self, symbol: str | None = None) -> list[VenueOrder]:
        """Work every open order against the current prices; return the orders that changed.

        Orders go in placement order. An order that cannot be priced (its market or, for another quote, the
        conversion) is left as it is: no price, no fill.
        """
        with self._store.atomic():
            changed: dict[str, VenueOrder] = {}
            ticks: dict[str, Ticker | None] = {}
            for order in self.open_orders(symbol):
                if order.symbol not in ticks:
                    try:
                        ticks[order.symbol] = self.ticker(order.symbol)
                    except TemporaryError:
                        ticks[order.symbol] = None
                tick = ticks[order.symbol]
                if tick is None:
                    continue
                try:
                    with self._store.atomic():  # a savepoint: a failed order undoes only its own work
                        worked = self._work(order, self.market(order.symbol), tick, placing=False)
                except TemporaryError:
                    continue
                if worked != order:
                    self._store.save_order(worked)
                    changed[worked.client_order_id] = worked
            # A fill later in the pass may have closed a position that an earlier reduce-only order protected.
            for order in self.open_orders(symbol):
                if order.reduce_only and self._reducible(order.symbol, order.side) == 0:
                    canceled = self._cancel_reduce_only(order)
                    self._store.save_order(canceled)
                    changed[canceled.client_order_id] = canceled
            return list(changed.values())

    def apply_funding(self, symbol: str, rate: Decimal, *, price: Decimal | None = None,
                      quantity: Decimal | None = None) -> Decimal:
        """Charge one funding payment of qty x price x rate on a perp; return what was paid (< 0: received).

        `price` defaults to the current price and `quantity` (signed base qty) to the position held now; a payment
        for a past funding time names both (the position and price then). Rounded half-up to the fee quantum."""
        market = self.market(symbol)
        if market.kind != "perp":
            raise InvalidOrderError(f"{symbol} is not a perp: no funding", venue=VENUE)
        for name, value in (("rate", rate), ("price", price), ("quantity", quantity)):
            if value is not None and not value.is_finite():
                raise InvalidOrderError(f"funding {name} must be a finite number, got {value}", venue=VENUE)
        with self._store.atomic():
            qty = self._store.position(symbol)[0] if quantity is None else quantity
            if qty == 0:
                return ZERO
            mark = self.ticker(symbol).price if price is None else price
            if not mark > 0:
                raise InvalidOrderError(f"funding price must be positive, got {mark}", venue=VENUE)
            amount = qty * mark * rate * self._quote_rate(market.quote)
            paid = round_half_up(amount, self._config.fee_quantum)
            if paid:
                self._store.set_cash(self._store.cash() - paid)
            return paid

    # -- internals -----------------------------------------------------------------------------------------

    def _draft(self, request: OrderRequest, venue_order_id: str) -> VenueOrder:
        return VenueOrder(
            client_order_id=request.client_order_id,
            venue_order_id=venue_order_id,
            symbol=request.symbol,
            side=request.side,
            type=request.type,
            status=VenueOrderStatus.OPEN,
            quantity=request.quantity,
            price=request.price,
            trigger_price=request.trigger_price,
            reduce_only=request.reduce_only,
        )

    def _check_margin(self, request: OrderRequest, market: Market, reference: Decimal, reducible: Decimal) -> None:
        """Refuse an order whose new exposure needs more margin than is free."""
        opening = max(request.quantity - reducible, ZERO)  # closing part of an order needs no margin
        if opening == 0:
            return
        leverage = min(request.leverage or self._leverage.get(market.symbol, ONE), market.max_leverage)
        needed = opening * reference * self._quote_rate(market.quote) / leverage
        free = self._equity() - self._margin_in_use()
        if needed > free:
            raise InsufficientFundsError(
                f"order needs {needed} {self._config.quote_asset} of margin at {leverage}x; {free} is free",
                venue=VENUE,
            )

    def _equity(self) -> Decimal:
        """Return cash + sum of qty x mark, in the account's quote asset."""
        equity = self._store.cash()
        for symbol, (qty, _) in self._store.all_positions().items():
            if qty != 0:
                equity += qty * self.ticker(symbol).price * self._quote_rate(self.market(symbol).quote)
        return equity

    def _margin_in_use(self) -> Decimal:
        """Return the margin held by positions and working orders, each at its market's max leverage."""
        used = ZERO
        for symbol, (qty, _) in self._store.all_positions().items():
            if qty != 0:
                market = self.market(symbol)
                used += abs(qty) * self.ticker(symbol).price * self._quote_rate(market.quote) / market.max_leverage
        for order in self._store.open_orders(None):
            if order.reduce_only:
                continue
            market = self.market(order.symbol)
            opening = max(order.quantity - order.filled_quantity - self._reducible(order.symbol, order.side), ZERO)
            if opening > 0:
                reference = reference_price(
                    order.type, order.price, order.trigger_price, self.ticker(order.symbol).price
                )
                used += opening * reference * self._quote_rate(market.quote) / market.max_leverage
        return used

    def _quote_rate(self, quote: str) -> Decimal:
        """Return the value of one unit of a market's quote in the account's quote asset."""
        account = self._config.quote_asset
        if quote == account or {quote, account} <= self._config.par_assets:
            return ONE
        return self.ticker(f"{quote}/{account}").price

    def _reducible(self, symbol: str, side: Side) -> Decimal:
        """Return how much of the position an order on this side would reduce."""
        qty, _ = self._store.position(symbol)
        return abs(qty) if qty * side.sign < 0 else ZERO

    def _cancel_reduce_only(self, order: VenueOrder) -> VenueOrder:
        return replace(order, status=VenueOrderStatus.CANCELED, reason="reduce-only: no position left to reduce")

    def _work(self, order: VenueOrder, market: Market, tick: Ticker, *, placing: bool) -> VenueOrder:
        """Fill as much of an open order as the price, the volume budget and reduce-only allow."""
        reducible = self._reducible(market.symbol, order.side)
        if order.reduce_only and reducible == 0:
            return self._cancel_reduce_only(order)
        if not is_triggered(order, tick.price):
            return order
        qty = order.quantity - order.filled_quantity
        if order.reduce_only:
            qty = min(qty, reducible)
        budget = self._volume_budget(market, tick)
        if budget is not None:
            qty = min(qty, budget)
        if qty <= 0:
            return order
        slipped = slipped_price(market, order.side, tick.price, self._config.slippage_bps)
        if order.type is not OrderType.LIMIT:
            price, liquidity = slipped, "taker"
        elif placing:
            assert order.price is not None
            price, liquidity = (min if order.side is Side.BUY else max)(order.price, slipped), "taker"
        else:
            assert order.price is not None
            price, liquidity = order.price, "maker"
        order = self._fill(order, market, qty, price, liquidity)
        if budget is not None:
            self._take_volume(market.symbol, tick.time, qty)
        if (order.reduce_only and order.status is not VenueOrderStatus.FILLED
                and self._reducible(market.symbol, order.side) == 0):
            return self._cancel_reduce_only(order)
        return order

    def _volume_budget(self, market: Market, tick: Ticker) -> Decimal | None:
        """Return the base qty still fillable in the ticker's candle, or None when fills are unlimited."""
        share = self._config.max_volume_share
        if share is None or tick.volume is None:
            return None
        return max(market.round_qty(share * tick.volume) - self._volume_taken(market.symbol, tick.time), ZERO)

    def _volume_taken(self, symbol: str, candle: datetime) -> Decimal:
        record = self._store.volume_taken(symbol)
        return record[1] if record is not None and record[0] == candle else ZERO

    def _take_volume(self, symbol: str, candle: datetime, qty: Decimal) -> None:
        self._store.set_volume_taken(symbol, candle, self._volume_taken(symbol, candle) + qty)

    def _fill(self, order: VenueOrder, market: Market, qty: Decimal, price: Decimal, liquidity: str) -> VenueOrder:
        """Book one fill: move cash and the position, and append the fill to the order."""
        rate = self._quote_rate(market.quote)
        fee_rate = market.maker_fee if liquidity == "maker" else market.taker_fee
        fee = round_half_up(qty * price * fee_rate * rate, self._config.fee_quantum)
        sign = order.side.sign
        self._store.set_cash(self._store.cash() - sign * qty * price * rate - fee)

        held, cost = self._store.position(market.symbol)
        delta = sign * qty
        after = held + delta
        if held == 0 or (held > 0) == (delta > 0):
            cost += delta * price  # opening or adding
        elif after == 0:
            cost = ZERO  # closed
        elif (after > 0) == (held > 0):
            cost = cost * after / held  # reduced: the rest keeps its average price
        else:
            cost = after * price  # flipped: the remainder opens at the fill price
        self._store.set_position(market.symbol, after, cost)

        filled = order.filled_quantity + qty
        fill = VenueFill(
            fill_id=f"{order.venue_order_id}-{len(order.fills) + 1}",
            quantity=qty,
            price=price,
            fee=fee,
            fee_currency=self._config.quote_asset,
            time=self._clock(),
            liquidity=liquidity,
        )
        return replace(
            order,
            filled_quantity=filled,
            fills=(*order.fills, fill),
            status=VenueOrderStatus.FILLED if filled == order.quantity else VenueOrderStatus.PARTIALLY_FILLED,
        )
