"""What every live connector runs behind: retries for safe calls, a token-bucket rate limit, a circuit breaker.

Pure (no Django): time comes from an injected monotonic `clock` and waits go through an injected `sleep`, so the
tests drive hours of back-off in milliseconds.

- Retries (capped exponential back-off, full jitter, at least the venue's Retry-After) apply to reads and to the
  idempotent writes only: cancel and set_leverage. `create_order` is never retried here: an ambiguous create
  surfaces as OrderStatusUnknownError and the engine asks the venue by client id before anything is resent.
- One token bucket per (venue, account), its rate as data below each venue's published limit (VENUE_RATES).
- One circuit breaker per (venue, account): it opens after `failure_threshold` consecutive failures
  (TemporaryError, RateLimitError, OrderStatusUnknownError), refuses new orders and reads while open
  (VenueUnavailableError: nothing was sent), lets cancels through, and after `cool_down` seconds lets one read
  probe the venue (a create in that state probes with a balances read first); a successful probe closes it.
"""

from __future__ import annotations

import enum
import logging
import math
import random
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, UTC
from decimal import Decimal
from typing import Any, TypeVar

from exchanges.base import (
    Balance,
    CheckItem,
    Connector,
    FundingRate,
    Market,
    OrderRequest,
    Ticker,
    VenueCandle,
    VenueFunding,
    VenueOrder,
    VenuePosition,
)
from exchanges.errors import (
    OrderStatusUnknownError,
    RateLimitError,
    TemporaryError,
    VenueError,
    VenueUnavailableError,
)

log = logging.getLogger("venues")

T = TypeVar("T")
Clock = Callable[[], float]
Sleep = Callable[[float], None]


# --------------------------------------------------------------------------------------------- retries


