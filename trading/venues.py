"""Connectors for accounts: the Django-backed paper store and price feed, the durable venue journal, venue health,
and a per-process connector cache."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, InterfaceError, OperationalError, connection, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils import timezone

from exchanges import registry
from exchanges.base import Connector, OrderRequest, OrderType, Side, Ticker, VenueFill, VenueOrder, VenueOrderStatus
from exchanges.errors import TemporaryError
from exchanges.paper import DEFAULT_MARKETS, PaperConfig, PaperVenue
from exchanges.resilience import BreakerEvent, RateLimiter, RateSpec
from infra import rows
from infra.rows import Rows, fetch_all
from trading.models import MarketPrice, PaperOrder, PaperPosition, VenueAccount, VenueHealth, VenueJournalEntry

log = logging.getLogger("venues")

_cache: dict[int, tuple[datetime, Connector]] = {}
_PAPER_LOCK_SPACE = 7411  # advisory-lock namespace of the paper venue (key 2 = account id)
_cache_lock = threading.Lock()


def connector_for(account: VenueAccount) -> Connector:
    """Return this process's connector for an account, rebuilt when the account's settings change."""
    with _cache_lock:
        hit = _cache.get(account.pk)
        if hit is not None and hit[0] == account.updated_at:
            return hit[1]
        connector = _build(account)
        _cache[account.pk] = (account.updated_at, connector)
        return connector


def connector_for_id(account_id: int, updated_at: datetime) -> Connector:
    """The connector of an account known by id and its `updated_at` (reads the account only to build one)."""
    with _cache_lock:
        hit = _cache.get(account_id)
    if hit is not None and hit[0] == updated_at:
        return hit[1]
    return connector_for(VenueAccount.objects.get(pk=account_id))


def _build(account: VenueAccount) -> Connector:
    if account.venue == VenueAccount.Venue.PAPER:
        config = PaperConfig(
            markets=DEFAULT_MARKETS,
            quote_asset=account.quote_asset,
            slippage_bps=account.paper_slippage_bps,
            max_volume_share=account.paper_max_volume_share,
        )
        store = DjangoPaperStore(account.pk)
        venue = PaperVenue(store=store, prices=DbPriceSource(store), config=config)
        return LatentConnector(venue, account.paper_latency_ms) if account.paper_latency_ms else venue
    prefix = f"{account.credentials_env}_"
    credentials = {k[len(prefix):].lower(): v for k, v in os.environ.items() if k.startswith(prefix)}
    # <PREFIX>_ENDPOINT is not a secret: it points the account at another base URL (a testnet mirror, a loopback fake).
    endpoint = credentials.pop("endpoint", None) or None
    rate_limit = credentials.pop("rate_limit", None)  # <PREFIX>_RATE_LIMIT: the account's own request budget
    registry.limiters_use(_shared_limiter if settings.REDIS_URL else None)
    return registry.build(
        venue=account.venue, network=account.network, credentials=credentials, endpoint=endpoint,
        journal=DjangoVenueJournal(account.pk), account=account.name, rate_limit=rate_limit,
        on_breaker=_health_reporter(account.pk, secrets=[v for k, v in credentials.items() if len(v) >= 6]),
    )


# --------------------------------------------------------------------------------------------- shared rate budgets

# One token bucket in Redis per (venue, account): every process (workers, web, commands) spends the same budget,
# so N processes together stay below the venue's limit. Redis's own clock refills it.
_BUCKET_SCRIPT = """
local rate, burst, cost, max_wait = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local wait = math.max(0, (cost - tokens) / rate)
if wait > max_wait then return '-1' end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens - cost), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate + wait) + 60)
return tostring(math.ceil(wait * 1000000))
"""


class SharedRateLimiter(RateLimiter):
    """A token bucket kept in Redis, shared by every process; a local bucket stands in while Redis is unreachable."""

    LOCAL_FOR = 30.0  # seconds on the local bucket after Redis failed, before trying Redis again

    def __init__(self, name: str, spec: RateSpec, *, client: Any, prefix: str = "",
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(spec, clock=clock)
        self.key = f"{prefix}venue-bucket:{name}"
        self._script = client.register_script(_BUCKET_SCRIPT)
        self._now = clock
        self._local_until = 0.0

    def reserve(self, cost: float, *, max_wait: float = 1e9) -> float | None:
        if self._now() < self._local_until:
            return super().reserve(cost, max_wait=max_wait)
        try:
            micros = int(self._script(keys=[self.key], args=[
                repr(self.spec.rate), repr(self.spec.burst), repr(cost), repr(min(max_wait, 1e9))]))
        except Exception as exc:  # redis down: keep a per-process budget rather than stop trading
            log.warning("shared rate budget %s unavailable (%s): this process uses its own for %gs", self.key,
                        type(exc).__name__, self.LOCAL_FOR)
            self._local_until = self._now() + self.LOCAL_FOR
            return super().reserve(cost, max_wait=max_wait)
        return None if micros < 0 else micros / 1_000_000


_redis_clients: dict[str, Any] = {}


def _shared_limiter(name: str, spec: RateSpec) -> RateLimiter:
    import redis

    url = settings.REDIS_URL
    client = _redis_clients.get(url)
    if client is None:
        # No client-side retries: a venue call must not wait seconds on a Redis outage (the local bucket steps in).
        client = _redis_clients[url] = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1,
                                                            retry=None)
    return SharedRateLimiter(name, spec, client=client, prefix=settings.CACHES["default"].get("KEY_PREFIX", ""))


# --------------------------------------------------------------------------------------------- durable writes

_side = threading.local()
_SIDE_STATEMENT_TIMEOUT_MS = 5000
_side_all: list[BaseDatabaseWrapper] = []  # every thread's side connection, so they can all be closed
_side_all_lock = threading.Lock()


def _side_connection() -> BaseDatabaseWrapper:
    """This thread's own autocommit connection to the default database (recreated after a fork)."""
    conn: BaseDatabaseWrapper | None = getattr(_side, "conn", None)
    if conn is None or conn.connection is None or getattr(_side, "pid", None) != os.getpid():
        conn = connections.create_connection(DEFAULT_DB_ALIAS)
        conn.inc_thread_sharing()  # side_connections_close() may close it from another thread
        conn.ensure_connection()
        with conn.cursor() as cursor:
            # Never hang the caller: a journal write that cannot finish in 5 s fails loudly.
            cursor.execute(f"SET statement_timeout = {_SIDE_STATEMENT_TIMEOUT_MS}")
        _side.conn, _side.pid = conn, os.getpid()
        with _side_all_lock:
            _side_all.append(conn)
    return conn


