"""The durable venue journal, breaker state persisted per account, and /api/venues/."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, connections, transaction
from django.utils import timezone
from rest_framework.test import APIClient

from exchanges import registry
from exchanges.base import Connector, VenueConfig
from exchanges.errors import TemporaryError, VenueUnavailableError
from exchanges.resilience import BreakerState, ResilientConnector
from tests.exchanges.test_resilience import REQUEST, ScriptedConnector
from trading import selectors, services
from trading.connectors import connector_build
from trading.journal import DjangoVenueJournal
from trading.models import VenueAccount, VenueHealth, VenueJournalEntry

SECRET = "s3cr3t-api-secret-value-0123"


def other_connection_reads(account_id: int, key: str) -> Any:
    """What a different database session sees (committed data only)."""
    seen: list[Any] = []

    def read() -> None:
        try:
            seen.append(VenueJournalEntry.objects.filter(account_id=account_id, key=key)
                        .values_list("value", flat=True).first())
        finally:
            connections.close_all()

    thread = threading.Thread(target=read)
    thread.start()
    thread.join(10)
    return seen[0]


@pytest.fixture
def live_account(db: Any, monkeypatch: pytest.MonkeyPatch) -> VenueAccount:
    monkeypatch.setenv("CBTEST_API_SECRET", SECRET)
    monkeypatch.setenv("CBTEST_API_KEY", "organizations/abc/apiKeys/def")
    return VenueAccount.objects.create(name="coinbase-test", venue="coinbase", network="testnet",
                                       credentials_env="CBTEST", quote_asset="USD")


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[list[ScriptedConnector], list[VenueConfig]]]:
    """Make "coinbase" build a hand-written scripted connector (the registry still wraps it)."""
    built: list[ScriptedConnector] = []
    configs: list[VenueConfig] = []

    def builder(config: VenueConfig) -> Connector:
        configs.append(config)
        built.append(ScriptedConnector())
        return built[-1]

    monkeypatch.setitem(registry._LIVE, "coinbase", builder)
    yield built, configs


def open_breaker(connector: ResilientConnector, inner: ScriptedConnector) -> None:
    """Fail creates (never retried, so no back-off waits) until the breaker opens."""
    failures = connector.breaker.failure_threshold
    inner.fail("create_order", *[TemporaryError(f"HTTP 503 with {SECRET} echoed") for _ in range(failures)])
    for _ in range(failures):
        with pytest.raises(TemporaryError):
            connector.create_order(REQUEST)
    assert connector.breaker.state is BreakerState.OPEN


# --------------------------------------------------------------------------------------------- journal


@pytest.mark.django_db(transaction=True)
def test_journal_round_trip_per_account(live_account: VenueAccount) -> None:
    other = VenueAccount.objects.create(name="other", venue="hyperliquid", network="testnet")
    journal, theirs = DjangoVenueJournal(live_account.pk), DjangoVenueJournal(other.pk)
    journal.put("tx/1", {"raw": "0xf86c", "hash": "0xabc", "nonce": 7})
    journal.put("tx/2", {"raw": "0xf86d", "nonce": 8})
    journal.put("nonce", {"next": 9})
    theirs.put("tx/1", {"raw": "theirs"})
    journal.put("tx/1", {"raw": "0xf86c", "hash": "0xabc", "nonce": 7, "state": "broadcast"})
    assert journal.get("tx/1") == {"raw": "0xf86c", "hash": "0xabc", "nonce": 7, "state": "broadcast"}
    assert journal.get("missing") is None
    assert [k for k, _ in journal.items("tx/")] == ["tx/1", "tx/2"]
    assert len(journal.items()) == 3
    journal.delete("tx/2")
    journal.delete("tx/never")
    assert [k for k, _ in journal.items("tx/")] == ["tx/1"]
    assert theirs.get("tx/1") == {"raw": "theirs"}
    assert VenueJournalEntry.objects.filter(account=live_account).count() == 2


@pytest.mark.django_db(transaction=True)
def test_journal_put_is_durable_inside_an_outer_transaction_that_rolls_back(live_account: VenueAccount) -> None:
    journal = DjangoVenueJournal(live_account.pk)
    journal.put("tx/0", {"raw": "old"})

    class Boom(Exception):
        pass

    with pytest.raises(Boom), transaction.atomic():
        # The engine holds the account row (even FOR UPDATE) while the connector stores its raw transaction.
        VenueAccount.objects.select_for_update().get(pk=live_account.pk)
        VenueAccount.objects.filter(pk=live_account.pk).update(quote_asset="EUR")
        journal.put("tx/1", {"raw": "0xf86c", "nonce": 7})
        journal.delete("tx/0")
        # Durable when put returns: another session sees it while this transaction is still open.
        assert other_connection_reads(live_account.pk, "tx/1") == {"raw": "0xf86c", "nonce": 7}
        assert other_connection_reads(live_account.pk, "tx/0") is None
        assert journal.get("tx/1") == {"raw": "0xf86c", "nonce": 7}
        raise Boom
    live_account.refresh_from_db()
    assert live_account.quote_asset == "USD"  # the outer work rolled back...
    assert journal.get("tx/1") == {"raw": "0xf86c", "nonce": 7}  # ...the journal did not
    assert journal.get("tx/0") is None


@pytest.mark.django_db(transaction=True)
def test_journal_survives_a_dropped_side_connection(live_account: VenueAccount) -> None:
    from trading import sidedb

    journal = DjangoVenueJournal(live_account.pk)
    with transaction.atomic():
        journal.put("a", {"n": 1})
        with connection.cursor() as cursor:  # the server ends the side session (a restart, an idle timeout)
            cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                           "current_database() AND pid <> pg_backend_pid() "
                           "AND query LIKE 'INSERT INTO trading_venue%%'")
            assert cursor.fetchall() == [(True,)]
        journal.put("b", {"n": 2})
    assert [k for k, _ in journal.items()] == ["a", "b"]
    sidedb.side_connections_close()


def test_connectors_get_the_durable_journal(live_account: VenueAccount, scripted: Any) -> None:
    _, configs = scripted
    connector = connector_build(live_account)
    assert isinstance(connector, ResilientConnector)
    journal = configs[0].journal
    assert isinstance(journal, DjangoVenueJournal) and journal.account_id == live_account.pk
    assert configs[0].account == "coinbase-test" and configs[0].credentials["api_secret"] == SECRET


def test_journal_rows_are_unique_per_account_and_key(live_account: VenueAccount) -> None:
    from django.db import IntegrityError

    now = timezone.now()
    VenueJournalEntry.objects.create(account=live_account, key="k", value={}, created_at=now, updated_at=now)
    with pytest.raises(IntegrityError), transaction.atomic():
        VenueJournalEntry.objects.create(account=live_account, key="k", value={}, created_at=now, updated_at=now)


# --------------------------------------------------------------------------------------------- health


@pytest.mark.django_db(transaction=True)
def test_breaker_transitions_are_persisted_even_when_the_callers_transaction_rolls_back(
        live_account: VenueAccount, scripted: Any) -> None:
    built, _ = scripted
    connector = connector_build(live_account)
    assert isinstance(connector, ResilientConnector)

    class Boom(Exception):
        pass

    with pytest.raises(Boom), transaction.atomic():
        VenueAccount.objects.select_for_update().get(pk=live_account.pk)
        open_breaker(connector, built[0])
        raise Boom
    health = VenueHealth.objects.get(account=live_account)
    assert health.state == VenueHealth.State.OPEN
    assert health.consecutive_failures == connector.breaker.failure_threshold
    assert "TemporaryError: HTTP 503" in health.last_error
    assert SECRET not in health.last_error
    assert health.reporter.endswith(f":{__import__('os').getpid()}")

    # While open: no order reaches the venue; cancels do.
    with pytest.raises(VenueUnavailableError, match="no order was sent"):
        connector.create_order(REQUEST)
    assert built[0].count("create_order") == connector.breaker.failure_threshold
    connector.cancel_order("BTC-USD", "v1")
    assert built[0].count("cancel_order") == 1

    # After the cool-down a read probes, succeeds, and the breaker closes: recorded again.
    connector.breaker.cool_down = 0.0
    connector.ticker("BTC-USD")
    health.refresh_from_db()
    assert health.state == VenueHealth.State.CLOSED and health.consecutive_failures == 0


# --------------------------------------------------------------------------------------------- API


def client_for(user: Any) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {services.api_token_create(user=user, by='test')[1]}")
    return client


@pytest.fixture
def viewer(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("venue-viewer", password="pw-viewer-123")


def test_venues_api_needs_authentication(db: Any) -> None:
    assert APIClient().get("/api/venues/").status_code == 401
    bad = APIClient()
    bad.credentials(HTTP_AUTHORIZATION="Token not-a-token")
    assert bad.get("/api/venues/").status_code == 401


def test_venues_api_shows_breaker_and_reconciliation_per_account(viewer: Any, live_account: VenueAccount,
                                                                 make_account: Callable[..., Any]) -> None:
    paper = make_account(name="paper-1")
    since = timezone.now() - timedelta(minutes=3)
    VenueHealth.objects.create(account=live_account, state="open", since=since, consecutive_failures=5,
                               last_error="TemporaryError: HTTP 503", reporter="worker-1:42", updated_at=since)
    VenueAccount.objects.filter(pk=live_account.pk).update(last_reconciled_at=since, last_reconcile_report={
        "time": since.isoformat(), "updated_orders": 2, "unknown_venue_orders": ["x-1"],
        "position_differences": {}, "cash": {"ours": "10", "venue": "10", "asset": "USD"}})
    hl = VenueAccount.objects.create(name="hl", venue="hyperliquid", network="mainnet")

    response = client_for(viewer).get("/api/venues/")
    assert response.status_code == 200
    rows = {row["account_name"]: row for row in response.json()}
    assert set(rows) == {"coinbase-test", "hl", paper.name}
    cb = rows["coinbase-test"]
    assert cb["account"] == live_account.pk and cb["venue"] == "coinbase" and cb["network"] == "testnet"
    assert cb["breaker_state"] == "open" and cb["consecutive_failures"] == 5
    assert cb["last_error"] == "TemporaryError: HTTP 503" and cb["reported_by"] == "worker-1:42"
    assert cb["breaker_since"] is not None and cb["last_reconciled_at"] is not None
    assert cb["reconcile_summary"] == {"ok": False, "updated_orders": 2, "unknown_venue_orders": 1,
                                       "position_differences": 0,
                                       "cash": {"ours": "10", "venue": "10", "asset": "USD"}}
    assert rows["hl"]["breaker_state"] == "closed" and rows["hl"]["reconcile_summary"] == {}
    assert rows["hl"]["account"] == hl.pk
    assert rows[paper.name]["breaker_state"] == "none"
    assert SECRET not in response.content.decode()


def test_venues_api_query_count_is_fixed(viewer: Any, make_account: Callable[..., Any],
                                         django_assert_num_queries: Any) -> None:
    client = client_for(viewer)
    for i in range(3):
        account = VenueAccount.objects.create(name=f"live-{i}", venue="hyperliquid", network="testnet")
        VenueHealth.objects.create(account=account, state="half_open", since=timezone.now(), updated_at=timezone.now())
    with django_assert_num_queries(2):  # the token, then accounts with their health in one query
        assert len(client.get("/api/venues/").json()) == 3
    for i in range(5):
        make_account(name=f"paper-{i}")
    with django_assert_num_queries(2):
        assert len(client.get("/api/venues/").json()) == 8


def test_venue_health_list_is_the_selector_the_dashboard_uses(live_account: VenueAccount) -> None:
    lines = selectors.venue_health_list()
    assert [(line.account_id, line.breaker_state) for line in lines] == [(live_account.pk, "closed")]


def test_venues_api_is_in_the_openapi_schema(viewer: Any) -> None:
    schema = client_for(viewer).get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    operation = schema["paths"]["/api/venues/"]["get"]
    assert operation["operationId"] == "venues_list"
    ref = operation["responses"]["200"]["content"]["application/json"]["schema"]["items"]["$ref"]
    fields = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"]
    assert {"breaker_state", "last_error", "last_reconciled_at", "reconcile_summary", "venue", "network"} <= set(fields)


# --------------------------------------------------------------------------------------------- with the engine


@pytest.fixture
def live_strategy(live_account: VenueAccount, scripted: Any, make_strategy: Callable[..., Any]) -> Any:
    VenueAccount.objects.filter(pk=live_account.pk).update(cash=10000, max_leverage=5)
    live_account.refresh_from_db()
    return make_strategy(live_account, symbol="BTC-USD", mode="live")


def test_an_open_breaker_keeps_signals_waiting_and_sends_nothing(live_strategy: Any, scripted: Any) -> None:
    from trading.execution import signal_process
    from trading.intake import signal_create
    from trading.models import Order, Signal
    from trading.connectors import connector_for

    built, _ = scripted
    connector = connector_for(live_strategy.account)
    assert isinstance(connector, ResilientConnector)
    open_breaker(connector, built[0])
    sent_before = built[0].count("create_order")
    signal, _ = signal_create(strategy=live_strategy, source="manual", idempotency_key="breaker-1",
                                     action="open_long", enqueue=False)
    with pytest.raises(VenueUnavailableError):
        signal_process(signal_id=signal.pk)  # the decision's reads are refused: retried later
    signal.refresh_from_db()
    assert signal.status == Signal.Status.RECEIVED
    assert not Order.objects.filter(signal=signal).exists()
    assert built[0].count("create_order") == sent_before

    connector.breaker.cool_down = 0.0  # cool-down over: the decision's first read probes and closes the breaker
    signal_process(signal_id=signal.pk)
    order = Order.objects.get(signal=signal)
    assert order.status == Order.Status.OPEN and order.venue_order_id == "v1"
    assert built[0].count("create_order") == sent_before + 1
    assert connector.breaker.state is BreakerState.CLOSED


def test_an_order_refused_before_sending_is_sent_once_later(live_strategy: Any, scripted: Any) -> None:
    """The rate budget (or the breaker) refuses the create after the decision: nothing was sent; recovery asks the
    venue by client id and then sends the order exactly once."""
    from exchanges.resilience import RateLimiter, RateSpec
    from trading.execution import signal_process
    from trading.intake import signal_create
    from trading.orders import order_recover
    from trading.models import Order
    from trading.connectors import connector_for

    built, _ = scripted
    connector = connector_for(live_strategy.account)
    assert isinstance(connector, ResilientConnector)
    connector.limiter = RateLimiter(RateSpec(rate=1.0, burst=10.0, costs={"create_order": 1000.0}))
    signal, _ = signal_create(strategy=live_strategy, source="manual", idempotency_key="budget-1",
                                     action="open_long", enqueue=False)
    signal_process(signal_id=signal.pk)
    order = Order.objects.get(signal=signal)
    assert built[0].count("create_order") == 0
    assert not order.is_final and "nothing was sent" in order.reason

    connector.limiter = RateLimiter(RateSpec(rate=100.0, burst=100.0))
    later = timezone.now() + timedelta(minutes=1)
    order_recover(order_id=order.pk, now=later)
    order.refresh_from_db()
    assert order.status == Order.Status.OPEN
    assert built[0].calls.count("fetch_order_by_client_id") >= 1
    assert built[0].count("create_order") == 1
    assert Order.objects.filter(signal=signal).count() == 1


# --------------------------------------------------------------------------------------------- shared budgets


def test_rate_budgets_are_shared_by_every_process_through_redis() -> None:
    import uuid

    import redis
    from django.conf import settings

    from exchanges.resilience import RateSpec
    from trading.ratelimits import SharedRateLimiter

    name = f"coinbase:{uuid.uuid4().hex}"
    spec = RateSpec(rate=10.0, burst=5.0)
    # Two processes: each its own client and limiter object, one bucket between them.
    a = SharedRateLimiter(name, spec, client=redis.Redis.from_url(settings.REDIS_URL), prefix="t:")
    b = SharedRateLimiter(name, spec, client=redis.Redis.from_url(settings.REDIS_URL), prefix="t:")
    other = SharedRateLimiter(name + "-other", spec, client=redis.Redis.from_url(settings.REDIS_URL), prefix="t:")
    assert [a.reserve(1.0) for _ in range(5)] == [0.0] * 5
    wait = b.reserve(1.0)
    assert wait is not None and 0.05 < wait <= 0.1 + 1e-6  # the burst was spent by the other process
    assert b.reserve(50.0, max_wait=1.0) is None  # refused, nothing taken
    assert other.reserve(5.0) == 0.0  # another account has its own bucket
    redis.Redis.from_url(settings.REDIS_URL).delete(a.key, other.key)


def test_a_shared_budget_falls_back_to_a_local_one_when_redis_is_down() -> None:
    import redis

    from exchanges.resilience import RateSpec
    from trading.ratelimits import SharedRateLimiter

    from tests.exchanges.test_resilience import FakeClock

    calls: list[str] = []

    class Down(redis.Redis):
        def execute_command(self, *args: Any, **options: Any) -> Any:
            calls.append(str(args[0]))
            raise redis.ConnectionError("Redis is restarting")

    clock = FakeClock()
    limiter = SharedRateLimiter("hyperliquid:*", RateSpec(rate=1.0, burst=2.0), client=Down(), clock=clock)
    assert limiter.reserve(1.0) == 0.0 and limiter.reserve(1.0) == 0.0
    assert limiter.reserve(1.0) == pytest.approx(1.0)  # this process's own bucket still paces the calls
    assert len(calls) == 1  # Redis is left alone for a while after failing
    clock.now += SharedRateLimiter.LOCAL_FOR
    limiter.reserve(1.0)
    assert len(calls) == 2


def test_live_connectors_use_the_shared_budget(live_account: VenueAccount, scripted: Any) -> None:
    from trading.ratelimits import SharedRateLimiter

    connector = connector_build(live_account)
    assert isinstance(connector, ResilientConnector) and isinstance(connector.limiter, SharedRateLimiter)
    assert connector.limiter.spec == registry.VENUE_RATES["coinbase"]
    connector.ticker("BTC-USD")


@pytest.mark.django_db(transaction=True)
def test_the_journal_lock_holds_across_connections_and_is_reentrant() -> None:
    import threading

    from trading import journal as venue_journal
    from trading.journal import DjangoVenueJournal
    from trading.sidedb import side_connections_close

    order: list[str] = []

    def other() -> None:
        try:
            with DjangoVenueJournal(1).lock("wallet:x"):  # its own thread, its own session
                order.append("other")
        finally:
            side_connections_close()

    journal = DjangoVenueJournal(1)
    with journal.lock("wallet:x"), journal.lock("wallet:x"):  # re-entrant
        thread = threading.Thread(target=other)
        thread.start()
        time.sleep(0.3)
        order.append("first")
    thread.join(timeout=10)
    assert order == ["first", "other"]

    holder = threading.Event()
    release = threading.Event()

    def hold() -> None:
        try:
            with DjangoVenueJournal(1).lock("wallet:y"):
                holder.set()
                release.wait(10)
        finally:
            side_connections_close()

    thread = threading.Thread(target=hold)
    thread.start()
    holder.wait(5)
    old_wait, venue_journal.JOURNAL_LOCK_WAIT_SECONDS = venue_journal.JOURNAL_LOCK_WAIT_SECONDS, 0.2
    try:
        with pytest.raises(TemporaryError, match="held by another process"), journal.lock("wallet:y"):
            pass
    finally:
        venue_journal.JOURNAL_LOCK_WAIT_SECONDS = old_wait
        release.set()
        thread.join(timeout=10)
