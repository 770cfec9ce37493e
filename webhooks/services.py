"""Alert intake: source checks, rate limits, authentication, validation, and one durable INSERT per alert."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
import redis
from django.conf import settings
from django.core.cache import caches
from django.core.signals import setting_changed
from django.db import DatabaseError, InterfaceError, OperationalError, connection, connections, transaction
from django.dispatch import receiver
from django.utils import timezone
from prometheus_client import Counter

from infra.broker import RedisLink, command
from infra.groupcommit import GroupCommit
from trading.audit import audit
from trading.intake import payload_redact, signal_enqueue, signals_enqueue
from trading.models import KillSwitch, MarketPrice, Signal, Strategy
from webhooks import parsers
from webhooks.parsers import Alert, Rejection
from webhooks.ratelimit import LocalLimiter, Outage

log = logging.getLogger(__name__)

TRADINGVIEW_IPS = ("52.89.214.238", "34.212.75.30", "54.218.53.128", "52.32.178.7")
DEFAULTS: dict[str, Any] = {
    "WEBHOOK_ALLOWED_IPS": "",  # "" = any source; "tradingview" = TradingView's four addresses; or a list / CSV
    "WEBHOOK_TRUSTED_PROXY_HEADER": "",  # e.g. "X-Forwarded-For"; ignored unless the peer is a trusted proxy
    "WEBHOOK_TRUSTED_PROXIES": "",  # addresses or networks of the proxies allowed to set that header
    "WEBHOOK_MAX_ALERT_AGE_SECONDS": 120,
    "WEBHOOK_MAX_FUTURE_SECONDS": 60,
    "WEBHOOK_MAX_PRICE_DEVIATION_PCT": "5",
    "WEBHOOK_RATE_LIMIT_PER_IP": 600,  # requests per window from one source address
    "WEBHOOK_RATE_LIMIT_PER_STRATEGY": 120,  # authenticated alerts per window for one strategy
    "WEBHOOK_RATE_LIMIT_WINDOW_SECONDS": 60,
    # Queue accepted alerts with one raw LPUSH of a pre-built Celery message when the broker is Redis ("0": .delay()).
    "WEBHOOK_RAW_ENQUEUE": True,
    # Store the alerts of concurrent requests (gthread workers) with one INSERT and one COMMIT ("0": one each).
    "WEBHOOK_GROUP_COMMIT": True,
}
# Compared when the strategy is unknown or has no secret, so that path costs the same as a wrong secret.
_DUMMY_HASH = hashlib.sha256(b"tradesite-no-such-strategy").hexdigest()


_resolved: dict[str, Any] = {}


def setting(name: str) -> Any:
    """A webhook setting: Django settings, else the environment, else the default.

    Resolved once per process and again whenever a setting changes (override_settings, tests); the environment of
    a running process does not change.
    """
    try:
        return _resolved[name]
    except KeyError:
        pass
    value = getattr(settings, name, None)
    if value is None:
        value = os.environ.get(name)
    _resolved[name] = value = DEFAULTS[name] if value is None else value
    return value


@receiver(setting_changed)
def _settings_changed(**kwargs: Any) -> None:
    _resolved.clear()
    _links.clear()  # a new CACHES setting is a new backend object (whose id may be an old one's)
    _outage.reset()
    for limiter in _local.values():
        limiter.clear()


def _as_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v).strip() for v in value or ()]


def _networks(value: Any) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    out = []
    for item in _as_list(value):
        if item.lower() == "tradingview":
            out.extend(ipaddress.ip_network(ip) for ip in TRADINGVIEW_IPS)
        else:
            out.append(ipaddress.ip_network(item, strict=False))
    return out


def _in(ip: str, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in net for net in networks)


def client_ip(meta: dict[str, Any]) -> str:
    """The client address: the peer, or the proxy header's last untrusted hop when the peer is a trusted proxy."""
    peer = str(meta.get("REMOTE_ADDR") or "")
    header = str(setting("WEBHOOK_TRUSTED_PROXY_HEADER") or "")
    if not header:
        return peer
    proxies = _networks(setting("WEBHOOK_TRUSTED_PROXIES"))
    if not _in(peer, proxies):
        return peer
    raw = str(meta.get("HTTP_" + header.upper().replace("-", "_")) or "")
    hops = [h.strip() for h in raw.split(",") if h.strip()]
    for hop in reversed(hops):  # the right-most address a trusted proxy did not add
        if not _in(hop, proxies):
            return hop
    return hops[0] if hops else peer


def source_allowed(ip: str) -> bool:
    """Whether the allowlist (if any) admits this address."""
    allowed = setting("WEBHOOK_ALLOWED_IPS")
    return not _as_list(allowed) or _in(ip, _networks(allowed))


