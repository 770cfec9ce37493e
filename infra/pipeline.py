"""Statements sent to PostgreSQL for infra/rows.py: each a prepared statement with its values bound server-side,
several in one round trip in libpq's pipeline mode, and the batching scope's state they serve.

infra/rows.py builds the statements and keeps the public API (rows, batching scopes, writes); this module owns the
wire: the per-thread scope state, the queued writes and prefetched reads, the protocol-level batch and its logging.
It imports nothing of ours.
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
import time
import weakref
from collections.abc import Callable, Generator, Sequence
from typing import Any, cast

import psycopg
from django.db import connection
from django.db.models import Model
from psycopg import abc as psycopg_abc
from psycopg.adapt import PyFormat, Transformer
from psycopg.pq import ExecStatus, PipelineStatus, TransactionStatus
from psycopg.waiting import Ready, Wait

_db_log = logging.getLogger("django.db.backends")  # where Django logs each statement it sends


class Batch:
    """One batching scope's waiting writes, prefetched reads and their answers, and reserved ids."""

    def __init__(self) -> None:
        self.prefetch: list[tuple[str, tuple[Any, ...]]] = []
        self.cache: dict[tuple[str, tuple[Any, ...]], list[tuple[Any, ...]]] = {}
        self.writes: list[tuple[str, list[Any]]] = []
        self.ids: dict[type[Model], list[int]] = {}
        self.queued = 0  # writes ever queued in this scope
        self.sent = 0  # of which sent
        # Waiting writes that later ones may fold into: by object (INSERTs) and by row (UPDATEs), with the index
        # (in queue order) of the write to replace.
        self.inserts: dict[int, tuple[int, list[Model], str, list[Any]]] = {}
        self.updates: dict[tuple[type[Model], Any], tuple[int, dict[str, Any]]] = {}


_local = threading.local()


def active() -> Batch | None:
    """This thread's open batching scope, if any."""
    return getattr(_local, "batch", None)


def activate(state: Batch | None) -> None:
    """Make `state` this thread's batching scope (None closes it)."""
    _local.batch = state


def batchable() -> bool:
    """Whether this connection can send several statements in one round trip (PostgreSQL, pipeline mode)."""
    return connection.vendor == "postgresql" and psycopg.Pipeline.is_supported()


def write(sql: str, params: list[Any]) -> None:
    """Queue a write that returns nothing in the open batching scope, or run it now."""
    state = active()
    if state is not None:
        state.writes.append((sql, params))
        state.queued += 1
        return
    if batchable():
        run_joined([(sql, params)])
        return
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


# Every statement of infra/rows.py runs with its values bound server-side (typed by psycopg's dumpers, as a server-side
# binding cursor sends them), as a protocol-level prepared statement: parsed and planned once per connection, then only
# bound and executed (planning the hot path's statements cost PostgreSQL more than running them). A batch is written in
# libpq's pipeline mode on the psycopg connection's own handle: a BEGIN when psycopg would send one, each statement's
# Parse (the first time) and Bind/Execute, one Sync, then one wait for all the results. psycopg's Pipeline does the same
# with a cursor per statement and a few system calls each: a batch of 5 statements took 150 us of client CPU that way,
# 50 us here (100 us as the SQL text with literals this replaced), and the hot path sends ~20 statements per signal.
# Parsing is not transactional: a statement whose Parse succeeded stays prepared whatever happened after it; one whose
# Parse failed or was skipped (an earlier statement of its batch failed) is forgotten. Nothing else may deallocate them:
# psycopg would, after a ROLLBACK, once it has prepared statements of its own, which Django's prepare_threshold=None
# rules out (checked).
_Key = tuple[bytes, tuple[int, ...]]  # a prepared statement: its text and its parameters' types
_prepared: weakref.WeakKeyDictionary[Any, dict[_Key, bytes]] = weakref.WeakKeyDictionary()
_transformers: weakref.WeakKeyDictionary[Any, psycopg_abc.Transformer] = weakref.WeakKeyDictionary()
_names = itertools.count(1)
_numbered: dict[str, tuple[bytes, int]] = {}
_PLACEHOLDER = re.compile(r"%(.?)", re.DOTALL)
_AUTO: dict[int, list[PyFormat]] = {}
_FAILED = (ExecStatus.FATAL_ERROR, ExecStatus.PIPELINE_ABORTED)


