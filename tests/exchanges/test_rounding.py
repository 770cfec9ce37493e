"""Rounding at the order boundary, exact at every magnitude a money column holds: quantities never round up past
the lot, limit prices never onto a worse tick than the trader asked, webhook numbers kept digit for digit."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from exchanges.base import OrderRequest, OrderType, Side, round_down, round_up
from tests.exchanges.test_paper import make_paper
from webhooks.parsers import _number


@pytest.mark.parametrize("value,step,down,up", [
    ("12345678901.999999999999999999", "1e-8", "12345678901.99999999", "12345678902.00000000"),
    ("99999999999999999999.999999999999999999", "0.01", "99999999999999999999.99", "100000000000000000000.00"),
    ("0.123", "0.01", "0.12", "0.13"),
    ("0.12", "0.01", "0.12", "0.12"),
    ("7", "2", "6", "8"),
    ("0", "0.1", "0", "0"),
])
def test_floors_and_ceilings_to_a_step_are_exact(value: str, step: str, down: str, up: str) -> None:
    assert round_down(D(value), D(step)) == D(down)
    assert round_up(D(value), D(step)) == D(up)
    assert round_down(D(value), D(step)) <= D(value) <= round_up(D(value), D(step))


@pytest.mark.parametrize("side,asked,sent", [
    (Side.BUY, "30000.009", "30000.00"),  # a buy limit never goes out above what was asked
    (Side.SELL, "30000.001", "30000.01"),  # a sell limit never below
    (Side.BUY, "30000.01", "30000.01"),  # on the tick: unchanged
])
def test_a_limit_price_goes_onto_the_tick_never_worse_than_asked(side: Side, asked: str, sent: str) -> None:
    paper, _ = make_paper()
    request = OrderRequest(client_order_id="c1", symbol="BTC/USD", side=side, type=OrderType.LIMIT,
                           quantity=D("0.123456789"), price=D(asked))
    quantized = paper.quantize(request)
    assert quantized.price == D(sent)
    assert quantized.quantity <= request.quantity


def test_a_market_reference_price_still_leaves_room_for_slippage() -> None:
    paper, _ = make_paper()
    buy = OrderRequest(client_order_id="c2", symbol="BTC/USD", side=Side.BUY, type=OrderType.MARKET,
                       quantity=D("1"), price=D("30000.001"))
    assert paper.quantize(buy).price == D("30000.01")


@pytest.mark.parametrize("text", ["99999999999.999999999999999999", "12345678901.123456789012345678"])
def test_webhook_numbers_are_kept_digit_for_digit(text: str) -> None:
    errors: dict[str, str] = {}
    value = _number(errors, {"contracts": text}, "contracts")
    assert not errors and value == D(text)
