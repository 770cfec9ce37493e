"""Pre-trade risk: turn a signal into sized orders with stops, or reject it by a named rule. Pure.

Checks run in this order, the first failure naming the rule: input validation (INVALID), the action
against the position (NOTHING_TO_DO), and for decisions with an entry: kill switch, daily loss, quote
age (STALE_PRICE: exits still go, since the venue fills them at its own price), non-positive equity
(LEVERAGE), stop-loss/take-profit prices (INVALID),
sizing (NO_STOP, MIN_SIZE), open positions, symbol exposure, account exposure, leverage.

Choices, so callers know what to expect:

* A decision is all or nothing: if any entry leg fails a check, the whole decision is rejected, exit
  legs included. Exit-only decisions (CLOSE, TARGET toward zero) skip every entry check, so they pass
  under the kill switch and the daily loss limit.
* The strategy's current position is the sum of its `account.positions` rows for the symbol. Pending
  orders are not counted as position (they may never fill); they do count towards the open-position
  count and the exposure limits (pending entries only: pending reduce-only orders are not subtracted).
* REVERSE closes the whole position and sizes the new side afresh with the strategy's sizing rule
  (not the old size), unless the intent gives a quantity. OPEN_LONG/OPEN_SHORT against an opposite
  position behave like REVERSE; in the same direction they add (pyramid).
* `intent.quantity` sizes OPEN_LONG/OPEN_SHORT/REVERSE entries; CLOSE always closes the whole position
  and TARGET trades the difference to `intent.target`, so both ignore it.
* Limits reject; they never shrink an order to fit.
* Exposure is gross: every (strategy, symbol) position counts |qty| × its mark price, with no netting
  between strategies (a long in one strategy does not offset a short in another, since either may
  close at any time). The traded pair is valued at the entry price after all legs of the decision,
  and pending non-reduce-only orders add their notional.
* Leverage: the effective leverage (the Decision's) is the requested one (intent, else strategy)
  capped by the account, per-market and venue caps; the account's gross exposure after the entry must
  stay within equity × that cap.
* Stops and take-profits are rounded to the tick towards the entry price (never further than
  computed), and RISK sizing uses the rounded stop, so a stop-out loses at most the risk budget
  (before slippage and fees). A price that rounds onto or past the entry is rejected as invalid.
* Several strategies share one venue account, and the venue keeps one net position per market. An exit
  is sized from the strategy's own position, and flagged reduce-only only when it reduces the account's
  net in that market (the sum of every strategy's position) by no more than what the net has left after
  the reduce-only orders already working on that side; otherwise it goes as a plain order of the same
  size, which moves the net by exactly the strategy's share (a reduce-only close of a long against a net
  that is short would be refused by the venue, or clipped).
* Quantities are floored to the lot size with exact integer division. Whole-position closes are sent
  as held, without lot or minimum checks; partial exits (TARGET) are floored and checked like entries.
* Orders carry the intent's type; a LIMIT order's price is the intent's limit price, a MARKET order's
  price is the quote it was sized at (its reference price).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from decimal import (
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DecimalException,
    DivisionByZero,
    InvalidOperation,
    Overflow,
    localcontext,
)

from exchanges.base import OrderType, Side
from trading.domain import (
    AccountView,
    Action,
    Decision,
    ExitMode,
    ExitRule,
    MarketRules,
    OrderIntent,
    Quote,
    RiskLimits,
    Rule,
    SignalIntent,
    SizingMode,
    StrategyRisk,
)

_CONTEXT = Context(prec=50, rounding=ROUND_HALF_EVEN, traps=[InvalidOperation, DivisionByZero, Overflow])
_ZERO = Decimal("0")
_HUNDRED = Decimal("100")
_ENTRY = "entry"
_EXIT = "exit"


class _Rejected(Exception):
    """Internal: a check failed with a rule and a human-readable detail."""

    def __init__(self, rule: str, detail: str) -> None:
        super().__init__(detail)
        self.rule = rule
        self.detail = detail


@dataclass(frozen=True)
class _Plan:
    """What an action means for the current position, before sizing."""

    exit_side: Side | None = None
    exit_qty: Decimal = _ZERO  # base qty to reduce, 0 when no exit leg
    partial_exit: bool = False  # True when the exit leaves a position (TARGET toward zero)
    entry_side: Side | None = None
    entry_qty: Decimal | None = None  # fixed entry size; None = size with the strategy's rule


@dataclass(frozen=True)
class _Exits:
    stop_loss: Decimal | None
    take_profit: Decimal | None


def decide(
    *,
    intent: SignalIntent,
    strategy_id: int,
    account: AccountView,
    market: MarketRules,
    quote: Quote,
    atr: Decimal | None,
    risk: StrategyRisk,
    limits: RiskLimits,
    now: datetime,
) -> Decision:
    """Check a signal against the strategy's sizing and the account's limits; return orders or a rejection."""
    with localcontext(_CONTEXT):
        try:
            return _decide(
                intent=intent,
                strategy_id=strategy_id,
                account=account,
                market=market,
                quote=quote,
                atr=atr,
                risk=risk,
                limits=limits,
                now=now,
            )
        except _Rejected as rejected:
            return Decision(accepted=False, rule=rejected.rule, detail=rejected.detail)
        except DecimalException as error:  # a number too large for 50 digits: refuse rather than round
            return Decision(accepted=False, rule=Rule.INVALID, detail=f"numbers out of range: {error!r}")


def _decide(
    *,
    intent: SignalIntent,
    strategy_id: int,
    account: AccountView,
    market: MarketRules,
    quote: Quote,
    atr: Decimal | None,
    risk: StrategyRisk,
    limits: RiskLimits,
    now: datetime,
) -> Decision:
    _validate(intent=intent, account=account, market=market, risk=risk, limits=limits)
    _check_quote(quote=quote, now=now)

    current = _strategy_position(account=account, strategy_id=strategy_id, symbol=intent.symbol)
    plan = _plan(intent=intent, current=current)
    if plan.exit_side is None and plan.entry_side is None:
        raise _Rejected(Rule.NOTHING_TO_DO, _nothing_detail(intent=intent, current=current))

    price = intent.price if intent.order_type is OrderType.LIMIT and intent.price is not None else quote.price
    orders: list[OrderIntent] = []
    if plan.exit_side is not None:
        exit_qty = plan.exit_qty
        if plan.partial_exit:
            exit_qty = _rounded_size(qty=exit_qty, price=price, market=market, what="exit")
        exit_order = _order(intent=intent, side=plan.exit_side, qty=exit_qty, price=price, purpose=_EXIT)
        orders.append(replace(exit_order, reduce_only=reduces_net(
            account=account, symbol=intent.symbol, side=plan.exit_side, quantity=exit_qty)))

    if plan.entry_side is None:
        return Decision(accepted=True, rule=Rule.OK, detail=_accepted_detail(intent, orders), orders=tuple(orders))

    _check_halts(intent=intent, account=account, limits=limits)
    _check_fresh(quote=quote, limits=limits, now=now)
    side = plan.entry_side
    exits = _exit_prices(intent=intent, side=side, entry=price, atr=atr, risk=risk, market=market)
    if plan.entry_qty is not None:
        raw_qty = plan.entry_qty
    else:
        raw_qty = _sized(entry=price, stop=exits.stop_loss, risk=risk, equity=account.equity)
    qty = _rounded_size(qty=raw_qty, price=price, market=market, what="entry")
    entry = _order(intent=intent, side=side, qty=qty, price=price, purpose=_ENTRY)
    orders.append(entry)

    after = current + sum((o.side.sign * o.quantity for o in orders), _ZERO)
    leverage = _check_limits(
        intent=intent,
        strategy_id=strategy_id,
        account=account,
        market=market,
        risk=risk,
        limits=limits,
        after=after,
        price=price,
    )
    return Decision(
        accepted=True,
        rule=Rule.OK,
        detail=_accepted_detail(intent, orders),
        orders=tuple(orders),
        stop_loss=exits.stop_loss,
        take_profit=exits.take_profit,
        leverage=leverage,
    )


# --- validation -----------------------------------------------------------------------------------


def _validate(
    *, intent: SignalIntent, account: AccountView, market: MarketRules, risk: StrategyRisk, limits: RiskLimits
) -> None:
    """Reject non-finite or out-of-range numbers before any arithmetic."""
    if intent.symbol != market.symbol:
        raise _Rejected(Rule.INVALID, f"signal symbol {intent.symbol!r} does not match market {market.symbol!r}")
    if intent.order_type not in (OrderType.MARKET, OrderType.LIMIT):
        raise _Rejected(Rule.INVALID, f"signal order type must be market or limit, got {intent.order_type.value}")
    if intent.order_type is OrderType.LIMIT and intent.price is None:
        raise _Rejected(Rule.INVALID, "a limit signal needs a price")
    if intent.action is Action.TARGET and intent.target is None:
        raise _Rejected(Rule.INVALID, "a target signal needs a target position")
    _require("quantity", intent.quantity, positive=True, optional=True)
    _require("target", intent.target, positive=False, optional=True, signed=True)
    _require("price", intent.price, positive=True, optional=True)
    _require("stop_loss", intent.stop_loss, positive=True, optional=True)
    _require("take_profit", intent.take_profit, positive=True, optional=True)
    _require("leverage", intent.leverage, positive=True, optional=True)
    _require("equity", account.equity, positive=False, signed=True)
    _require("pnl_today", account.pnl_today, positive=False, signed=True)
    _require("lot_size", market.lot_size, positive=True)
    _require("tick_size", market.tick_size, positive=True)
    _require("min_qty", market.min_qty, positive=False)
    _require("min_notional", market.min_notional, positive=False)
    _require("market max_leverage", market.max_leverage, positive=True)
    _require("sizing value", risk.sizing.value, positive=True)
    _require("strategy leverage", risk.leverage, positive=True)
    _require("max_leverage", limits.max_leverage, positive=True)
    for symbol, cap in limits.market_leverage_caps.items():
        _require(f"leverage cap of {symbol}", cap, positive=True)
    _require("max_symbol_exposure", limits.max_symbol_exposure, positive=False, optional=True)
    _require("max_account_exposure", limits.max_account_exposure, positive=False, optional=True)
    _require("daily_loss_limit", limits.daily_loss_limit, positive=False, optional=True)
    for name, rule in (("stop-loss", risk.stop_loss), ("take-profit", risk.take_profit)):
        if rule.mode is not ExitMode.NONE:
            _require(f"{name} value", rule.value, positive=True)


def _require(
    name: str, value: Decimal | None, *, positive: bool, optional: bool = False, signed: bool = False
) -> None:
    """Reject a missing, non-Decimal or non-finite value, or one out of range (> 0 or >= 0 unless signed)."""
    if value is None:
        if optional:
            return
        raise _Rejected(Rule.INVALID, f"{name} is required")
    if not isinstance(value, Decimal) or not value.is_finite():
        raise _Rejected(Rule.INVALID, f"{name} must be a finite Decimal, got {value!r}")
    if positive and value <= 0:
        raise _Rejected(Rule.INVALID, f"{name} must be positive, got {_fmt(value)}")
    if not positive and not signed and value < 0:
        raise _Rejected(Rule.INVALID, f"{name} must not be negative, got {_fmt(value)}")


def _check_quote(*, quote: Quote, now: datetime) -> None:
    """Reject a quote from a naive clock or that is not a positive finite price."""
    if now.tzinfo is None or quote.time.tzinfo is None:
        raise _Rejected(Rule.INVALID, "now and the quote time must be timezone-aware")
    _require("quote price", quote.price, positive=True)


def _check_fresh(*, quote: Quote, limits: RiskLimits, now: datetime) -> None:
    """Reject an entry priced from a stale quote (exits still go: the venue fills them at its own price)."""
    age = (now - quote.time).total_seconds()
    if age > limits.max_price_age_seconds:
        raise _Rejected(
            Rule.STALE_PRICE,
            f"price of {quote.price} is {age:.0f}s old, older than the limit {limits.max_price_age_seconds}s",
        )


# --- what the action means ---------------------------------------------------------------------


def _strategy_position(*, account: AccountView, strategy_id: int, symbol: str) -> Decimal:
    """Return the strategy's signed position in the symbol (pending orders not counted)."""
    return sum(
        (p.quantity for p in account.positions if p.strategy_id == strategy_id and p.symbol == symbol), _ZERO
    )