def side_connections_close() -> None:
    """Close every thread's side connection (tests, before their database is dropped)."""
    with _side_all_lock:
        conns = list(_side_all)
        _side_all.clear()
    for conn in conns:
        conn.close()
    _side.conn = None


def _durable_sql(sql: str, params: list[Any]) -> None:
    """Run one write on this thread's side connection: committed when it returns, whatever transaction is open."""
    for attempt in (1, 2):
        conn = _side_connection()
        try:
            with conn.cursor() as cursor:
                cursor.execute(sql, params)
            return
        except (OperationalError, InterfaceError):
            # A dropped connection (server restart, idle timeout): reconnect once, then give up loudly.
            conn.close()
            _side.conn = None
            if attempt == 2:
                raise


def _needs_side_connection() -> bool:
    """Inside an atomic block a write on the default connection would commit (or roll back) with it."""
    # SQLite allows one writer at a time: a second connection would wait on the outer transaction, so there the
    # journal commits with it (SQLite is for development; live venues run on Postgres).
    return connection.in_atomic_block and connection.vendor == "postgresql"


class DjangoVenueJournal:
    """A VenueJournal in the database: `put` and `delete` are committed when they return, even when the caller
    holds a transaction (which may still roll back) — e.g. a raw transaction is stored before its broadcast."""

    def __init__(self, account_id: int) -> None:
        self.account_id = account_id

    def put(self, key: str, value: Mapping[str, Any]) -> None:
        data = dict(value)
        now = timezone.now()
        if _needs_side_connection():
            table = VenueJournalEntry._meta.db_table
            _durable_sql(
                f"INSERT INTO {table} (account_id, key, value, created_at, updated_at) "
                f"VALUES (%s, %s, %s::jsonb, %s, %s) ON CONFLICT (account_id, key) "
                f"DO UPDATE SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at",
                [self.account_id, key, json.dumps(data), now, now],
            )
            return
        VenueJournalEntry.objects.update_or_create(account_id=self.account_id, key=key,
                                                   defaults={"value": data, "updated_at": now},
                                                   create_defaults={"value": data, "created_at": now,
                                                                    "updated_at": now})

    def get(self, key: str) -> Mapping[str, Any] | None:
        value: dict[str, Any] | None = VenueJournalEntry.objects.filter(
            account_id=self.account_id, key=key).values_list("value", flat=True).first()
        return value

    def items(self, prefix: str = "") -> list[tuple[str, Mapping[str, Any]]]:
        rows = VenueJournalEntry.objects.filter(account_id=self.account_id, key__startswith=prefix)
        return list(rows.order_by("key").values_list("key", "value"))

    def delete(self, key: str) -> None:
        if _needs_side_connection():
            _durable_sql(f"DELETE FROM {VenueJournalEntry._meta.db_table} WHERE account_id = %s AND key = %s",
                         [self.account_id, key])
            return
        VenueJournalEntry.objects.filter(account_id=self.account_id, key=key).delete()

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Hold `name` across processes: a PostgreSQL session advisory lock on this thread's lock connection (its
        own, so that no journal write's reconnect can drop it). Re-entrant. SQLite (development): this process.

        Waits up to JOURNAL_LOCK_WAIT_SECONDS, then raises TemporaryError (the caller has done nothing yet)."""
        held = getattr(_locks, "held", None)
        if held is None:
            held = _locks.held = {}
        if held.get(name):
            held[name] += 1
            try:
                yield
            finally:
                held[name] -= 1
            return
        if connection.vendor != "postgresql":
            with _process_lock(name):
                held[name] = 1
                try:
                    yield
                finally:
                    held.pop(name, None)
            return
        conn = _lock_connection()
        deadline = time.monotonic() + JOURNAL_LOCK_WAIT_SECONDS
        with conn.cursor() as cursor:
            while True:
                cursor.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", [_JOURNAL_LOCK_SPACE, name])
                if cursor.fetchone()[0]:
                    break
                if time.monotonic() > deadline:
                    raise TemporaryError(f"{name} is held by another process for over "
                                         f"{JOURNAL_LOCK_WAIT_SECONDS} s", venue="journal")
                time.sleep(0.02)
        held[name] = 1
        try:
            yield
        finally:
            held.pop(name, None)
            try:
                with conn.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", [_JOURNAL_LOCK_SPACE, name])
            except (OperationalError, InterfaceError):
                conn.close()  # the session is gone, and its lock with it
                _locks.conn = None


@contextmanager
def order_send_lease(order_id: int) -> Iterator[bool]:
    """Whether this thread may talk to the venue about an order's creation now: yields True while it holds the
    order's send lease, False when another thread or process holds it (a create call for it is on the wire).

    Whoever sends an order holds the lease from before its SUBMITTING row is visible until the venue's answer is
    recorded; whoever recovers an order takes it before asking the venue, so a send in flight is never repeated by
    a sweep, a worker's start-up recovery or a cancel, however long the venue takes. The lease dies with its
    holder: a PostgreSQL session advisory lock on this thread's lock connection (a crashed worker's session ends),
    or, on SQLite (one machine), an flock on var/locks/ (the kernel drops it with the process). Re-entrant."""
    held = getattr(_locks, "leases", None)
    if held is None:
        held = _locks.leases = {}
    if held.get(order_id):
        held[order_id] += 1
        try:
            yield True
        finally:
            held[order_id] -= 1
        return
    release: Callable[[], None]
    if connection.vendor == "postgresql":
        conn = _lock_connection()
        with conn.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [_SEND_LEASE_SPACE, order_id % 2**31])
            got = bool(cursor.fetchone()[0])

        def release() -> None:
            if not got:
                return
            try:
                with conn.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [_SEND_LEASE_SPACE, order_id % 2**31])
            except (OperationalError, InterfaceError):
                conn.close()  # the session is gone, and its lock with it
                _locks.conn = None
    else:
        path = settings.VAR_DIR / "locks" / f"order-{order_id}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            got = True
        except BlockingIOError:
            got = False

        def release() -> None:
            if got:
                path.unlink(missing_ok=True)  # a waiter that opened it before gets the lock on a file no one holds
            os.close(fd)
    if not got:
        release()
        yield False
        return
    held[order_id] = 1
    try:
        yield True
    finally:
        held.pop(order_id, None)
        release()


_SEND_LEASE_SPACE = 7413  # advisory-lock namespace of order send leases (key 2 = order id modulo 2**31)
_JOURNAL_LOCK_SPACE = 7412  # advisory-lock namespace of journal locks (key 2 = hash of the name)
JOURNAL_LOCK_WAIT_SECONDS = 30
_locks = threading.local()
_process_locks: dict[str, threading.RLock] = {}


def _process_lock(name: str) -> threading.RLock:
    with _side_all_lock:
        return _process_locks.setdefault(name, threading.RLock())


def _lock_connection() -> BaseDatabaseWrapper:
    """This thread's autocommit connection that holds journal locks (recreated after a fork)."""
    conn: BaseDatabaseWrapper | None = getattr(_locks, "conn", None)
    if conn is None or conn.connection is None or getattr(_locks, "pid", None) != os.getpid():
        conn = connections.create_connection(DEFAULT_DB_ALIAS)
        conn.inc_thread_sharing()
        conn.ensure_connection()
        _locks.conn, _locks.pid = conn, os.getpid()
        with _side_all_lock:
            _side_all.append(conn)
    return conn


