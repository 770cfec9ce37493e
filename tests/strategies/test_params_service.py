"""The trading services validate rule params per field, through the kinds the strategies app registers."""

from __future__ import annotations

from typing import Any

import pytest

from strategies.library import RULES

pytestmark = pytest.mark.django_db


def strategy_data(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """A complete strategy definition on a fresh paper account, with the given rule params."""
    from trading import services

    account = services.account_create(data={"name": "x", "venue": "paper", "network": "paper"}, by="t")
    return {"name": "rule", "slug": f"rule-{kind}", "kind": kind, "params": params, "account": account,
            "symbol": "BTC/USD", "mode": "paper", "sizing_mode": "quantity", "sizing_value": "0.1"}


def test_every_rule_is_a_configurable_strategy_kind() -> None:
    from trading import services

    assert set(RULES) <= set(services.strategy_kinds())


def test_valid_rule_params_pass_the_strategy_service() -> None:
    from trading import services

    _, errors = services.strategy_validate(strategy_data("rsi", {"period": 21, "oversold": 25}))
    assert errors == {}


@pytest.mark.parametrize(
    ("kind", "params", "fields"),
    [
        ("rsi", {"period": 1}, {"params.period"}),
        ("rsi", {"oversold": 80, "overbought": 70}, {"params.oversold"}),
        ("macd", {"fast": 30, "slow": 26}, {"params.fast"}),
        ("bollinger", {"mode": "sideways", "stddev": 0}, {"params.mode", "params.stddev"}),
        ("combo", {"rules": ["rsi", "nope"], "rsi": {"period": 1}}, {"params.rules", "params.rsi.period"}),
        ("rsi", {"length": 14}, {"params.length"}),
    ],
)
def test_strategy_service_refuses_invalid_rule_params_per_field(kind: str, params: dict[str, Any],
                                                                fields: set[str]) -> None:
    from trading import services

    _, errors = services.strategy_validate(strategy_data(kind, params))
    assert set(errors) == fields
