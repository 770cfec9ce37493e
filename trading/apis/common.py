"""Shared pieces of the control API: errors, money fields, pagination, filters."""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema_field
from rest_framework import serializers
from rest_framework.exceptions import ValidationError as DrfValidationError
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework.views import exception_handler as drf_exception_handler

from trading.fields import ID_MAX, tidy


DECIMAL_PATTERN = r"^-?[0-9]+(\.[0-9]+)?$"


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, plus services' django ValidationError(dict) as 400 with errors per field."""
    if isinstance(exc, DjangoValidationError):
        detail = exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        exc = DrfValidationError(detail)
    return drf_exception_handler(exc, context)


@extend_schema_field({"type": "string", "format": "decimal", "pattern": DECIMAL_PATTERN})
class MoneyField(serializers.Field):
    """A Decimal as a string ("12.5"), never a float; accepts strings and integers, rejects NaN and infinity."""

    default_error_messages = {
        "invalid": "a decimal number written as a string, such as \"12.5\" (digits 0-9, an optional leading minus "
                   "and decimal point; no exponent)",
    }

    def to_representation(self, value: Decimal) -> str:
        return format(tidy(Decimal(value)), "f")

    def to_internal_value(self, data: Any) -> Decimal:
        """The schema's own pattern, strictly (the range a column holds is checked by the services, for every
        caller)."""
        if isinstance(data, bool) or not isinstance(data, (str, int)):
            self.fail("invalid")
        text = str(data)
        if not _DECIMAL.fullmatch(text):  # ASCII digits only: no "１２", "1_0", "+1", " 1 ", "1e3", "NaN"
            self.fail("invalid")
        return Decimal(text)


_DECIMAL = re.compile(DECIMAL_PATTERN.strip("^$"))


def IdField(**kwargs: Any) -> serializers.IntegerField:  # noqa: N802 - a field constructor, as DRF's
    """A database id: 1 to 2**63-1."""
    return serializers.IntegerField(min_value=1, max_value=ID_MAX, **kwargs)


class ApiPagination(LimitOffsetPagination):
    """Limit/offset pages: 50 by default (PAGE_SIZE), at most 500 rows a page."""

    max_limit = 500


def actor(request: Request) -> str:
    """Who did it, for the audit trail."""
    return f"api:{request.user.get_username()}"


def paginated(request: Request, view: APIView, queryset: QuerySet[Any], serializer: type[serializers.Serializer],
              context: Mapping[str, Any] | None = None) -> Response:
    """One page of a queryset with limit/offset pagination."""
    paginator = (getattr(view, "pagination_class", None) or ApiPagination)()
    page = paginator.paginate_queryset(queryset, request, view=view)
    return paginator.get_paginated_response(serializer(page, many=True, context=dict(context or {})).data)


def filters_parse(serializer: type[serializers.Serializer], request: Request) -> dict[str, Any]:
    """Validate the query string with a filter serializer (400 with errors per parameter)."""
    filters = serializer(data=request.query_params)
    filters.is_valid(raise_exception=True)
    return {k: v for k, v in filters.validated_data.items() if v not in (None, "")}


class DetailSerializer(serializers.Serializer):
    detail = serializers.CharField()


def errors_response(description: str = "errors per field") -> OpenApiResponse:
    return OpenApiResponse(response=OpenApiTypes.OBJECT, description=description)