# --------------------------------------------------------------------------------------------- venue health


def venue_health_record(*, account_id: int, event: BreakerEvent, secrets: Sequence[str] = ()) -> None:
    """Persist a breaker transition of an account's venue (durable even if the caller's transaction rolls back).

    `secrets` (the account's credential values) are blanked out of the error text should a venue echo one.
    """
    now = timezone.now()
    reporter = f"{socket.gethostname()}:{os.getpid()}"[:100]
    last_error = event.last_error
    for secret in secrets:
        last_error = last_error.replace(secret, "[redacted]")
    values = [event.state.value, event.since, event.consecutive_failures, last_error, reporter, now]
    if _needs_side_connection():
        _durable_sql(
            f"INSERT INTO {VenueHealth._meta.db_table} "
            f"(account_id, state, since, consecutive_failures, last_error, reporter, updated_at) "
            f"VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (account_id) DO UPDATE SET state = EXCLUDED.state, "
            f"since = EXCLUDED.since, consecutive_failures = EXCLUDED.consecutive_failures, "
            f"last_error = EXCLUDED.last_error, reporter = EXCLUDED.reporter, updated_at = EXCLUDED.updated_at",
            [account_id, *values],
        )
        return
    fields = dict(zip(("state", "since", "consecutive_failures", "last_error", "reporter", "updated_at"), values))
    VenueHealth.objects.update_or_create(account_id=account_id, defaults=fields)