_links: dict[int, RedisLink | None] = {}
# A healthy Redis counts a request in well under a millisecond: one that has not answered in this long (unless the
# cache's OPTIONS set socket_timeout) is treated as down and the process counts on its own (see `_outage`).
LINK_TIMEOUT_SECONDS = 1.0


def _cache_link(backend: Any) -> RedisLink | None:
    """The cache's Redis as a RedisLink (one per cache backend object), or None when the cache is not Redis."""
    key = id(backend)
    if key not in _links:
        client = getattr(backend, "_cache", None)  # django's RedisCacheClient
        _links[key] = (RedisLink(client.get_client(None, write=True), timeout=LINK_TIMEOUT_SECONDS)
                       if hasattr(client, "get_client") else None)
    return _links[key]


def cache_redis_link() -> RedisLink | None:
    """The default cache's Redis as a RedisLink, or None when the cache is not Redis."""
    return _cache_link(caches["default"])


def _window_key(scope: str, key: object, now: float | None) -> tuple[str, int]:
    """The cache key counting (scope, key) in the current fixed window, and the window in seconds."""
    window = int(setting("WEBHOOK_RATE_LIMIT_WINDOW_SECONDS"))
    return f"wh:rl:{scope}:{key}:{int((now or time.time()) // window)}", window


# While the cache's Redis fails, the rate limits are counted by each process on its own (token buckets of the same
# limits): PostgreSQL is the system of record, so an alert it can store is never refused because Redis is down.
_outage = Outage("webhook rate limits: the cache's Redis")
_local = {"ip": LocalLimiter(), "strategy": LocalLimiter()}
_LOCAL_COUNTED = Counter("tradesite_webhook_rate_limit_local", "Webhook requests whose rate limits this process "
                         "counted on its own because the cache's Redis was failing.")
_OUTAGES = Counter("tradesite_webhook_rate_limit_outages", "Times this process began counting the webhook's rate "
                   "limits on its own (the cache's Redis failing).")


def rate_limits_local() -> bool:
    """True while the cache's Redis is failing and this request is to be counted by `rate_pair_local` without
    trying Redis; False to count on Redis (always while it is up; during an outage, one request every few seconds
    tries it again)."""
    return _outage.skip()


def rate_limits_down() -> bool:
    """Whether this process is counting the rate limits on its own (the cache's Redis failing)."""
    return _outage.down


def rate_limits_failed(error: BaseException) -> None:
    """The cache's Redis failed a rate-limit call: count in this process for a while (logged once per outage)."""
    if _outage.failed(error):
        _OUTAGES.inc()


def rate_limits_answered() -> None:
    """The cache's Redis counted a request: an outage, if any, is over."""
    if _outage.down:
        _outage.answered()


def _local_limited(scope: str, key: object, limit: int) -> bool:
    """Count one request in this process's own bucket for (scope, key); True when over the limit."""
    _LOCAL_COUNTED.inc()
    return not _local[scope].admit(str(key), limit=int(limit), window=int(setting("WEBHOOK_RATE_LIMIT_WINDOW_SECONDS")))


def rate_pair_local(ip: str, strategy_pk: int) -> Rejection | None:
    """`rate_limited_pair` counted in this process (while Redis is down): the source's budget, then, only if that
    admits the request, its strategy's. The 429 to answer, or None."""
    if _local_limited("ip", ip, int(setting("WEBHOOK_RATE_LIMIT_PER_IP"))):
        return _IP_LIMITED
    if _local_limited("strategy", strategy_pk, int(setting("WEBHOOK_RATE_LIMIT_PER_STRATEGY"))):
        return _STRATEGY_LIMITED
    return None


def rate_limited(scope: str, key: str, *, limit: int, now: float | None = None) -> bool:
    """Count one request in a fixed window (atomic INCR with expiry in the cache); True when over the limit.

    While the cache's Redis fails, the request is counted in this process instead (`rate_limits_local`)."""
    name, window = _window_key(scope, key, now)
    backend = caches["default"]  # once: each attribute read through the `cache` proxy costs a lookup
    link = _cache_link(backend)
    if link is not None:  # django RedisCache: INCR and EXPIRE NX in one write, one round trip
        if _outage.down and _outage.skip():
            return _local_limited(scope, key, limit)
        full = backend.make_key(name)  # the key cache.incr() would use (validation only warns about memcached)
        try:
            count = int(link.call(command("INCR", full) + command("EXPIRE", full, window + 1, "NX"), 2)[0])
        except redis.RedisError as exc:
            rate_limits_failed(exc)
            return _local_limited(scope, key, limit)
        rate_limits_answered()
    else:
        backend.add(name, 0, window + 1)
        try:
            count = backend.incr(name)
        except ValueError:
            backend.set(name, 1, window + 1)
            count = 1
    return count > int(limit)


