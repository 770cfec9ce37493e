"""The execution engine: signal -> risk decision -> orders -> venue -> fills -> position -> P&L.

Every function here is a service of the execution path: it takes ids, is idempotent, and keeps the database
row as the truth. An order row with its client order id is committed before any venue call; an ambiguous
venue failure makes the order UNKNOWN, and recovery asks the venue by client id before anything is resent.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import Exists, F, OuterRef, Q, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from exchanges.base import Connector, OrderRequest, OrderType, Side, VenueOrder, VenueOrderStatus
from exchanges.errors import (
    AuthError,
    InvalidOrderError,
    OrderStatusUnknownError,
    TemporaryError,
    VenueError,
)
from trading.logcontext import log_context
from trading import pnl, risk
from trading.domain import (
    AccountView,
    Action,
    Decision,
    ExitMode,
    ExitRule,
    MarketRules,
    PendingOrder,
    PositionView,
    Quote,
    RiskLimits,
    Rule,
    SignalIntent,
    SizingMode,
    SizingRule,
    StrategyRisk,
)
from trading.models import Fill, KillSwitch, Order, Position, Signal, Strategy, VenueAccount
from trading import broker, rows
from trading.audit import _audit_batch, audit
from trading.rows import Rows, fetch_all, fetch_one, lock_clause
from trading.venues import connector_for, connector_for_id, order_send_lease

log = logging.getLogger("trading.engine")

_VENUE_STATUS = {
    VenueOrderStatus.OPEN: Order.Status.OPEN,
    VenueOrderStatus.PARTIALLY_FILLED: Order.Status.PARTIALLY_FILLED,
    VenueOrderStatus.FILLED: Order.Status.FILLED,
    VenueOrderStatus.CANCELED: Order.Status.CANCELED,
    VenueOrderStatus.REJECTED: Order.Status.REJECTED,
}
# Exits fired by the monitor and the kill switch run whatever the strategy's status.
_ALWAYS_ALLOWED = (Signal.Source.MONITOR, Signal.Source.KILL_SWITCH)


def _allowed_when_inactive(signal: Signal) -> bool:
    """Exits a human asks for (a manual close), and the monitor's and kill switch's, run whatever the status."""
    return signal.source in _ALWAYS_ALLOWED or (
        signal.source == Signal.Source.MANUAL and signal.action == Signal.Action.CLOSE)


def _cfg(name: str) -> int:
    return int(settings.TRADING[name])


def new_client_order_id() -> str:
    """A fresh client order id: 32 hex digits (fits every venue's format, e.g. Hyperliquid's 0x cloid)."""
    return uuid.uuid4().hex


def kill_switch_engaged() -> bool:
    """Return whether the global kill switch is engaged."""
    return KillSwitch.objects.filter(pk=1, engaged=True).exists()


# --------------------------------------------------------------------------------------------- risk inputs


def strategy_risk(strategy: Strategy) -> StrategyRisk:
    """The strategy's sizing and exit rules as a pure value (the engine and the backtester share it)."""
    return StrategyRisk(
        sizing=SizingRule(SizingMode(strategy.sizing_mode), strategy.sizing_value),
        stop_loss=ExitRule(ExitMode(strategy.stop_loss_mode), strategy.stop_loss_value),
        take_profit=ExitRule(ExitMode(strategy.take_profit_mode), strategy.take_profit_value),
        leverage=strategy.leverage,
    )


def account_limits(account: VenueAccount) -> RiskLimits:
    """The account's risk limits as a pure value."""
    return RiskLimits(
        max_leverage=account.max_leverage,
        market_leverage_caps={k: Decimal(str(v)) for k, v in (account.market_leverage_caps or {}).items()},
        max_open_positions=account.max_open_positions,
        max_symbol_exposure=account.max_symbol_exposure,
        max_account_exposure=account.max_account_exposure,
        daily_loss_limit=account.daily_loss_limit,
        max_price_age_seconds=_cfg("MAX_PRICE_AGE_SECONDS"),
    )


@dataclass(frozen=True)
class _Book:
    view: AccountView
    positions: dict[tuple[int, str], Position]


def _account_view(account: VenueAccount, connector: Connector, *, now: datetime, marks: dict[str, Decimal]) -> _Book:
    """Read the account's positions, working orders and equity (call with the account row locked).

    The book's `positions` holds every position row of the account, flat ones too, so a fill recorded in the same
    transaction knows whether its row exists without asking again.
    """
    every = _positions_of(account.pk)
    positions = [p for p in every if p.quantity != 0]
    for symbol in {p.symbol for p in positions} - marks.keys():
        marks[symbol] = connector.ticker(symbol).price
    views = tuple(PositionView(p.strategy_id, p.symbol, p.quantity, marks[p.symbol]) for p in positions)
    pending = tuple(
        PendingOrder(
            strategy_id=strategy_id,
            symbol=symbol,
            side=Side(side),
            quantity=quantity - filled,
            price=price or reference or trigger or marks.get(symbol) or Decimal("0"),
            reduce_only=reduce_only,
            protective=position_id is not None,
            exit=position_id is None and purpose != Order.Purpose.ENTRY,
        )
        for strategy_id, symbol, side, quantity, filled, price, reference, trigger, reduce_only, position_id, purpose
        in _working_orders_of(account.pk)
    )
    unrealized = sum(
        (pnl.unrealized(pnl.PositionState(p.quantity, p.cost_basis, Decimal(0), Decimal(0)), marks[p.symbol])
         for p in positions),
        Decimal(0),
    )
    equity = account.cash + unrealized
    today = now.date()
    if account.day_start != today or account.day_start_equity is None:
        account.day_start, account.day_start_equity = today, equity
        VenueAccount.objects.filter(pk=account.pk).update(day_start=today, day_start_equity=equity)
    kill_on: bool | None = getattr(account, "kill_switch_on", None)  # read with the account lock when it was taken
    view = AccountView(
        equity=equity,
        positions=views,
        pending=pending,
        pnl_today=equity - account.day_start_equity,
        kill_switch=kill_switch_engaged() if kill_on is None else kill_on,
    )
    return _Book(view, {(p.strategy_id, p.symbol): p for p in every})


_POSITION_ROWS = Rows(Position)
_PENDING_ROWS = Rows(Order, ["strategy", "symbol", "side", "quantity", "filled_quantity", "price", "reference_price",
                             "trigger_price", "reduce_only", "position", "purpose"])


def _positions_sql(account_id: int) -> tuple[str, list[object]]:
    sql = _sql.get("positions")
    if sql is None:
        q = connection.ops.quote_name
        sql = _sql["positions"] = (f"SELECT {_POSITION_ROWS.columns('p')} FROM {_POSITION_ROWS.table()} p "
                                   f"WHERE p.{q('account_id')} = %s")
    return sql, [account_id]


def _positions_of(account_id: int) -> list[Position]:
    return [_POSITION_ROWS.load(row) for row in fetch_all(*_positions_sql(account_id))]


def _working_sql(account_id: int) -> tuple[str, list[object]]:
    sql = _sql.get("working")
    if sql is None:
        q = connection.ops.quote_name
        # The statuses as literals: the partial index of working orders (order_working_by_account) matches.
        working = ", ".join(f"'{status}'" for status in Order.WORKING)
        sql = _sql["working"] = (f"SELECT {_PENDING_ROWS.columns('o')} FROM {_PENDING_ROWS.table()} o "
                                 f"WHERE o.{q('account_id')} = %s AND o.{q('status')} IN ({working})")
    return sql, [account_id]


def _working_orders_of(account_id: int) -> list[list[object]]:
    return [_PENDING_ROWS.values(row) for row in fetch_all(*_working_sql(account_id))]


AtrProvider = Callable[[Strategy, datetime], "Decimal | None"]
_atr_providers: list[AtrProvider] = []


def atr_provider_register(provider: AtrProvider) -> None:
    """Let market data supply the ATR of a strategy's market (the strategies app registers its candle store)."""
    _atr_providers.append(provider)


def _atr(signal: Signal, now: datetime) -> Decimal | None:
    """The ATR for ATR-multiple exits: sent with the signal, else from a registered provider."""
    strategy = signal.strategy
    if signal.atr is not None or ExitMode.ATR not in (strategy.stop_loss_mode, strategy.take_profit_mode):
        return signal.atr
    for provider in _atr_providers:
        value = provider(strategy, now)
        if value is not None:
            return value
    return None


def _intent(signal: Signal) -> SignalIntent:
    return SignalIntent(
        action=Action(signal.action),
        symbol=signal.symbol,
        quantity=signal.quantity,
        target=signal.target,
        order_type=OrderType(signal.order_type),
        price=signal.price,
        stop_loss=signal.stop_loss,
        take_profit=signal.take_profit,
        leverage=signal.leverage,
    )


# --------------------------------------------------------------------------------------------- signals


def signal_process(*, signal_id: int, now: datetime | None = None) -> Signal:
    """Decide a received signal under the account lock, create its orders, and submit them.

    A strategy's signals are decided in the order they arrived: one that overtook an earlier one still waiting
    (two workers, one task retried, the sweeper) first processes the earlier ones, oldest first. Each is decided
    once (a signal no longer RECEIVED is left as it is), so its own task finds nothing to do.

    Venue, database and time-limit errors are passing: they propagate, and the task or the sweeper tries again.
    Any other exception is a fault of ours that would recur on every try: its transaction is rolled back (no order
    exists), the signal is marked FAILED with the exception's type (details in the log), and nothing is raised, so
    one bad signal never holds up its strategy's later signals or the sweeper.
    """
    with log_context(signal_id=signal_id):
        try:
            return _signal_process(signal_id=signal_id, now=now)
        except _PASSING:
            raise
        except Exception as exc:  # noqa: BLE001 - see the docstring
            log.exception("signal %s failed inside the engine", signal_id)
            return _signal_fail(signal_id, exc, now=now or timezone.now())


# Errors that a later try may not meet again: retried, never a FAILED signal.
_PASSING = (VenueError, DatabaseError, OSError, SoftTimeLimitExceeded, Signal.DoesNotExist)


def _signal_fail(signal_id: int, exc: Exception, *, now: datetime) -> Signal:
    """Mark a still-RECEIVED signal FAILED after an internal error (the type only: messages may quote data)."""
    with transaction.atomic():
        signal = Signal.objects.select_for_update().get(pk=signal_id)
        if signal.status == Signal.Status.RECEIVED:
            signal.attempts += 1
            _signal_reject(signal, rule="internal_error", status=Signal.Status.FAILED, now=now,
                           detail=f"internal error ({type(exc).__name__}); the engine log has the traceback")
    return signal