def _numbered_text(sql: str) -> tuple[bytes, int]:
    """The statement with $1, $2... for its %s placeholders (%% is a percent sign, as Django reads it), and their
    count; any other % is refused."""
    found = _numbered.get(sql)
    if found is None:
        count = 0

        def number(match: re.Match[str]) -> str:
            nonlocal count
            if match.group(1) == "%":
                return "%"
            if match.group(1) != "s":
                raise ValueError(f"statement cannot be batched (a % must be %s or %%): {sql[:80]}")
            count += 1
            return f"${count}"

        found = _numbered[sql] = (_PLACEHOLDER.sub(number, sql).encode(), count)
    return found


def _connection() -> psycopg.Connection[Any]:
    """The psycopg connection, checked as Django checks it before a cursor runs a statement."""
    connection.validate_no_broken_transaction()
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    connection.validate_thread_sharing()
    return cast("psycopg.Connection[Any]", connection.connection)


def _begin(raw: psycopg.Connection[Any]) -> bytes:
    """The BEGIN psycopg would send on this connection (Django leaves isolation and access modes unset by default)."""
    parts = ["BEGIN"]
    if raw.isolation_level is not None:
        parts.append("ISOLATION LEVEL " + psycopg.IsolationLevel(raw.isolation_level).name.replace("_", " "))
    if raw.read_only is not None:
        parts.append("READ ONLY" if raw.read_only else "READ WRITE")
    if raw.deferrable is not None:
        parts.append("DEFERRABLE" if raw.deferrable else "NOT DEFERRABLE")
    return " ".join(parts).encode()