# INCR the source's counter; only when it is within its limit, INCR the strategy's too (a request refused for its
# source never spends its strategy's budget). Returns 0 when the source is over, else the strategy's count.
_PAIR_SCRIPT = ("local n = redis.call('INCR', KEYS[1]) redis.call('EXPIRE', KEYS[1], ARGV[1], 'NX') "
                "if n > tonumber(ARGV[2]) then return 0 end "
                "n = redis.call('INCR', KEYS[2]) redis.call('EXPIRE', KEYS[2], ARGV[1], 'NX') return n")


def rate_limited_pair(ip: str, strategy_pk: int, *, now: float | None = None) -> Rejection | None:
    """Count an authenticated request against its source's budget and, if that admits it, its strategy's: one
    round trip on Redis (a script), or `rate_pair_local` while Redis fails. The 429 to answer, or None."""
    backend = caches["default"]
    link = _cache_link(backend)
    if link is None:
        if rate_limited("ip", ip, limit=int(setting("WEBHOOK_RATE_LIMIT_PER_IP")), now=now):
            return _IP_LIMITED
        limited = rate_limited("strategy", str(strategy_pk), limit=int(setting("WEBHOOK_RATE_LIMIT_PER_STRATEGY")),
                               now=now)
        return _STRATEGY_LIMITED if limited else None
    if _outage.down and _outage.skip():
        return rate_pair_local(ip, strategy_pk)
    try:
        (count,) = link.call(rate_pair_command(ip, strategy_pk, now=now), 1)
        limited = rate_pair_verdict(count)
    except redis.RedisError as exc:
        rate_limits_failed(exc)
        return rate_pair_local(ip, strategy_pk)
    rate_limits_answered()
    return limited


def rate_pair_command(ip: str, strategy_pk: int, *, now: float | None = None, backend: Any = None) -> bytes:
    """The Redis command (RESP) counting a request against its source's and its strategy's budgets (the cache's
    keys); its integer reply goes to `rate_pair_verdict`. For a cache on Redis only. `backend`: the default cache
    object to name the keys with (an event loop passes the one it keeps: in async code each task would make its
    own)."""
    (ip_name, window), (strategy_name, _) = _window_key("ip", ip, now), _window_key("strategy", strategy_pk, now)
    backend = backend or caches["default"]
    keys = [backend.make_key(ip_name), backend.make_key(strategy_name)]
    return command("EVAL", _PAIR_SCRIPT, 2, *keys, window + 1, int(setting("WEBHOOK_RATE_LIMIT_PER_IP")))


def rate_pair_verdict(count: Any) -> Rejection | None:
    """The 429 to answer for `rate_pair_command`'s reply, or None."""
    if isinstance(count, Exception):
        raise count
    if int(count) == 0:
        return _IP_LIMITED
    return _STRATEGY_LIMITED if int(count) > int(setting("WEBHOOK_RATE_LIMIT_PER_STRATEGY")) else None


def secret_matches(strategy_hash: str, passphrase: str) -> bool:
    """Constant-time comparison of SHA-256 hashes (hex)."""
    given = hashlib.sha256(passphrase.encode("utf-8", "surrogatepass")).hexdigest()
    return hmac.compare_digest(given.encode(), (strategy_hash or _DUMMY_HASH).encode()) and bool(strategy_hash)


@dataclass(frozen=True)
class Accepted:
    """A stored alert: 202 when new, 200 with duplicate=True when it repeats an earlier delivery."""

    signal_id: int
    duplicate: bool
    status: int = 202

    def body(self) -> dict[str, Any]:
        if self.duplicate:
            return {"signal_id": self.signal_id, "duplicate": True}
        return {"signal_id": self.signal_id, "status": "accepted"}


_UNAUTHORIZED = Rejection(401, "unauthorized", "unknown strategy or wrong passphrase")
_FIELDS = [f for f in Signal._meta.concrete_fields if not f.primary_key]
_PLAIN = (str, int, bool, type(None))  # values every column type takes as they are (no get_db_prep_save needed)
_insert_sql: dict[bool, str] = {}  # by guarded


def _one_row(sql: str, params: list[Any], *, read: bool = False) -> tuple[Any, ...] | None:
    """Run one statement and return its first row.

    On PostgreSQL it runs as a protocol-level prepared statement (planned once per connection) on the psycopg
    connection, outside any transaction block of ours: in autocommit a write is committed, durably
    (synchronous_commit), before this returns. Django's per-request health check (a `SELECT 1` round trip) is
    replaced by this: a `read` that fails on a dropped connection is run once more on a new one.
    """
    db = connections["default"]  # the wrapper itself: each attribute read through the proxy costs a lookup
    if db.vendor != "postgresql":
        with db.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchone()  # type: ignore[no-any-return]
    for attempt in (1, 2):
        db.ensure_connection()
        try:
            with db.wrap_database_errors, psycopg.Cursor(db.connection) as cursor:
                cursor.execute(sql, params, prepare=True)  # type: ignore[arg-type]
                return cursor.fetchone()
        except (InterfaceError, OperationalError):
            if not read or attempt == 2 or db.in_atomic_block:
                raise
            log.warning("database connection lost; reconnecting")
            db.close()
    return None


