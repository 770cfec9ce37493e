"""The resilience layer: retries for safe calls only, Retry-After, rate budgets per venue, the circuit breaker."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta, UTC
from decimal import Decimal
from typing import Any

import pytest
import requests

from exchanges.base import (
    Balance,
    Capabilities,
    Connector,
    Market,
    OrderRequest,
    OrderType,
    Side,
    Ticker,
    VenueOrder,
    VenueOrderStatus,
    VenuePosition,
)
from exchanges.errors import (
    AuthError,
    InsufficientFundsError,
    InvalidOrderError,
    OrderStatusUnknownError,
    RateLimitError,
    TemporaryError,
    VenueUnavailableError,
)
from exchanges.resilience import (
    VENUE_RATES,
    BreakerEvent,
    BreakerState,
    CallKind,
    CircuitBreaker,
    RateLimiter,
    RateSpec,
    ResilientConnector,
    RetryPolicy,
    error_text,
)
from tests.exchanges.contract import ConnectorContract, ContractVenue
from tests.fakes.faults import Fault, FakeHTTPServer, Reply, Request

T0 = datetime(2026, 1, 1, tzinfo=UTC)
BTC = Market(symbol="BTC-USD", base="BTC", quote="USD", tick_size=Decimal("0.01"), lot_size=Decimal("0.0001"),
             min_qty=Decimal("0.0001"))


class FakeClock:
    """Monotonic seconds that only move when the code under test sleeps (or the test says so)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds

    def wall(self) -> datetime:
        return T0 + timedelta(seconds=self.now - 1000.0)


class ScriptedConnector(Connector):
    """A hand-written venue: each method pops its next scripted outcome (an exception to raise) or succeeds."""

    capabilities = Capabilities(venue="fakevenue", live=True)

    def __init__(self) -> None:
        self.script: dict[str, deque[BaseException | None]] = {}
        self.calls: list[str] = []

    def fail(self, method: str, *errors: BaseException | None) -> None:
        self.script.setdefault(method, deque()).extend(errors)

    def _step(self, method: str) -> None:
        self.calls.append(method)
        queue = self.script.get(method)
        if queue:
            outcome = queue.popleft()
            if outcome is not None:
                raise outcome

    def count(self, method: str) -> int:
        return self.calls.count(method)

    def _order(self, client_order_id: str = "c1", status: VenueOrderStatus = VenueOrderStatus.OPEN) -> VenueOrder:
        return VenueOrder(client_order_id=client_order_id, venue_order_id="v1", symbol="BTC-USD", side=Side.BUY,
                          type=OrderType.LIMIT, status=status, quantity=Decimal("1"), price=Decimal("100"))

    def markets(self) -> Sequence[Market]:
        self._step("markets")
        return [BTC]

    def balances(self) -> Sequence[Balance]:
        self._step("balances")
        return [Balance(asset="USD", free=Decimal("10"), total=Decimal("10"))]

    def ticker(self, symbol: str) -> Ticker:
        self._step("ticker")
        return Ticker(symbol=symbol, price=Decimal("100"), time=datetime.now(UTC))

    def create_order(self, request: OrderRequest) -> VenueOrder:
        self._step("create_order")
        return self._order(request.client_order_id)

    def cancel_order(self, symbol: str, venue_order_id: str) -> VenueOrder:
        self._step("cancel_order")
        return self._order(status=VenueOrderStatus.CANCELED)

    def fetch_order(self, symbol: str, venue_order_id: str) -> VenueOrder:
        self._step("fetch_order")
        return self._order()

    def fetch_order_by_client_id(self, symbol: str, client_order_id: str) -> VenueOrder | None:
        self._step("fetch_order_by_client_id")
        return None

    def open_orders(self, symbol: str | None = None) -> Sequence[VenueOrder]:
        self._step("open_orders")
        return []

    def positions(self) -> Sequence[VenuePosition]:
        self._step("positions")
        return []

    def set_leverage(self, symbol: str, leverage: Decimal) -> None:
        self._step("set_leverage")


