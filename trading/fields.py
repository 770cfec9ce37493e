"""The one definition of money columns: exact Decimal on every database."""

from __future__ import annotations

from decimal import Context, Decimal
from typing import Any

from django.db import models

MAX_DIGITS = 38
DECIMAL_PLACES = 18
EXACT = Context(prec=MAX_DIGITS + 2)  # wide enough that nothing here ever rounds
# Primary keys are BigAutoField: 1 to 2**63-1. Counts in integer columns (PositiveIntegerField): up to 2**31-1.
ID_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1


class ExactDecimalField(models.DecimalField):
    """A DecimalField that is exact on SQLite too (SQLite's NUMERIC keeps only 15 digits: store text there)."""

    quantize_context = EXACT  # also infra/rows.py's fast preparation of this field (it imports nothing of ours)

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


def parse_id(value: object) -> int | None:
    """A database id given as an int or ASCII digits ("12"), in the id column's range; None for anything else
    ("²" is a digit to str.isdigit but not to int(); 2**64 overflows the column)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        if not (value.isascii() and value.isdigit()) or len(value) > 19:
            return None
        value = int(value)
    return value if isinstance(value, int) and 1 <= value <= ID_MAX else None


def column_error(number: Decimal) -> str | None:
    """Why a finite Decimal does not fit a money column exactly, or None: the column would refuse it (too large) or
    round it (1e-19 would be stored as 0), and either must be a 400 naming the field, never a 500 or a silent change."""
    _, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int), "finite numbers only"
    if number and number.adjusted() >= MAX_DIGITS - DECIMAL_PLACES:
        return f"at most {MAX_DIGITS - DECIMAL_PLACES} digits before the decimal point"
    trailing_zeros = len(digits) - len("".join(map(str, digits)).rstrip("0"))
    if number and exponent + trailing_zeros < -DECIMAL_PLACES:
        return f"at most {DECIMAL_PLACES} digits after the decimal point"
    return None