class CallKind(str, enum.Enum):
    """How a connector method may be treated: retried, and let through an open breaker."""

    READ = "read"  # reads and idempotent settings: retried; refused while the breaker is open
    CREATE = "create"  # never retried; refused while open
    CANCEL = "cancel"  # idempotent: retried, also on an ambiguous outcome; always let through


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential back-off with full jitter (AWS "Exponential Backoff and Jitter"); delays in seconds."""

    max_attempts: int = 4  # tries per call, the first one included
    base_delay: float = 0.25
    max_delay: float = 4.0  # cap of one back-off draw
    max_retry_after: float = 10.0  # a longer Retry-After is not waited out here: the error surfaces
    max_elapsed: float = 15.0  # no retry starts once the call has used this long (Celery's time limit is 30 s)

    def backoff(self, retry: int, rng: random.Random) -> float:
        """The wait before retry number `retry` (0 for the first): uniform in [0, min(cap, base * 2**retry)]."""
        return rng.uniform(0.0, min(self.max_delay, self.base_delay * (2 ** retry)))

    def delay(self, *, kind: CallKind, retry: int, error: VenueError, elapsed: float,
              rng: random.Random) -> float | None:
        """How long to wait before retrying after `error`, or None when the call must not be retried."""
        if kind is CallKind.CREATE or retry + 1 >= self.max_attempts:
            return None
        if isinstance(error, VenueUnavailableError):
            return None  # our own refusal: retrying at once cannot help
        retryable = isinstance(error, TemporaryError) or (
            kind is CallKind.CANCEL and isinstance(error, OrderStatusUnknownError))
        if not retryable:
            return None
        wait = self.backoff(retry, rng)
        retry_after = getattr(error, "retry_after", None) if isinstance(error, RateLimitError) else None
        if retry_after is not None:
            if retry_after > self.max_retry_after:
                return None
            wait = max(wait, retry_after)
        if elapsed + wait > self.max_elapsed:
            return None
        return wait


# --------------------------------------------------------------------------------------------- rate limits


@dataclass(frozen=True)
class RateSpec:
    """A venue's outbound budget: `rate` units a second, bursts of `burst`, each call's cost in units."""

    rate: float
    burst: float
    costs: Mapping[str, float] = field(default_factory=dict)
    default_cost: float = 1.0
    source: str = ""  # where the published limit comes from
    per_ip: bool = False  # the venue counts per IP: every account of this process shares one bucket
    # For a connector that meters its own requests: units one request spends, by its budget key.
    request_costs: Mapping[str, float] = field(default_factory=dict)
    default_request_cost: float = 1.0

    def cost(self, method: str) -> float:
        """Units one call of `method` spends (connectors that do not meter their requests)."""
        return self.costs.get(method, self.default_cost)

    def request_cost(self, key: str) -> float:
        """Units one request spends (connectors that meter their requests)."""
        return self.request_costs.get(key, self.default_request_cost)


# Budgets sit below each venue's published limit and apply per process and per (venue, account), or per venue when
# the venue counts per IP: with several worker processes on one IP, their sum must stay below that limit.
VENUE_RATES: dict[str, RateSpec] = {
    "coinbase": RateSpec(
        rate=20.0, burst=20.0,
        source="Advanced Trade REST: 30 req/s per user on private endpoints, 10 req/s per IP on public ones "
               "(docs.cdp.coinbase.com/advanced-trade/docs/rest-api-rate-limits, also ccxt coinbase.py)",
        costs={"ticker": 3.0, "candles": 3.0, "markets": 3.0},  # public endpoints: 10/s per IP, so 3 units (6.7/s)
        request_costs={"public": 3.0, "private": 1.0},
    ),
    "hyperliquid": RateSpec(
        rate=15.0, burst=60.0,  # weight a second: 900 a minute of the 1200
        source="1200 request weight per minute per IP; /exchange actions weigh 1 + floor(batch/40); /info "
               "allMids, clearinghouseState, orderStatus, l2Book weigh 2, most other info requests 20 "
               "(Hyperliquid docs, 'Rate limits and user limits'; ccxt hyperliquid.py)",
        costs={"create_order": 1.0, "cancel_order": 1.0, "set_leverage": 1.0, "ticker": 2.0, "tickers": 2.0,
               "balances": 2.0, "positions": 2.0, "fetch_order": 2.0, "fetch_order_by_client_id": 2.0,
               "open_orders": 20.0, "markets": 20.0, "candles": 20.0},
        default_cost=20.0,
        per_ip=True,
        # /info requests by type (the rest weigh 20); /exchange actions are weighed by the connector (1 + n/40).
        request_costs={"info:allMids": 2.0, "info:l2Book": 2.0, "info:clearinghouseState": 2.0,
                       "info:orderStatus": 2.0, "info:spotClearinghouseState": 2.0, "info:exchangeStatus": 2.0},
        default_request_cost=20.0,
    ),
    "synthetix": RateSpec(
        rate=10.0, burst=20.0,  # JSON-RPC calls a second
        source="an RPC budget: the public Base RPC endpoints are rate-limited without a published figure and "
               "hosted providers' free tiers allow roughly 25 calls/s; an order is several calls (nonce, gas, "
               "send, receipt), so it costs 5",
        costs={"create_order": 5.0, "cancel_order": 3.0, "set_leverage": 3.0},
        request_costs={"rpc": 1.0},  # metered: every JSON-RPC call (each one of a batch)
    ),
}
DEFAULT_RATE = RateSpec(rate=5.0, burst=5.0, source="a cautious default for a venue without a published limit")


class RateLimiter:
    """A token bucket: callers reserve units and wait until the bucket has refilled enough to cover them."""

    def __init__(self, spec: RateSpec, *, clock: Clock = time.monotonic) -> None:
        self.spec, self._clock = spec, clock
        self._tokens = spec.burst
        self._updated = clock()
        self._lock = threading.Lock()

    def reserve(self, cost: float, *, max_wait: float = math.inf) -> float | None:
        """Take `cost` units; return how long to wait before using them, or None (nothing taken) if > max_wait."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.spec.burst, self._tokens + (now - self._updated) * self.spec.rate)
            self._updated = now
            wait = max(0.0, (cost - self._tokens) / self.spec.rate)
            if wait > max_wait:
                return None
            self._tokens -= cost  # may go negative: later callers queue behind this reservation
            return wait


# --------------------------------------------------------------------------------------------- breaker