def _plan(*, intent: SignalIntent, current: Decimal) -> _Plan:
    """Translate the action into exit and entry legs against the current signed position."""
    held_side = None if current == 0 else (Side.BUY if current > 0 else Side.SELL)
    close_side = None if held_side is None else held_side.opposite
    whole = abs(current)
    action = intent.action

    if action in (Action.OPEN_LONG, Action.OPEN_SHORT):
        side = Side.BUY if action is Action.OPEN_LONG else Side.SELL
        if held_side is side.opposite:
            return _Plan(exit_side=close_side, exit_qty=whole, entry_side=side, entry_qty=intent.quantity)
        return _Plan(entry_side=side, entry_qty=intent.quantity)
    if action is Action.CLOSE:
        return _Plan(exit_side=close_side, exit_qty=whole)
    if action is Action.REVERSE:
        if held_side is None:
            return _Plan()
        return _Plan(exit_side=close_side, exit_qty=whole, entry_side=held_side.opposite, entry_qty=intent.quantity)
    return _target_plan(target=intent.target if intent.target is not None else _ZERO, current=current)


def _target_plan(*, target: Decimal, current: Decimal) -> _Plan:
    """Plan the trades that move the position from current to target (both signed)."""
    diff = target - current
    if diff == 0:
        return _Plan()
    toward = Side.BUY if diff > 0 else Side.SELL
    if current == 0 or (target != 0 and (target > 0) == (current > 0) and abs(target) > abs(current)):
        return _Plan(entry_side=toward, entry_qty=abs(diff))
    if target == 0 or (target > 0) == (current > 0):
        return _Plan(exit_side=toward, exit_qty=abs(diff), partial_exit=target != 0)
    return _Plan(exit_side=toward, exit_qty=abs(current), entry_side=toward, entry_qty=abs(target))