def _signal_process(*, signal_id: int, now: datetime | None) -> Signal:
    """signal_process without its handling of internal errors."""
    now = now or timezone.now()
    account_id, updated_at, symbol, overtook = _signal_account(signal_id)
    if overtook:
        for earlier_id in _earlier_pending(signal_id):
            with log_context(overtaken_by=signal_id):
                signal_process(signal_id=earlier_id, now=now)
    connector = connector_for_id(account_id, updated_at)
    if connector.capabilities.in_database:
        # Nothing leaves the database: decide, send and record in one transaction (the venue's lock first,
        # as its own writers take it, then the account row). A crash before COMMIT leaves the signal RECEIVED.
        # On PostgreSQL every read of the unit travels in one round trip with the venue's lock, and every
        # write in one before COMMIT: the account stays locked for as short a time as possible.
        client_ids = [new_client_order_id(), new_client_order_id()]  # a decision makes at most two orders
        with _batched_transaction():
            rows.prefetch([_lock_sql(signal_id), _positions_sql(account_id), _working_sql(account_id)])
            rows.reserve_ids(Order, len(client_ids))
            connector.prefetch(symbols=[symbol], client_order_ids=client_ids)
            with connector.unit_of_work(), _audit_batch():
                signal, orders, book = _signal_decide(signal_id=signal_id, account_id=account_id, now=now,
                                                      save=False, client_ids=client_ids)
                for order in orders:
                    _order_send(order, connector=connector, now=timezone.now(),
                                positions=book.positions if book else None, siblings=orders)
                if orders:  # the decision and the stages, written once
                    held = book.positions.get((signal.strategy_id, signal.symbol)) if book else None
                    _signal_conclude(signal, orders, held.quantity if held else Decimal(0))
                    rows.save_fields(signal, [*_DECISION_FIELDS, "acknowledged_at", "filled_at"])
        return _exit_follow(signal, now=now, live=connector.capabilities.live)
    with ExitStack() as leases:
        with transaction.atomic():
            signal, orders, _ = _signal_decide(signal_id=signal_id, account_id=account_id, now=now)
            for order in orders:  # before COMMIT: no recovery sees these orders but with their send lease held
                leases.enter_context(order_send_lease(order.pk))
        for order in orders:  # committed as SUBMITTING, in the decision's transaction
            _order_send(order, connector=connector, now=order.submitted_at or timezone.now())
    if orders:
        signal.refresh_from_db()
    return _exit_follow(signal, now=now, live=connector.capabilities.live)


def _exit_follow(signal: Signal, *, now: datetime, live: bool) -> Signal:
    """After a signal's first step: an exit still working goes on at once (a refusal is retried, an entry
    canceled), and a protected strategy's orders on the venue follow its position."""
    if signal.status == Signal.Status.WORKING:
        signal = exit_drive(signal_id=signal.pk, now=max(now, timezone.now()))  # after what the first step recorded
    if signal.status in (Signal.Status.ACCEPTED, Signal.Status.EXECUTED, Signal.Status.FAILED):
        _protect_after(signal, now=now, live=live)
    return signal


def _protect_after(signal: Signal, *, now: datetime, live: bool) -> None:
    """Sync the protective orders of the position a signal traded, when its strategy keeps them on the venue, and
    those resting for the account's other strategies in that market: the trade moved the account's net, and one
    that would no longer only reduce it is removed (the venue would clip it when it fires)."""
    own = protection_enabled(signal.strategy, live=live)
    if not (own or live):
        return
    wanted = Q(protective_orders__status__in=Order.WORKING)
    if own:
        wanted |= Q(strategy_id=signal.strategy_id)
    for position_id in Position.objects.filter(account_id=signal.account_id, symbol=signal.symbol).filter(
            wanted).order_by("pk").values_list("pk", flat=True).distinct():
        try:
            protection_sync(position_id=position_id, now=now)
        except VenueError as exc:  # the timer (reconcile) places them once the venue answers
            log.warning("protective orders of position %s wait for the venue: %s", position_id, exc)


_DECISION_FIELDS = ("attempts", "status", "decision_rule", "decision_detail", "accepted_at", "submitted_at",
                    "stop_loss", "take_profit")


@contextmanager
def _batched_transaction() -> Iterator[None]:
    """The in-database unit's transaction with batching (PostgreSQL); elsewhere the venue's unit opens its own."""
    if not rows.batchable():
        yield
        return
    outermost = not connection.in_atomic_block  # then its last writes may carry the COMMIT
    with transaction.atomic(), rows.batching(commit=outermost):
        yield


def _signal_decide(*, signal_id: int, account_id: int, now: datetime, save: bool = True,
                   client_ids: Sequence[str] = ()) -> tuple[Signal, list[Order], _Book | None]:
    """Lock the account, decide the signal and create its orders as SUBMITTING (inside the caller's transaction).

    With `save=False` an accepted signal's decision is left for the caller to write (the in-database path writes
    it once, with the stages); a refusal is always written here.
    """
    account, signal = _signal_lock(signal_id)
    if signal.status != Signal.Status.RECEIVED:
        return signal, [], None
    signal.attempts += 1
    if signal.strategy.status != Strategy.Status.ACTIVE and not _allowed_when_inactive(signal):
        return _signal_reject(signal, rule="strategy_inactive",
                              detail=f"strategy {signal.strategy.slug} is {signal.strategy.status}", now=now), [], None
    connector = connector_for(account)
    try:
        market = connector.market(signal.symbol)
        ticker = connector.ticker(signal.symbol)
        marks = {signal.symbol: ticker.price}
        book = _account_view(account, connector, now=now, marks=marks)
    except VenueError as exc:
        if signal.attempts >= _cfg("MAX_SUBMIT_ATTEMPTS") or not exc.retryable:
            if signal.action == Signal.Action.CLOSE:  # an exit is never given up: the exit driver goes on trying
                return _signal_work(signal, now=now, detail=f"close: the venue did not answer ({exc}); "
                                    "the exit is retried until the strategy is flat"), [], None
            return _signal_reject(signal, rule="venue_unavailable", detail=str(exc), now=now), [], None
        signal.save(update_fields=["attempts"])
        raise
    exiting = signal.action == Signal.Action.CLOSE
    mine = [o for o in book.view.pending if o.strategy_id == signal.strategy_id and o.symbol == signal.symbol]
    if not exiting and any(o.exit for o in mine):
        # The strategy's exit is still in flight: deciding now would size against a position about to change (and
        # could sell twice). The signal stays RECEIVED; it is decided once the exit is done (the exit's settlement
        # or the sweeper sends it again).
        signal.attempts -= 1
        signal.decision_detail = "waits for the strategy's exit in flight in this market"
        rows.save_fields(signal, ["decision_detail"])
        return signal, [], None
    if exiting and mine:
        # An entry (or an earlier exit) of this strategy is still working here: the exit driver cancels the entry's
        # remainder, waits for what is in flight, then closes what filled.
        return _signal_work(signal, now=now, detail=f"close: {signal.symbol} has working orders of this strategy; "
                            "the entry's remainder is canceled, then what filled is closed"), [], book
    decision = risk.decide(
        intent=_intent(signal),
        strategy_id=signal.strategy_id,
        account=book.view,
        market=MarketRules(
            symbol=market.symbol,
            lot_size=market.lot_size,
            min_qty=market.min_qty,
            tick_size=market.tick_size,
            min_notional=market.min_notional,
            max_leverage=market.max_leverage,
        ),
        quote=Quote(ticker.price, ticker.time),
        atr=_atr(signal, now),
        risk=strategy_risk(signal.strategy),
        limits=account_limits(account),
        now=now,
    )
    if not decision.accepted:
        status = Signal.Status.IGNORED if decision.rule == Rule.NOTHING_TO_DO else Signal.Status.REJECTED
        return _signal_reject(signal, rule=decision.rule, detail=decision.detail, now=now, status=status), [], None
    # The orders are committed as SUBMITTING with the decision and sent right after the commit: a crash in
    # between leaves them for recovery, which asks the venue by client id before anything is resent.
    orders = _orders_create(signal, decision, reference_price=ticker.price, now=now, client_ids=client_ids)
    for order in orders:
        order.account = account  # the sender needs it: no second read
        order.signal = signal
    signal.status = Signal.Status.WORKING if exiting else Signal.Status.ACCEPTED
    signal.decision_rule, signal.decision_detail = decision.rule, decision.detail
    signal.accepted_at = now  # submitted_at: when the first order goes to the venue (_order_send)
    if decision.stop_loss is not None or decision.take_profit is not None:
        signal.stop_loss, signal.take_profit = decision.stop_loss, decision.take_profit
    if save:
        rows.save_fields(signal, _DECISION_FIELDS)
    audit(actor="engine", action="signal.accepted", entity="signal", entity_id=signal.pk, now=now,
          orders=[o.client_order_id for o in orders], rule=decision.rule)
    return signal, orders, book


_ACCOUNT_ROWS, _SIGNAL_ROWS, _STRATEGY_ROWS = Rows(VenueAccount), Rows(Signal), Rows(Strategy)
_sql: dict[str, str] = {}


_ACCOUNT_STAMP = Rows(VenueAccount, ["id", "updated_at"])


def _signal_account(signal_id: int) -> tuple[int, datetime, str, bool]:
    """The id and version (`updated_at`) of a signal's account, its symbol, and whether an earlier signal of its
    strategy is still waiting: enough to pick the connector before the transaction starts (no lock)."""
    sql = _sql.get("account")
    if sql is None:
        q = connection.ops.quote_name
        sql = _sql["account"] = (
            f"SELECT {_ACCOUNT_STAMP.columns('a')}, s.{q('symbol')}, "
            # ORDER BY ... LIMIT 1, not EXISTS: PostgreSQL then walks the partial index of waiting signals; for
            # EXISTS it expects an early hit and scans the table (2.7 ms against 0.06 ms with 20,000 waiting).
            f"(SELECT e.{q('id')} FROM {q(Signal._meta.db_table)} e WHERE {_earlier('s', 'e')} "
            f"ORDER BY e.{q('strategy_id')}, e.{q('received_at')} LIMIT 1) IS NOT NULL "
            f"FROM {q(VenueAccount._meta.db_table)} a "
            f"JOIN {q(Signal._meta.db_table)} s ON s.{q('account_id')} = a.{q('id')} WHERE s.{q('id')} = %s")
    row = fetch_one(sql, [signal_id])
    if row is None:
        raise Signal.DoesNotExist(f"signal {signal_id} does not exist")
    account_id, updated_at = _ACCOUNT_STAMP.values(row[:2])
    return int(account_id), updated_at, str(row[2]), bool(row[3])


