from __future__ import annotations

from decimal import Context, Decimal, Inexact, InvalidOperation, localcontext

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exchanges.base import Side
from trading.pnl import EMPTY, PositionState, apply_fill, unrealized

D = Decimal
# The tests' own sums must be exact too: a wide context that raises instead of rounding.
EXACT = Context(prec=80, traps=[Inexact, InvalidOperation])


def fills(state: PositionState, *steps: tuple[Side, str, str, str]) -> tuple[PositionState, list[Decimal]]:
    """Apply (side, qty, price, fee) steps in order; return the final state and each fill's realized P&L."""
    realized = []
    for side, qty, price, fee in steps:
        state, pnl = apply_fill(state, side=side, quantity=D(qty), price=D(price), fee=D(fee))
        realized.append(pnl)
    return state, realized


# --- hand-computed examples ----------------------------------------------------------------------


def test_empty_state_is_flat_with_no_average_entry() -> None:
    assert EMPTY == PositionState() == PositionState.EMPTY
    assert EMPTY.quantity == 0 and EMPTY.cost == 0 and EMPTY.realized == 0 and EMPTY.fees == 0
    assert EMPTY.avg_entry is None
    assert EMPTY.net_realized == 0


def test_long_round_trip_with_fees_realizes_price_move_minus_fees() -> None:
    state, pnls = fills(EMPTY, (Side.BUY, "2", "100", "0.2"), (Side.SELL, "2", "110", "0.22"))

    assert pnls == [D("0"), D("20")]
    assert state == PositionState(quantity=D("0"), cost=D("0"), realized=D("20"), fees=D("0.42"))
    assert state.net_realized == D("19.58")


def test_short_round_trip_profits_when_price_falls() -> None:
    opened, _ = fills(EMPTY, (Side.SELL, "1.5", "200", "0.3"))
    assert opened.quantity == D("-1.5")
    assert opened.cost == D("-300")
    assert opened.avg_entry == D("200")

    state, pnls = fills(opened, (Side.BUY, "1.5", "180", "0.27"))

    assert pnls == [D("30")]
    assert state.quantity == 0 and state.cost == 0
    assert state.net_realized == D("29.43")


def test_adding_to_a_long_averages_the_entry_price() -> None:
    state, pnls = fills(EMPTY, (Side.BUY, "3", "10", "0"), (Side.BUY, "1", "14", "0"))

    assert pnls == [0, 0]
    assert state.quantity == D("4")
    assert state.cost == D("44")
    assert state.avg_entry == D("11")


def test_partial_closes_realize_against_the_average_entry() -> None:
    state, pnls = fills(
        EMPTY,
        (Side.BUY, "3", "10", "0"),
        (Side.BUY, "1", "14", "0"),
        (Side.SELL, "1", "12", "0"),  # closes 1 of 4 at avg 11: +1
        (Side.SELL, "3", "9", "0"),  # closes the rest at avg 11: -6
    )

    assert pnls[2:] == [D("1"), D("-6")]
    assert state.realized == D("-5") == (D("12") + D("27")) - D("44")
    assert state.quantity == 0 and state.cost == 0


def test_partial_close_removes_cost_rounded_half_even_to_1e18_and_full_close_removes_the_rest() -> None:
    state, _ = fills(EMPTY, (Side.BUY, "1", "10", "0"), (Side.BUY, "2", "10.01", "0"))
    assert state.cost == D("30.02")

    state, pnls = fills(state, (Side.SELL, "1", "11", "0"))
    # 30.02 / 3 = 10.00666… → 10.006666666666666667
    assert pnls == [D("0.993333333333333333")]
    assert state.cost == D("20.013333333333333333")
    assert state.quantity == D("2")

    state, pnls = fills(state, (Side.SELL, "2", "11", "0"))
    assert pnls == [D("1.986666666666666667")]
    assert state.realized == D("2.98") == D("33") - D("30.02")
    assert state.cost == 0


def test_cost_share_ties_round_to_even() -> None:
    state, _ = fills(EMPTY, (Side.BUY, "2", "1.5E-18", "0"))  # cost 3E-18
    state, pnls = fills(state, (Side.SELL, "1", "1.5E-18", "0"))  # 1.5E-18 of cost → 2E-18

    assert state.cost == D("1E-18")
    assert pnls == [D("-0.5E-18")]

    state, pnls = fills(state, (Side.SELL, "1", "1.5E-18", "0"))
    assert pnls == [D("0.5E-18")]
    assert state.realized == 0


def test_fill_larger_than_the_position_flips_it_at_the_fill_price() -> None:
    state, pnls = fills(EMPTY, (Side.BUY, "1", "100", "0.1"), (Side.SELL, "3", "120", "0.3"))

    assert pnls == [D("0"), D("20")]
    assert state.quantity == D("-2")
    assert state.cost == D("-240")
    assert state.avg_entry == D("120")
    assert state.fees == D("0.4")

    state, pnls = fills(state, (Side.BUY, "2", "110", "0.2"))
    assert pnls == [D("20")]
    assert state.realized == D("40")
    assert state.net_realized == D("39.4")


def test_short_flips_to_long() -> None:
    state, pnls = fills(EMPTY, (Side.SELL, "2", "50", "0"), (Side.BUY, "5", "40", "0"))

    assert pnls == [D("0"), D("20")]
    assert state.quantity == D("3")
    assert state.cost == D("120")


def test_unrealized_is_quantity_times_mark_minus_cost() -> None:
    long, _ = fills(EMPTY, (Side.BUY, "2", "100", "0"))
    short, _ = fills(EMPTY, (Side.SELL, "2", "100", "0"))

    assert unrealized(long, D("105")) == D("10")
    assert unrealized(short, D("105")) == D("-10")
    assert unrealized(EMPTY, D("105")) == 0


