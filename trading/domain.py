"""Pure value types of the trading core: signals, risk settings, account views, decisions. No framework imports."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from exchanges.base import Market, OrderType, Side


class Action(str, enum.Enum):
    OPEN_LONG = "open_long"
    OPEN_SHORT = "open_short"
    CLOSE = "close"
    REVERSE = "reverse"
    TARGET = "target"  # make the strategy's position `target` (signed): trade the difference


class SizingMode(str, enum.Enum):
    RISK = "risk"  # value = % of equity lost if the stop is hit
    NOTIONAL = "notional"  # value = quote amount per entry
    QUANTITY = "quantity"  # value = base quantity per entry


class ExitMode(str, enum.Enum):
    NONE = "none"
    PERCENT = "percent"  # value = % away from entry
    PRICE = "price"  # value = absolute price
    ATR = "atr"  # value = multiple of ATR away from entry


@dataclass(frozen=True)
class SizingRule:
    mode: SizingMode
    value: Decimal


@dataclass(frozen=True)
class ExitRule:
    mode: ExitMode = ExitMode.NONE
    value: Decimal | None = None


@dataclass(frozen=True)
class StrategyRisk:
    """Per-strategy sizing and exits."""

    sizing: SizingRule
    stop_loss: ExitRule = ExitRule()
    take_profit: ExitRule = ExitRule()
    leverage: Decimal = Decimal("1")


@dataclass(frozen=True)
class RiskLimits:
    """Per-account limits; None means no limit. Notional amounts in the quote currency."""

    max_leverage: Decimal = Decimal("1")
    market_leverage_caps: Mapping[str, Decimal] = field(default_factory=dict)
    max_open_positions: int | None = None
    max_symbol_exposure: Decimal | None = None
    max_account_exposure: Decimal | None = None
    daily_loss_limit: Decimal | None = None  # positive amount; entries halt when today's P&L <= -limit
    max_price_age_seconds: int = 120


@dataclass(frozen=True)
class SignalIntent:
    """What a signal asks for, already parsed and typed."""

    action: Action
    symbol: str
    quantity: Decimal | None = None  # explicit entry size in base asset (overrides sizing)
    target: Decimal | None = None  # signed target position for Action.TARGET
    order_type: OrderType = OrderType.MARKET
    price: Decimal | None = None  # limit price
    stop_loss: Decimal | None = None  # explicit stop price (overrides the strategy's rule)
    take_profit: Decimal | None = None
    leverage: Decimal | None = None  # requested leverage, capped by the limits


@dataclass(frozen=True)
class PositionView:
    """One strategy's position in one market, marked to a price."""

    strategy_id: int
    symbol: str
    quantity: Decimal  # signed
    mark_price: Decimal

    @property
    def notional(self) -> Decimal:
        return abs(self.quantity) * self.mark_price


@dataclass(frozen=True)
class PendingOrder:
    """An order sent or about to be sent whose fills are not yet in the positions."""

    strategy_id: int
    symbol: str
    side: Side
    quantity: Decimal  # unfilled remainder
    price: Decimal  # limit price or reference price
    reduce_only: bool
    protective: bool = False  # a stop-loss or take-profit resting on the venue (contingent: claims no net)
    # an exit in flight (close, stop-loss, take-profit, kill switch): the strategy's next signal waits
    exit: bool = False

    @property
    def notional(self) -> Decimal:
        return self.quantity * self.price


@dataclass(frozen=True)
class AccountView:
    """What the risk check knows of an account, read inside the account's row lock."""

    equity: Decimal  # cash + unrealized, in quote
    positions: tuple[PositionView, ...]
    pending: tuple[PendingOrder, ...]
    pnl_today: Decimal  # realized (net of fees) + unrealized change since UTC midnight
    kill_switch: bool = False


@dataclass(frozen=True)
class MarketRules:
    """The parts of a venue market that sizing needs."""

    symbol: str
    lot_size: Decimal
    min_qty: Decimal
    tick_size: Decimal
    min_notional: Decimal = Decimal("0")
    max_leverage: Decimal = Decimal("1")

    @classmethod
    def from_market(cls, market: Market) -> MarketRules:
        """The sizing rules of a venue market."""
        return cls(symbol=market.symbol, lot_size=market.lot_size, min_qty=market.min_qty,
                   tick_size=market.tick_size, min_notional=market.min_notional, max_leverage=market.max_leverage)


@dataclass(frozen=True)
class Quote:
    price: Decimal
    time: datetime


@dataclass(frozen=True)
class OrderIntent:
    side: Side
    quantity: Decimal
    order_type: OrderType
    price: Decimal | None
    reduce_only: bool
    purpose: str  # entry | exit


@dataclass(frozen=True)
class Decision:
    """The risk check's answer: accepted with orders, or rejected by the named rule."""

    accepted: bool
    rule: str
    detail: str
    orders: tuple[OrderIntent, ...] = ()
    stop_loss: Decimal | None = None
    take_profit: Decimal | None = None
    leverage: Decimal | None = None


class Rule:
    """Names of the rules a decision can cite (stored on the signal)."""

    OK = "ok"
    KILL_SWITCH = "kill_switch"
    INVALID = "invalid_input"
    STALE_PRICE = "stale_price"
    NOTHING_TO_DO = "nothing_to_do"
    DAILY_LOSS = "daily_loss_limit"
    MAX_POSITIONS = "max_open_positions"
    SYMBOL_EXPOSURE = "max_symbol_exposure"
    ACCOUNT_EXPOSURE = "max_account_exposure"
    LEVERAGE = "max_leverage"
    MIN_SIZE = "min_size"
    DUST = "dust"  # an exit's remainder below the venue's smallest order: it cannot be closed by an order
    NO_STOP = "stop_required"