def _earlier(later: str, earlier: str) -> str:
    """The condition that `earlier` is a signal of `later`'s strategy received before it and not decided yet
    (arrival order: received time, then id); it walks the partial index of waiting signals per strategy."""
    q = connection.ops.quote_name
    s, e = later, earlier
    return (f"{e}.{q('status')} = '{Signal.Status.RECEIVED.value}' AND {e}.{q('received_at')} <= {s}.{q('received_at')} "
            f"AND {e}.{q('strategy_id')} = {s}.{q('strategy_id')} AND {e}.{q('id')} <> {s}.{q('id')} "
            f"AND ({e}.{q('received_at')} < {s}.{q('received_at')} OR {e}.{q('id')} < {s}.{q('id')})")


def _earlier_pending(signal_id: int) -> list[int]:
    """Ids of the earlier signals of this signal's strategy still waiting, oldest first."""
    sql = _sql.get("earlier")
    if sql is None:
        q, table = connection.ops.quote_name, connection.ops.quote_name(Signal._meta.db_table)
        sql = _sql["earlier"] = (f"SELECT e.{q('id')} FROM {table} s JOIN {table} e ON {_earlier('s', 'e')} "
                                 f"WHERE s.{q('id')} = %s ORDER BY e.{q('received_at')}, e.{q('id')}")
    return [int(row[0]) for row in fetch_all(sql, [signal_id])]


def _signal_lock(signal_id: int) -> tuple[VenueAccount, Signal]:
    """Lock the signal's account and the signal, and read its strategy and the kill switch: one statement.

    The account row is the parent lock: every risk decision on an account runs one at a time. FOR NO KEY UPDATE:
    concurrent inserts that reference these rows (their foreign-key checks) never wait.
    """
    row = fetch_one(*_lock_sql(signal_id))
    if row is None:
        raise Signal.DoesNotExist(f"signal {signal_id} does not exist")
    na, ns = len(_ACCOUNT_ROWS), len(_SIGNAL_ROWS)
    account = _ACCOUNT_ROWS.load(row[:na])
    account.kill_switch_on = bool(row[-1])  # type: ignore[attr-defined]
    signal = _SIGNAL_ROWS.load(row[na:na + ns])
    signal.strategy = _STRATEGY_ROWS.load(row[na + ns:-1])
    return account, signal


def _lock_sql(signal_id: int) -> tuple[str, list[object]]:
    sql = _sql.get("lock")
    if sql is None:
        q = connection.ops.quote_name
        sql = _sql["lock"] = (
            f"SELECT {_ACCOUNT_ROWS.columns('a')}, {_SIGNAL_ROWS.columns('s')}, {_STRATEGY_ROWS.columns('st')}, "
            f"EXISTS(SELECT 1 FROM {q(KillSwitch._meta.db_table)} k WHERE k.{q('id')} = 1 AND k.{q('engaged')}) "
            f"FROM {q(Signal._meta.db_table)} s "
            f"JOIN {q(VenueAccount._meta.db_table)} a ON a.{q('id')} = s.{q('account_id')} "
            f"JOIN {q(Strategy._meta.db_table)} st ON st.{q('id')} = s.{q('strategy_id')} "
            f"WHERE s.{q('id')} = %s{lock_clause('a, s')}")
    return sql, [signal_id]


def _signal_work(signal: Signal, *, detail: str, now: datetime) -> Signal:
    """Accept an exit with no order yet: the exit driver pursues it (written at once, whatever the path)."""
    signal.status, signal.decision_rule, signal.decision_detail = Signal.Status.WORKING, Rule.OK, detail
    signal.accepted_at = now
    rows.save_fields(signal, _DECISION_FIELDS)
    audit(actor="engine", action="signal.working", entity="signal", entity_id=signal.pk, now=now, detail=detail)
    return signal


def _signal_reject(signal: Signal, *, rule: str, detail: str, now: datetime,
                   status: str = Signal.Status.REJECTED) -> Signal:
    signal.status = status
    signal.decision_rule, signal.decision_detail = rule, detail
    signal.save()
    audit(actor="engine", action=f"signal.{status}", entity="signal", entity_id=signal.pk, now=now, rule=rule,
          detail=detail)
    log.info("signal %s %s by %s: %s", signal.pk, status, rule, detail)
    return signal


def _orders_create(signal: Signal, decision: Decision, *, reference_price: Decimal, now: datetime,
                   client_ids: Sequence[str] = ()) -> list[Order]:
    fresh = iter(client_ids)
    orders = [
        Order(
            client_order_id=next(fresh, None) or new_client_order_id(),
            account_id=signal.account_id,
            strategy_id=signal.strategy_id,
            signal=signal,
            symbol=signal.symbol,
            side=intent.side.value,
            type=intent.order_type.value,
            purpose=_purpose(signal, intent.purpose),
            reduce_only=intent.reduce_only,
            quantity=intent.quantity,
            price=intent.price if intent.order_type is OrderType.LIMIT else None,
            reference_price=reference_price,
            leverage=decision.leverage,
            status=Order.Status.SUBMITTING,
            attempts=1,
            created_at=now,
            submitted_at=now,
            updated_at=now,
        )
        for intent in decision.orders
    ]
    rows.insert(orders)
    if not all(o.pk for o in orders):  # SQLite before 3.35 cannot return ids from a bulk insert
        ids = dict(Order.objects.filter(signal=signal).values_list("client_order_id", "pk"))
        for o in orders:
            o.pk = ids[o.client_order_id]
    return orders


def _purpose(signal: Signal, purpose: str) -> str:
    if purpose == "exit" and signal.source == Signal.Source.KILL_SWITCH:
        return Order.Purpose.KILL_SWITCH
    if purpose == "exit" and signal.source == Signal.Source.MONITOR:
        key = signal.idempotency_key
        return Order.Purpose.STOP_LOSS if key.startswith("sl:") else Order.Purpose.TAKE_PROFIT
    return Order.Purpose.ENTRY if purpose == "entry" else Order.Purpose.EXIT


# --------------------------------------------------------------------------------------------- orders


def _request(order: Order) -> OrderRequest:
    return OrderRequest(
        client_order_id=order.client_order_id,
        symbol=order.symbol,
        side=Side(order.side),
        type=OrderType(order.type),
        quantity=order.quantity,
        price=order.price if order.type == Order.Type.LIMIT else order.reference_price,
        trigger_price=order.trigger_price,
        reduce_only=order.reduce_only,
        post_only=order.post_only,
        leverage=order.leverage,
    )


def order_submit(*, order_id: int, now: datetime | None = None) -> Order:
    """Send a NEW order to its venue exactly once; an ambiguous failure leaves it UNKNOWN for recovery."""
    now = now or timezone.now()
    with order_send_lease(order_id) as mine:
        if not mine:  # another thread is sending it right now
            return Order.objects.get(pk=order_id)
        with log_context(order_id=order_id), transaction.atomic():
            order = Order.objects.select_for_update().get(pk=order_id)
            if order.status != Order.Status.NEW:
                return order
            if order.purpose == Order.Purpose.ENTRY and kill_switch_engaged():
                return _order_finish(order, Order.Status.CANCELED, "kill switch engaged before sending", now)
            _order_mark_submitting(order, now)
        return _order_send(order, now=now)


def _order_mark_submitting(order: Order, now: datetime) -> None:
    order.status = Order.Status.SUBMITTING
    order.attempts += 1
    order.submitted_at = order.submitted_at or now
    order.updated_at = now
    order.save(update_fields=["status", "attempts", "submitted_at", "updated_at"])
    if order.signal_id:
        Signal.objects.filter(pk=order.signal_id, submitted_at__isnull=True).update(submitted_at=now)


def _order_send(order: Order, *, now: datetime, connector: Connector | None = None,
                positions: dict[tuple[int, str], Position] | None = None,
                siblings: Sequence[Order] = ()) -> Order:
    """Call the venue for an order already committed as SUBMITTING, and record what it said.

    Inside an `in_database` venue's unit of work (`positions` given: the book read under the account lock), the
    reply is recorded in the same transaction; otherwise each step takes its own.
    """
    connector = connector or connector_for(order.account)
    joined = positions is not None
    with log_context(order_id=order.pk, client_order_id=order.client_order_id):
        sent = timezone.now()
        signal = order._state.fields_cache.get("signal")
        if joined and signal is not None:  # written once with the stages by the in-database path
            signal.submitted_at = signal.submitted_at or sent
        elif order.signal_id:
            Signal.objects.filter(pk=order.signal_id, submitted_at__isnull=True).update(submitted_at=sent)
        try:
            venue_order = connector.create_order(_request(order))
        except (InvalidOrderError, AuthError) as exc:
            # A refusal before the order exists on the venue (its checks, or our credentials): nothing to ask about
            # later, nothing to resend.
            what = "venue refused the credentials" if isinstance(exc, AuthError) else "venue refused"
            with transaction.atomic():
                locked = order if joined else Order.objects.select_for_update().get(pk=order.pk)
                if locked.status != Order.Status.SUBMITTING:
                    return locked  # already decided by what the venue told a recovery: that stands
                return _order_finish(locked, Order.Status.REJECTED, f"{what}: {exc}", timezone.now())
        except VenueError as exc:
            # Timeouts, 5xx, dropped connections: the venue may or may not have the order. Never "failed".
            log.warning("order %s outcome unknown after %s: %s", order.pk, type(exc).__name__, exc)
            Order.objects.filter(pk=order.pk, status=Order.Status.SUBMITTING).update(
                status=Order.Status.UNKNOWN, reason=f"{type(exc).__name__}: {exc}", updated_at=timezone.now()
            )
            order.refresh_from_db()
            return order
        if joined:
            others_final = all(o.is_final for o in siblings if o is not order)
            return _venue_state_record(order.account, order, venue_order, recorded=[], now=timezone.now(),
                                       positions=positions, others_final=others_final)
        return order_apply_venue_state(order_id=order.pk, venue_order=venue_order, account_id=order.account_id)


def _order_finish(order: Order, status: str, reason: str, now: datetime) -> Order:
    order.status, order.reason, order.updated_at = status, reason, now
    order.save(update_fields=["status", "reason", "updated_at"])
    audit(actor="engine", action=f"order.{status}", entity="order", entity_id=order.pk, now=now, reason=reason)
    if order.signal_id:
        _signal_settle(order.signal_id, now)
    log.info("order %s %s: %s", order.pk, status, reason)
    return order