class BreakerState(str, enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerEvent:
    """A breaker transition, as reported to the callback and the `venues` log (never a secret)."""

    venue: str
    account: str
    state: BreakerState
    previous: BreakerState
    since: datetime
    consecutive_failures: int
    last_error: str


_SECRETISH = re.compile(
    r"(eyJ[\w-]+\.[\w-]+\.[\w-]*)"  # JWTs
    r"|((?:0x)?[0-9a-fA-F]{48,})"  # keys, signatures, raw transactions
    r"|(-----BEGIN [A-Z ]+-----.*?(?:-----END [A-Z ]+-----|$))"  # PEM blocks
    r"|((?:bearer|authorization|api[_-]?key|secret|signature|private[_-]?key)\s*[:=]\s*\S+)",
    re.IGNORECASE | re.DOTALL,
)


def error_text(error: BaseException, *, limit: int = 300) -> str:
    """A short description of an error for logs and the health page, with anything secret-looking removed."""
    text = _SECRETISH.sub("[redacted]", f"{type(error).__name__}: {error}")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _utcnow() -> datetime:
    return datetime.now(UTC)


class CircuitBreaker:
    """Per (venue, account): closed -> open after N consecutive failures -> half-open after a cool-down -> closed."""

    def __init__(self, *, venue: str, account: str = "", failure_threshold: int = 5, cool_down: float = 30.0,
                 clock: Clock = time.monotonic, wall: Callable[[], datetime] = _utcnow,
                 on_transition: Callable[[BreakerEvent], None] | None = None) -> None:
        self.venue, self.account = venue, account
        self.failure_threshold, self.cool_down = failure_threshold, cool_down
        self.on_transition = on_transition
        self._clock, self._wall = clock, wall
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._since = wall()
        self._opened_at = 0.0
        self._failures = 0
        self._last_error = ""
        self._probing = False

    @property
    def state(self) -> BreakerState:
        """The current state, moving an open breaker whose cool-down is over to half-open."""
        events: list[BreakerEvent] = []
        with self._lock:
            self._cool(events)
            state = self._state
        self._report(events)
        return state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    @property
    def last_error(self) -> str:
        return self._last_error

    def admit(self, kind: CallKind) -> bool:
        """Let a call through, or raise VenueUnavailableError; True when the call is the half-open probe."""
        events: list[BreakerEvent] = []
        try:
            with self._lock:
                self._cool(events)
                if self._state is BreakerState.CLOSED or kind is CallKind.CANCEL:
                    return False
                if self._state is BreakerState.HALF_OPEN and kind is CallKind.READ and not self._probing:
                    self._probing = True
                    return True
                retry_after = max(0.0, self._opened_at + self.cool_down - self._clock())
                what = "no order was sent" if kind is CallKind.CREATE else "nothing was sent"
                raise VenueUnavailableError(
                    f"{self.venue} circuit breaker is {self._state.value} after {self._failures} consecutive "
                    f"failures ({self._last_error or 'no detail'}): {what}",
                    venue=self.venue, retry_after=retry_after or None,
                )
        finally:
            self._report(events)

    def record(self, error: BaseException | None, *, probe: bool = False) -> None:
        """Count a call's outcome: None is a success; a counted failure may open the breaker."""
        events: list[BreakerEvent] = []
        with self._lock:
            if probe:
                self._probing = False
            if error is None or (isinstance(error, VenueError) and not _counts(error)
                                 and not isinstance(error, VenueUnavailableError)):
                # The venue answered (an InvalidOrder or AuthError is an answer too): it is reachable.
                self._failures = 0
                if self._state is not BreakerState.CLOSED:
                    self._move(BreakerState.CLOSED, events)
            elif isinstance(error, VenueError) and _counts(error):
                self._failures += 1
                self._last_error = error_text(error)
                if self._state is BreakerState.HALF_OPEN or (
                        self._state is BreakerState.CLOSED and self._failures >= self.failure_threshold):
                    self._opened_at = self._clock()
                    self._move(BreakerState.OPEN, events)
            # Anything else (a bug's exception, our own refusal) tells nothing about the venue.
        self._report(events)

    def _cool(self, events: list[BreakerEvent]) -> None:
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.cool_down:
            self._probing = False
            self._move(BreakerState.HALF_OPEN, events)

    def _move(self, state: BreakerState, events: list[BreakerEvent]) -> None:
        previous, self._state, self._since = self._state, state, self._wall()
        events.append(BreakerEvent(venue=self.venue, account=self.account, state=state, previous=previous,
                                   since=self._since, consecutive_failures=self._failures,
                                   last_error=self._last_error))

    def _report(self, events: Sequence[BreakerEvent]) -> None:
        for event in events:
            level = logging.WARNING if event.state is BreakerState.OPEN else logging.INFO
            log.log(level, "venue breaker %s/%s %s -> %s after %d consecutive failures: %s", event.venue,
                    event.account, event.previous.value, event.state.value, event.consecutive_failures,
                    event.last_error or "-",
                    extra={"venue": event.venue, "account": event.account, "breaker_state": event.state.value})
            if self.on_transition is not None:
                try:
                    self.on_transition(event)
                except Exception:  # a failing reporter must never break trading
                    log.exception("venue breaker callback failed for %s/%s", event.venue, event.account)


def _counts(error: VenueError) -> bool:
    """Whether an error says the venue is unhealthy (InvalidOrder, Auth, NotFound are answers, not failures)."""
    return isinstance(error, (TemporaryError, OrderStatusUnknownError)) and not isinstance(
        error, VenueUnavailableError)


# --------------------------------------------------------------------------------------------- the wrapper


class ResilientConnector(Connector):
    """A Connector that applies retries, the rate limit and the circuit breaker around another one."""

    def __init__(self, inner: Connector, policy: RetryPolicy, limiter: RateLimiter, breaker: CircuitBreaker,
                 clock: Clock = time.monotonic, sleep: Sleep = time.sleep, *, rng: random.Random | None = None,
                 max_queue_wait: float = 10.0) -> None:
        self.inner, self.policy, self.limiter, self.breaker = inner, policy, limiter, breaker
        self.capabilities = inner.capabilities
        self._clock, self._sleep = clock, sleep
        self._rng = rng or random.Random()
        self.max_queue_wait = max_queue_wait
        # Market rules (tick, lot, minimums) change rarely: kept for `markets_ttl` seconds, so the engine's
        # market() per signal costs neither a request nor rate budget (Hyperliquid's meta weighs 20).
        self.markets_ttl = 300.0
        self._markets: tuple[float, Sequence[Market]] | None = None
        self._market: dict[str, tuple[float, Market]] = {}
        if inner.meters_requests:
            inner.request_meter = self._spend

    def with_policy(self, policy: RetryPolicy) -> ResilientConnector:
        """The same connector, limiter and breaker with another retry policy (e.g. no retries under a row lock)."""
        view = ResilientConnector(self.inner, policy, self.limiter, self.breaker, self._clock, self._sleep,
                                  rng=self._rng, max_queue_wait=self.max_queue_wait)
        view._markets, view._market = self._markets, self._market
        return view

    def __getattr__(self, name: str) -> Any:
        # Venue-specific extras (not part of Connector) go straight to the inner connector.
        if name == "inner":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def _call(self, method: str, kind: CallKind, fn: Callable[[], T]) -> T:
        started = self._clock()
        retry = 0
        while True:
            if kind is CallKind.CREATE and self.breaker.state is BreakerState.HALF_OPEN:
                self._probe()  # a new order is never the probe: a read goes first, and closes the breaker
            probe = self.breaker.admit(kind)
            self._throttle(method, probe)
            try:
                result = fn()
            except VenueError as exc:
                self.breaker.record(exc, probe=probe)
                wait = self.policy.delay(kind=kind, retry=retry, error=exc, elapsed=self._clock() - started,
                                         rng=self._rng)
                if wait is None:
                    raise
                log.info("venue %s/%s %s failed (%s), retry %d in %.2fs", self.breaker.venue,
                         self.breaker.account, method, type(exc).__name__, retry + 1, wait)
                self._sleep(wait)
                retry += 1
                continue
            except BaseException:
                if probe:
                    self.breaker.record(_Neutral(), probe=True)
                raise
            self.breaker.record(None, probe=probe)
            return result

    def _probe(self) -> None:
        probe = self.breaker.admit(CallKind.READ)
        self._throttle("balances", probe)
        try:
            self.inner.balances()
        except VenueError as exc:
            self.breaker.record(exc, probe=probe)
            raise VenueUnavailableError(
                f"{self.breaker.venue} is still failing its health probe ({error_text(exc)}): no order was sent",
                venue=self.breaker.venue) from exc
        except BaseException:
            self.breaker.record(_Neutral(), probe=probe)
            raise
        self.breaker.record(None, probe=probe)

    def _spend(self, key: str, units: float | None) -> None:
        """The request meter: take one request's units from the budget and wait until they are there."""
        wait = self.limiter.reserve(self.limiter.spec.request_cost(key) if units is None else units)
        if wait:
            self._sleep(wait)

    def _throttle(self, method: str, probe: bool) -> None:
        # A metered connector spends per request (`_spend`); here only: is the budget more than
        # max_queue_wait in debt? Then nothing is started at all.
        cost = 0.0 if self.inner.meters_requests else self.limiter.spec.cost(method)
        wait = self.limiter.reserve(cost, max_wait=self.max_queue_wait)
        if wait is None:
            if probe:
                self.breaker.record(_Neutral(), probe=True)
            raise VenueUnavailableError(
                f"{self.breaker.venue} request budget is exhausted for more than {self.max_queue_wait:g}s: "
                f"nothing was sent", venue=self.breaker.venue, retry_after=self.max_queue_wait)
        if wait > 0:
            self._sleep(wait)

    # ---- Connector, by delegation

    def markets(self) -> Sequence[Market]:
        cached = self._markets
        if cached is not None and self._clock() - cached[0] < self.markets_ttl:
            return cached[1]
        markets = tuple(self._call("markets", CallKind.READ, self.inner.markets))
        self._markets = (self._clock(), markets)
        return markets

    def market(self, symbol: str) -> Market:
        cached = self._market.get(symbol)
        if cached is not None and self._clock() - cached[0] < self.markets_ttl:
            return cached[1]
        market = self._call("markets", CallKind.READ, lambda: self.inner.market(symbol))
        self._market[symbol] = (self._clock(), market)
        return market

    def balances(self) -> Sequence[Balance]:
        return self._call("balances", CallKind.READ, self.inner.balances)

    def ticker(self, symbol: str) -> Ticker:
        return self._call("ticker", CallKind.READ, lambda: self.inner.ticker(symbol))

    def tickers(self, symbols: Sequence[str]) -> dict[str, Ticker]:
        return self._call("tickers", CallKind.READ, lambda: self.inner.tickers(symbols))

    def candles(self, symbol: str, timeframe: str, *, since: datetime | None = None,
                limit: int = 300) -> Sequence[VenueCandle]:
        return self._call("candles", CallKind.READ,
                          lambda: self.inner.candles(symbol, timeframe, since=since, limit=limit))

    def funding_rates(self, symbol: str, *, since: datetime, until: datetime | None = None) -> Sequence[FundingRate]:
        return self._call("funding_rates", CallKind.READ,
                          lambda: self.inner.funding_rates(symbol, since=since, until=until))

    def funding_payments(self, *, since: datetime, until: datetime | None = None) -> Sequence[VenueFunding]:
        return self._call("funding_payments", CallKind.READ,
                          lambda: self.inner.funding_payments(since=since, until=until))

    def create_order(self, request: OrderRequest) -> VenueOrder:
        return self._call("create_order", CallKind.CREATE, lambda: self.inner.create_order(request))

    def cancel_order(self, symbol: str, venue_order_id: str) -> VenueOrder:
        return self._call("cancel_order", CallKind.CANCEL, lambda: self.inner.cancel_order(symbol, venue_order_id))

    def fetch_order(self, symbol: str, venue_order_id: str) -> VenueOrder:
        return self._call("fetch_order", CallKind.READ, lambda: self.inner.fetch_order(symbol, venue_order_id))

    def fetch_order_by_client_id(self, symbol: str, client_order_id: str) -> VenueOrder | None:
        return self._call("fetch_order_by_client_id", CallKind.READ,
                          lambda: self.inner.fetch_order_by_client_id(symbol, client_order_id))

    def open_orders(self, symbol: str | None = None) -> Sequence[VenueOrder]:
        return self._call("open_orders", CallKind.READ, lambda: self.inner.open_orders(symbol))

    def positions(self) -> Sequence[VenuePosition]:
        return self._call("positions", CallKind.READ, self.inner.positions)

    def set_leverage(self, symbol: str, leverage: Decimal) -> None:
        # Setting the same leverage twice is the same as once: safe to retry.
        self._call("set_leverage", CallKind.READ, lambda: self.inner.set_leverage(symbol, leverage))

    def verify(self) -> Sequence[CheckItem]:
        # check_venues wants the venue's own answers, not our breaker's: straight through.
        return self.inner.verify()

    def quantize(self, request: OrderRequest) -> OrderRequest:
        return self.inner.quantize(request)


class _Neutral(Exception):
    """An outcome that says nothing about the venue's health (it only frees the half-open probe slot)."""