def venue_health_snapshot_record(*, account_id: int, error: str | None, now: datetime) -> None:
    """Record an equity snapshot's outcome in the account's venue health: a failure (`error`, secret-free) counts up
    with its error and time; a success (None) clears them. Durable like the breaker's reports."""
    table = VenueHealth._meta.db_table
    if error is None:
        sql = f"UPDATE {table} SET snapshot_failures = 0, snapshot_error = '' WHERE account_id = %s " \
              f"AND snapshot_failures > 0"
        params: list[Any] = [account_id]
    else:
        at = connection.ops.adapt_datetimefield_value(now)
        # The row may not exist yet: no breaker transition was ever reported, or no connector could be built.
        sql = (f"INSERT INTO {table} (account_id, state, since, consecutive_failures, last_error, reporter, "
               f"updated_at, snapshot_failures, snapshot_error, snapshot_failed_at) "
               f"VALUES (%s, %s, %s, 0, '', '', %s, 1, %s, %s) ON CONFLICT (account_id) DO UPDATE SET "
               f"snapshot_failures = {table}.snapshot_failures + 1, snapshot_error = EXCLUDED.snapshot_error, "
               f"snapshot_failed_at = EXCLUDED.snapshot_failed_at")
        params = [account_id, VenueHealth.State.CLOSED.value, at, at, error, at]
    if _needs_side_connection():
        _durable_sql(sql, params)
        return
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def _health_reporter(account_id: int, *, secrets: Sequence[str]) -> Callable[[BreakerEvent], None]:
    def report(event: BreakerEvent) -> None:
        venue_health_record(account_id=account_id, event=event, secrets=secrets)
    return report


def price_set(symbol: str, price: Decimal, *, time: datetime, volume: Decimal | None = None) -> None:
    """Publish the latest price of a market to the feed the paper venue and the monitor read."""
    MarketPrice.objects.update_or_create(symbol=symbol, defaults={"price": price, "volume": volume, "time": time})