def order_apply_venue_state(*, order_id: int, venue_order: VenueOrder, now: datetime | None = None,
                            account_id: int | None = None) -> Order:
    """Record what the venue says of an order: new fills (once each), position, P&L and status."""
    now = now or timezone.now()
    if account_id is None:
        account_id = Order.objects.values_list("account_id", flat=True).get(pk=order_id)
    with transaction.atomic():
        _commit_without_fsync_wait()
        # The account row first, as everywhere: every write to an account's book runs one at a time.
        account = VenueAccount.objects.select_for_update(no_key=True).only("cash").get(pk=account_id)
        order = Order.objects.select_for_update(no_key=True, of=("self",)).select_related("signal").get(pk=order_id)
        recorded = list(order.fills.values_list("venue_fill_id", "quantity", "price"))
        return _venue_state_record(account, order, venue_order, recorded=recorded, now=now)


def _venue_state_record(account: VenueAccount, order: Order, venue_order: VenueOrder, *, recorded: list,
                        now: datetime, positions: dict[tuple[int, str], Position] | None = None,
                        others_final: bool | None = None) -> Order:
    """Record new fills, status and stages of a locked order (fills already `recorded` are skipped)."""
    known = {row[0] for row in recorded}
    fresh = [f for f in venue_order.fills if f.fill_id not in known]
    was_final = order.is_final
    status = _VENUE_STATUS[venue_order.status]
    if order.is_final and order.venue_order_id and status not in Order.FINAL:
        # An older reply (sent before the one that finished the order) never reopens it. An order we finished
        # without ever hearing from the venue (venue_order_id empty) takes the venue's word: it is the truth.
        status = order.status
    if not fresh and order.status == status and order.venue_order_id == venue_order.venue_order_id:
        return order
    if fresh:
        _fills_record(account, order, fresh, recorded, now, positions)
    previous = order.status
    order.venue_order_id = venue_order.venue_order_id
    order.status = status
    if venue_order.reason and status in (Order.Status.REJECTED, Order.Status.CANCELED):
        order.reason = venue_order.reason
    elif status == Order.Status.FILLED and order.filled_quantity < order.quantity:
        order.reason = (f"the venue filled {_plain(order.filled_quantity)} of {_plain(order.quantity)} and closed "
                        f"it{': ' + venue_order.reason if venue_order.reason else ''}")
    order.acknowledged_at = order.acknowledged_at or now
    order.updated_at = now
    rows.save_fields(order, ["venue_order_id", "status", "reason", "acknowledged_at", "updated_at",
                              "filled_quantity", "fees", "average_fill_price"])
    if order.signal_id:
        _signal_stages(order, filled=bool(fresh), now=now, others_final=others_final)
    if fresh and was_final and order.purpose == Order.Purpose.ENTRY:
        _late_entry_close(order, now=now)
    if previous != status:
        audit(actor="engine", action=f"order.{status}", entity="order", entity_id=order.pk, now=now,
              venue_order_id=venue_order.venue_order_id, filled=order.filled_quantity)
    return order


def _late_entry_close(order: Order, *, now: datetime) -> None:
    """An entry finished here (the venue had not acknowledged it) turned out to have filled. If its strategy was
    closed since, its last target in the market is flat: a new close goes after what the entry bought (stored in
    the fill's transaction; the worker, or else the sweeper, takes it)."""
    last = Signal.objects.filter(strategy_id=order.strategy_id, symbol=order.symbol).exclude(
        pk=order.signal_id).order_by("-received_at", "-pk").only("action", "received_at").first()
    if last is None or last.action != Signal.Action.CLOSE or last.received_at < order.created_at:
        return
    strategy = Strategy.objects.get(pk=order.strategy_id)
    signal, created = signal_create(strategy=strategy, source=Signal.Source.MONITOR,
                                    idempotency_key=f"late:{order.pk}:{_plain(order.filled_quantity)}",
                                    action=Signal.Action.CLOSE, symbol=order.symbol, now=now,
                                    payload={"trigger": "late_fill", "order": order.client_order_id})
    if created:
        log.warning("entry %s filled after its strategy was closed: close signal %s goes after it",
                    order.client_order_id, signal.pk)


def _commit_without_fsync_wait() -> None:
    """Let this transaction's commit skip the WAL flush wait (PostgreSQL).

    Only for writes that recovery can redo: if a crash of the database loses a recorded fill, the order is
    still SUBMITTING or OPEN in the durable state, and the sweeper or the reconciler asks the venue again.
    The decision and its orders are never written this way: they must be durable before any venue call.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit TO OFF")


def _signal_stages(order: Order, *, filled: bool, now: datetime, others_final: bool | None = None) -> None:
    """Stamp the signal's acknowledged and filled stages, and settle it once all its orders are final."""
    signal = order._state.fields_cache.get("signal")
    if signal is not None and others_final is not None:
        # The in-database path: its caller holds the signal read under the account lock and writes it once.
        signal.acknowledged_at = signal.acknowledged_at or now
        if filled:
            signal.filled_at = now
        return  # settled by the caller once every order was sent (_signal_conclude)
    changes: dict[str, object] = {"acknowledged_at": Coalesce("acknowledged_at", Value(now))}
    if filled:
        changes["filled_at"] = Value(now)
    Signal.objects.filter(pk=order.signal_id).update(**changes)
    settled = _signal_settle(order.signal_id, now) if order.is_final else None
    if signal is not None:  # the caller's copy (read under the account lock) says what the row now says
        signal.acknowledged_at = signal.acknowledged_at or now
        if filled:
            signal.filled_at = now
        if settled is not None:
            signal.status, signal.decision_detail = settled


def _fills_record(account: VenueAccount, order: Order, fills: Sequence, recorded: list, now: datetime,
                  positions: dict[tuple[int, str], Position] | None = None) -> None:
    # Every writer of this account's positions holds the account lock, so a plain read is enough here; the
    # in-database path passes the open positions it read under that lock (a flat one is absent from them).
    key = (order.strategy_id, order.symbol)
    if positions is not None:  # every row of the account, read under this transaction's account lock
        position = positions.get(key)
    else:
        position = Position.objects.filter(account=account, strategy_id=order.strategy_id,
                                           symbol=order.symbol).first()
    if position is None:
        position = Position(account=account, strategy_id=order.strategy_id, symbol=order.symbol, updated_at=now)
    if positions is not None:
        positions[key] = position
    state = pnl.PositionState(position.quantity, position.cost_basis, position.realized_pnl, position.fees_paid)
    was_flat = position.quantity == 0
    side = Side(order.side)
    cash_delta = Decimal(0)
    fills_made = []
    for f in fills:
        state, realized = pnl.apply_fill(state, side=side, quantity=f.quantity, price=f.price, fee=f.fee)
        cash_delta += realized - f.fee
        fills_made.append(Fill(order=order, account=account, strategy_id=order.strategy_id, symbol=order.symbol,
                               side=order.side, venue_fill_id=f.fill_id, quantity=f.quantity, price=f.price,
                               fee=f.fee, fee_currency=f.fee_currency, realized_pnl=realized, time=f.time,
                               recorded_at=now))
    rows.insert(fills_made, returning=False)
    order.filled_quantity += sum((f.quantity for f in fills), Decimal(0))
    order.fees += sum((f.fee for f in fills), Decimal(0))
    notional = sum((q * p for _, q, p in recorded), Decimal(0)) + sum((f.quantity * f.price for f in fills),
                                                                      Decimal(0))
    order.average_fill_price = notional / order.filled_quantity if order.filled_quantity else None

    flipped = not was_flat and state.quantity != 0 and (position.quantity > 0) != (state.quantity > 0)
    position.quantity, position.cost_basis = state.quantity, state.cost
    position.realized_pnl, position.fees_paid = state.realized, state.fees
    position.average_entry = state.avg_entry
    signal = order.signal if order.purpose == Order.Purpose.ENTRY else None
    if state.quantity == 0 or was_flat or flipped:
        position.trail_peak = None
    if state.quantity == 0:
        position.stop_loss = position.take_profit = position.opened_at = None
    elif was_flat or flipped:
        position.opened_at = now
        position.stop_loss = signal.stop_loss if signal else None
        position.take_profit = signal.take_profit if signal else None
    elif signal is not None:
        # Adding to a position: the newest entry's exits apply to the whole position.
        position.stop_loss = signal.stop_loss or position.stop_loss
        position.take_profit = signal.take_profit or position.take_profit
    position.updated_at = now
    if position.pk is None:
        rows.insert([position])
    else:
        rows.save_fields(position, ["quantity", "cost_basis", "realized_pnl", "fees_paid", "average_entry",
                                     "stop_loss", "take_profit", "trail_peak", "opened_at", "updated_at"])
    account.cash += cash_delta
    rows.save_fields(account, ["cash"])


def _signal_settle(signal_id: int, now: datetime) -> tuple[str, str] | None:
    """Settle an accepted or working signal once every one of its orders is final; return (status, detail) when it
    changed. An entry is EXECUTED when every order filled in full, else FAILED with what fell short; an exit is
    EXECUTED once the strategy is flat in the market, else it stays WORKING for the exit driver."""
    signal = Signal.objects.filter(pk=signal_id, status__in=(Signal.Status.ACCEPTED, Signal.Status.WORKING)).only(
        "status", "decision_detail", "account_id", "strategy_id", "symbol").first()
    if signal is None:
        return None
    orders = list(Order.objects.filter(signal_id=signal_id))
    held = Position.objects.filter(account_id=signal.account_id, strategy_id=signal.strategy_id,
                                   symbol=signal.symbol).values_list("quantity", flat=True).first()
    before = signal.status
    if not _signal_conclude(signal, orders, held or Decimal(0)):
        return None
    if Signal.objects.filter(pk=signal_id, status=before).update(status=signal.status,
                                                                 decision_detail=signal.decision_detail):
        audit(actor="engine", action=f"signal.{signal.status}", entity="signal", entity_id=signal_id, now=now,
              detail=signal.decision_detail)
        if before == Signal.Status.WORKING:  # the exit is done: the strategy's signals that waited for it go on
            for waiting in Signal.objects.filter(strategy_id=signal.strategy_id, symbol=signal.symbol,
                                                 status=Signal.Status.RECEIVED).order_by(
                                                     "received_at", "pk").values_list("pk", flat=True)[:20]:
                transaction.on_commit(lambda waiting=waiting: signal_enqueue(signal_id=waiting))
    return signal.status, signal.decision_detail


def _signal_conclude(signal: Signal, orders: Sequence[Order], held: Decimal) -> bool:
    """Settle a signal in memory once all its orders are final (`held`: the strategy's position in the market
    now); return whether its status changed. The caller writes it."""
    if not all(o.is_final for o in orders):
        return False
    if signal.status == Signal.Status.WORKING:
        if held != 0:
            return False  # the exit goes on (an exit that never needed an order is done once flat)
        signal.status = Signal.Status.EXECUTED
        return True
    if signal.status != Signal.Status.ACCEPTED or not orders:
        return False
    short = [o for o in orders if o.filled_quantity < o.quantity]
    if not short:
        signal.status = Signal.Status.EXECUTED
        return True
    signal.status = Signal.Status.FAILED
    signal.decision_detail = f"{signal.decision_detail} | failed: {'; '.join(order_shortfall(o) for o in short)}"
    return True