@dataclass(frozen=True)
class _Row:
    """One signal row for the group commit: its values by attname, its guard's four values (or none), its key, and
    whether to queue it."""

    values: dict[str, Any]
    checks: list[Any]
    enqueue: bool

    @property
    def key(self) -> str:
        return str(self.values["idempotency_key"])

    def json(self) -> str:
        """The row as the batch INSERT reads it: the columns in order, then the guard (all null: unguarded)."""
        row = [self.values[f.attname] if f.attname in self.values else f.get_default() for f in _FIELDS]
        return json.dumps(row + (self.checks or [None] * 4), default=_json_value, separators=(",", ":"))


def _json_value(value: Any) -> str:
    """Decimal and datetime as their exact text, which the column's type reads back as it is (never a float)."""
    if isinstance(value, (Decimal, datetime)):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not a signal column value")


def _params(values: dict[str, Any], db: Any) -> list[Any]:
    """The single-row INSERT's parameters: `values` by attname, the others their field's default."""
    params = []
    for f in _FIELDS:
        value = values[f.attname] if f.attname in values else f.get_default()
        params.append(value if type(value) in _PLAIN else f.get_db_prep_save(value, db))
    return params


def _insert_one(values: dict[str, Any], checks: list[Any]) -> int | None:
    """The single-row INSERT (guarded when `checks` holds the guard's four values): the new id, or None."""
    row = _one_row(*row_statement(values, checks))
    return None if row is None else int(row[0])


def row_statement(values: dict[str, Any], checks: list[Any]) -> tuple[str, list[Any]]:
    """The single-row INSERT of these values (guarded when `checks` holds the guard's four values) and its
    parameters, on PostgreSQL. It returns the new id, or no row."""
    guarded = bool(checks)
    sql = _insert_sql.get(guarded)
    if sql is None:
        sql = _insert_sql[guarded] = _insert_statement(guarded=guarded)
    return sql, _params(values, connections["default"]) + checks


def rows_statement(rows: list[_Row]) -> tuple[str, list[Any]]:
    """The batch INSERT of these rows and its one parameter (PostgreSQL). It returns (id, idempotency_key) of each
    row it stored; `rows_ids` turns those into one id (or None) per row."""
    global _batch_sql
    if _batch_sql is None:
        _batch_sql = _insert_statement(guarded=True, batch=True)
    return _batch_sql, ["[" + ",".join(row.json() for row in rows) + "]"]


def rows_ids(rows: list[_Row], stored: dict[str, int]) -> list[int | None]:
    """Each row's new id, from the stored {key: id}, or None. A key twice in one batch: the first row is the new
    one, the next ones are repeats."""
    return [stored.pop(row.key, None) for row in rows]


def flag(name: str) -> bool:
    """A yes/no webhook setting: anything but 0/false/no/off is yes."""
    return str(setting(name)).lower() not in ("0", "false", "no", "off")


def _insert(values: dict[str, Any], *, guard: _Target | None = None, enqueue: bool = False) -> tuple[int | None, bool]:
    """INSERT ... ON CONFLICT (idempotency_key) DO NOTHING RETURNING id: (the new id or None for a repeat, queued).

    `values` by attname; the others take their field's default. With a `guard` the row is written only if that
    strategy row still has the guard's status (active), symbol, account and secret hash and the kill switch is
    released: None then also means "changed".

    On PostgreSQL outside a transaction block the row goes through this process's group commit (rows of the
    requests in flight in other threads written by the same INSERT and COMMIT) and, when `enqueue`, is queued by
    it with the others (one LPUSH); `queued` says so. Otherwise the caller queues it after its commit.
    """
    db = connections["default"]
    checks = [] if guard is None else _guard_checks(guard)
    if db.vendor == "postgresql" and not db.in_atomic_block and flag("WEBHOOK_GROUP_COMMIT"):
        return _group().submit(_Row(values, checks, enqueue))
    return _insert_one(values, checks), False


_groups: list[GroupCommit[_Row, tuple[int | None, bool]]] = []


def _group() -> GroupCommit[_Row, tuple[int | None, bool]]:
    if not _groups:
        _groups.append(GroupCommit(_rows_write))
    return _groups[0]


_batch_sql: str | None = None