@pytest.mark.parametrize(
    ("quantity", "price", "fee"),
    [
        ("0", "100", "0"),
        ("-1", "100", "0"),
        ("1", "0", "0"),
        ("1", "-100", "0"),
        ("NaN", "100", "0"),
        ("1", "Infinity", "0"),
        ("1", "100", "sNaN"),
    ],
)
def test_apply_fill_rejects_non_positive_or_non_finite_numbers(quantity: str, price: str, fee: str) -> None:
    with pytest.raises(ValueError):
        apply_fill(EMPTY, side=Side.BUY, quantity=D(quantity), price=D(price), fee=D(fee))


def test_a_maker_rebate_is_a_negative_fee_that_adds_to_net_pnl() -> None:
    """Hyperliquid reports a maker rebate as a negative fee: it must be booked, not refused."""
    state, _ = apply_fill(EMPTY, side=Side.BUY, quantity=D("1"), price=D("100"), fee=D("-0.0125"))
    state, realized = apply_fill(state, side=Side.SELL, quantity=D("1"), price=D("110"), fee=D("0.05"))
    assert realized == D("10") and state.fees == D("0.0375") and state.net_realized == D("9.9625")


def test_apply_fill_rejects_floats() -> None:
    with pytest.raises(TypeError):
        apply_fill(EMPTY, side=Side.BUY, quantity=0.1, price=D("100"), fee=D("0"))  # type: ignore[arg-type]


def test_unrealized_rejects_a_non_positive_mark() -> None:
    with pytest.raises(ValueError):
        unrealized(EMPTY, D("0"))


def test_position_state_is_frozen() -> None:
    with pytest.raises(AttributeError):
        EMPTY.quantity = D("1")  # type: ignore[misc]


# --- properties ----------------------------------------------------------------------------------


def decimals(*, max_units: int, max_places: int) -> st.SearchStrategy[Decimal]:
    """Positive Decimals with up to max_places decimal places."""
    return st.builds(
        lambda units, places: D(units).scaleb(-places),
        st.integers(min_value=1, max_value=max_units),
        st.integers(min_value=0, max_value=max_places),
    )


quantities = decimals(max_units=10**9, max_places=8)
prices = decimals(max_units=10**9, max_places=6)
fees = st.one_of(st.just(D("0")), decimals(max_units=10**6, max_places=8))
sides = st.sampled_from([Side.BUY, Side.SELL])


@given(
    side=sides,
    entries=st.lists(st.tuples(quantities, prices, fees), min_size=1, max_size=6),
    data=st.data(),
)
def test_round_trip_realizes_exactly_the_cash_flow(
    side: Side, entries: list[tuple[Decimal, Decimal, Decimal]], data: st.DataObject
) -> None:
    total = sum((q for q, _, _ in entries), D("0"))
    step = D("1E-8")
    units = int(total / step)
    cuts = sorted(data.draw(st.sets(st.integers(min_value=1, max_value=units - 1), max_size=5)) if units > 1 else [])
    bounds = [0, *cuts, units]
    exits = [
        (D(hi - lo) * step, data.draw(prices), data.draw(fees)) for lo, hi in zip(bounds, bounds[1:], strict=False)
    ]

    state = EMPTY
    cash = D("0")
    paid = D("0")
    with localcontext(EXACT):
        for fill_side, legs in ((side, entries), (side.opposite, exits)):
            for qty, price, fee in legs:
                state, _ = apply_fill(state, side=fill_side, quantity=qty, price=price, fee=fee)
                cash -= fill_side.sign * qty * price
                paid += fee

        assert state.quantity == 0
        assert state.cost == 0
        assert state.fees == paid
        assert state.net_realized == cash - paid


@given(
    steps=st.lists(st.tuples(sides, quantities, prices, fees), min_size=1, max_size=10),
)
def test_realized_plus_open_cost_always_equals_the_cash_flow(
    steps: list[tuple[Side, Decimal, Decimal, Decimal]],
) -> None:
    state = EMPTY
    cash = D("0")
    realized = D("0")
    with localcontext(EXACT):
        for side, qty, price, fee in steps:
            state, pnl = apply_fill(state, side=side, quantity=qty, price=price, fee=fee)
            cash -= side.sign * qty * price
            realized += pnl
            assert state.realized == realized
            assert state.realized == cash + state.cost
            assert (state.quantity == 0) == (state.cost == 0)


@given(side=sides, qty=quantities, price=prices, fee=fees)
def test_unrealized_at_the_entry_price_is_zero_for_a_single_fill(
    side: Side, qty: Decimal, price: Decimal, fee: Decimal
) -> None:
    state, pnl = apply_fill(EMPTY, side=side, quantity=qty, price=price, fee=fee)

    assert pnl == 0
    assert state.quantity == side.sign * qty
    assert state.avg_entry == price
    assert unrealized(state, price) == 0


@given(side=sides, qty=quantities, entry=prices, exit_price=prices)
def test_single_fill_round_trip_realizes_price_move_times_signed_quantity(
    side: Side, qty: Decimal, entry: Decimal, exit_price: Decimal
) -> None:
    state, _ = apply_fill(EMPTY, side=side, quantity=qty, price=entry, fee=D("0"))
    state, pnl = apply_fill(state, side=side.opposite, quantity=qty, price=exit_price, fee=D("0"))

    with localcontext(EXACT):
        assert pnl == (exit_price - entry) * side.sign * qty
    assert state.realized == pnl
    assert state == PositionState(quantity=D("0"), cost=D("0"), realized=pnl, fees=D("0"))