REQUEST = OrderRequest(client_order_id="c1", symbol="BTC-USD", side=Side.BUY, type=OrderType.LIMIT,
                       quantity=Decimal("1"), price=Decimal("100"))
UNLIMITED = RateSpec(rate=1e9, burst=1e9)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def events() -> list[BreakerEvent]:
    return []


@pytest.fixture
def build(clock: FakeClock, events: list[BreakerEvent]) -> Callable[..., tuple[ResilientConnector, ScriptedConnector]]:
    def make(*, policy: RetryPolicy | None = None, spec: RateSpec = UNLIMITED, threshold: int = 3,
             cool_down: float = 30.0, seed: int = 7) -> tuple[ResilientConnector, ScriptedConnector]:
        inner = ScriptedConnector()
        breaker = CircuitBreaker(venue="fakevenue", account="acct", failure_threshold=threshold,
                                 cool_down=cool_down, clock=clock, wall=clock.wall, on_transition=events.append)
        wrapped = ResilientConnector(inner, policy or RetryPolicy(), RateLimiter(spec, clock=clock), breaker,
                                     clock, clock.sleep, rng=random.Random(seed))
        return wrapped, inner
    return make


def temporary(n: int = 1) -> list[BaseException | None]:
    return [TemporaryError("HTTP 503", venue="fakevenue") for _ in range(n)]


# --------------------------------------------------------------------------------------------- back-off


def test_backoff_draws_stay_within_the_capped_exponential_bound_and_are_jittered() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=4.0)
    rng = random.Random(42)
    for retry, bound in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 4.0), (10, 4.0)]:
        draws = [policy.backoff(retry, rng) for _ in range(400)]
        assert all(0.0 <= d <= bound for d in draws)
        assert max(draws) > 0.9 * bound and min(draws) < 0.1 * bound  # full jitter spreads over [0, bound]
        assert len(set(draws)) > 390
    # Seeded: the same draws again.
    assert [policy.backoff(2, random.Random(1)) for _ in range(3)] == [policy.backoff(2, random.Random(1))] * 3


def test_a_read_is_retried_with_bounded_jittered_waits_until_it_succeeds(build: Any, clock: FakeClock) -> None:
    wrapped, inner = build(policy=RetryPolicy(max_attempts=4, base_delay=0.25, max_delay=4.0), threshold=10)
    inner.fail("ticker", *temporary(3))
    assert wrapped.ticker("BTC-USD").price == Decimal("100")
    assert inner.count("ticker") == 4
    assert len(clock.sleeps) == 3
    assert all(0 <= s <= b for s, b in zip(clock.sleeps, [0.25, 0.5, 1.0]))


def test_a_read_gives_up_after_max_attempts_with_the_venue_error(build: Any) -> None:
    wrapped, inner = build(policy=RetryPolicy(max_attempts=3), threshold=10)
    inner.fail("positions", *temporary(5))
    with pytest.raises(TemporaryError, match="503"):
        wrapped.positions()
    assert inner.count("positions") == 3


def test_retry_after_is_honoured(build: Any, clock: FakeClock) -> None:
    wrapped, inner = build(policy=RetryPolicy(base_delay=0.01, max_delay=0.02), threshold=10)
    inner.fail("open_orders", RateLimitError("429", venue="fakevenue", retry_after=3.0))
    assert list(wrapped.open_orders()) == []
    assert inner.count("open_orders") == 2
    assert clock.sleeps and clock.sleeps[0] >= 3.0


def test_a_retry_after_longer_than_the_policy_allows_surfaces_at_once(build: Any, clock: FakeClock) -> None:
    wrapped, inner = build(policy=RetryPolicy(max_retry_after=10.0), threshold=10)
    inner.fail("balances", RateLimitError("429", venue="fakevenue", retry_after=60.0))
    with pytest.raises(RateLimitError) as caught:
        wrapped.balances()
    assert caught.value.retry_after == 60.0
    assert inner.count("balances") == 1 and clock.sleeps == []