def _rows_write(rows: list[_Row]) -> list[tuple[int | None, bool] | BaseException]:
    """Write rows with one INSERT (one COMMIT) and queue the new ones that ask for it with one LPUSH.

    A connection error fails them all (the connection is closed: the next write reconnects). Any other database
    error of a batch is retried row by row, so that one row the database refuses fails only its own request.
    """
    db = connections["default"]
    try:
        if len(rows) == 1:  # alone (a quiet moment): the single-row statement costs PostgreSQL a third less
            (row,) = rows
            found = _insert_one(row.values, row.checks)
            stored = {} if found is None else {row.key: found}
        else:
            db.ensure_connection()
            with db.wrap_database_errors, psycopg.Cursor(db.connection) as cursor:
                cursor.execute(*rows_statement(rows), prepare=True)
                stored = {key: int(pk) for pk, key in cursor.fetchall()}
    except (InterfaceError, OperationalError):
        db.close()
        raise
    except DatabaseError:
        if len(rows) == 1:
            raise
        out: list[tuple[int | None, bool] | BaseException] = []
        for row in rows:
            try:
                out.extend(_rows_write([row]))
            except Exception as exc:  # noqa: BLE001 - that row's own failure, raised in its own request
                out.append(exc)
        return out
    ids = rows_ids(rows, stored)
    queue = [pk for pk, row in zip(ids, rows, strict=True) if pk is not None and row.enqueue]
    queued = bool(queue) and signals_enqueue(signal_ids=queue, raw=flag("WEBHOOK_RAW_ENQUEUE"))
    return [(pk, queued and pk is not None and row.enqueue) for pk, row in zip(ids, rows, strict=True)]


def _insert_statement(*, guarded: bool, batch: bool = False) -> str:
    """The signal INSERT: one row of plain values, one row behind the strategy/kill-switch guard, or (`batch`) the
    rows of one JSON array, each with its guard's four values, where a row whose guard id is null is unguarded."""
    q = connection.ops.quote_name
    columns = ", ".join(q(f.column) for f in _FIELDS)
    tail = f"ON CONFLICT ({q('idempotency_key')}) DO NOTHING RETURNING {q('id')}"
    if not guarded:
        return f"INSERT INTO {q(Signal._meta.db_table)} ({columns}) VALUES ({', '.join(['%s'] * len(_FIELDS))}) {tail}"
    st, k = Strategy._meta, KillSwitch._meta

    def base(field: Any) -> str:  # the column's type without length or precision: storing checks those exactly
        return re.sub(r"[(].*[)]", "", field.cast_db_type(connection))  # as the plain INSERT does, never truncates

    guard = [st.pk, st.get_field("symbol"), st.get_field("account"), st.get_field("webhook_secret_hash")]
    if batch:
        # One JSON parameter, an array of rows (each an array: the columns, then the guard's four values): psycopg
        # adapts one string instead of an array per column, and PostgreSQL reads each value back exactly from its
        # text (numbers are strings there, never floats).
        def element(i: int, field: Any) -> str:
            if field.get_internal_type() == "JSONField":
                return f"(e->{i})::jsonb"
            return f"(e->>{i})::{base(field)}"

        selected = ", ".join(element(i, f) for i, f in enumerate(_FIELDS))
        values = tuple(element(len(_FIELDS) + i, f) for i, f in enumerate(guard))
        tail += f", {q('idempotency_key')}"
    else:
        # A SELECT list does not take its types from the target columns: each value is cast to its column's base type.
        selected = ", ".join(f"CAST(%s AS {base(f)})" for f in _FIELDS)
        values = ("%s",) * 4
    matches = (f"SELECT 1 FROM {q(st.db_table)} WHERE {q(st.pk.column)} = {values[0]} "
               f"AND {q(st.get_field('status').column)} = '{Strategy.Status.ACTIVE.value}' "
               f"AND {q(st.get_field('symbol').column)} = {values[1]} "
               f"AND {q(st.get_field('account').column)} = {values[2]} "
               f"AND {q(st.get_field('webhook_secret_hash').column)} = {values[3]}")
    released = (f"NOT EXISTS (SELECT 1 FROM {q(k.db_table)} WHERE {q(k.pk.column)} = 1 "
                f"AND {q(k.get_field('engaged').column)})")
    if batch:
        # The strategy check as a LATERAL ... LIMIT 1: one primary-key look-up per row (as EXISTS under an OR,
        # PostgreSQL hashed every active strategy on each execution).
        source = (f"SELECT {selected} FROM json_array_elements(%s::json) AS e "
                  f"LEFT JOIN LATERAL ({matches} LIMIT 1) AS g(ok) ON true "
                  f"WHERE e->>{len(_FIELDS)} IS NULL OR (g.ok IS NOT NULL AND {released})")
    else:
        source = f"SELECT {selected} WHERE EXISTS ({matches}) AND {released}"
    return f"INSERT INTO {q(Signal._meta.db_table)} ({columns}) {source} {tail}"


