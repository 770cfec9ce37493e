"""The strategies alerts are for: read with the kill switch in one round trip, authenticated in constant time,
and kept by this process once an alert for them has been authenticated (each INSERT from that copy re-checks the
strategy row: trading/intake.py, `signal_store`'s guard)."""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from typing import Any

from django.db import InterfaceError, OperationalError, connections

from infra.rows import concrete_field, quote_name
from infra.statements import statement_row
from trading.models import KillSwitch, PriceFeed, Strategy, VenueAccount
from trading.prices import feed_name
from webhooks import parsers
from webhooks.parsers import Rejection

log = logging.getLogger("webhooks.services")  # the name the intake logged under before its split (log routing)

# Compared when the strategy is unknown or has no secret, so that path costs the same as a wrong secret.
_DUMMY_HASH = hashlib.sha256(b"tradesite-no-such-strategy").hexdigest()


def secret_matches(strategy_hash: str, passphrase: str) -> bool:
    """Constant-time comparison of SHA-256 hashes (hex)."""
    given = hashlib.sha256(passphrase.encode("utf-8", "surrogatepass")).hexdigest()
    return hmac.compare_digest(given.encode(), (strategy_hash or _DUMMY_HASH).encode()) and bool(strategy_hash)


@dataclass(frozen=True)
class Target:
    """What intake needs of a strategy, read with the kill switch state in one round trip."""

    pk: int
    slug: str
    symbol: str
    status: str
    account_id: int
    webhook_secret_hash: str
    kill_switch_engaged: bool
    price_feed: str = PriceFeed.DEMO  # the account's (trading.prices.price_feed_of): the price guard reads it


_target_sql: str | None = None


def target_read(slug: str) -> Target | None:
    """The strategy with this slug (hand-written SQL: the hot path's ORM query build cost more than its I/O)."""
    global _target_sql
    if _target_sql is None:
        q = quote_name
        s, k, a = Strategy._meta, KillSwitch._meta, VenueAccount._meta
        cols = ", ".join("s." + q(concrete_field(Strategy, f).column) for f in (
            "id", "slug", "symbol", "status", "account", "webhook_secret_hash"))
        feed = ", ".join("a." + q(concrete_field(VenueAccount, f).column) for f in ("venue", "network", "price_feed"))
        _target_sql = (f"SELECT {cols}, EXISTS(SELECT 1 FROM {q(k.db_table)} WHERE {q(k.pk.column)} = 1 AND "
                       f"{q(concrete_field(KillSwitch, 'engaged').column)}), {feed} FROM {q(s.db_table)} s "
                       f"JOIN {q(a.db_table)} a ON a.{q(a.pk.column)} = "
                       f"s.{q(concrete_field(Strategy, 'account').column)} "
                       f"WHERE s.{q(concrete_field(Strategy, 'slug').column)} = %s")
    row = _read_row(_target_sql, [slug])
    return None if row is None else Target(int(row[0]), row[1], row[2], row[3], int(row[4]), row[5] or "",
                                           bool(row[6]), feed_name(row[7], row[8], row[9]))


def _read_row(sql: str, params: list[Any]) -> tuple[Any, ...] | None:
    """`statement_row` for a read. Django's per-request health check (a `SELECT 1` round trip) is replaced by
    this: a read that fails on a dropped connection is run once more on a new one (outside a transaction block)."""
    db = connections["default"]
    if db.vendor != "postgresql":
        return statement_row(sql, params)
    for attempt in (1, 2):
        db.ensure_connection()
        try:
            return statement_row(sql, params)
        except (InterfaceError, OperationalError):
            if attempt == 2 or db.in_atomic_block:
                raise
            log.warning("database connection lost; reconnecting")
            db.close()
    return None


def guard_checks(guard: Target) -> list[Any]:
    """The guarded INSERT's four values: the strategy row must still have this id, symbol, account and secret."""
    return [guard.pk, guard.symbol, guard.account_id, guard.webhook_secret_hash]


# The strategies this process has authenticated alerts for, by slug (each INSERT from them re-checks the row).
targets: dict[str, Target] = {}


def strategy_known(data: dict[str, Any] | Rejection) -> Target | None:
    """This process's copy of the alert's strategy when the alert's passphrase matches it (one constant-time
    comparison on every path, so the copy's existence does not show in the time taken)."""
    creds = None if isinstance(data, Rejection) else parsers.credentials(data)
    known = targets.get(creds[0]) if creds else None
    matches = secret_matches(known.webhook_secret_hash if known else "", creds[1] if creds else "")
    return known if matches else None


def strategy_forget(slug: str) -> None:
    """Drop this process's copy of a strategy (the next alert for it is checked against a fresh read)."""
    targets.pop(slug, None)