def _nothing_detail(*, intent: SignalIntent, current: Decimal) -> str:
    if intent.action is Action.TARGET:
        return f"position in {intent.symbol} is already at the target {_fmt(current)}"
    return f"no position in {intent.symbol} to {intent.action.value}"


# --- exits and sizing -----------------------------------------------------------------------------


def _exit_prices(
    *, intent: SignalIntent, side: Side, entry: Decimal, atr: Decimal | None, risk: StrategyRisk, market: MarketRules
) -> _Exits:
    """Return the entry's stop-loss and take-profit: explicit prices win, else the strategy's rules."""
    stop = intent.stop_loss
    if stop is None:
        stop = _rule_price(rule=risk.stop_loss, name="stop-loss", away=-side.sign, entry=entry, atr=atr)
    take = intent.take_profit
    if take is None:
        take = _rule_price(rule=risk.take_profit, name="take-profit", away=side.sign, entry=entry, atr=atr)
    if stop is not None:
        stop = _round_toward(price=stop, entry=entry, tick=market.tick_size)
        _require_side(name="stop-loss", price=stop, entry=entry, away=-side.sign, side=side)
    if take is not None:
        take = _round_toward(price=take, entry=entry, tick=market.tick_size)
        _require_side(name="take-profit", price=take, entry=entry, away=side.sign, side=side)
    return _Exits(stop_loss=stop, take_profit=take)