def test_retries_stop_once_the_call_has_used_its_time_budget(build: Any, clock: FakeClock) -> None:
    wrapped, inner = build(policy=RetryPolicy(max_attempts=50, base_delay=1.0, max_delay=1.0, max_elapsed=5.0),
                           threshold=100)
    inner.fail("fetch_order", *temporary(50))
    with pytest.raises(TemporaryError):
        wrapped.fetch_order("BTC-USD", "v1")
    assert sum(clock.sleeps) <= 5.0
    assert inner.count("fetch_order") < 50


@pytest.mark.parametrize("error", [
    TemporaryError("HTTP 503", venue="fakevenue"),
    RateLimitError("429", venue="fakevenue", retry_after=0.1),
    OrderStatusUnknownError("timed out after sending", venue="fakevenue"),
])
def test_create_order_is_never_retried(build: Any, clock: FakeClock, error: Exception) -> None:
    wrapped, inner = build(threshold=10)
    inner.fail("create_order", error, *temporary(3))
    with pytest.raises(type(error)):
        wrapped.create_order(REQUEST)
    assert inner.count("create_order") == 1
    assert clock.sleeps == []


@pytest.mark.parametrize("error", [
    InvalidOrderError("size below minimum", venue="fakevenue"),
    InsufficientFundsError("not enough USD", venue="fakevenue"),
    AuthError("bad signature", venue="fakevenue"),
])
def test_refusals_are_not_retried(build: Any, error: Exception) -> None:
    wrapped, inner = build(threshold=10)
    inner.fail("balances", error)
    with pytest.raises(type(error)):
        wrapped.balances()
    assert inner.count("balances") == 1


def test_cancel_is_retried_even_after_an_ambiguous_outcome(build: Any) -> None:
    wrapped, inner = build(threshold=10)
    inner.fail("cancel_order", OrderStatusUnknownError("reset after send", venue="fakevenue"), *temporary(1))
    assert wrapped.cancel_order("BTC-USD", "v1").status is VenueOrderStatus.CANCELED
    assert inner.count("cancel_order") == 3


def test_set_leverage_and_client_id_lookups_are_retried(build: Any) -> None:
    wrapped, inner = build(threshold=10)
    inner.fail("set_leverage", *temporary(1))
    inner.fail("fetch_order_by_client_id", *temporary(2))
    wrapped.set_leverage("BTC-USD", Decimal("2"))
    assert wrapped.fetch_order_by_client_id("BTC-USD", "c1") is None
    assert inner.count("set_leverage") == 2 and inner.count("fetch_order_by_client_id") == 3


# --------------------------------------------------------------------------------------------- breaker


def test_the_breaker_opens_after_consecutive_failures_and_then_refuses_orders_without_sending(
        build: Any, clock: FakeClock, events: list[BreakerEvent]) -> None:
    wrapped, inner = build(policy=RetryPolicy(max_attempts=1), threshold=3)
    inner.fail("ticker", *temporary(3))
    for _ in range(3):
        with pytest.raises(TemporaryError):
            wrapped.ticker("BTC-USD")
    assert wrapped.breaker.state is BreakerState.OPEN
    assert [(e.previous, e.state, e.consecutive_failures) for e in events] == [
        (BreakerState.CLOSED, BreakerState.OPEN, 3)]
    assert events[0].venue == "fakevenue" and events[0].account == "acct" and "503" in events[0].last_error
    assert events[0].since == clock.wall()

    with pytest.raises(VenueUnavailableError, match="no order was sent") as caught:
        wrapped.create_order(REQUEST)
    assert caught.value.retryable and isinstance(caught.value, TemporaryError)
    assert caught.value.retry_after == pytest.approx(30.0)
    with pytest.raises(VenueUnavailableError):
        wrapped.balances()
    assert inner.count("create_order") == 0 and inner.count("balances") == 0


