"""The strategy-rule library: one rule per module, registered here by name. Pure."""

from __future__ import annotations

from strategies.base import StrategyRule
from strategies.library.bollinger import BollingerRule
from strategies.library.combo import ComboRule
from strategies.library.macd import MacdRule
from strategies.library.rsi import RsiRule

RULES: dict[str, type[StrategyRule]] = {r.name: r for r in (RsiRule, MacdRule, BollingerRule, ComboRule)}

__all__ = ["RULES", "BollingerRule", "ComboRule", "MacdRule", "RsiRule"]