# The strategies this process has authenticated alerts for, by slug (each INSERT from them re-checks the row).
_targets: dict[str, _Target] = {}


def _price_guard(alert: Alert, symbol: str) -> Rejection | None:
    if alert.price is None:
        return None
    market = MarketPrice.objects.filter(symbol=symbol).values_list("price", flat=True).first()
    if market is None or market <= 0:
        return None  # no local price: the engine's own checks decide
    limit = Decimal(str(setting("WEBHOOK_MAX_PRICE_DEVIATION_PCT")))
    deviation = abs(alert.price - market) / market * 100
    if deviation > limit:
        return Rejection(400, "price_out_of_range", f"price {alert.price} is {deviation:.2f}% from the market "
                         f"price {market} (limit {limit}%)", {"price": "too far from the market price"})
    return None


@dataclass(frozen=True)
class _Target:
    """What intake needs of a strategy, read with the kill switch state in one round trip."""

    pk: int
    slug: str
    symbol: str
    status: str
    account_id: int
    webhook_secret_hash: str
    kill_switch_engaged: bool


_target_sql: str | None = None


def _target(slug: str) -> _Target | None:
    """The strategy with this slug (hand-written SQL: the hot path's ORM query build cost more than its I/O)."""
    global _target_sql
    if _target_sql is None:
        q = connection.ops.quote_name
        s, k = Strategy._meta, KillSwitch._meta
        cols = ", ".join(q(s.get_field(f).column) for f in ("id", "slug", "symbol", "status", "account",
                                                             "webhook_secret_hash"))
        _target_sql = (f"SELECT {cols}, EXISTS(SELECT 1 FROM {q(k.db_table)} WHERE {q(k.pk.column)} = 1 AND "
                       f"{q(k.get_field('engaged').column)}) FROM {q(s.db_table)} WHERE {q(s.get_field('slug').column)}"
                       " = %s")
    row = _one_row(_target_sql, [slug], read=True)
    return None if row is None else _Target(int(row[0]), row[1], row[2], row[3], int(row[4]), row[5] or "",
                                            bool(row[6]))


