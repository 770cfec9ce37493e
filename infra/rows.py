"""Model rows read with hand-written SQL on the execution hot path, converted exactly as the ORM converts them.

Building a query through the ORM (annotations, select_related, locking clauses) costs several times more CPU than
running it: measured here, 0.75 ms for the account lock with the kill switch annotation against 0.12 ms for the
same SELECT written out and loaded with `Model.from_db`. The hot path's few wide reads use this module; the
column lists come from the models, so a new field needs no change here.

On PostgreSQL every statement is a prepared statement whose values are bound server-side (never written into the
SQL text), and a batching scope sends several in one round trip in libpq's pipeline mode (see below; the wire level
is infra/pipeline.py).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Generic, TypeVar, cast

from django.db import connection, transaction
from django.db.models import Field, Model

from infra.pipeline import Batch, activate, active, carry_writes, run_joined, run_with_prefetches, write
from infra.pipeline import batchable as batchable  # part of this module's API

M = TypeVar("M", bound=Model)
_Converter = Callable[[Any, Any, Any], Any]


def concrete_field(model: type[Model], name: str) -> Field[Any, Any]:
    """The model's field `name`, one with a column (the callers never name a reverse relation)."""
    return cast("Field[Any, Any]", model._meta.get_field(name))


def quote_name(name: str | None) -> str:
    """A table or column name quoted for this connection (a concrete field's column is never None)."""
    return connection.ops.quote_name(cast(str, name))


class Rows(Generic[M]):
    """Select-list text and row loading for one model (columns in `_meta.concrete_fields` order)."""

    def __init__(self, model: type[M], fields: Sequence[str] | None = None) -> None:
        self.model = model
        self.fields: list[Field[Any, Any]] = list(model._meta.concrete_fields) if fields is None else \
            [concrete_field(model, name) for name in fields]
        self.attnames = [f.attname for f in self.fields]
        self._converters: dict[str, list[tuple[int, Any, list[_Converter]]]] = {}

    def __len__(self) -> int:
        return len(self.fields)

    def columns(self, alias: str) -> str:
        """The model's columns, qualified by `alias`, in loading order."""
        quote = quote_name
        return ", ".join(f"{alias}.{quote(f.column)}" for f in self.fields)

    def _converters_for(self) -> list[tuple[int, Any, list[_Converter]]]:
        vendor = connection.vendor
        found = self._converters.get(vendor)
        if found is None:
            found = []
            for i, field in enumerate(self.fields):
                col = field.get_col(self.model._meta.db_table)
                funcs = connection.ops.get_db_converters(col) + col.get_db_converters(connection)
                if funcs:
                    found.append((i, col, funcs))
            self._converters[vendor] = found
        return found

    def values(self, values: Sequence[Any]) -> list[Any]:
        """One row's values converted as the ORM converts them (Decimal, JSON, booleans on SQLite...)."""
        row = list(values)
        for i, col, funcs in self._converters_for():
            value = row[i]
            for func in funcs:
                value = func(value, col, connection)
            row[i] = value
        return row

    def load(self, values: Sequence[Any]) -> M:
        """A model instance from one row's values, as the ORM would have built it (all concrete fields)."""
        return self.model.from_db(connection.alias, self.attnames, self.values(values))

    def table(self) -> str:
        """The model's quoted table name."""
        return connection.ops.quote_name(self.model._meta.db_table)