def _rule_price(*, rule: ExitRule, name: str, away: int, entry: Decimal, atr: Decimal | None) -> Decimal | None:
    """Compute an exit price from a rule; away is +1 when the price lies above the entry, -1 below."""
    if rule.mode is ExitMode.NONE or rule.value is None:
        return None
    if rule.mode is ExitMode.PRICE:
        return rule.value
    if rule.mode is ExitMode.PERCENT:
        return entry * (1 + away * rule.value / _HUNDRED)
    if atr is None:
        raise _Rejected(Rule.INVALID, f"the {name} rule is {rule.value} x ATR but no ATR is available")
    if not isinstance(atr, Decimal) or not atr.is_finite() or atr <= 0:
        raise _Rejected(Rule.INVALID, f"the {name} rule needs a positive finite ATR, got {atr!r}")
    return entry + away * rule.value * atr


def _round_toward(*, price: Decimal, entry: Decimal, tick: Decimal) -> Decimal:
    """Round a price to the tick in the direction of the entry price."""
    steps = price // tick  # exact integer division; prices are positive here
    if price < entry and steps * tick < price:
        steps += 1
    return steps * tick


def _require_side(*, name: str, price: Decimal, entry: Decimal, away: int, side: Side) -> None:
    """Reject an exit price on or beyond the wrong side of the entry (or not positive)."""
    wrong = price <= entry if away > 0 else price >= entry
    if wrong or price <= 0:
        where = "above" if away > 0 else "below"
        direction = "long" if side is Side.BUY else "short"
        raise _Rejected(
            Rule.INVALID,
            f"{name} {_fmt(price)} of a {direction} entry must be {where} the entry price {_fmt(entry)} and positive",
        )


