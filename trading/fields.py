"""The one definition of money columns: exact Decimal on every database."""

from __future__ import annotations

from decimal import Context, Decimal
from typing import Any

from django.db import models

MAX_DIGITS = 38
DECIMAL_PLACES = 18
EXACT = Context(prec=MAX_DIGITS + 2)  # wide enough that nothing here ever rounds


class ExactDecimalField(models.DecimalField):  # type: ignore[type-arg]
    """A DecimalField that is exact on SQLite too (SQLite's NUMERIC keeps only 15 digits: store text there)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("max_digits", MAX_DIGITS)
        kwargs.setdefault("decimal_places", DECIMAL_PLACES)
        super().__init__(*args, **kwargs)

    def get_internal_type(self) -> str:
        return "ExactDecimalField"

    def db_type(self, connection: Any) -> str:
        if connection.vendor == "sqlite":
            return "text"
        return f"numeric({self.max_digits}, {self.decimal_places})"

    def get_db_prep_value(self, value: Any, connection: Any, prepared: bool = False) -> Any:
        value = self.to_python(value)
        if value is None:
            return None
        value = value.quantize(Decimal(1).scaleb(-self.decimal_places), context=EXACT)
        return format(value, "f") if connection.vendor == "sqlite" else value

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Decimal | None:
        if value is None:
            return None
        return tidy(value if isinstance(value, Decimal) else Decimal(str(value)))


def tidy(value: Decimal) -> Decimal:
    """Drop trailing zeros without switching to exponent notation (1.500 -> 1.5, 100.0 -> 100)."""
    if value == value.to_integral_value():
        return value.quantize(Decimal(1), context=EXACT)
    return value.normalize(context=EXACT)


def money(**kwargs: Any) -> ExactDecimalField:
    """A money or quantity column: Decimal(38, 18)."""
    return ExactDecimalField(**kwargs)


def money_or_none(**kwargs: Any) -> ExactDecimalField:
    """An optional money or quantity column."""
    return ExactDecimalField(null=True, blank=True, **kwargs)
