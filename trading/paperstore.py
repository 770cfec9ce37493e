"""The paper venue's state in the database (cash, positions, orders), so every worker process sees one simulated
exchange; read once and written once per unit of work."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import connection, transaction

from exchanges.base import Ticker, VenueOrder
from infra import rows
from infra.rows import Rows, fetch_all
from trading.models import PaperOrder, PaperPosition, PriceFeed, VenueAccount
from trading.orderjson import order_from_json, order_to_json
from trading.prices import price_sql

_PAPER_LOCK_SPACE = 7411  # advisory-lock namespace of the paper venue (key 2 = account id)
_PAPER_POSITION_ROWS = Rows(PaperPosition, ["symbol", "quantity", "cost", "volume_candle", "volume_taken"])
_PAPER_ORDER_ROWS = Rows(PaperOrder, ["data"])
_PAPER_CASH = Rows(VenueAccount, ["paper_cash"])
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
                f"ON CONFLICT ({q('account_id')}, {q('symbol')}) DO UPDATE SET "
                f"{q('quantity')} = EXCLUDED.{q('quantity')}, "
                f"{q('cost')} = EXCLUDED.{q('cost')}, {q('volume_candle')} = EXCLUDED.{q('volume_candle')}, "
                f"{q('volume_taken')} = EXCLUDED.{q('volume_taken')}"),
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

    def __init__(self, account_id: int, feed: str = PriceFeed.DEMO) -> None:
        self.account_id = account_id
        self.feed = feed  # the account's price feed (its prices are read ahead with the unit's first statement)
        self._local = threading.local()

    def _unit(self) -> _Unit | None:
        return getattr(self._local, "unit", None)

    def unit_prices(self) -> dict[str, Ticker] | None:
        """The prices read in the current unit of work, by symbol (its price source keeps them), or None outside
        one."""
        unit = self._unit()
        return None if unit is None else unit.prices

    def prefetch(self, *, symbols: Sequence[str] = (), client_order_ids: Sequence[str] = ()) -> None:
        """Read these prices with the next unit of work's first statement (PostgreSQL batching; elsewhere nothing).

        `client_order_ids` are ids the caller has just generated: no order can have them yet, so the next unit of
        work knows them absent without asking (were one reused, the unique constraint on (account, client order
        id) would refuse the second order: never a duplicate).
        """
        if not rows.batching_active():
            return
        self._local.hint = tuple(client_order_ids)
        rows.prefetch([(price_sql(), [self.feed, symbol]) for symbol in symbols])

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
        return None if found is None or found[0] is None else (found[0], found[1])  # not null, as filtered

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