def test_cancels_go_through_an_open_breaker(build: Any) -> None:
    wrapped, inner = build(policy=RetryPolicy(max_attempts=1), threshold=2)
    inner.fail("ticker", *temporary(2))
    for _ in range(2):
        with pytest.raises(TemporaryError):
            wrapped.ticker("BTC-USD")
    assert wrapped.breaker.state is BreakerState.OPEN
    assert wrapped.cancel_order("BTC-USD", "v1").status is VenueOrderStatus.CANCELED
    assert inner.count("cancel_order") == 1


def test_after_the_cool_down_a_read_probes_and_its_success_closes_the_breaker(
        build: Any, clock: FakeClock, events: list[BreakerEvent]) -> None:
    wrapped, inner = build(policy=RetryPolicy(max_attempts=1), threshold=2, cool_down=30.0)
    inner.fail("ticker", *temporary(2))
    for _ in range(2):
        with pytest.raises(TemporaryError):
            wrapped.ticker("BTC-USD")
    clock.now += 29.0
    assert wrapped.breaker.state is BreakerState.OPEN
    clock.now += 1.0
    assert wrapped.breaker.state is BreakerState.HALF_OPEN
    # Only one probe at a time: a second read while the first is out is refused.
    assert wrapped.breaker.admit(CallKind.READ) is True
    with pytest.raises(VenueUnavailableError):
        wrapped.breaker.admit(CallKind.READ)
    wrapped.breaker.record(None, probe=True)
    assert wrapped.breaker.state is BreakerState.CLOSED
    assert [e.state for e in events] == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]
    assert wrapped.breaker.consecutive_failures == 0


def test_a_failed_probe_reopens_the_breaker_for_another_cool_down(build: Any, clock: FakeClock,
                                                                   events: list[BreakerEvent]) -> None:
    wrapped, inner = build(policy=RetryPolicy(max_attempts=3), threshold=2, cool_down=10.0)
    inner.fail("ticker", *temporary(2))
    with pytest.raises(VenueUnavailableError):
        wrapped.ticker("BTC-USD")  # two failed tries open the breaker; the third is refused without sending
    assert inner.count("ticker") == 2
    clock.now += 10.0
    inner.fail("positions", *temporary(5))
    with pytest.raises(VenueUnavailableError):
        wrapped.positions()  # the probe fails; its retry is refused by the reopened breaker
    assert inner.count("positions") == 1
    assert wrapped.breaker.state is BreakerState.OPEN
    assert [e.state for e in events] == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.OPEN]
    clock.now += 10.0
    inner.script["positions"].clear()
    assert list(wrapped.positions()) == []
    assert wrapped.breaker.state is BreakerState.CLOSED


def test_a_new_order_in_half_open_probes_with_a_read_first(build: Any, clock: FakeClock) -> None:
    wrapped, inner = build(policy=RetryPolicy(max_attempts=1), threshold=1, cool_down=5.0)
    inner.fail("markets", *temporary(1))
    with pytest.raises(TemporaryError):
        wrapped.markets()
    clock.now += 5.0
    inner.fail("balances", *temporary(1))
    with pytest.raises(VenueUnavailableError, match="no order was sent"):
        wrapped.create_order(REQUEST)
    assert inner.count("create_order") == 0 and inner.count("balances") == 1
    clock.now += 5.0
    assert wrapped.create_order(REQUEST).client_order_id == "c1"
    assert inner.calls[-2:] == ["balances", "create_order"]
    assert wrapped.breaker.state is BreakerState.CLOSED


