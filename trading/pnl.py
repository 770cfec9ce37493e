"""Position accounting in exact Decimal: average cost basis, realized and unrealized P&L, fees. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import (
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
    localcontext,
)
from fractions import Fraction
from typing import ClassVar

from exchanges.base import Side

PRECISION = 50
# Share of cost basis removed by a partial close is rounded to this step; everything else is exact.
COST_STEP = Decimal("1e-18")
_COST_SCALE = 10**18

# Products and sums must be exact: trapping Inexact turns any silent rounding into an error.
_EXACT = Context(
    prec=PRECISION,
    rounding=ROUND_HALF_EVEN,
    traps=[InvalidOperation, DivisionByZero, Overflow, Inexact],
)
# Divisions (the average entry price) are rounded to PRECISION significant digits.
_DIVIDE = Context(prec=PRECISION, rounding=ROUND_HALF_EVEN, traps=[InvalidOperation, DivisionByZero, Overflow])

_ZERO = Decimal("0")


@dataclass(frozen=True)
class PositionState:
    """One position: signed quantity in base, signed cost basis in quote, gross realized P&L and fees paid."""

    quantity: Decimal = _ZERO  # > 0 long, < 0 short
    cost: Decimal = _ZERO  # Σ signed qty × entry price of the open quantity
    realized: Decimal = _ZERO  # gross realized P&L in quote, before fees
    fees: Decimal = _ZERO  # fees paid in quote

    EMPTY: ClassVar[PositionState]

    @property
    def avg_entry(self) -> Decimal | None:
        """Return the average entry price (cost / quantity), or None when flat."""
        if self.quantity == 0:
            return None
        with localcontext(_DIVIDE):
            return self.cost / self.quantity

    @property
    def net_realized(self) -> Decimal:
        """Return realized P&L net of fees, in quote."""
        with localcontext(_EXACT):
            return self.realized - self.fees


EMPTY = PositionState()
PositionState.EMPTY = EMPTY


def apply_fill(
    state: PositionState, *, side: Side, quantity: Decimal, price: Decimal, fee: Decimal
) -> tuple[PositionState, Decimal]:
    """Apply one fill (qty in base, price and fee in quote); return the new state and this fill's gross realized P&L.

    A reducing fill removes the closed share of the cost basis (rounded half-even to 1e-18); a fill that
    brings the position to zero removes all remaining cost, so a round trip realizes exactly
    Σ exit notional − Σ entry notional. A fill larger than the position closes it and opens the rest at
    the fill price.
    """
    _check("quantity", quantity, positive=True)
    _check("price", price, positive=True)
    _check("fee", fee, positive=False, signed=True)  # negative: a maker rebate (Hyperliquid pays them)
    with localcontext(_EXACT):
        signed = side.sign * quantity
        fees = state.fees + fee
        held = state.quantity
        if held == 0 or (held > 0) == (signed > 0):
            opened = PositionState(held + signed, state.cost + signed * price, state.realized, fees)
            return opened, _ZERO

        direction = 1 if held > 0 else -1
        size = abs(held)
        closed = min(quantity, size)
        if closed == size:
            removed_cost = state.cost
        else:
            removed_cost = _share_of_cost(state.cost, closed, size)
        pnl = direction * closed * price - removed_cost
        remainder = quantity - closed
        if remainder > 0:
            new_quantity = side.sign * remainder
            new_cost = new_quantity * price
        else:
            new_quantity = held - direction * closed
            new_cost = state.cost - removed_cost
        return PositionState(new_quantity, new_cost, state.realized + pnl, fees), pnl


def unrealized(state: PositionState, mark: Decimal) -> Decimal:
    """Return the unrealized P&L in quote at a mark price: quantity × mark − cost."""
    _check("mark", mark, positive=True)
    with localcontext(_EXACT):
        return state.quantity * mark - state.cost


def _share_of_cost(cost: Decimal, closed: Decimal, size: Decimal) -> Decimal:
    """Return cost × closed / size rounded half-even to COST_STEP, computed exactly (no double rounding)."""
    exact = Fraction(cost) * Fraction(closed) / Fraction(size)
    units = round(exact * _COST_SCALE)  # round() on a Fraction is half-even
    return Decimal(units).scaleb(-18, _EXACT)


def _check(name: str, value: Decimal, *, positive: bool, signed: bool = False) -> None:
    """Raise unless value is a finite Decimal, > 0 when positive, else >= 0 unless signed."""
    if not isinstance(value, Decimal):
        raise TypeError(f"{name} must be a Decimal, got {type(value).__name__}")
    if not value.is_finite():
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    if not positive and not signed and value < 0:
        raise ValueError(f"{name} must not be negative, got {value}")