def _sized(*, entry: Decimal, stop: Decimal | None, risk: StrategyRisk, equity: Decimal) -> Decimal:
    """Return the unrounded entry size in base from the strategy's sizing rule."""
    sizing = risk.sizing
    if sizing.mode is SizingMode.QUANTITY:
        return sizing.value
    if sizing.mode is SizingMode.NOTIONAL:
        return sizing.value / entry
    if stop is None:
        raise _Rejected(Rule.NO_STOP, f"risk sizing ({sizing.value}% of equity) needs a stop-loss and there is none")
    return equity * sizing.value / _HUNDRED / abs(entry - stop)


def reduces_net(*, account: AccountView, symbol: str, side: Side, quantity: Decimal) -> bool:
    """Whether an exit of `quantity` on `side` only reduces the account's net position in `symbol`.

    The net is the sum of every strategy's position; reduce-only orders already working on the same side have
    claimed part of it, so only the rest is room for this one.
    """
    net = sum((p.quantity for p in account.positions if p.symbol == symbol), _ZERO)
    claimed = sum((o.quantity for o in account.pending
                   if o.symbol == symbol and o.reduce_only and o.side is side and not o.protective), _ZERO)
    room = -net * side.sign - claimed  # how much the net can still shrink toward zero from this side
    return _ZERO < quantity <= room


