"""Signal intake: store a signal once per idempotency key, and queue it for the engine after commit.

`signal_store` is the one door through which a signal row is written: by the webhook and the signal API
(webhooks/services.py), the strategies, the dashboard, the monitor and the kill switch (through `signal_create`),
and, for its batched INSERT on an event loop, the intake server (webhooks/intake_asgi.py runs the statements built
here). Queuing is best effort: a signal whose enqueue failed stays RECEIVED, and the sweeper (trading/recovery.py)
re-drives it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
from django.db import DatabaseError, InterfaceError, OperationalError, connection, connections, transaction
from django.utils import timezone

from infra import broker, rows
from infra.groupcommit import GroupCommit
from infra.statements import statement_row
from trading import dispatch
from trading.models import KillSwitch, Signal, Strategy

log = logging.getLogger("trading.engine")  # one logger for every room of the engine (log routing keys on it)


def signal_create(
    *,
    strategy: Strategy,
    source: str,
    idempotency_key: str,
    action: str,
    symbol: str | None = None,
    quantity: Decimal | None = None,
    target: Decimal | None = None,
    order_type: str = "market",
    price: Decimal | None = None,
    stop_loss: Decimal | None = None,
    take_profit: Decimal | None = None,
    leverage: Decimal | None = None,
    atr: Decimal | None = None,
    payload: dict[str, object] | None = None,
    now: datetime | None = None,
    enqueue: bool = True,
) -> tuple[Signal, bool]:
    """Store a signal once per idempotency key; return (signal, created). Queues processing after commit.

    One statement (`signal_store`: INSERT ... ON CONFLICT DO NOTHING), committed on its own unless the caller holds
    a transaction; the task is queued once the row is durable. A failed enqueue leaves the signal RECEIVED for the
    sweeper. When the key is taken by a row that is gone by the time it is read (rolled back), it is stored again.
    """
    now = now or timezone.now()
    signal = Signal(
        strategy=strategy, account_id=strategy.account_id, source=source, idempotency_key=idempotency_key,
        action=action, symbol=symbol or strategy.symbol, quantity=quantity, target=target,
        order_type=order_type, price=price, stop_loss=stop_loss, take_profit=take_profit, leverage=leverage,
        atr=atr, payload=payload_redact(payload or {}), received_at=now,
    )
    pk = signal_store(values={f.attname: getattr(signal, f.attname) for f in _FIELDS}, enqueue=enqueue)
    if pk is None:
        existing = Signal.objects.filter(idempotency_key=idempotency_key).first()
        if existing is None:  # the other row was rolled back since: store this one after all
            return signal_create(strategy=strategy, source=source, idempotency_key=idempotency_key, action=action,
                                 symbol=symbol, quantity=quantity, target=target, order_type=order_type, price=price,
                                 stop_loss=stop_loss, take_profit=take_profit, leverage=leverage, atr=atr,
                                 payload=payload, now=now, enqueue=enqueue)
        return existing, False
    signal.pk = pk
    signal._state.adding = False
    signal._state.db = connection.alias
    return signal, True


def signal_store(*, values: dict[str, Any], checks: Sequence[Any] = (), enqueue: bool = True, raw: bool = True,
                 direct: bool = False, group: bool = False) -> int | None:
    """Write one signal row unless its idempotency key is taken: the new id, or None (a repeat; with `checks`, also
    a strategy that changed). The only code that stores a signal.

    `values` by attname (the others take their field's default). `checks`, the guard's four values (strategy id,
    symbol, account id, webhook secret hash): the row is written only if that strategy row still has them and is
    active, and the kill switch is released, checked by the INSERT itself (no read before it).
    `enqueue`: a new signal is queued for processing once committed (`raw`: one raw LPUSH when the broker takes
    it, else `.delay()`; a failure is logged and the sweeper re-drives it).

    Sent through infra/rows.py (in a batching scope, with the writes waiting there), unless `direct` (the webhook's
    hot path): a protocol-level prepared statement on the psycopg connection, one round trip, committed durably
    before this returns when no transaction block is open. With `group` too, outside a transaction block on
    PostgreSQL, the row is written by the same INSERT and COMMIT as the rows other threads store at that moment,
    and the new ones are queued with one LPUSH (`signals_write`).
    """
    db = connections["default"]
    queued = False
    if direct and group and db.vendor == "postgresql" and not db.in_atomic_block:
        pk, queued = _group().submit(SignalRow(values, list(checks), enqueue, raw))
    elif direct:
        pk = _insert_one(values, list(checks))
    else:
        found = rows.fetch_one(*signal_row_statement(values, list(checks)))
        pk = None if found is None else int(found[0])
    if pk is not None and enqueue and not queued:
        # Outside a transaction block this runs at once (the row is committed); inside a caller's, after its commit.
        transaction.on_commit(lambda: signal_enqueue(signal_id=pk, raw=raw))
    return pk


def signal_enqueue(*, signal_id: int, raw: bool = True) -> None:
    """Queue a stored signal for processing; a broker failure is logged, and the sweeper re-drives it later.

    On a Redis broker the message goes out as one raw LPUSH of a pre-built Celery message (infra/broker.py);
    otherwise, or with `raw=False`, through `.delay()`.
    """
    signal_process_task = dispatch.task(dispatch.SIGNAL_PROCESS)
    try:
        publisher = broker.publisher_for(signal_process_task) if raw else None
        if publisher is not None:
            publisher.publish(signal_id)
        else:
            signal_process_task.delay(signal_id)
    except broker.BrokerSkipped as exc:  # the broker failed moments ago: already logged with its traceback
        log.warning("signal %s not queued (%s); the sweeper will pick it up", signal_id, exc)
    except Exception:  # noqa: BLE001 - the row is committed: RECEIVED signals are re-driven by the sweeper
        log.exception("enqueue of signal %s failed; the sweeper will pick it up", signal_id)


def signals_enqueue(*, signal_ids: list[int], raw: bool = True) -> bool:
    """Queue stored signals with one LPUSH of raw Celery messages: True when that is how they went (a failure is
    logged; the sweeper re-drives them). False, queuing nothing, when the broker takes no raw message: the caller
    then queues each with `signal_enqueue`."""
    signal_process_task = dispatch.task(dispatch.SIGNAL_PROCESS)
    publisher = broker.publisher_for(signal_process_task) if raw else None
    if publisher is None:
        return False
    try:
        publisher.publish_many([(pk,) for pk in signal_ids])
    except broker.BrokerSkipped as exc:  # the broker failed moments ago: already logged with its traceback
        log.warning("signals %s not queued (%s); the sweeper will pick them up", signal_ids, exc)
    except Exception:  # noqa: BLE001 - the rows are committed: RECEIVED signals are re-driven by the sweeper
        log.exception("enqueue of signals %s failed; the sweeper will pick them up", signal_ids)
    return True


_SECRET_KEYS = ("passphrase", "password", "secret", "token", "api_key", "apikey", "private_key")


def payload_redact(payload: dict[str, object]) -> dict[str, object]:
    """Copy a received payload with every secret-looking field masked (stored signals never hold secrets)."""
    return {
        k: "[REDACTED]" if any(word in k.lower() for word in _SECRET_KEYS)
        else payload_redact(v) if isinstance(v, dict) else v
        for k, v in payload.items()
    }


# --------------------------------------------------------------------------------------------- the statements

_FIELDS = [f for f in Signal._meta.concrete_fields if not f.primary_key]
_PLAIN = (str, int, bool, type(None))  # values every column type takes as they are (no get_db_prep_save needed)
_insert_sql: dict[bool, str] = {}  # by guarded
_batch_sql: str | None = None


@dataclass(frozen=True)
class SignalRow:
    """One signal row for a batch: its values by attname, its guard's four values (or none), whether to queue it
    once stored, and how (`raw`: one raw LPUSH)."""

    values: dict[str, Any]
    checks: list[Any]
    enqueue: bool
    raw: bool = True

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
    """The single-row INSERT (guarded when `checks` holds the guard's four values), direct: the new id, or None."""
    row = statement_row(*signal_row_statement(values, checks))
    return None if row is None else int(row[0])


def signal_row_statement(values: dict[str, Any], checks: list[Any]) -> tuple[str, list[Any]]:
    """The single-row INSERT of these values (guarded when `checks` holds the guard's four values) and its
    parameters. It returns the new id, or no row."""
    guarded = bool(checks)
    sql = _insert_sql.get(guarded)
    if sql is None:
        sql = _insert_sql[guarded] = _insert_statement(guarded=guarded)
    return sql, _params(values, connections["default"]) + list(checks)


def signal_rows_statement(rows_: list[SignalRow]) -> tuple[str, list[Any]]:
    """The batch INSERT of these rows and its one parameter (PostgreSQL). It returns (id, idempotency_key) of each
    row it stored; `signal_rows_ids` turns those into one id (or None) per row."""
    global _batch_sql
    if _batch_sql is None:
        _batch_sql = _insert_statement(guarded=True, batch=True)
    return _batch_sql, ["[" + ",".join(row.json() for row in rows_) + "]"]


def signal_rows_ids(rows_: list[SignalRow], stored: dict[str, int]) -> list[int | None]:
    """Each row's new id, from the stored {key: id}, or None. A key twice in one batch: the first row is the new
    one, the next ones are repeats."""
    return [stored.pop(row.key, None) for row in rows_]


_groups: list[GroupCommit[SignalRow, tuple[int | None, bool]]] = []


def _group() -> GroupCommit[SignalRow, tuple[int | None, bool]]:
    """This process's group commit of signal rows (created on first use)."""
    if not _groups:
        _groups.append(GroupCommit(signals_write))
    return _groups[0]


def group_commit() -> GroupCommit[SignalRow, tuple[int | None, bool]]:
    """This process's group commit of signal rows (its counts: for tests and benchmarks)."""
    return _group()


def signals_write(rows_: list[SignalRow]) -> list[tuple[int | None, bool] | BaseException]:
    """Write rows with one INSERT (one COMMIT) and queue the new ones that ask for it with one LPUSH: per row
    (the new id or None, queued), or the exception that failed it. Outside a transaction block (autocommit).

    A connection error fails them all (the connection is closed: the next write reconnects). Any other database
    error of a batch is retried row by row, so that one row the database refuses fails only its own request.
    """
    db = connections["default"]
    try:
        if len(rows_) == 1:  # alone (a quiet moment): the single-row statement costs PostgreSQL a third less
            (row,) = rows_
            found = _insert_one(row.values, row.checks)
            stored = {} if found is None else {row.key: found}
        else:
            db.ensure_connection()
            with db.wrap_database_errors, psycopg.Cursor(db.connection) as cursor:
                cursor.execute(*signal_rows_statement(rows_), prepare=True)
                stored = {key: int(pk) for pk, key in cursor.fetchall()}
    except (InterfaceError, OperationalError):
        db.close()
        raise
    except DatabaseError:
        if len(rows_) == 1:
            raise
        out: list[tuple[int | None, bool] | BaseException] = []
        for row in rows_:
            try:
                out.extend(signals_write([row]))
            except Exception as exc:  # noqa: BLE001 - that row's own failure, raised in its own request
                out.append(exc)
        return out
    ids = signal_rows_ids(rows_, stored)
    queue = [pk for pk, row in zip(ids, rows_, strict=True) if pk is not None and row.enqueue]
    raw = all(row.raw for row in rows_ if row.enqueue)
    queued = bool(queue) and signals_enqueue(signal_ids=queue, raw=raw)
    return [(pk, queued and pk is not None and row.enqueue) for pk, row in zip(ids, rows_, strict=True)]


def _insert_statement(*, guarded: bool, batch: bool = False) -> str:
    """The signal INSERT: one row of plain values, one row behind the strategy/kill-switch guard, or (`batch`) the
    rows of one JSON array, each with its guard's four values, where a row whose guard id is null is unguarded."""
    q = rows.quote_name
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