def test_refusals_and_auth_errors_do_not_open_the_breaker_and_reset_the_count(build: Any) -> None:
    wrapped, inner = build(policy=RetryPolicy(max_attempts=1), threshold=2)
    inner.fail("create_order", TemporaryError("503"), InvalidOrderError("bad size"), TemporaryError("503"),
               AuthError("expired key"), AuthError("expired key"), AuthError("expired key"))
    for _ in range(6):
        with pytest.raises((TemporaryError, InvalidOrderError, AuthError)):
            wrapped.create_order(REQUEST)
    assert wrapped.breaker.state is BreakerState.CLOSED
    assert inner.count("create_order") == 6


def test_ambiguous_creates_count_towards_opening(build: Any) -> None:
    wrapped, inner = build(threshold=2)
    inner.fail("create_order", OrderStatusUnknownError("timeout"), OrderStatusUnknownError("timeout"))
    for _ in range(2):
        with pytest.raises(OrderStatusUnknownError):
            wrapped.create_order(REQUEST)
    assert wrapped.breaker.state is BreakerState.OPEN


def test_a_failing_transition_callback_never_breaks_the_call(clock: FakeClock) -> None:
    def explode(event: BreakerEvent) -> None:
        raise RuntimeError("database down")

    breaker = CircuitBreaker(venue="v", failure_threshold=1, clock=clock, on_transition=explode)
    breaker.record(TemporaryError("503"))
    assert breaker.state is BreakerState.OPEN


def test_error_text_keeps_the_reason_and_drops_secret_looking_values() -> None:
    jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJrZXkifQ.c2lnbmF0dXJl"
    key = "0x" + "ab" * 32
    text = error_text(AuthError(f"401 for token {jwt} signed by {key}; api_key=organizations/abc"))
    assert text.startswith("AuthError: 401 for token")
    assert jwt not in text and key not in text and "organizations/abc" not in text
    assert len(error_text(TemporaryError("x" * 1000))) == 300


# --------------------------------------------------------------------------------------------- rate limits


def test_the_bucket_lets_a_burst_through_then_paces_at_the_rate(clock: FakeClock) -> None:
    limiter = RateLimiter(RateSpec(rate=10.0, burst=5.0), clock=clock)
    waits = [limiter.reserve(1.0) for _ in range(7)]
    assert waits[:5] == [0.0] * 5
    assert waits[5] == pytest.approx(0.1) and waits[6] == pytest.approx(0.2)
    clock.now += 10.0
    assert limiter.reserve(1.0) == 0.0
    assert limiter.reserve(100.0, max_wait=1.0) is None  # refused, and nothing taken:
    assert limiter.reserve(4.0) == 0.0


@pytest.mark.parametrize("venue, method, published_per_minute", [
    ("coinbase", "balances", 30 * 60),  # private endpoints: 30 req/s
    ("coinbase", "ticker", 10 * 60),  # public endpoints: 10 req/s (ticker costs 3 of the 20)
    ("hyperliquid", "create_order", 1200),  # weight 1
    ("hyperliquid", "open_orders", 1200 / 20),  # weight 20
    ("hyperliquid", "ticker", 1200 / 2),  # weight 2
])
def test_each_venue_stays_below_its_published_limit(build: Any, clock: FakeClock, venue: str, method: str,
                                                    published_per_minute: float) -> None:
    wrapped, inner = build(spec=VENUE_RATES[venue], threshold=10**6)
    call = {"balances": wrapped.balances, "ticker": lambda: wrapped.ticker("BTC-USD"),
            "create_order": lambda: wrapped.create_order(REQUEST), "open_orders": wrapped.open_orders}[method]
    start = clock.now
    done_at: list[float] = []
    for _ in range(int(published_per_minute * 2)):
        call()
        done_at.append(clock.now - start)
    # No 60-second window holds more calls than the venue allows.
    worst = max(sum(1 for t in done_at if s <= t < s + 60.0) for s in done_at)
    assert worst < published_per_minute
    assert worst > 0.5 * published_per_minute  # and the budget is actually used
    assert inner.count(method) == int(published_per_minute * 2)