def _rounded_size(*, qty: Decimal, price: Decimal, market: MarketRules, what: str) -> Decimal:
    """Floor qty to the lot size and reject it below the market's minimum quantity or notional."""
    rounded = (qty // market.lot_size) * market.lot_size
    if rounded <= 0 or rounded < market.min_qty:
        raise _Rejected(
            Rule.MIN_SIZE,
            f"{what} size {_fmt(qty)} rounds to {_fmt(rounded)} at lot size {_fmt(market.lot_size)}, "
            f"below the minimum {_fmt(max(market.min_qty, market.lot_size))}",
        )
    notional = rounded * price
    if notional < market.min_notional:
        raise _Rejected(
            Rule.MIN_SIZE,
            f"{what} notional {_fmt(notional)} ({_fmt(rounded)} at {_fmt(price)}) "
            f"is below the minimum {_fmt(market.min_notional)}",
        )
    return rounded


def _order(*, intent: SignalIntent, side: Side, qty: Decimal, price: Decimal, purpose: str) -> OrderIntent:
    return OrderIntent(
        side=side,
        quantity=qty,
        order_type=intent.order_type,
        price=price,
        reduce_only=purpose == _EXIT,
        purpose=purpose,
    )


# --- limits ------------------------------------------------------------------------------------


def _check_halts(*, intent: SignalIntent, account: AccountView, limits: RiskLimits) -> None:
    """Reject any entry under the kill switch, past the daily loss limit, or with no positive equity."""
    if account.kill_switch:
        raise _Rejected(
            Rule.KILL_SWITCH, f"kill switch is on: entries are halted ({intent.action.value} {intent.symbol})"
        )
    if limits.daily_loss_limit is not None and account.pnl_today <= -limits.daily_loss_limit:
        raise _Rejected(
            Rule.DAILY_LOSS,
            f"today's P&L {_fmt(account.pnl_today)} has reached the daily loss limit "
            f"-{_fmt(limits.daily_loss_limit)}: entries are halted",
        )
    if account.equity <= 0:
        raise _Rejected(Rule.LEVERAGE, f"equity {_fmt(account.equity)} is not positive: no exposure is allowed")


def _check_limits(
    *,
    intent: SignalIntent,
    strategy_id: int,
    account: AccountView,
    market: MarketRules,
    risk: StrategyRisk,
    limits: RiskLimits,
    after: Decimal,
    price: Decimal,
) -> Decimal:
    """Reject an entry that breaches a limit; return the effective leverage."""
    symbol = intent.symbol
    if limits.max_open_positions is not None:
        occupied = _open_pairs(account)
        if (strategy_id, symbol) not in occupied and len(occupied) >= limits.max_open_positions:
            raise _Rejected(
                Rule.MAX_POSITIONS,
                f"{len(occupied)} positions are open or pending, the limit is {limits.max_open_positions}",
            )

    exposures = _gross_exposures(account, traded=(strategy_id, symbol), after=after, price=price)
    symbol_exposure = exposures.get(symbol, _ZERO)
    if limits.max_symbol_exposure is not None and symbol_exposure > limits.max_symbol_exposure:
        raise _Rejected(
            Rule.SYMBOL_EXPOSURE,
            f"{symbol} exposure {_fmt(symbol_exposure)} would exceed the limit {_fmt(limits.max_symbol_exposure)}",
        )
    account_exposure = sum(exposures.values(), _ZERO)
    if limits.max_account_exposure is not None and account_exposure > limits.max_account_exposure:
        raise _Rejected(
            Rule.ACCOUNT_EXPOSURE,
            f"account exposure {_fmt(account_exposure)} would exceed the limit {_fmt(limits.max_account_exposure)}",
        )

    cap = _leverage_cap(symbol=symbol, market=market, limits=limits)
    requested = intent.leverage if intent.leverage is not None else risk.leverage
    if account_exposure > account.equity * cap:
        ratio = (account_exposure / account.equity).quantize(Decimal("0.01"))
        raise _Rejected(
            Rule.LEVERAGE,
            f"account exposure {_fmt(account_exposure)} would be {_fmt(ratio)}x equity {_fmt(account.equity)}, "
            f"above the leverage cap {_fmt(cap)}x",
        )
    return min(requested, cap)


def _leverage_cap(*, symbol: str, market: MarketRules, limits: RiskLimits) -> Decimal:
    """Return the highest leverage allowed in a market: the account, per-market and venue caps."""
    caps = [limits.max_leverage, market.max_leverage]
    if symbol in limits.market_leverage_caps:
        caps.append(limits.market_leverage_caps[symbol])
    return min(caps)


def _open_pairs(account: AccountView) -> set[tuple[int, str]]:
    """Return the (strategy, symbol) pairs holding a position or a pending entry order."""
    net: dict[tuple[int, str], Decimal] = {}
    for p in account.positions:
        key = (p.strategy_id, p.symbol)
        net[key] = net.get(key, _ZERO) + p.quantity
    pairs = {key for key, qty in net.items() if qty != 0}
    pairs.update((o.strategy_id, o.symbol) for o in account.pending if not o.reduce_only)
    return pairs


def _gross_exposures(
    account: AccountView, *, traded: tuple[int, str], after: Decimal, price: Decimal
) -> dict[str, Decimal]:
    """Return gross notional per symbol in quote after the trade, pending entries included.

    Each (strategy, symbol) position counts |Σ qty × mark|; the traded pair counts |after| × price.
    """
    net: dict[tuple[int, str], Decimal] = {}
    for p in account.positions:
        if (p.strategy_id, p.symbol) == traded:
            continue
        key = (p.strategy_id, p.symbol)
        net[key] = net.get(key, _ZERO) + p.quantity * p.mark_price
    exposures: dict[str, Decimal] = {}
    for (_, symbol), signed_notional in net.items():
        exposures[symbol] = exposures.get(symbol, _ZERO) + abs(signed_notional)
    exposures[traded[1]] = exposures.get(traded[1], _ZERO) + abs(after) * price
    for o in account.pending:
        if not o.reduce_only:
            exposures[o.symbol] = exposures.get(o.symbol, _ZERO) + o.notional
    return exposures


# --- formatting ------------------------------------------------------------------------------------


def _accepted_detail(intent: SignalIntent, orders: list[OrderIntent]) -> str:
    legs = "; ".join(
        f"{o.purpose} {o.side.value} {_fmt(o.quantity)} {intent.symbol}"
        + (" reduce-only" if o.reduce_only else "")
        + (f" limit {_fmt(o.price)}" if o.order_type is OrderType.LIMIT and o.price is not None else "")
        for o in orders
    )
    return f"{intent.action.value}: {legs}"


def _fmt(value: Decimal) -> str:
    """Format a Decimal in plain notation without trailing zeros."""
    normal = value.normalize()
    return format(normal if normal != 0 else _ZERO, "f")