def alert_intake(*, data: dict[str, Any], authenticated: bool = False, source_ip: str = "",
                 now: datetime | None = None, enqueue: bool = True, fresh: bool = False,
                 counted: bool = False, unsure: bool = False, checked: bool = False,
                 known: _Target | None = None, actor: str = "") -> Accepted | Rejection:
    """Authenticate (unless `authenticated`), validate and store one decoded alert; queue it after commit.

    A webhook alert for a strategy this process has read before is checked against that copy, and stored by an
    INSERT that runs only if the strategy row still has the status, symbol, account and secret hash it was checked
    against and the kill switch is still released (one statement: no read before it). When that INSERT stores
    nothing (the strategy changed, or a repeat delivery), or the copy would refuse the alert, the alert is taken
    again from a fresh read (`fresh`; `counted`: its rate-limit hit is already counted). So is an alert whose
    guarded INSERT met a dropped connection (`unsure`: it may have been stored; if the fresh INSERT finds it, it
    is queued again while still waiting, which its idempotent task makes harmless). `checked`: the caller has
    already compared the passphrase with this process's copy, and `known` is the copy when it matched.
    `actor` (the signal API's user, "api:alice"): stored in the signal's payload as `submitted_by`, and a
    `signal.submitted` audit row is written in the signal row's transaction.
    """
    now = now or timezone.now()
    cached = False
    if authenticated:
        slug = data.get("strategy") if isinstance(data.get("strategy"), str) else ""
        strategy = _target(slug) if slug else None
        if strategy is None:
            return Rejection(400, "invalid_fields", "unknown strategy", {"strategy": "no such strategy"})
    else:
        creds = parsers.credentials(data)
        if creds is None:
            secret_matches("", "")  # same work as a wrong passphrase
            return _UNAUTHORIZED
        slug, passphrase = creds
        if not checked:
            known = None if fresh else _targets.get(slug)
            known = known if secret_matches(known.webhook_secret_hash if known else "", passphrase) else None
        # Every path compares twice (the copy, then the fresh row or nothing), so a strategy's existence does not
        # show in the time taken.
        cached = known is not None
        strategy = known
        if not cached:
            strategy = _target(slug)
            if not secret_matches(strategy.webhook_secret_hash if strategy else "", passphrase) or strategy is None:
                return _UNAUTHORIZED
            _targets[slug] = strategy
        else:
            secret_matches("", passphrase)

    def again(*, unsure: bool = False) -> Accepted | Rejection:  # the copy may be stale: decide on a fresh read
        _targets.pop(slug, None)
        return alert_intake(data=data, source_ip=source_ip, now=now, enqueue=enqueue, fresh=True, counted=counted,
                            unsure=unsure)
    alert = parsers.alert_validate(
        data, now=now, max_age_seconds=int(setting("WEBHOOK_MAX_ALERT_AGE_SECONDS")),
        max_future_seconds=int(setting("WEBHOOK_MAX_FUTURE_SECONDS")))
    if isinstance(alert, Rejection):
        return alert
    if not parsers.ticker_matches(alert.ticker, strategy.symbol):
        if cached:
            return again()
        return Rejection(400, "ticker_mismatch", f"ticker {alert.ticker} is not {strategy.symbol}",
                         {"ticker": f"must name {strategy.symbol}"})
    if not counted:
        if rate_limited("strategy", str(strategy.pk), limit=int(setting("WEBHOOK_RATE_LIMIT_PER_STRATEGY"))):
            return _STRATEGY_LIMITED
        counted = True
    guard = _price_guard(alert, strategy.symbol)
    if guard is not None:
        return again() if cached else guard

    refusal: tuple[str, str] | None = None
    if strategy.status != Strategy.Status.ACTIVE:
        refusal = ("strategy_inactive", f"strategy {strategy.slug} is {strategy.status}")
    elif strategy.kill_switch_engaged:
        refusal = ("kill_switch", "the kill switch is engaged")
    if refusal and cached:
        return again()
    signal = _signal_values(strategy, alert, data, now=now, authenticated=authenticated, refusal=refusal)
    key = signal["idempotency_key"]
    try:
        if actor:  # a user's submission: the row and who sent it, in one transaction
            signal["payload"] = {**signal["payload"], "submitted_by": actor}
            with transaction.atomic():
                signal_id, queued = _insert(signal, guard=None, enqueue=enqueue and not refusal)
                if signal_id is not None:
                    audit(actor=actor, action="signal.submitted", entity="signal", entity_id=signal_id,
                          now=now, strategy=strategy.slug, action_requested=alert.action,
                          refused=refusal[0] if refusal else "")
        else:
            # One statement in autocommit: the INSERT and its COMMIT (durable, synchronous_commit) in one round trip.
            signal_id, queued = _insert(signal, guard=strategy if cached else None, enqueue=enqueue and not refusal)
    except (InterfaceError, OperationalError):
        if not cached:
            raise
        connections["default"].close()  # a dropped connection (a database restart): the fresh read reconnects
        return again(unsure=True)
    if signal_id is None and cached:
        return again()  # a repeat delivery, or the strategy changed since this process read it
    if signal_id is not None and not refusal and enqueue and not queued:
        # Outside a transaction block this runs at once, after the commit; inside a caller's, after its commit.
        transaction.on_commit(lambda: _enqueue(signal_id))
    if signal_id is None:
        first = Signal.objects.filter(idempotency_key=key).values_list("id", "status").first()
        if first is not None and unsure and enqueue and first[1] == Signal.Status.RECEIVED and not refusal:
            transaction.on_commit(lambda: _enqueue(first[0]))
        return Accepted(signal_id=int(first[0]) if first else 0, duplicate=True, status=200)
    if refusal:
        return Rejection(409, refusal[0], refusal[1], {"signal_id": str(signal_id)})
    return Accepted(signal_id=signal_id, duplicate=False)


def _signal_values(strategy: _Target, alert: Alert, data: dict[str, Any], *, now: datetime, authenticated: bool,
                   refusal: tuple[str, str] | None) -> dict[str, Any]:
    """The signal row of a validated alert, by attname (the payload stored with its secrets masked)."""
    return {
        "strategy_id": strategy.pk, "account_id": strategy.account_id,
        "source": Signal.Source.WEBHOOK.value if not authenticated else Signal.Source.MANUAL.value,
        "idempotency_key": parsers.idempotency_key(alert), "action": alert.action, "symbol": strategy.symbol,
        "quantity": alert.quantity, "target": alert.target, "order_type": alert.order_type, "price": alert.price,
        "stop_loss": alert.stop_loss, "take_profit": alert.take_profit, "leverage": alert.leverage, "atr": alert.atr,
        "payload": payload_redact(parsers.payload_from(data)), "received_at": now,
        "status": (Signal.Status.REJECTED if refusal else Signal.Status.RECEIVED).value,
        "decision_rule": refusal[0] if refusal else "", "decision_detail": refusal[1] if refusal else "",
    }