def _bound(tx: psycopg_abc.Transformer, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[tuple[_Key, Any, Any]]:
    """Each statement's key, its values dumped by psycopg and their formats (before anything is sent: a value psycopg
    refuses fails the batch with nothing of it run)."""
    out = []
    for sql, params in statements:
        text, count = _numbered_text(sql)
        if count != len(params):
            raise ValueError(f"statement has {count} placeholders for {len(params)} values: {sql[:80]}")
        formats = _AUTO.get(count)
        if formats is None:
            formats = _AUTO[count] = [PyFormat.AUTO] * count
        values = tx.dump_sequence(params, formats)
        out.append(((text, tx.types or ()), values, tx.formats))
    return out


def _exchange(pgconn: Any) -> Generator[Wait, Ready | int, list[Any]]:
    """For psycopg's `Connection.wait`: send the pipeline, then read every result up to its Sync (None ends each
    command's results)."""
    while pgconn.flush():
        while not (ready := (yield Wait.RW)):
            continue
        if ready & Ready.R:
            pgconn.consume_input()
    results: list[Any] = []
    while True:
        while pgconn.is_busy():
            while not (yield Wait.R):
                continue
            pgconn.consume_input()
        result = pgconn.get_result()
        if result is not None and result.status == ExecStatus.PIPELINE_SYNC:
            return results
        results.append(result)


def run_joined(statements: Sequence[tuple[str, Sequence[Any]]], *, tail: str = "") -> list[list[tuple[Any, ...]]]:
    """Run statements in one round trip, `tail` (COMMIT) after them; each statement's rows."""
    raw = _connection()
    start = time.monotonic()
    try:
        with connection.wrap_database_errors, raw.lock:
            if raw.prepare_threshold is not None:
                raise RuntimeError("infra/rows.py needs psycopg's own prepared statements off (prepare_threshold None)")
            known = _prepared.get(raw)
            tx = _transformers.get(raw)
            if known is None or tx is None:
                known, tx = _prepared[raw], _transformers[raw] = {}, Transformer(raw)
            bound = _bound(tx, statements)
            pgconn = raw.pgconn
            if pgconn.pipeline_status != PipelineStatus.OFF:  # psycopg's own pipeline is open: its results would mix
                raise RuntimeError("infra/rows.py cannot send a batch inside psycopg's pipeline")
            # What each command's results answer: a BEGIN or the tail (None), a Parse (its key), a statement (its
            # index).
            sent: list[_Key | int | None] = []
            pgconn.enter_pipeline_mode()
            try:
                if not raw.autocommit and pgconn.transaction_status == TransactionStatus.IDLE:
                    pgconn.send_query_params(_begin(raw), None)  # in this round trip, not one of its own
                    sent.append(None)
                for i, (key, values, formats) in enumerate(bound):
                    name = known.get(key)
                    if name is None:
                        name = known[key] = f"tradesite_{next(_names)}".encode()
                        pgconn.send_prepare(name, key[0], param_types=key[1])
                        sent.append(key)
                    pgconn.send_query_prepared(name, values, param_formats=formats)
                    sent.append(i)
                if tail:
                    pgconn.send_query_params(tail.encode(), None)
                    sent.append(None)
                pgconn.pipeline_sync()
                results = raw.wait(_exchange(pgconn))
            except BaseException:
                _abandon(pgconn, known, sent)
                raise
            pgconn.exit_pipeline_mode()
            return _rows(tx, known, len(statements), sent, results, raw.info.encoding)
    finally:
        _logged(statements, tail, start)


def _abandon(pgconn: Any, known: dict[_Key, bytes], sent: list[_Key | int | None]) -> None:
    """After a failure while sending or waiting: forget what this batch prepared and leave pipeline mode, or drop
    the connection when its state is unknown (results not read). Django then rolls back or reconnects."""
    for what in sent:
        if isinstance(what, tuple):
            known.pop(what, None)
    try:
        pgconn.exit_pipeline_mode()
    except psycopg.Error:
        pgconn.finish()


def _rows(tx: psycopg_abc.Transformer, known: dict[_Key, bytes], count: int, sent: list[_Key | int | None],
          results: list[Any], encoding: str) -> list[list[tuple[Any, ...]]]:
    """Each statement's rows from a pipeline's results; the first error raised (after forgetting the statements
    whose Parse failed or was skipped)."""
    out: list[list[tuple[Any, ...]]] = [[] for _ in range(count)]
    error: psycopg.Error | None = None
    answers = [result for result, after in itertools.pairwise([*results, None]) if after is None and result is not None]
    if len(answers) != len(sent):  # each command's result is followed by None
        raise psycopg.InterfaceError(f"{len(answers)} results for {len(sent)} commands in a pipeline")
    for what, result in zip(sent, answers, strict=True):
        status = result.status
        if status in _FAILED:
            if isinstance(what, tuple):
                known.pop(what, None)
            if error is None and status == ExecStatus.FATAL_ERROR:
                error = psycopg.errors.error_from_result(result, encoding=encoding)
        elif isinstance(what, int) and status == ExecStatus.TUPLES_OK:
            tx.set_pgresult(result)
            out[what] = tx.load_rows(0, result.ntuples, tuple)
    if error is not None:
        raise error
    return out


def _logged(statements: Sequence[tuple[str, Sequence[Any]]], tail: str, start: float, **flags: bool) -> None:
    """Log a round trip as Django logs a statement (the texts as written, the values apart); a batch is one entry."""
    if not connection.queries_logged:
        return
    duration = time.monotonic() - start
    sql = ";\n".join([*(s for s, _ in statements), *([tail] if tail else [])])
    params = [list(p) for _, p in statements]
    entry: dict[str, Any] = {"sql": sql, "time": f"{duration:.3f}", **flags}
    connection.queries_log.append(entry)
    _db_log.debug("(%.3f) %s; args=%s; alias=%s", duration, sql, params, connection.alias,
                  extra={"duration": duration, "sql": sql, "params": params, "alias": connection.alias})


def carry_writes(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
    """Django execute wrapper: send the waiting writes in front of whatever statement runs next, in its round trip.

    Through psycopg's own pipeline (Django's cursor runs the caller's statement in it, and the caller reads its
    result once the pipeline has synced, on leaving it); the writes are bound server-side there too, not prepared.
    Their log entry is marked `carried` (one round trip with the caller's statement, which Django logs next).
    """
    state = active()
    if state is None or not state.writes:
        return execute(sql, params, many, context)
    statements, state.writes = state.writes, []
    state.sent = state.queued
    if isinstance(context["cursor"].cursor, psycopg.ServerCursor):  # a named cursor cannot join a pipeline
        run_joined(statements)
        return execute(sql, params, many, context)
    raw = _connection()
    start = time.monotonic()
    try:
        with connection.wrap_database_errors, raw.pipeline():
            cursor = psycopg.Cursor(raw)
            for write, values in statements:
                cursor.execute(write, values)
            return execute(sql, params, many, context)
    finally:
        _logged(statements, "", start, carried=True)


def run_with_prefetches(state: Batch, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    """Run one read with the scope's waiting writes in front and its prefetches after; the read's rows."""
    pending, state.prefetch = state.prefetch, []
    writes, state.writes = state.writes, []  # sent in front, so the reads see them
    state.sent = state.queued
    results = run_joined([*writes, (sql, params), *pending])
    ours = results[len(writes):]
    for key, rows in zip(pending, ours[1:], strict=True):
        state.cache[key] = rows
    return ours[0]