def test_a_call_that_would_queue_too_long_is_refused_before_sending(clock: FakeClock) -> None:
    inner = ScriptedConnector()
    breaker = CircuitBreaker(venue="fakevenue", clock=clock)
    limiter = RateLimiter(RateSpec(rate=1.0, burst=1.0), clock=clock)
    wrapped = ResilientConnector(inner, RetryPolicy(), limiter, breaker, clock, clock.sleep, max_queue_wait=2.0)
    wrapped.create_order(REQUEST)
    assert limiter.reserve(3.0) == pytest.approx(3.0)  # someone else queued 3 s of calls
    with pytest.raises(VenueUnavailableError, match="nothing was sent"):
        wrapped.create_order(REQUEST)
    assert inner.count("create_order") == 1
    assert breaker.state is BreakerState.CLOSED and breaker.consecutive_failures == 0


def test_venue_extras_pass_through_the_wrapper(build: Any) -> None:
    wrapped, inner = build()
    inner.special = lambda: "venue specific"  # type: ignore[attr-defined]
    assert wrapped.special() == "venue specific"
    assert wrapped.capabilities is inner.capabilities
    assert wrapped.market("BTC-USD") == BTC


# --------------------------------------------------------------------------------------------- registry


def test_the_registry_wraps_live_connectors_and_shares_guards_per_venue_and_account(monkeypatch: Any) -> None:
    from exchanges import registry
    from exchanges.base import VenueConfig
    from exchanges.errors import LiveVenueForbiddenError

    built: list[ScriptedConnector] = []

    def builder(config: VenueConfig) -> Connector:
        built.append(ScriptedConnector())
        return built[-1]

    monkeypatch.setitem(registry._LIVE, "fakevenue", builder)
    registry.guards_reset()
    seen: list[BreakerEvent] = []
    a1 = registry.build(venue="fakevenue", network="testnet", credentials={}, account="a", on_breaker=seen.append)
    a2 = registry.build(venue="fakevenue", network="testnet", credentials={}, account="a")
    b = registry.build(venue="fakevenue", network="testnet", credentials={}, account="b")
    assert isinstance(a1, ResilientConnector) and isinstance(b, ResilientConnector)
    assert isinstance(a2, ResilientConnector)
    assert a1.breaker is a2.breaker and a1.limiter is a2.limiter
    assert a1.breaker is not b.breaker
    assert a1.limiter.spec == registry.DEFAULT_RATE
    bare = registry.build(venue="fakevenue", network="testnet", credentials={}, account="a", resilient=False)
    assert bare is built[-1]
    with pytest.raises(LiveVenueForbiddenError):
        registry.build(venue="paper", network="paper", credentials={})
    # The callback given at build time hears the shared breaker's transitions.
    for _ in range(a1.breaker.failure_threshold):
        a1.breaker.record(TemporaryError("503"))
    assert [e.state for e in seen] == [BreakerState.OPEN] and seen[0].account == "a"
    assert b.breaker.state is BreakerState.CLOSED
    registry.guards_reset()
    assert registry.guards("fakevenue", "a")[1] is not a1.breaker


# --------------------------------------------------------------------------------------------- contract


class TestResilientConnectorContract(ConnectorContract):
    """The wrapper is a faithful Connector: the whole contract passes through it (paper inside)."""

    @pytest.fixture
    def venue(self) -> ContractVenue:
        from exchanges.paper import DEFAULT_MARKETS, InMemoryPaperStore, PaperConfig, PaperVenue
        from tests.exchanges.fakes import FakePrices

        prices = FakePrices()
        prices.set("BTC/USD", "43210.55")
        paper = PaperVenue(store=InMemoryPaperStore(Decimal("1000000")), prices=prices,
                           config=PaperConfig(markets=DEFAULT_MARKETS, slippage_bps=Decimal("5")), clock=prices.clock)
        clock = FakeClock()
        wrapped = ResilientConnector(paper, RetryPolicy(), RateLimiter(VENUE_RATES["coinbase"], clock=clock),
                                     CircuitBreaker(venue="paper", clock=clock), clock, clock.sleep)

        def set_price(symbol: str, price: Decimal) -> None:
            prices.set(symbol, price)
            paper.match(symbol)

        return ContractVenue(connector=wrapped, symbol="BTC/USD", price=Decimal("43210.55"), set_price=set_price)