def alert_fast_row(*, data: dict[str, Any], known: _Target, now: datetime) -> _Row | Rejection | None:
    """`alert_intake`'s path for an alert that matched this process's copy of its strategy (`known`, from
    `strategy_known`, its rate limits already counted), up to its INSERT, for a caller that writes the row itself
    (the intake server, webhooks/intake_asgi.py): the guarded row to write and queue, or the Rejection to answer,
    or None when `alert_intake(..., counted=True, checked=True, known=known)` must decide (the copy would refuse
    the alert or its ticker, or the alert has a price to check against the market). When the guarded INSERT
    stores nothing, the caller takes the alert again with `alert_intake(..., fresh=True, counted=True)`.

    It makes the same second constant-time comparison as `alert_intake` whenever it answers."""
    alert = parsers.alert_validate(
        data, now=now, max_age_seconds=int(setting("WEBHOOK_MAX_ALERT_AGE_SECONDS")),
        max_future_seconds=int(setting("WEBHOOK_MAX_FUTURE_SECONDS")))
    if not isinstance(alert, Rejection) and (
            alert.price is not None or known.status != Strategy.Status.ACTIVE or known.kill_switch_engaged
            or not parsers.ticker_matches(alert.ticker, known.symbol)):
        return None
    secret_matches("", str(data.get("passphrase") or ""))
    if isinstance(alert, Rejection):
        return alert
    values = _signal_values(known, alert, data, now=now, authenticated=False, refusal=None)
    return _Row(values, _guard_checks(known), True)


def _guard_checks(guard: _Target) -> list[Any]:
    """The guarded INSERT's four values: the strategy row must still have this id, symbol, account and secret."""
    return [guard.pk, guard.symbol, guard.account_id, guard.webhook_secret_hash]


def intake_guarded(call: Callable[[], Accepted | Rejection]) -> Accepted | Rejection:
    """The result of an intake call, or a 503 to answer when it failed on our side (logged): never a 500."""
    try:
        return call()
    except DatabaseError:
        log.exception("webhook intake: database unavailable")
        return STORAGE_UNAVAILABLE
    except Exception:  # noqa: BLE001 - never a 500 for what a client sends
        log.exception("webhook intake failed")
        return INTAKE_FAILED


INTAKE_FAILED = Rejection(503, "unavailable", "the alert could not be stored; retry")
STORAGE_UNAVAILABLE = Rejection(503, "unavailable", "storage is unavailable; retry")


def strategy_forget(slug: str) -> None:
    """Drop this process's copy of a strategy (the next alert for it is checked against a fresh read)."""
    _targets.pop(slug, None)


def _enqueue(signal_id: int) -> None:
    """Queue signal_process for a committed signal; a failure is logged, never raised (the sweeper re-drives it)."""
    signal_enqueue(signal_id=signal_id, raw=flag("WEBHOOK_RAW_ENQUEUE"))


def body_intake(*, body: bytes, content_type: str | None, meta: dict[str, Any],
                 now: datetime | None = None) -> Accepted | Rejection:
    """The TradingView webhook: source allowlist, per-IP rate limit, decode, then `alert_intake`.

    An alert whose passphrase matches this process's copy of its strategy is counted against the source's budget
    and then (if admitted) its strategy's in one Redis round trip, so the strategy's counts authenticated requests,
    valid or not; any other request is counted against the source's budget first, and its strategy's only once
    valid.
    """
    ip = client_ip(meta)
    if not source_allowed(ip):
        return Rejection(403, "forbidden_source", "this source address is not allowed")
    data = parsers.body_decode(body, content_type)
    known = strategy_known(data)
    if known is None:
        if rate_limited("ip", ip, limit=int(setting("WEBHOOK_RATE_LIMIT_PER_IP"))):
            return _IP_LIMITED
        if isinstance(data, Rejection):
            return data
        return alert_intake(data=data, source_ip=ip, now=now, checked=True)
    limited = rate_limited_pair(ip, known.pk)
    if limited is not None:
        return limited
    return alert_intake(data=data, source_ip=ip, now=now, counted=True, checked=True,  # type: ignore[arg-type]
                        known=known)


_IP_LIMITED = Rejection(429, "rate_limited", "too many requests from this address")
_STRATEGY_LIMITED = Rejection(429, "rate_limited", "too many alerts for this strategy")


def strategy_known(data: dict[str, Any] | Rejection) -> _Target | None:
    """This process's copy of the alert's strategy when the alert's passphrase matches it (one constant-time
    comparison on every path, so the copy's existence does not show in the time taken)."""
    creds = None if isinstance(data, Rejection) else parsers.credentials(data)
    known = _targets.get(creds[0]) if creds else None
    matches = secret_matches(known.webhook_secret_hash if known else "", creds[1] if creds else "")
    return known if matches else None


def dumps(body: dict[str, Any]) -> bytes:
    """Compact JSON for responses."""
    return json.dumps(body, separators=(",", ":")).encode()