def fetch_all(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    """Run one statement and return its rows (in a `batching` scope: a prefetched answer, or with the prefetches)."""
    state = active()
    if state is not None:
        if state.cache:
            try:
                found = state.cache.pop((sql, tuple(params)), None)
            except TypeError:  # unhashable parameters (JSON): never prefetched
                found = None
            if found is not None:
                return found
        if state.prefetch or state.writes:
            return run_with_prefetches(state, sql, params)
    if batchable():
        return run_joined([(sql, params)])[0]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [tuple(row) for row in cursor.fetchall()]


def fetch_one(sql: str, params: Sequence[Any]) -> tuple[Any, ...] | None:
    """Run one statement and return its first row."""
    found = fetch_all(sql, params)
    return found[0] if found else None


# --------------------------------------------------------------------------------------------- batching

# On PostgreSQL, libpq's pipeline mode sends several statements, each with its values bound server-side, and waits
# for their results once: a batching scope uses that to cut round trips, which is what a row lock held across a unit
# of work waits on. Reads registered with `prefetch` travel with the next read, and are answered from memory
# when asked for; writes that return nothing wait and travel with the next statement of any kind (so every
# statement still sees every earlier write), or go at the end of the scope. Elsewhere (SQLite) nothing changes.
# The scope's state and the wire (prepared statements, the pipeline, logging) are infra/pipeline.py.


def batching_active() -> bool:
    """Whether a `batching` scope is open in this thread."""
    return active() is not None


@contextmanager
def batching(*, commit: bool = False) -> Iterator[None]:
    """Open a batching scope (inside the transaction it serves: its writes are sent before it ends).

    With `commit`, the last writes carry the COMMIT too (one round trip less while the locks are held): only for
    a scope that ends its outermost transaction right after (psycopg's commit is then a no-op).
    A nested scope joins the outer one. Outside PostgreSQL it does nothing.
    """
    if active() is not None or not batchable():
        yield
        return
    activate(state := Batch())
    try:
        with connection.execute_wrapper(carry_writes):
            yield
            if state.writes:
                statements, state.writes = state.writes, []
                state.sent = state.queued
                done = commit and not connection.needs_rollback and connection.in_atomic_block
                run_joined(statements, tail="COMMIT" if done else "")
    finally:
        activate(None)


@contextmanager
def savepoint() -> Iterator[None]:
    """A nested unit undone alone on error: a real savepoint, or in a batching scope one kept in memory.

    In memory, the writes queued inside are dropped on error; if some were already sent, the whole transaction
    is marked for rollback instead (nothing half-done can be committed).
    """
    state = active()
    if state is None:
        with transaction.atomic():
            yield
        return
    mark = state.queued
    try:
        yield
    except BaseException:
        if state.sent <= mark:
            del state.writes[mark - state.sent:]
            state.queued = mark
            pending: tuple[dict[Any, Any], ...] = (state.inserts, state.updates)
            for folded in pending:
                for key in [k for k, v in folded.items() if v[0] >= mark]:
                    del folded[key]
        else:
            transaction.set_rollback(True)
        raise


def prefetch(statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
    """Register reads to send with the next read of this batching scope (no-op outside one)."""
    state = active()
    if state is not None:
        state.prefetch.extend((sql, tuple(params)) for sql, params in statements)


def reserve_ids(model: type[Model], count: int) -> None:
    """Prefetch `count` primary keys of `model` from its sequence, so its inserts in this scope can wait too."""
    state = active()
    if state is None:
        return
    prefetch([(_RESERVE_SQL, [*_sequence_of(model), count])])


_RESERVE_SQL = "SELECT nextval(pg_get_serial_sequence(%s, %s)) FROM generate_series(1, %s)"


def _sequence_of(model: type[Model]) -> tuple[str, str]:
    """The table and primary key column whose sequence gives `model` its ids."""
    return model._meta.db_table, cast(str, model._meta.pk.column)


def _take_ids(state: Batch, model: type[Model], count: int) -> list[int] | None:
    pool = state.ids.get(model)
    if pool is None:
        sequence = _sequence_of(model)
        key = next((k for k in state.cache if k[0] == _RESERVE_SQL and k[1][:2] == sequence), None)
        pool = state.ids[model] = [int(row[0]) for row in state.cache.pop(key)] if key is not None else []
    if len(pool) < count:
        return None
    taken, state.ids[model] = pool[:count], pool[count:]
    return taken


def lock_clause(of: str) -> str:
    """`FOR NO KEY UPDATE OF <of>` where the database has row locks (SQLite's IMMEDIATE transactions serialize)."""
    if not connection.features.has_select_for_update:
        return ""
    return f" FOR NO KEY UPDATE OF {of}" if connection.features.has_select_for_no_key_update else \
        f" FOR UPDATE OF {of}"


def save_fields(obj: Model, fields: Sequence[str]) -> None:
    """`obj.save(update_fields=fields)` as one written-out UPDATE (auto_now fields are stamped the same way).

    In a batching scope, an object whose INSERT is still waiting is inserted as it is now instead, and an UPDATE
    of a row that already has one waiting is merged into it: one statement per row.
    """
    state = active()
    if state is not None:
        found = state.inserts.get(id(obj))
        if found is not None and state.sent <= found[0] < state.queued:
            index, objs, sql, insert_fields = found
            state.writes[index - state.sent] = (sql, _params(objs, insert_fields, add=True))
            return
    update(type(obj), obj.pk, {name: concrete_field(type(obj), name).pre_save(obj, False) for name in fields})


def update(model: type[Model], pk: Any, values: dict[str, Any]) -> None:
    """UPDATE one row's fields (model field names -> Python values) by primary key; merged as `save_fields` says."""
    state = active()
    if state is not None:
        found = state.updates.get((model, pk))
        if found is not None and state.sent <= found[0] < state.queued:
            values = {**found[1], **values}
            sql, params = _update_statement(model, pk, values)
            state.writes[found[0] - state.sent] = (sql, params)
            state.updates[(model, pk)] = (found[0], values)
            return
        sql, params = _update_statement(model, pk, values)
        state.updates[(model, pk)] = (state.queued, values)
        write(sql, params)
        return
    write(*_update_statement(model, pk, values))


def _update_statement(model: type[Model], pk: Any, values: dict[str, Any]) -> tuple[str, list[Any]]:
    meta = model._meta
    key = (model, tuple(values), connection.vendor)
    cached = _update_sql.get(key)
    if cached is None:
        quote = quote_name
        concrete = [concrete_field(model, name) for name in values]
        sets = ", ".join(f"{quote(f.column)} = %s" for f in concrete)
        cached = _update_sql[key] = (f"UPDATE {quote(meta.db_table)} SET {sets} WHERE {quote(meta.pk.column)} = %s",
                                     concrete)
    sql, concrete = cached
    return sql, [*(prep(v) for prep, v in zip(_preps_for(concrete), values.values())), pk]


def insert(objs: Sequence[Model], *, returning: bool = True) -> None:
    """`bulk_create(objs)` as one written-out INSERT; with `returning`, each object gets its pk.

    In a batching scope the INSERT waits like any write when no pk is needed, or when reserved ids can be used.
    """
    if not objs:
        return
    model = type(objs[0])
    state = active()
    ids = None
    if state is not None and returning:
        ids = _take_ids(state, model, len(objs))
    if state is not None and (ids is not None or not returning):
        sql, fields = _insert_statement(model, len(objs), with_pk=ids is not None, returning=False)
        if ids is not None:
            for obj, pk in zip(objs, ids, strict=True):
                obj.pk = pk
        params = _params(objs, fields, add=True)
        index = state.queued
        write(sql, params)
        if ids is not None:
            _mark_saved(objs)
            for obj in objs:  # a later save_fields re-renders this INSERT instead of adding an UPDATE
                state.inserts[id(obj)] = (index, list(objs), sql, fields)
        return
    sql, fields = _insert_statement(model, len(objs), with_pk=False, returning=returning)
    params = _params(objs, fields, add=True)
    if not returning:
        write(sql, params)
        return
    ids = [row[0] for row in fetch_all(sql, params)]
    for obj, pk in zip(objs, ids, strict=True):
        obj.pk = pk
    _mark_saved(objs)


_SIMPLE = {"CharField": (str,), "TextField": (str,), "SlugField": (str,), "ForeignKey": (int,),
           "BigAutoField": (int,), "AutoField": (int,), "PositiveSmallIntegerField": (int,), "IntegerField": (int,),
           "BigIntegerField": (int,), "BooleanField": (bool,)}
_preps: dict[tuple[Any, str], Callable[[Any], Any]] = {}


def _preps_for(fields: Sequence[Any]) -> list[Callable[[Any], Any]]:
    """Each field's preparation function (see `_prep`), for this connection's database."""
    vendor = connection.vendor
    out = []
    for field in fields:
        fast = _preps.get((field, vendor))
        if fast is None:
            fast = _preps[(field, vendor)] = _prep_for(field, vendor)
        out.append(fast)
    return out


def _prep_for(field: Any, vendor: str) -> Callable[[Any], Any]:
    def slow(value: Any) -> Any:
        return field.get_db_prep_save(value, connection)

    if vendor != "postgresql":
        return slow
    kind = type(field).__name__
    kinds = _SIMPLE.get(kind)
    if kinds is not None:
        return lambda value: value if value is None or type(value) in kinds else slow(value)
    if kind == "DateTimeField":
        return lambda value: value if value is None or (type(value) is datetime and value.tzinfo is not None) \
            else slow(value)
    if kind == "ExactDecimalField":  # its own preparation, without the checks a Decimal does not need
        places = Decimal(1).scaleb(-field.decimal_places)
        exact = field.quantize_context
        return lambda value: value if value is None else (
            value.quantize(places, context=exact) if type(value) is Decimal else slow(value))
    return slow


def _params(objs: Sequence[Model], fields: Sequence[Any], *, add: bool) -> list[Any]:
    """The prepared values of `fields` of each object, in order (auto_now fields stamped as save() would)."""
    preps = _preps_for(fields)
    return [prep(f.pre_save(obj, add)) for obj in objs for prep, f in zip(preps, fields)]


def insert_new(obj: Model, *, unique: Sequence[str]) -> bool:
    """INSERT one object unless a row with the same `unique` fields exists (ON CONFLICT DO NOTHING); True when
    inserted (the object then has its pk). Sent at once, even in a batching scope: the caller acts on the answer."""
    model = type(obj)
    key = (model, tuple(unique), connection.vendor, "insert_new")
    cached = _insert_sql.get(key)
    if cached is None:
        meta = model._meta
        quote = quote_name
        fields = [f for f in meta.concrete_fields if not f.primary_key]
        columns = ", ".join(quote(concrete_field(model, name).column) for name in unique)
        cached = _insert_sql[key] = (
            f"INSERT INTO {quote(meta.db_table)} ({', '.join(quote(f.column) for f in fields)}) VALUES "
            f"({', '.join(['%s'] * len(fields))}) ON CONFLICT ({columns}) DO NOTHING RETURNING "
            f"{quote(meta.pk.column)}", fields)
    sql, fields = cached
    found = fetch_all(sql, _params([obj], fields, add=True))
    if not found:
        return False
    obj.pk = found[0][0]
    _mark_saved([obj])
    return True


def _mark_saved(objs: Sequence[Model]) -> None:
    for obj in objs:
        obj._state.adding = False
        obj._state.db = connection.alias


def _insert_statement(model: type[Model], count: int, *, with_pk: bool, returning: bool) -> tuple[str, list[Any]]:
    key = (model, count, connection.vendor, with_pk, returning)
    cached = _insert_sql.get(key)
    if cached is None:
        meta = model._meta
        quote = quote_name
        fields = [f for f in meta.concrete_fields if with_pk or not f.primary_key]
        one = "(" + ", ".join(["%s"] * len(fields)) + ")"
        tail = f" RETURNING {quote(meta.pk.column)}" if returning else ""
        cached = _insert_sql[key] = (
            f"INSERT INTO {quote(meta.db_table)} ({', '.join(quote(f.column) for f in fields)}) VALUES "
            f"{', '.join([one] * count)}{tail}", fields)
    return cached


def execute(sql: str, params: Sequence[Any]) -> None:
    """Run one write that returns nothing (in a batching scope it waits and travels with the next statement)."""
    write(sql, list(params))


_update_sql: dict[tuple[Any, ...], tuple[str, list[Any]]] = {}
_insert_sql: dict[tuple[Any, ...], tuple[str, list[Any]]] = {}