class DbPriceSource:
    """Prices from the MarketPrice table (written by the replay feed, a venue's public prices, or tests).

    Inside one unit of work of `store` a market's price is read once: one transaction sees one price.
    """

    def __init__(self, store: DjangoPaperStore | None = None) -> None:
        self.store = store

    def ticker(self, symbol: str) -> Ticker:
        unit = self.store._unit() if self.store is not None else None
        if unit is not None and symbol in unit.prices:
            return unit.prices[symbol]
        found = rows.fetch_all(_paper_sql_for("price"), [symbol])
        if not found:
            raise TemporaryError(f"no price for {symbol}", venue="paper")
        price, when, volume = _PRICE_ROWS.values(found[0])
        tick = Ticker(symbol=symbol, price=price, time=when, volume=volume)
        if unit is not None:
            unit.prices[symbol] = tick
        return tick


class LatentConnector(Connector):
    """Paper with a venue's latency: half before the venue records an order, half before its reply arrives."""

    def __init__(self, inner: PaperVenue, latency_ms: int) -> None:
        self.inner, self.half = inner, latency_ms / 2000
        # A venue with latency is remote as far as the engine is concerned: decide, send and record apart.
        self.capabilities = replace(inner.capabilities, in_database=False)

    def create_order(self, request: OrderRequest) -> VenueOrder:
        time.sleep(self.half)
        result = self.inner.create_order(request)
        time.sleep(self.half)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def markets(self):  # type: ignore[no-untyped-def]
        return self.inner.markets()

    def balances(self):  # type: ignore[no-untyped-def]
        return self.inner.balances()

    def ticker(self, symbol: str) -> Ticker:
        return self.inner.ticker(symbol)

    def cancel_order(self, symbol: str, venue_order_id: str) -> VenueOrder:
        return self.inner.cancel_order(symbol, venue_order_id)

    def fetch_order(self, symbol: str, venue_order_id: str) -> VenueOrder:
        return self.inner.fetch_order(symbol, venue_order_id)

    def fetch_order_by_client_id(self, symbol: str, client_order_id: str) -> VenueOrder | None:
        return self.inner.fetch_order_by_client_id(symbol, client_order_id)

    def open_orders(self, symbol: str | None = None):  # type: ignore[no-untyped-def]
        return self.inner.open_orders(symbol)

    def positions(self):  # type: ignore[no-untyped-def]
        return self.inner.positions()

    def set_leverage(self, symbol: str, leverage: Decimal) -> None:
        self.inner.set_leverage(symbol, leverage)


# --------------------------------------------------------------------------------------------- paper store


def order_to_json(order: VenueOrder) -> dict[str, Any]:
    """Serialize a venue order (Decimals as strings, times as ISO 8601)."""
    def dec(v: Decimal | None) -> str | None:
        return None if v is None else str(v)

    return {
        "client_order_id": order.client_order_id,
        "venue_order_id": order.venue_order_id,
        "symbol": order.symbol,
        "side": order.side.value,
        "type": order.type.value,
        "status": order.status.value,
        "quantity": str(order.quantity),
        "filled_quantity": str(order.filled_quantity),
        "price": dec(order.price),
        "trigger_price": dec(order.trigger_price),
        "reduce_only": order.reduce_only,
        "reason": order.reason,
        "fills": [
            {"fill_id": f.fill_id, "quantity": str(f.quantity), "price": str(f.price), "fee": str(f.fee),
             "fee_currency": f.fee_currency, "time": f.time.isoformat(), "liquidity": f.liquidity}
            for f in order.fills
        ],
    }


def order_from_json(data: dict[str, Any]) -> VenueOrder:
    """Rebuild a venue order from order_to_json's output."""
    def dec(v: str | None) -> Decimal | None:
        return None if v is None else Decimal(v)

    return VenueOrder(
        client_order_id=data["client_order_id"],
        venue_order_id=data["venue_order_id"],
        symbol=data["symbol"],
        side=Side(data["side"]),
        type=OrderType(data["type"]),
        status=VenueOrderStatus(data["status"]),
        quantity=Decimal(data["quantity"]),
        filled_quantity=Decimal(data["filled_quantity"]),
        price=dec(data["price"]),
        trigger_price=dec(data["trigger_price"]),
        reduce_only=data["reduce_only"],
        reason=data.get("reason", ""),
        fills=tuple(
            VenueFill(fill_id=f["fill_id"], quantity=Decimal(f["quantity"]), price=Decimal(f["price"]),
                      fee=Decimal(f["fee"]), fee_currency=f["fee_currency"],
                      time=datetime.fromisoformat(f["time"]), liquidity=f.get("liquidity", "taker"))
            for f in data["fills"]
        ),
    )


