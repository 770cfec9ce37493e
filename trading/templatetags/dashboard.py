"""Template filters of the dashboard: exact Decimals without trailing zeros, signs, epoch times, stage timings."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from django import template

from exchanges.base import ms_to_datetime
from trading.fields import EXACT, tidy

register = template.Library()


@register.filter
def money(value: Any, places: int | None = None) -> str:
    """A Decimal (or its string) exactly, trailing zeros dropped; rounded half-even to `places` when given."""
    if value is None or value == "":
        return "–"
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return str(value)
    if places is not None and number.is_finite():
        number = number.quantize(Decimal(1).scaleb(-int(places)), context=EXACT)
    return format(tidy(number), "f") if number.is_finite() else str(number)


@register.filter
def sign_class(value: Any) -> str:
    """CSS class for a signed amount: pos, neg or nothing."""
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError, TypeError):
        return ""
    return "pos" if number > 0 else "neg" if number < 0 else ""


@register.filter
def from_ms(value: Any) -> datetime | None:
    """Epoch milliseconds as an aware UTC datetime."""
    try:
        return ms_to_datetime(int(value))
    except (TypeError, ValueError, OverflowError):
        return None


@register.filter
def ms_between(later: Any, earlier: Any) -> str:
    """Milliseconds from `earlier` to `later` (two datetimes), or a dash."""
    if later is None or earlier is None:
        return "–"
    return f"{int((later - earlier).total_seconds() * 1000)} ms"


@register.filter
def percent(value: Any) -> str:
    """A fraction (0.1234 or "0.1234") as a percentage with 2 decimals."""
    try:
        return f"{Decimal(str(value)) * 100:.2f} %"
    except (InvalidOperation, ValueError, TypeError):
        return "–"


@register.filter
def get(mapping: Any, key: Any) -> Any:
    """mapping[key] in a template (None when missing)."""
    try:
        return mapping.get(key)
    except AttributeError:
        return None


_PERCENT_METRICS = {"total_return", "cagr", "max_drawdown", "win_rate", "exposure_time", "average_trade_return"}


@register.filter
def metric(value: Any, name: str) -> str:
    """A backtest metric for reading: fractions as percentages, money to 8 places, ratios to 4, mappings listed."""
    if value is None:
        return "–"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items() if v) or "–"
    if name in _PERCENT_METRICS:
        return percent(value)
    if isinstance(value, (bool, int)):
        return str(value)
    if isinstance(value, str):
        return money(value, 8)
    return f"{Decimal(str(value)):.4f}"


@register.filter
def label(value: Any) -> str:
    """A snake_case name as words."""
    return str(value).replace("_", " ")


@register.filter
def as_json(value: Any) -> str:
    """A JSON value written compactly (params, configs)."""
    import json

    return json.dumps(value, separators=(", ", ": "), default=str)