def order_shortfall(order: Order) -> str:
    """Say in words why a final order filled less than it asked for."""
    said = f"{order.purpose} {order.side} {_plain(order.quantity)}"
    filled = f"filled {_plain(order.filled_quantity)} of {_plain(order.quantity)}"
    if order.status == Order.Status.FILLED:
        return f"{said}: {filled} (the venue clipped it)"
    done = f"{filled}, then {order.status}" if order.filled_quantity else order.status
    return f"{said}: {done}" + (f": {order.reason}" if order.reason else "")


def _plain(value: Decimal) -> str:
    normal = value.normalize()
    return format(normal if normal != 0 else Decimal(0), "f")


# In the reason of an order we finished without the venue ever acknowledging it (it may still arrive there):
# reconciliation keeps asking the venue about such orders for UNACKNOWLEDGED_WATCH_HOURS and records what it finds.
UNACKNOWLEDGED = "the venue had not acknowledged it"
UNACKNOWLEDGED_WATCH_HOURS = 24


def order_recover(*, order_id: int, now: datetime | None = None) -> Order:
    """Find out what happened to an order stuck in NEW, SUBMITTING or UNKNOWN: ask the venue first, resend last.

    Never while its send is in flight (another thread or process holds its send lease): that one records the
    answer, however long the venue takes."""
    now = now or timezone.now()
    order = Order.objects.select_related("account").get(pk=order_id)
    if order.is_final:
        return order
    if order.status == Order.Status.NEW:
        return order_submit(order_id=order_id, now=now)
    with order_send_lease(order_id) as mine:
        if not mine:
            log.info("order %s is being sent right now: left to its sender", order_id)
            return order
        order = Order.objects.select_related("account").get(pk=order_id)  # as its sender left it
        if order.is_final:
            return order
        return _order_recover(order, now)


def _order_recover(order: Order, now: datetime) -> Order:
    """order_recover, with the order's send lease held."""
    connector = connector_for(order.account)
    with log_context(order_id=order.pk, client_order_id=order.client_order_id):
        try:
            found = connector.fetch_order_by_client_id(order.symbol, order.client_order_id)
        except VenueError as exc:
            log.warning("order %s lookup failed, will retry: %s", order.pk, exc)
            return order
        if found is not None:
            return order_apply_venue_state(order_id=order.pk, venue_order=found, now=now)
        if order.status not in (Order.Status.SUBMITTING, Order.Status.UNKNOWN):
            return order
        # The venue has never seen this client id. Resend it (same id: a venue that did get it dedupes) once
        # the venue had time to show it, and give up cleanly after the attempt cap.
        since = order.updated_at if order.status == Order.Status.UNKNOWN else (order.submitted_at or order.updated_at)
        if now - since < timedelta(seconds=_cfg("RESEND_AFTER_SECONDS")):
            return order
        with transaction.atomic():
            locked = Order.objects.select_for_update().get(pk=order.pk)
            if locked.status not in (Order.Status.SUBMITTING, Order.Status.UNKNOWN) or locked.updated_at != order.updated_at:
                return locked  # someone else moved it since our lookup: theirs to finish
            if locked.attempts >= _cfg("MAX_SUBMIT_ATTEMPTS"):
                return _order_finish(locked, Order.Status.REJECTED, f"venue never showed the order after "
                                     f"{locked.attempts} attempts; {UNACKNOWLEDGED}", now)
            if locked.purpose == Order.Purpose.ENTRY and kill_switch_engaged():
                return _order_finish(locked, Order.Status.CANCELED,
                                     f"kill switch engaged before resending; {UNACKNOWLEDGED}", now)
            _order_mark_submitting(locked, now)
        log.info("order %s unknown to the venue: resending with the same client id", order.pk)
        return _order_send(locked, now=now)


def order_sync(*, order_id: int, now: datetime | None = None) -> Order:
    """Refresh a working order from the venue (fills that arrived since, cancels by the venue)."""
    order = Order.objects.select_related("account").get(pk=order_id)
    if order.is_final or not order.venue_order_id:
        return order_recover(order_id=order_id, now=now)
    try:
        found = connector_for(order.account).fetch_order(order.symbol, order.venue_order_id)
    except VenueError as exc:
        log.warning("order %s sync failed: %s", order.pk, exc)
        return order
    return order_apply_venue_state(order_id=order.pk, venue_order=found, now=now)


def order_cancel(*, order_id: int, by: str, now: datetime | None = None) -> Order:
    """Cancel a working order on its venue (cancels are always allowed, even under the kill switch)."""
    now = now or timezone.now()
    order = Order.objects.select_related("account").get(pk=order_id)
    if order.is_final:
        return order
    if order.status == Order.Status.NEW:
        with transaction.atomic():
            locked = Order.objects.select_for_update().get(pk=order_id)
            if locked.status == Order.Status.NEW:
                return _order_finish(locked, Order.Status.CANCELED, f"canceled by {by} before sending", now)
        order.refresh_from_db()
    if not order.venue_order_id:
        order = _order_cancel_unacknowledged(order, by=by, now=now)
        if order.is_final or not order.venue_order_id:
            return order
    try:
        venue_order = connector_for(order.account).cancel_order(order.symbol, order.venue_order_id)
    except VenueError as exc:
        log.warning("cancel of order %s failed: %s", order.pk, exc)
        return order
    with transaction.atomic():
        audit(actor=by, action="order.cancel_requested", entity="order", entity_id=order.pk, now=now)
    return order_apply_venue_state(order_id=order.pk, venue_order=venue_order, now=now)


def _order_cancel_unacknowledged(order: Order, *, by: str, now: datetime) -> Order:
    """A cancel of an order the venue has not acknowledged: ask the venue by client id, and never send it. Found:
    the venue's state is recorded (the caller then cancels it there). Not found: it is finished here as canceled,
    and reconciliation keeps looking for it (a lost reply may still bring it). While its send is in flight, or if
    the venue cannot be asked, nothing changes (cancel again later)."""
    with order_send_lease(order.pk) as mine:
        if not mine:
            log.info("cancel of order %s waits: its send is in flight", order.pk)
            return order
        try:
            found = connector_for(order.account).fetch_order_by_client_id(order.symbol, order.client_order_id)
        except VenueError as exc:
            log.warning("cancel of order %s: the venue could not be asked about it: %s", order.pk, exc)
            return order
        if found is not None:
            return order_apply_venue_state(order_id=order.pk, venue_order=found, now=now)
        with transaction.atomic():
            locked = Order.objects.select_for_update().get(pk=order.pk)
            if locked.is_final or locked.venue_order_id:
                return locked
            return _order_finish(locked, Order.Status.CANCELED, f"canceled by {by}; {UNACKNOWLEDGED}", now)


# --------------------------------------------------------------------------------------------- sweeping


def orders_sweep(*, now: datetime | None = None) -> dict[str, int]:
    """Re-drive signals and orders stuck in an intermediate state (the outbox relay and the crash recovery)."""
    now = now or timezone.now()
    stuck_before = now - timedelta(seconds=_cfg("STUCK_AFTER_SECONDS"))
    counts = {"signals": 0, "orders": 0}
    for signal_id in Signal.objects.filter(status=Signal.Status.RECEIVED, received_at__lt=stuck_before).values_list(
        "pk", flat=True
    )[:500]:
        counts["signals"] += 1
        try:
            signal_process(signal_id=signal_id)
        except VenueError as exc:
            log.warning("signal %s still waiting for its venue: %s", signal_id, exc)
    stuck = Order.objects.filter(
        Q(status=Order.Status.UNKNOWN)
        | Q(status__in=(Order.Status.NEW, Order.Status.SUBMITTING), updated_at__lt=stuck_before)
    ).values_list("pk", flat=True)[:500]
    for order_id in stuck:
        counts["orders"] += 1
        try:
            order_recover(order_id=order_id, now=timezone.now())
        except VenueError as exc:
            log.warning("order %s still waiting for its venue: %s", order_id, exc)
        except Exception:  # noqa: BLE001 - one order's fault must not stop the recovery of the others
            log.exception("recovery of order %s failed; the next sweep tries again", order_id)
    return counts


def startup_recover(*, stuck_after_seconds: int = 0) -> dict[str, int]:
    """At worker start: recover every non-final order and every unprocessed signal, whatever its age."""
    counts = {"signals": 0, "orders": 0}
    for signal_id in Signal.objects.filter(status=Signal.Status.RECEIVED).values_list("pk", flat=True):
        counts["signals"] += 1
        try:
            signal_process(signal_id=signal_id)
        except VenueError as exc:
            log.warning("signal %s still waiting for its venue: %s", signal_id, exc)
    for order_id in Order.objects.filter(status__in=(Order.Status.NEW, Order.Status.SUBMITTING, Order.Status.UNKNOWN)
                                         ).values_list("pk", flat=True):
        counts["orders"] += 1
        try:
            order_recover(order_id=order_id)
        except VenueError as exc:
            log.warning("order %s still waiting for its venue: %s", order_id, exc)
        except Exception:  # noqa: BLE001 - one order's fault (an account without credentials) must not stop the rest
            log.exception("start-up recovery of order %s failed; the sweeper tries again", order_id)
    counts["exits"] = exits_drive()["working"]  # exits a dead worker left half done go on
    return counts


# --------------------------------------------------------------------------------------------- exits


def exit_drive(*, signal_id: int, now: datetime | None = None) -> Signal:
    """Take one step of a WORKING exit toward the strategy being flat in its market; return the signal.

    A step never waits on the venue for long and never sends twice: the strategy's working entries in the market
    are canceled; its exits in flight are asked about (and canceled once older than EXIT_ORDER_TIMEOUT_SECONDS);
    only when nothing of the strategy is working there does a new exit order go out, under the account lock: a new
    client id, the strategy's remaining position (never more), after a backoff that grows with each failed attempt,
    reduce-only only where it reduces the venue's net, and never a plain order while the venue's net differs from
    the book's (it could open a position the other way). A newer accepted signal of the strategy in that market
    replaces the exit; a flat position executes it.
    """
    now = now or timezone.now()
    with log_context(signal_id=signal_id):
        signal = Signal.objects.select_related("strategy", "account").get(pk=signal_id)
        if signal.status != Signal.Status.WORKING:
            return signal
        if _signal_replaced(signal, now=now):
            return Signal.objects.get(pk=signal_id)
        if _exit_wait_for_working(signal, now=now):
            return signal
        held = _held(signal)
        if held == 0:
            if _exit_unacknowledged_recently(signal, now=now):
                return signal
            _signal_settle(signal.pk, now)
            return Signal.objects.get(pk=signal_id)
        failed = [o for o in signal.orders.order_by("pk") if o.is_final and o.filled_quantity < o.quantity]
        if failed and now < failed[-1].updated_at + _exit_backoff(len(failed)):
            return signal
        return _exit_attempt(signal, attempt=len(failed) + 1, now=now)