def test_a_per_ip_budget_is_shared_by_every_account_of_the_venue() -> None:
    from exchanges import registry

    registry.guards_reset()
    hl_a, hl_b = registry.guards("hyperliquid", "a"), registry.guards("hyperliquid", "b")
    cb_a, cb_b = registry.guards("coinbase", "a"), registry.guards("coinbase", "b")
    assert VENUE_RATES["hyperliquid"].per_ip and not VENUE_RATES["coinbase"].per_ip
    assert hl_a[0] is hl_b[0] and hl_a[1] is not hl_b[1]  # one bucket per IP, one breaker per account
    assert cb_a[0] is not cb_b[0]


# --------------------------------------------------------------------------------------------- over HTTP faults


class TinyVenue(FakeHTTPServer):
    """A loopback venue with a price and an order book of client ids."""

    def route(self, request: Request) -> Reply:
        if request.method == "POST":
            return Reply(200, {"id": "v1", "client_order_id": request.json()["client_order_id"]})
        return Reply(200, {"price": "100"})


def test_the_fake_is_quiet_about_a_client_that_hung_up_but_not_about_its_own_bugs(
        capsys: pytest.CaptureFixture[str]) -> None:
    """A held reply written after the client gave up raises BrokenPipeError in the fake's thread: expected, so no
    traceback in the test output; any other error in the fake is still printed."""
    with TinyVenue() as venue:
        for error in (BrokenPipeError(32, "Broken pipe"), ConnectionResetError(104, "reset"),
                      ValueError("a bug in the fake")):
            try:
                raise error
            except Exception:
                venue.handle_error(None, ("127.0.0.1", 1))
    printed = capsys.readouterr().err
    assert "BrokenPipeError" not in printed and "ConnectionResetError" not in printed
    assert "ValueError: a bug in the fake" in printed