_PAPER_POSITION_ROWS = Rows(PaperPosition, ["symbol", "quantity", "cost", "volume_candle", "volume_taken"])
_PAPER_ORDER_ROWS = Rows(PaperOrder, ["data"])
_PAPER_CASH = Rows(VenueAccount, ["paper_cash"])
_PRICE_ROWS = Rows(MarketPrice, ["price", "time", "volume"])
_QTY_FIELD, _COST_FIELD, _CANDLE_FIELD, _TAKEN_FIELD = (PaperPosition._meta.get_field(name) for name in (
    "quantity", "cost", "volume_candle", "volume_taken"))
_DATA_FIELD = PaperOrder._meta.get_field("data")
_paper_sql: dict[str, str] = {}


def _rows(name: str, *params: Any) -> list[list[Any]]:
    """The paper store's hot reads, written out (the ORM's query build costs more than the query here)."""
    sql = _paper_sql_for(name)
    rows = _PAPER_POSITION_ROWS if name == "positions" else _PAPER_ORDER_ROWS
    return [rows.values(row) for row in fetch_all(sql, params)]


def _paper_sql_for(name: str) -> str:
    sql = _paper_sql.get(name)
    if sql is None:
        q = connection.ops.quote_name
        positions, orders = _PAPER_POSITION_ROWS, _PAPER_ORDER_ROWS
        sql = _paper_sql[name] = {
            "positions": f"SELECT {positions.columns('p')} FROM {positions.table()} p WHERE p.{q('account_id')} = %s",
            "order": f"SELECT {orders.columns('o')} FROM {orders.table()} o WHERE o.{q('account_id')} = %s "
                     f"AND o.{q('client_order_id')} = %s",
            "open": f"SELECT {orders.columns('o')} FROM {orders.table()} o WHERE o.{q('account_id')} = %s "
                    f"AND o.{q('is_open')} ORDER BY o.{q('id')}",
            "state": f"SELECT a.{q('paper_cash')}, a.{q('paper_sequence')} FROM {q(VenueAccount._meta.db_table)} a "
                     f"WHERE a.{q('id')} = %s",
            "lock": "SELECT pg_advisory_xact_lock(%s, %s), set_config('synchronous_commit', 'off', true)",
            "save_order": (
                f"INSERT INTO {q(PaperOrder._meta.db_table)} ({q('account_id')}, {q('client_order_id')}, "
                f"{q('venue_order_id')}, {q('symbol')}, {q('is_open')}, {q('data')}) VALUES (%s, %s, %s, %s, %s, %s) "
                f"ON CONFLICT ({q('account_id')}, {q('client_order_id')}) DO UPDATE SET "
                f"{q('venue_order_id')} = EXCLUDED.{q('venue_order_id')}, {q('is_open')} = EXCLUDED.{q('is_open')}, "
                f"{q('data')} = EXCLUDED.{q('data')}"),
            "save_position": (
                f"INSERT INTO {q(PaperPosition._meta.db_table)} ({q('account_id')}, {q('symbol')}, {q('quantity')}, "
                f"{q('cost')}, {q('volume_candle')}, {q('volume_taken')}) VALUES (%s, %s, %s, %s, %s, %s) "
                f"ON CONFLICT ({q('account_id')}, {q('symbol')}) DO UPDATE SET {q('quantity')} = EXCLUDED.{q('quantity')}, "
                f"{q('cost')} = EXCLUDED.{q('cost')}, {q('volume_candle')} = EXCLUDED.{q('volume_candle')}, "
                f"{q('volume_taken')} = EXCLUDED.{q('volume_taken')}"),
            "price": (f"SELECT m.{q('price')}, m.{q('time')}, m.{q('volume')} FROM {q(MarketPrice._meta.db_table)} m "
                      f"WHERE m.{q('symbol')} = %s"),
        }[name]
    return sql


def _prep(field: Any, value: Any) -> Any:
    """A value as the ORM would send it for this model field (Decimal text on SQLite, JSON, aware datetimes)."""
    return field.get_db_prep_save(value, connection)