def _exit_backoff(failures: int) -> timedelta:
    """The wait between a failed exit attempt and the next: none after the first, then 1, 2, 4 ... s, capped."""
    seconds = 0 if failures <= 1 else min(2 ** (failures - 2), int(_cfg("EXIT_RETRY_MAX_SECONDS")))
    return timedelta(seconds=seconds)


def _held(signal: Signal) -> Decimal:
    return Position.objects.filter(account_id=signal.account_id, strategy_id=signal.strategy_id,
                                   symbol=signal.symbol).values_list("quantity", flat=True).first() or Decimal(0)


def _signal_replaced(signal: Signal, *, now: datetime) -> bool:
    """Mark an exit REPLACED when a newer accepted signal of its strategy in the same market took over."""
    newer = Signal.objects.filter(
        strategy_id=signal.strategy_id, symbol=signal.symbol,
        status__in=(Signal.Status.ACCEPTED, Signal.Status.WORKING, Signal.Status.EXECUTED),
    ).filter(Q(received_at__gt=signal.received_at) | Q(received_at=signal.received_at, pk__gt=signal.pk)).exclude(
        decision_rule="internal_error").order_by("received_at", "pk").first()
    if newer is None:
        return False
    detail = f"{signal.decision_detail} | replaced by signal {newer.pk} ({newer.action})"
    if Signal.objects.filter(pk=signal.pk, status=Signal.Status.WORKING).update(status=Signal.Status.REPLACED,
                                                                              decision_detail=detail):
        audit(actor="engine", action="signal.replaced", entity="signal", entity_id=signal.pk, now=now, by=newer.pk)
    return True


def _exit_unacknowledged_recently(signal: Signal, *, now: datetime) -> bool:
    """Whether an order of the strategy in the exit's market was finished here without the venue ever having
    acknowledged it, less than EXIT_ORDER_TIMEOUT_SECONDS ago: a venue's order lookup can lag its acceptance, so
    the venue is asked again each step, and the exit is done only once that window has passed with nothing found
    (an entry that shows up after all is recorded, and the exit closes what it bought)."""
    window = now - timedelta(seconds=_cfg("EXIT_ORDER_TIMEOUT_SECONDS"))
    recent = list(Order.objects.filter(
        account_id=signal.account_id, strategy_id=signal.strategy_id, symbol=signal.symbol,
        status=Order.Status.CANCELED, venue_order_id="", updated_at__gte=window, reason__contains=UNACKNOWLEDGED))
    for order in recent:
        try:
            found = connector_for(signal.account).fetch_order_by_client_id(order.symbol, order.client_order_id)
        except VenueError as exc:
            log.warning("exit of signal %s: order %s could not be asked about: %s", signal.pk, order.pk, exc)
            continue
        if found is not None:
            order_apply_venue_state(order_id=order.pk, venue_order=found, now=now)
    return bool(recent)


def _exit_wait_for_working(signal: Signal, *, now: datetime) -> bool:
    """Move the strategy's working orders in the exit's market along; return whether any is still working."""
    waiting = False
    timeout = timedelta(seconds=_cfg("EXIT_ORDER_TIMEOUT_SECONDS"))
    for order in Order.objects.filter(account_id=signal.account_id, strategy_id=signal.strategy_id,
                                      symbol=signal.symbol, status__in=Order.WORKING).order_by("pk"):
        try:
            if order.purpose == Order.Purpose.ENTRY or order.signal_id != signal.pk:
                # An entry's remainder (or an exit of a signal this one replaced) gives way to this exit.
                order = order_cancel(order_id=order.pk, by=f"exit (signal {signal.pk})", now=now)
            elif order.status in (Order.Status.NEW, Order.Status.SUBMITTING, Order.Status.UNKNOWN):
                order = order_recover(order_id=order.pk, now=now)
            else:
                order = order_sync(order_id=order.pk, now=now)
                if not order.is_final and now - (order.submitted_at or order.created_at) > timeout:
                    order = order_cancel(order_id=order.pk, by=f"exit (signal {signal.pk}): working too long",
                                         now=now)
        except VenueError as exc:
            log.warning("exit of signal %s: order %s could not be moved along: %s", signal.pk, order.pk, exc)
        waiting = waiting or not order.is_final
    return waiting


def _exit_attempt(signal: Signal, *, attempt: int, now: datetime) -> Signal:
    """Send the next exit order of a WORKING signal for the strategy's whole remaining position."""
    account = signal.account
    connector = connector_for(account)
    try:
        venue_net = _venue_net(connector, signal.symbol)
        ticker = connector.ticker(signal.symbol)
        market = connector.market(signal.symbol)
    except VenueError as exc:
        log.warning("exit of signal %s waits for its venue: %s", signal.pk, exc)
        return signal
    with ExitStack() as leases:
        with transaction.atomic():
            VenueAccount.objects.select_for_update(no_key=True).filter(pk=account.pk).first()  # the account lock
            locked = Signal.objects.select_for_update().get(pk=signal.pk)
            if locked.status != Signal.Status.WORKING or Order.objects.filter(
                    account_id=account.pk, strategy_id=signal.strategy_id, symbol=signal.symbol,
                    status__in=Order.WORKING).exists():
                return locked  # another step got here first
            held = _held(signal)
            if held == 0:
                _signal_settle(signal.pk, now)
                return Signal.objects.get(pk=signal.pk)
            side = Side.SELL if held > 0 else Side.BUY
            quantity = market.round_qty(abs(held))
            if quantity <= 0 or quantity < market.min_qty:
                # No order can close it: retrying would be refused for ever. Said plainly, for a human to act on.
                detail = (f"{locked.decision_detail.split(' | closing: ')[0]} | dust: {_plain(abs(held))} "
                          f"{signal.symbol} is left, below the venue's smallest order ({_plain(market.min_qty)}, lot "
                          f"{_plain(market.lot_size)}): close it on the venue by hand")
                Signal.objects.filter(pk=signal.pk).update(status=Signal.Status.FAILED, decision_rule=Rule.DUST,
                                                           decision_detail=detail)
                audit(actor="engine", action="signal.failed", entity="signal", entity_id=signal.pk, now=now,
                      rule=Rule.DUST, detail=detail)
                log.error("exit of signal %s: %s", signal.pk, detail)
                return Signal.objects.get(pk=signal.pk)
            book = Position.objects.filter(account_id=account.pk, symbol=signal.symbol).values_list(
                "quantity", flat=True)
            book_net = sum(book, Decimal(0))
            net = book_net if venue_net is None else venue_net
            claimed = sum((o.quantity - o.filled_quantity for o in Order.objects.filter(
                account_id=account.pk, symbol=signal.symbol, status__in=Order.WORKING, reduce_only=True, side=side)),
                Decimal(0))
            reduce_only = quantity <= -net * side.sign - claimed
            if not reduce_only and venue_net is not None and venue_net != book_net:
                # A plain order against a book that disagrees with the venue could open a position the other way.
                note = (f"closing: attempt {attempt} waits: the venue's net {_plain(venue_net)} {signal.symbol} "
                        f"differs from the book's {_plain(book_net)} (reconciliation finds out)")
                Signal.objects.filter(pk=signal.pk).update(decision_detail=_with_note(locked.decision_detail, note))
                log.warning("exit of signal %s: %s", signal.pk, note)
                return Signal.objects.get(pk=signal.pk)
            widen = Decimal(_cfg("EXIT_WIDEN_BPS")) * min(attempt - 1, 5) / Decimal(10000)
            reference = ticker.price * (1 + widen * side.sign)
            order = Order(client_order_id=new_client_order_id(), account=account, strategy_id=signal.strategy_id,
                          signal=signal, symbol=signal.symbol, side=side.value, type=Order.Type.MARKET,
                          purpose=_purpose(signal, "exit"), reduce_only=reduce_only, quantity=quantity,
                          reference_price=reference, status=Order.Status.SUBMITTING, attempts=1, created_at=now,
                          submitted_at=now, updated_at=now)
            order.save()
            audit(actor="engine", action="exit.attempt", entity="signal", entity_id=signal.pk, now=now,
                  attempt=attempt, order=order.client_order_id, quantity=quantity, reduce_only=reduce_only)
            leases.enter_context(order_send_lease(order.pk))
        log.info("exit of signal %s: attempt %s, %s %s %s%s", signal.pk, attempt, side.value, quantity,
                 signal.symbol, " reduce-only" if reduce_only else "")
        _order_send(order, connector=connector, now=now)
    return Signal.objects.get(pk=signal.pk)


def _with_note(detail: str, note: str) -> str:
    """The decision detail with the exit's latest note in place of the previous one."""
    return f"{detail.split(' | closing: ')[0]} | {note}"


def _venue_net(connector: Connector, symbol: str) -> Decimal | None:
    """The venue's net position in a market, where the venue keeps positions (None on spot venues)."""
    if not connector.capabilities.positions:
        return None
    return sum((p.quantity for p in connector.positions() if p.symbol == symbol), Decimal(0))


def exits_drive(*, now: datetime | None = None) -> dict[str, int]:
    """Take one step of every WORKING exit, oldest first (one broken account never holds up the others)."""
    counts = {"working": 0, "executed": 0}
    for signal_id in Signal.objects.filter(status=Signal.Status.WORKING).order_by("received_at", "pk").values_list(
            "pk", flat=True)[:500]:
        counts["working"] += 1
        try:
            if exit_drive(signal_id=signal_id, now=now or timezone.now()).status == Signal.Status.EXECUTED:
                counts["executed"] += 1
        except Exception:  # noqa: BLE001 - one exit's fault must not stop the others; the next tick tries again
            log.exception("exit of signal %s failed this step; the next tick tries again", signal_id)
    return counts


# --------------------------------------------------------------------------------------------- protective orders


def protection_enabled(strategy: Strategy, account: VenueAccount | None = None, *, live: bool | None = None) -> bool:
    """Whether a strategy's stop-loss and take-profit rest on the venue (auto: on for live accounts only); `live`
    (the connector's word) spares reading the account."""
    if strategy.protective_orders == Strategy.Protection.AUTO:
        return live if live is not None else account is not None and account.venue != VenueAccount.Venue.PAPER
    return strategy.protective_orders == Strategy.Protection.ON