class HttpConnector(ScriptedConnector):
    """A hand-written HTTP connector that translates errors at the boundary the way the real ones do."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.http = requests.Session()

    def _send(self, method: str, path: str, *, ambiguous: bool, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, self.url + path, timeout=2, **kwargs)
        except requests.RequestException as exc:
            if ambiguous:
                raise OrderStatusUnknownError(f"{type(exc).__name__} after sending", venue="tiny") from exc
            raise TemporaryError(type(exc).__name__, venue="tiny") from exc
        if response.status_code == 429:
            after = response.headers.get("Retry-After")
            raise RateLimitError("HTTP 429", venue="tiny", retry_after=None if after is None else float(after))
        if response.status_code >= 500:
            if ambiguous:
                raise OrderStatusUnknownError(f"HTTP {response.status_code} after sending", venue="tiny")
            raise TemporaryError(f"HTTP {response.status_code}", venue="tiny")
        return response.json()

    def ticker(self, symbol: str) -> Ticker:
        data = self._send("GET", "/ticker", ambiguous=False)
        return Ticker(symbol=symbol, price=Decimal(data["price"]), time=datetime.now(UTC))

    def balances(self) -> Sequence[Balance]:
        self._send("GET", "/balances", ambiguous=False)
        return []

    def create_order(self, request: OrderRequest) -> VenueOrder:
        data = self._send("POST", "/orders", ambiguous=True, json={"client_order_id": request.client_order_id})
        return self._order(data["client_order_id"])


@pytest.fixture
def tiny() -> Iterator[tuple[TinyVenue, ResilientConnector]]:
    import time as real_time

    with TinyVenue() as server:
        breaker = CircuitBreaker(venue="tiny", failure_threshold=3, cool_down=0.3)
        wrapped = ResilientConnector(HttpConnector(server.url), RetryPolicy(base_delay=0.01, max_delay=0.05),
                                     RateLimiter(UNLIMITED), breaker, real_time.monotonic, real_time.sleep,
                                     rng=random.Random(3))
        yield server, wrapped


def posts(server: TinyVenue) -> list[Request]:
    return server.requests(lambda r: r.method == "POST")


def test_over_http_a_429_storm_is_waited_out_as_the_venue_asks(tiny: Any) -> None:
    server, wrapped = tiny
    server.plan.next(2, Fault.RATE_LIMIT, retry_after=0.2)
    assert wrapped.ticker("BTC-USD").price == Decimal("100")
    gets = server.requests()
    assert len(gets) == 3
    assert all(b.at - a.at >= 0.2 for a, b in zip(gets, gets[1:]))


def test_over_http_an_accept_then_drop_create_is_sent_once_and_reported_unknown(tiny: Any) -> None:
    server, wrapped = tiny
    server.plan.next(1, Fault.ACCEPT_THEN_DROP, match=lambda r: r.method == "POST")
    with pytest.raises(OrderStatusUnknownError):
        wrapped.create_order(REQUEST)
    assert len(posts(server)) == 1


def test_over_http_an_outage_opens_the_breaker_and_recovery_closes_it(tiny: Any) -> None:
    import time as real_time

    server, wrapped = tiny
    server.plan.fail_for(0.5, status=503)
    with pytest.raises(VenueUnavailableError):
        wrapped.ticker("BTC-USD")  # three 503s in a row open the breaker; the fourth try is refused unsent
    assert wrapped.breaker.state is BreakerState.OPEN and len(server.requests()) == 3
    with pytest.raises(VenueUnavailableError):
        wrapped.create_order(REQUEST)
    assert posts(server) == []
    real_time.sleep(0.6)  # the outage and the cool-down are over
    order = wrapped.create_order(REQUEST)  # a balances read probes first, then the order goes, once
    assert order.client_order_id == "c1" and wrapped.breaker.state is BreakerState.CLOSED
    assert [r.path for r in server.requests()][-2:] == ["/balances", "/orders"]
    assert len(posts(server)) == 1


def test_a_no_retry_view_shares_the_breaker_and_budget(build: Any) -> None:
    wrapped, inner = build(threshold=2)
    once = wrapped.with_policy(RetryPolicy(max_attempts=1))
    assert once.breaker is wrapped.breaker and once.limiter is wrapped.limiter and once.inner is inner
    inner.fail("ticker", *temporary(2))
    with pytest.raises(TemporaryError):
        once.ticker("BTC-USD")
    assert inner.count("ticker") == 1
    with pytest.raises(TemporaryError):
        once.ticker("BTC-USD")
    assert wrapped.breaker.state is BreakerState.OPEN


def test_market_rules_are_cached_so_each_signal_costs_no_request_or_budget(build: Any, clock: FakeClock) -> None:
    wrapped, inner = build(spec=RateSpec(rate=4.0, burst=20.0, costs={"markets": 20.0}))
    for _ in range(50):
        assert wrapped.market("BTC-USD") == BTC
        assert list(wrapped.markets()) == [BTC]
    assert inner.count("markets") == 2  # one for market(), one for markets(): then cached
    assert clock.sleeps == [pytest.approx(5.0)]  # the second full read waited for budget, the cache hits did not
    clock.now += wrapped.markets_ttl
    wrapped.market("BTC-USD")
    assert inner.count("markets") == 3
    from exchanges.errors import MarketNotFoundError

    clock.now += 20.0
    with pytest.raises(MarketNotFoundError):
        wrapped.market("NOPE")
    assert wrapped.breaker.state is BreakerState.CLOSED