class _Unit:
    """What one paper-venue unit of work has read and changed; written back once, at commit."""

    def __init__(self, cash: Decimal, sequence: int, positions: dict[str, list[Any]]) -> None:
        self.cash, self.sequence, self.positions = cash, sequence, positions
        self.orders: dict[str, VenueOrder | None] = {}  # client id -> order (None: known absent)
        self.open: dict[str, VenueOrder] | None = None  # working orders by client id, in placement order
        self.account_dirty = False
        self.dirty_positions: set[str] = set()
        self.prices: dict[str, Ticker] = {}

    def snapshot(self) -> tuple[Any, ...]:
        return (self.cash, self.sequence, {k: list(v) for k, v in self.positions.items()}, dict(self.orders),
                None if self.open is None else dict(self.open), self.account_dirty, set(self.dirty_positions))

    def restore(self, snap: tuple[Any, ...]) -> None:
        (self.cash, self.sequence, self.positions, self.orders, self.open, self.account_dirty,
         self.dirty_positions) = snap


class DjangoPaperStore:
    """The paper venue's state in the database, so every worker process sees one simulated exchange.

    A unit of work (`atomic`) locks the account row, reads the venue's cash, sequence and positions once, and
    writes each changed row once when it ends: the hot path is a handful of statements, not dozens.
    """

    in_database = True  # every unit of work joins the caller's transaction

    def __init__(self, account_id: int) -> None:
        self.account_id = account_id
        self._local = threading.local()

    def _unit(self) -> _Unit | None:
        return getattr(self._local, "unit", None)

    def prefetch(self, *, symbols: Sequence[str] = (), client_order_ids: Sequence[str] = ()) -> None:
        """Read these prices with the next unit of work's first statement (PostgreSQL batching; elsewhere nothing).

        `client_order_ids` are ids the caller has just generated: no order can have them yet, so the next unit of
        work knows them absent without asking (were one reused, the unique constraint on (account, client order
        id) would refuse the second order: never a duplicate).
        """
        if not rows.batching_active():
            return
        self._local.hint = tuple(client_order_ids)
        rows.prefetch([(_paper_sql_for("price"), [symbol]) for symbol in symbols])

    @contextmanager
    def atomic(self) -> Iterator[None]:
        unit = self._unit()
        if unit is not None:  # nested: a savepoint, undone alone on error (rows and the cached state alike)
            snap = unit.snapshot()
            try:
                with rows.savepoint():
                    yield
            except BaseException:
                unit.restore(snap)
                raise
            return
        batched = rows.batching_active()
        # Joined to the batching caller's transaction (the engine's unit of work): no savepoint of its own.
        with transaction.atomic(savepoint=not batched), rows.batching():
            if connection.vendor == "postgresql":
                # The simulated venue has a lock of its own, apart from our book's account row lock, so the
                # venue and the engine never queue behind each other. Its commit needs no fsync wait: a venue
                # state lost in a database crash is an order the venue never took, which recovery resends.
                rows.prefetch([(_paper_sql_for("state"), [self.account_id]),
                               (_paper_sql_for("positions"), [self.account_id]),
                               (_paper_sql_for("open"), [self.account_id])])
                rows.fetch_all(_paper_sql_for("lock"), [_PAPER_LOCK_SPACE, self.account_id])
                cash, sequence = rows.fetch_all(_paper_sql_for("state"), [self.account_id])[0]
                cash = _PAPER_CASH.values([cash])[0]
            else:
                cash, sequence = VenueAccount.objects.select_for_update().values_list(
                    "paper_cash", "paper_sequence").get(pk=self.account_id)
            positions = {row[0]: row[1:] for row in _rows("positions", self.account_id)}
            unit = self._local.unit = _Unit(cash, sequence, positions)
            for cid in getattr(self._local, "hint", ()):
                unit.orders[cid] = None
            self._local.hint = ()
            try:
                yield
                self._flush(unit)
            finally:
                self._local.unit = None

    def _flush(self, unit: _Unit) -> None:
        if unit.account_dirty:  # merged with the engine's update of the same row when both wait in a batch
            rows.update(VenueAccount, self.account_id, {"paper_cash": unit.cash, "paper_sequence": unit.sequence})
        for symbol in sorted(unit.dirty_positions):
            qty, cost, candle, taken = unit.positions[symbol]
            rows.execute(_paper_sql_for("save_position"), [
                self.account_id, symbol, _prep(_QTY_FIELD, qty), _prep(_COST_FIELD, cost),
                _prep(_CANDLE_FIELD, candle), _prep(_TAKEN_FIELD, taken)])

    @contextmanager
    def _writing(self) -> Iterator[_Unit]:
        """The current unit of work, or a new one around a lone write."""
        unit = self._unit()
        if unit is not None:
            yield unit
            return
        with self.atomic():
            unit = self._unit()
            assert unit is not None
            yield unit

    def _position_row(self, unit: _Unit, symbol: str) -> list[Any]:
        row = unit.positions.get(symbol)
        if row is None:
            row = unit.positions[symbol] = [Decimal(0), Decimal(0), None, Decimal(0)]
        return row

    def get_order(self, client_order_id: str) -> VenueOrder | None:
        unit = self._unit()
        if unit is not None:
            if client_order_id in unit.orders:
                return unit.orders[client_order_id]
            if unit.open is not None and client_order_id in unit.open:
                return unit.open[client_order_id]
        found = _rows("order", self.account_id, client_order_id)
        order = order_from_json(found[0][0]) if found else None
        if unit is not None:
            unit.orders[client_order_id] = order
        return order

    def get_order_by_venue_id(self, venue_order_id: str) -> VenueOrder | None:
        row = PaperOrder.objects.filter(account_id=self.account_id, venue_order_id=venue_order_id).values_list(
            "data", flat=True).first()
        return None if row is None else order_from_json(row)

    def save_order(self, order: VenueOrder) -> None:
        is_open = not order.status.is_final
        rows.execute(_paper_sql_for("save_order"), [
            self.account_id, order.client_order_id, order.venue_order_id, order.symbol, is_open,
            _prep(_DATA_FIELD, order_to_json(order))])
        unit = self._unit()
        if unit is not None:
            unit.orders[order.client_order_id] = order
            if unit.open is not None:
                if is_open:
                    unit.open[order.client_order_id] = order
                else:
                    unit.open.pop(order.client_order_id, None)

    def open_orders(self, symbol: str | None = None) -> list[VenueOrder]:
        unit = self._unit()
        if unit is not None:
            if unit.open is None:
                unit.open = {o.client_order_id: o for o in
                             (order_from_json(row[0]) for row in _rows("open", self.account_id))}
            orders = list(unit.open.values())
        else:
            orders = [order_from_json(row[0]) for row in _rows("open", self.account_id)]
        return orders if symbol is None else [o for o in orders if o.symbol == symbol]

    def cash(self) -> Decimal:
        unit = self._unit()
        if unit is not None:
            return unit.cash
        return VenueAccount.objects.values_list("paper_cash", flat=True).get(pk=self.account_id)

    def set_cash(self, value: Decimal) -> None:
        unit = self._unit()
        if unit is None:
            VenueAccount.objects.filter(pk=self.account_id).update(paper_cash=value)
            return
        unit.cash, unit.account_dirty = value, True

    def position(self, symbol: str) -> tuple[Decimal, Decimal]:
        unit = self._unit()
        if unit is not None:
            row = unit.positions.get(symbol)
            return (Decimal(0), Decimal(0)) if row is None else (row[0], row[1])
        found = PaperPosition.objects.filter(account_id=self.account_id, symbol=symbol).values_list(
            "quantity", "cost").first()
        return (Decimal(0), Decimal(0)) if found is None else (found[0], found[1])

    def set_position(self, symbol: str, quantity: Decimal, cost: Decimal) -> None:
        with self._writing() as unit:
            row = self._position_row(unit, symbol)
            row[0], row[1] = quantity, cost
            unit.dirty_positions.add(symbol)

    def all_positions(self) -> dict[str, tuple[Decimal, Decimal]]:
        unit = self._unit()
        if unit is not None:
            return {s: (r[0], r[1]) for s, r in unit.positions.items()}
        return {s: (q, c) for s, q, c in PaperPosition.objects.filter(account_id=self.account_id).values_list(
            "symbol", "quantity", "cost")}

    def volume_taken(self, symbol: str) -> tuple[datetime, Decimal] | None:
        unit = self._unit()
        if unit is not None:
            row = unit.positions.get(symbol)
            return None if row is None or row[2] is None else (row[2], row[3])
        found = PaperPosition.objects.filter(account_id=self.account_id, symbol=symbol,
                                             volume_candle__isnull=False).values_list("volume_candle",
                                                                                      "volume_taken").first()
        return None if found is None else (found[0], found[1])

    def set_volume_taken(self, symbol: str, candle: datetime, qty: Decimal) -> None:
        with self._writing() as unit:
            row = self._position_row(unit, symbol)
            row[2], row[3] = candle, qty
            unit.dirty_positions.add(symbol)

    def next_id(self) -> int:
        with self._writing() as unit:
            unit.sequence += 1
            unit.account_dirty = True
            return unit.sequence