_PROTECTIVE = {Order.Purpose.STOP_LOSS: OrderType.STOP, Order.Purpose.TAKE_PROFIT: OrderType.TAKE_PROFIT}


def protection_sync(*, position_id: int, now: datetime | None = None) -> dict[str, int]:
    """Make the venue's protective orders of a position match it: a stop-loss and a take-profit trigger order, each
    reduce-only for the strategy's whole position at the position's levels; moved (canceled and placed again) when
    a level or the size changed; the sibling canceled once one filled; all removed when the position is flat, while
    an exit is pursued, or under the kill switch.

    Placed only where the venue has trigger orders and the order reduces the account's net (several strategies may
    net the other way: then the bot's monitor alone guards that position); on a venue without reduce-only orders
    (spot), only the stop-loss, as a resting order holds the coins it would sell.
    """
    now = now or timezone.now()
    position = Position.objects.select_related("strategy", "account").get(pk=position_id)
    account, strategy = position.account, position.strategy
    connector = connector_for(account)
    held = position.quantity
    side = Side.SELL if held > 0 else Side.BUY
    want: dict[str, Decimal] = {}
    if (held != 0 and protection_enabled(strategy, account) and connector.capabilities.stop_orders
            and not kill_switch_engaged()
            and (strategy.pk, position.symbol) not in _exits_working(account.pk)):
        if position.stop_loss is not None:
            want[Order.Purpose.STOP_LOSS] = position.stop_loss
        if position.take_profit is not None and connector.capabilities.reduce_only:
            want[Order.Purpose.TAKE_PROFIT] = position.take_profit
    if want and connector.capabilities.reduce_only:
        # Checked for the orders already resting too: other strategies' trades move the account's net.
        net = _venue_net(connector, position.symbol)
        if net is not None and not abs(held) <= -net * side.sign:
            log.info("position %s: no protective orders on the venue (the account's net %s would not be reduced); "
                     "the bot's monitor guards it", position.pk, net)
            want = {}
    counts = {"kept": 0, "canceled": 0, "placed": 0}
    waiting = False
    for order in Order.objects.filter(position_id=position.pk, status__in=Order.WORKING).order_by("pk"):
        level = want.get(order.purpose)
        if (level is not None and order.side == side.value and order.trigger_price == level
                and order.quantity - order.filled_quantity == abs(held)):
            del want[order.purpose]
            counts["kept"] += 1
            continue
        try:
            order = order_cancel(order_id=order.pk, by="protection (moved or no longer needed)", now=now)
        except VenueError as exc:
            log.warning("protective order %s could not be canceled: %s", order.pk, exc)
        counts["canceled"] += 1
        waiting = waiting or not order.is_final
    if waiting or not want:
        return counts  # a replacement goes out once the old order is gone (the next sync)
    for purpose, level in want.items():
        try:
            _protective_place(position, purpose=purpose, side=side, trigger=level, connector=connector, now=now)
        except _ProtectionStale:
            log.info("position %s changed while its protective orders were decided; the next sync decides again",
                     position.pk)
            break
        counts["placed"] += 1
    return counts


class _ProtectionStale(Exception):
    """The position changed, or an exit or the kill switch started, after its protective orders were decided."""


def _protective_place(position: Position, *, purpose: str, side: Side, trigger: Decimal, connector: Connector,
                      now: datetime) -> Order:
    """Place one protective trigger order for a position (committed with its client id before the venue call)."""
    with ExitStack() as leases:
        with transaction.atomic():
            locked = VenueAccount.objects.select_for_update(no_key=True).filter(pk=position.account_id).values_list(
                "pk", flat=True).first()
            # Decided outside the lock: under it, the position must be as it was and no exit under way (an exit
            # sent meanwhile would leave this stop resting for a size that is gone, free to sell another's share).
            current = Position.objects.filter(pk=position.pk).values_list("quantity", flat=True).first()
            if (locked is None or current != position.quantity or kill_switch_engaged()
                    or Signal.objects.filter(account_id=position.account_id, strategy_id=position.strategy_id,
                                             symbol=position.symbol, status=Signal.Status.WORKING).exists()):
                raise _ProtectionStale
            order = Order(client_order_id=new_client_order_id(), account=position.account,
                          strategy_id=position.strategy_id, position=position, symbol=position.symbol,
                          side=side.value, type=_PROTECTIVE[purpose].value, purpose=purpose,
                          reduce_only=connector.capabilities.reduce_only, quantity=abs(position.quantity),
                          trigger_price=trigger, reference_price=trigger, status=Order.Status.SUBMITTING, attempts=1,
                          created_at=now, submitted_at=now, updated_at=now)
            order.save()
            audit(actor="engine", action="protection.placed", entity="position", entity_id=position.pk, now=now,
                  order=order.client_order_id, purpose=purpose, trigger=trigger, quantity=order.quantity)
            leases.enter_context(order_send_lease(order.pk))
        return _order_send(order, connector=connector, now=now)


def protections_sync(*, account_id: int | None = None, now: datetime | None = None) -> int:
    """Sync the protective orders of every position that has or should have them; return how many were looked at."""
    positions = Position.objects.filter(Q(protective_orders__status__in=Order.WORKING) | ~Q(quantity=0))
    if account_id is not None:
        positions = positions.filter(account_id=account_id)
    seen = 0
    for position_id in positions.values_list("pk", flat=True).distinct():
        position = Position.objects.select_related("strategy", "account").get(pk=position_id)
        if position.quantity != 0 and not protection_enabled(position.strategy, position.account):
            continue
        seen += 1
        try:
            protection_sync(position_id=position_id, now=now)
        except VenueError as exc:
            log.warning("protective orders of position %s wait for the venue: %s", position_id, exc)
        except Exception:  # noqa: BLE001 - one position's fault must not stop the others
            log.exception("protective orders of position %s failed this round", position_id)
    return seen


