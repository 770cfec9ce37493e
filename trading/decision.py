"""The risk decision of one signal under its account lock: the book read, `risk.decide`, and the orders it makes.

The hot path's reads are hand-written SQL (infra/rows.py), cached per statement; tests/trading/test_rows.py pins
them. The decision and its orders are committed as SUBMITTING before anything reaches the venue.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import connection

from exchanges.base import Connector, OrderType, Side, Ticker
from exchanges.errors import VenueError
from infra import rows
from infra.rows import Rows, fetch_all, fetch_one, lock_clause
from trading import pnl, risk
from trading.audit import audit
from trading.connectors import connector_for
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
from trading.models import KillSwitch, Order, Position, Signal, Strategy, VenueAccount
from trading.orders import _purpose, kill_switch_engaged, new_client_order_id, trading_setting

log = logging.getLogger("trading.engine")  # one logger for every room of the engine (log routing keys on it)


# Exits fired by the monitor and the kill switch run whatever the strategy's status.
_ALWAYS_ALLOWED = (Signal.Source.MONITOR, Signal.Source.KILL_SWITCH)


def _allowed_when_inactive(signal: Signal) -> bool:
    """Exits a human asks for (a manual close), and the monitor's and kill switch's, run whatever the status."""
    return signal.source in _ALWAYS_ALLOWED or (
        signal.source == Signal.Source.MANUAL and signal.action == Signal.Action.CLOSE)


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
        max_price_age_seconds=trading_setting("MAX_PRICE_AGE_SECONDS"),
    )


@dataclass(frozen=True)
class _Book:
    view: AccountView
    positions: dict[tuple[int, str], Position]
    quote: Ticker  # the decided market's price, read with the held markets' marks


def _account_view(account: VenueAccount, connector: Connector, *, now: datetime, symbol: str) -> _Book:
    """Read the account's positions, working orders and equity, and the price of `symbol` (call with the account
    row locked).

    Every price comes from one `tickers` read (one request on a venue that quotes all its markets at once, as
    Hyperliquid's allMids does). The book's `positions` holds every position row of the account, flat ones too, so
    a fill recorded in the same transaction knows whether its row exists without asking again.
    """
    every = _positions_of(account.pk)
    positions = [p for p in every if p.quantity != 0]
    wanted = [symbol, *sorted({p.symbol for p in positions} - {symbol})]
    quotes = connector.tickers(wanted)
    for missing in (s for s in wanted if s not in quotes):
        quotes[missing] = connector.ticker(missing)  # raises why its price cannot be read
    marks = {s: quotes[s].price for s in wanted}
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
    return _Book(view, {(p.strategy_id, p.symbol): p for p in every}, quotes[symbol])


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


def _working_orders_of(account_id: int) -> list[list[Any]]:
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


_DECISION_FIELDS = ("attempts", "status", "decision_rule", "decision_detail", "accepted_at", "submitted_at",
                    "stop_loss", "take_profit")


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
        book = _account_view(account, connector, now=now, symbol=signal.symbol)
        ticker = book.quote
    except VenueError as exc:
        if signal.attempts >= trading_setting("MAX_SUBMIT_ATTEMPTS") or not exc.retryable:
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
        market=MarketRules.from_market(market),
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
    return (f"{e}.{q('status')} = '{Signal.Status.RECEIVED.value}' "
            f"AND {e}.{q('received_at')} <= {s}.{q('received_at')} "
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