def _trail(position: Position, price: Decimal, market_tick: Decimal, *, now: datetime) -> bool:
    """Move a position's trailing stop with the price (only ever tighter); return whether the stop moved."""
    strategy = position.strategy
    distance = strategy.trailing_stop_percent
    if distance is None or position.quantity == 0 or position.average_entry is None:
        return False
    long = position.quantity > 0
    activation = (strategy.trailing_activation_percent or Decimal(0)) / 100
    entry = position.average_entry
    if position.trail_peak is None and not (price >= entry * (1 + activation) if long
                                            else price <= entry * (1 - activation)):
        return False
    peak = price if position.trail_peak is None else (max(position.trail_peak, price) if long
                                                      else min(position.trail_peak, price))
    stop = peak * (1 - distance / 100) if long else peak * (1 + distance / 100)
    # Onto the tick toward the price (never a looser stop than computed).
    stop = (-((-stop) // market_tick) * market_tick) if long else (stop // market_tick) * market_tick
    tighter = position.stop_loss is None or (stop > position.stop_loss if long else stop < position.stop_loss)
    if peak == position.trail_peak and not tighter:
        return False
    changes: dict[str, object] = {"trail_peak": peak}
    if tighter:
        changes["stop_loss"] = stop
    moved = Position.objects.filter(pk=position.pk, updated_at=position.updated_at, quantity=position.quantity).update(
        **changes)
    if moved and tighter:
        audit(actor="engine", action="position.trailing_stop", entity="position", entity_id=position.pk, now=now,
              stop_loss=stop, peak=peak)
    return bool(moved and tighter)


# --------------------------------------------------------------------------------------------- monitoring


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

    One statement (INSERT ... ON CONFLICT DO NOTHING), committed on its own unless the caller holds a transaction;
    the task is queued once the row is durable. A failed enqueue leaves the signal RECEIVED for the sweeper.
    """
    now = now or timezone.now()
    signal = Signal(
        strategy=strategy, account_id=strategy.account_id, source=source, idempotency_key=idempotency_key,
        action=action, symbol=symbol or strategy.symbol, quantity=quantity, target=target,
        order_type=order_type, price=price, stop_loss=stop_loss, take_profit=take_profit, leverage=leverage,
        atr=atr, payload=payload_redact(payload or {}), received_at=now,
    )
    if not rows.insert_new(signal, unique=("idempotency_key",)):
        existing = Signal.objects.filter(idempotency_key=idempotency_key).first()
        if existing is None:  # the other row was rolled back since: store this one after all
            return signal_create(strategy=strategy, source=source, idempotency_key=idempotency_key, action=action,
                                 symbol=symbol, quantity=quantity, target=target, order_type=order_type, price=price,
                                 stop_loss=stop_loss, take_profit=take_profit, leverage=leverage, atr=atr,
                                 payload=payload, now=now, enqueue=enqueue)
        return existing, False
    if enqueue:
        signal_id = signal.pk
        transaction.on_commit(lambda: signal_enqueue(signal_id=signal_id))
    return signal, True


def signal_enqueue(*, signal_id: int, raw: bool = True) -> None:
    """Queue a stored signal for processing; a broker failure is logged, and the sweeper re-drives it later.

    On a Redis broker the message goes out as one raw LPUSH of a pre-built Celery message (trading/broker.py);
    otherwise, or with `raw=False`, through `.delay()`.
    """
    from trading.tasks import signal_process_task

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
    from trading.tasks import signal_process_task

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
        else payload_redact(v) if isinstance(v, dict) else v  # type: ignore[arg-type]
        for k, v in payload.items()
    }


def positions_monitor(*, now: datetime | None = None) -> dict[str, int]:
    """Match working paper orders against prices, sync working orders, and fire stop-loss / take-profit exits, for
    every account in turn (the Celery task runs each account as a task of its own: see accounts_to_monitor)."""
    counts = {"matched": 0, "exits": 0}
    for account_id in accounts_to_monitor():
        for key, value in account_monitor(account_id=account_id, now=now).items():
            counts[key] += value
    return counts


def accounts_to_monitor() -> list[int]:
    """Ids of the accounts with working orders, stops, take-profits or trailing stops to watch."""
    # Two EXISTS probes (each on an index) rather than a join of every order and position, which grew with the
    # order history (0.3 s at 20,000 orders) and kept flat positions of trailing strategies watched for ever.
    working = Order.objects.filter(account_id=OuterRef("pk"), status__in=(Order.Status.OPEN,
                                                                         Order.Status.PARTIALLY_FILLED))
    guarded = Position.objects.filter(account_id=OuterRef("pk")).exclude(quantity=0).filter(
        Q(stop_loss__isnull=False) | Q(take_profit__isnull=False) | Q(strategy__trailing_stop_percent__isnull=False))
    return list(VenueAccount.objects.filter(Exists(working) | Exists(guarded)).order_by("pk").values_list(
        "pk", flat=True))


def stops_crossed(*, symbol: str, price: Decimal) -> list[int]:
    """Ids of the accounts with a position in `symbol` whose stop-loss or take-profit `price` reaches, or whose
    strategy trails its stop (a new price may move it): called as each price arrives, so an exit leaves within
    milliseconds of the crossing instead of at the next monitor tick. One indexed read; nothing is locked."""
    # A trailing stop moves only on a new best price (or the first that reaches its activation level).
    activation = Coalesce(F("strategy__trailing_activation_percent"), Value(Decimal(0))) / Value(Decimal(100))
    trails = Q(strategy__trailing_stop_percent__isnull=False) & (
        Q(quantity__gt=0, trail_peak__lt=price) | Q(quantity__lt=0, trail_peak__gt=price)
        | Q(quantity__gt=0, trail_peak__isnull=True, average_entry__lte=price / (1 + activation))
        | Q(quantity__lt=0, trail_peak__isnull=True, average_entry__gte=price / (1 - activation)))
    crossed = (Q(quantity__gt=0, stop_loss__gte=price) | Q(quantity__gt=0, take_profit__lte=price)
               | Q(quantity__lt=0, stop_loss__lte=price) | Q(quantity__lt=0, take_profit__gte=price) | trails)
    return list(Position.objects.filter(symbol=symbol).exclude(quantity=0).filter(crossed)
                .order_by("account_id").values_list("account_id", flat=True).distinct())


def account_monitor(*, account_id: int, now: datetime | None = None) -> dict[str, int]:
    """One account's monitor tick: its orders' changes recorded, its trailing stops moved, its exits fired.

    A venue error ends this account's tick only; the next tick tries again."""
    now = now or timezone.now()
    counts = {"matched": 0, "exits": 0}
    account = VenueAccount.objects.filter(pk=account_id).first()
    if account is None:
        return counts
    with log_context(account_id=account_id):
        try:
            connector = connector_for(account)
            match = getattr(connector, "match", None)
            if callable(match):
                changed = match()
            else:  # a live venue works its orders itself: ask it which of ours changed (trading.reconcile)
                from trading.reconcile import live_orders_changed

                changed = live_orders_changed(account=account, connector=connector)
            by_client_id = {o.client_order_id: o for o in changed}
            touched: set[tuple[int, str]] = set()
            for order in Order.objects.filter(client_order_id__in=list(by_client_id)):
                counts["matched"] += 1
                order_apply_venue_state(order_id=order.pk, venue_order=by_client_id[order.client_order_id], now=now)
                touched.add((order.strategy_id, order.symbol))
            counts["exits"] += _exits_fire(account, connector, now=now, touched=touched)
            _protections_follow(account, touched, now=now)
        except VenueError as exc:
            log.warning("monitor of account %s stopped by a venue error: %s", account.pk, exc)
    return counts


def _protections_follow(account: VenueAccount, touched: set[tuple[int, str]], *, now: datetime) -> None:
    """Sync the protective orders of the positions whose orders changed (a fill, a stop that fired, a trail), and
    those resting for other strategies in the same markets (a fill moved the account's net there)."""
    if not touched:
        return
    symbols = {symbol for _, symbol in touched}
    for position in Position.objects.filter(account=account, symbol__in=symbols).select_related("strategy"):
        if ((position.strategy_id, position.symbol) in touched and protection_enabled(position.strategy, account)
                or Order.objects.filter(position=position, status__in=Order.WORKING).exists()):
            try:
                protection_sync(position_id=position.pk, now=now)
            except VenueError as exc:
                log.warning("protective orders of position %s wait for the venue: %s", position.pk, exc)


def _exits_fire(account: VenueAccount, connector: Connector, *, now: datetime,
                touched: set[tuple[int, str]] | None = None) -> int:
    fired = 0
    positions = Position.objects.filter(account=account).exclude(quantity=0).filter(
        Q(stop_loss__isnull=False) | Q(take_profit__isnull=False) | Q(strategy__trailing_stop_percent__isnull=False)
    ).select_related("strategy")
    prices: dict[str, Decimal] = {}
    exiting = _exits_working(account.pk)
    for position in positions:
        if position.symbol not in prices:
            try:
                prices[position.symbol] = connector.ticker(position.symbol).price
            except VenueError:
                continue
        price = prices[position.symbol]
        if position.strategy.trailing_stop_percent is not None and (position.strategy_id, position.symbol) \
                not in exiting and _trail(position, price, connector.market(position.symbol).tick_size, now=now):
            position.refresh_from_db(fields=["stop_loss", "trail_peak"])
            if touched is not None:
                touched.add((position.strategy_id, position.symbol))
        long = position.quantity > 0
        hit_stop = position.stop_loss is not None and (price <= position.stop_loss if long else price >= position.stop_loss)
        hit_tp = position.take_profit is not None and (
            price >= position.take_profit if long else price <= position.take_profit)
        if not (hit_stop or hit_tp):
            continue
        if (position.strategy_id, position.symbol) in exiting:
            continue  # an exit is already pursued: it goes on until flat
        kind = "sl" if hit_stop else "tp"  # when both are touched, the stop is taken first
        # One exit per state of the position: a position that changed since (added to) gets a new one.
        state = int(position.updated_at.timestamp() * 1000)
        signal, created = _exit_signal(position, source=Signal.Source.MONITOR, key=f"{kind}:{position.pk}:{state}",
                                       payload={"trigger": kind, "price": str(price)}, now=now)
        if created or signal.status == Signal.Status.RECEIVED:
            fired += int(created)
            log.info("%s hit for position %s at %s", "stop-loss" if hit_stop else "take-profit", position.pk, price)
            try:
                signal_process(signal_id=signal.pk)
            except VenueError as exc:  # stored: the sweeper and the next tick drive it on
                log.warning("exit of position %s waits for its venue: %s", position.pk, exc)
    return fired


def _exits_working(account_id: int, *, source: str | None = None) -> set[tuple[int, str]]:
    """The (strategy, market) pairs of an account with an exit being pursued (of one source, if given)."""
    working = Signal.objects.filter(account_id=account_id, status=Signal.Status.WORKING)
    if source is not None:
        working = working.filter(source=source)
    return set(working.values_list("strategy_id", "symbol"))


# --------------------------------------------------------------------------------------------- kill switch


def kill_switch_enforce(*, now: datetime | None = None) -> dict[str, int]:
    """While the kill switch is engaged: cancel every working order and close every position reduce-only."""
    now = now or timezone.now()
    switch = KillSwitch.objects.filter(pk=1).first()
    counts = {"canceled": 0, "closing": 0}
    if switch is None or not switch.engaged:
        return counts
    stamp = int((switch.changed_at or now).timestamp() * 1000)
    for order in Order.objects.filter(status__in=Order.WORKING).exclude(purpose=Order.Purpose.KILL_SWITCH):
        try:
            order_cancel(order_id=order.pk, by="kill_switch", now=now)
            counts["canceled"] += 1
        except Exception:  # noqa: BLE001 - one venue's fault must not stop the others; the next tick tries again
            log.exception("kill switch: order %s could not be canceled this tick", order.pk)
    exiting: dict[int, set[tuple[int, str]]] = {}
    for position in Position.objects.exclude(quantity=0).select_related("strategy"):
        try:
            if position.account_id not in exiting:
                exiting[position.account_id] = _exits_working(position.account_id, source=Signal.Source.KILL_SWITCH)
            if (position.strategy_id, position.symbol) in exiting[position.account_id]:
                continue  # the kill switch's exit for it is pursued until flat (exits_drive)
            state = int(position.updated_at.timestamp() * 1000)
            signal, created = _exit_signal(position, source=Signal.Source.KILL_SWITCH,
                                           key=f"kill:{stamp}:{position.pk}:{state}",
                                           payload={"reason": switch.reason}, now=now)
            if created or signal.status == Signal.Status.RECEIVED:
                counts["closing"] += 1
                signal_process(signal_id=signal.pk)
        except Exception:  # noqa: BLE001 - one venue's fault must not stop the others; the next tick tries again
            log.exception("kill switch: position %s could not be closed this tick", position.pk)
    still_open = kill_switch_still_open()
    KillSwitch.objects.filter(pk=1, engaged=True).update(
        still_open=still_open, flat_at=None if still_open else (switch.flat_at or timezone.now()))
    return counts


def _exit_signal(position: Position, *, source: str, key: str, payload: dict[str, Any],
                 now: datetime) -> tuple[Signal, bool]:
    """The close signal `key` of a position, created once. If it ended refused or failed while the position is
    still open, a new one follows it (the key and the refused signal's id): an exit is never given up, except on
    dust, which no order can close (a human must)."""
    signal, created = signal_create(strategy=position.strategy, source=source, idempotency_key=key,
                                    action=Signal.Action.CLOSE, symbol=position.symbol, payload=payload, now=now,
                                    enqueue=False)
    for _ in range(100):
        if created or signal.status not in (Signal.Status.REJECTED, Signal.Status.FAILED) \
                or signal.decision_rule == Rule.DUST:
            break
        signal, created = signal_create(strategy=position.strategy, source=source,
                                        idempotency_key=f"{key}:after:{signal.pk}", action=Signal.Action.CLOSE,
                                        symbol=position.symbol, payload=payload, now=now, enqueue=False)
    return signal, created


def kill_switch_still_open() -> list[dict[str, str]]:
    """What is still open, per account and market, in our book and on the venue (where it keeps positions), and
    the working orders: empty only when every venue says every market is flat.

    A position the venue holds that no strategy owns is listed, never traded: a human decides (as reconciliation).
    """
    still: list[dict[str, str]] = []
    for account in VenueAccount.objects.order_by("pk"):
        book: dict[str, Decimal] = {}
        for symbol, quantity in Position.objects.filter(account=account).exclude(quantity=0).values_list(
                "symbol", "quantity"):
            book[symbol] = book.get(symbol, Decimal(0)) + quantity
        working = Order.objects.filter(account=account, status__in=Order.WORKING).count()
        venue: dict[str, Decimal] = {}
        known = "unknown"
        try:
            connector = connector_for(account)
            if connector.capabilities.positions:
                venue = {p.symbol: p.quantity for p in connector.positions() if p.quantity != 0}
                known = "0"
            else:
                known = "n/a (spot)"
        except VenueError as exc:
            still.append({"account": account.name, "error": f"the venue could not be asked: {type(exc).__name__}"})
        for symbol in sorted(set(book) | set(venue)):
            still.append({"account": account.name, "symbol": symbol, "book": _plain(book.get(symbol, Decimal(0))),
                          "venue": _plain(venue[symbol]) if symbol in venue else known})
        if working:
            still.append({"account": account.name, "working_orders": str(working)})
    return still
