"""Signals: list and detail, with each one's decision trail and timings."""

from __future__ import annotations

from typing import Any

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema, extend_schema_field, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from trading import selectors
from trading.apis.common import MoneyField, IdField, ApiPagination, paginated, filters_parse, DetailSerializer
from trading.models import Order, Signal


class SignalOrderOutput(serializers.Serializer):
    id = serializers.IntegerField()
    client_order_id = serializers.CharField()
    side = serializers.ChoiceField(choices=Order.Side.choices)
    purpose = serializers.ChoiceField(choices=Order.Purpose.choices)
    quantity = MoneyField()
    status = serializers.ChoiceField(choices=Order.Status.choices)
    filled_quantity = MoneyField()
    average_fill_price = MoneyField(allow_null=True)
    fees = MoneyField()


def _ms(later: Any, earlier: Any) -> int | None:
    if later is None or earlier is None:
        return None
    return int((later - earlier).total_seconds() * 1000)


class SignalOutput(serializers.Serializer):
    id = serializers.IntegerField()
    strategy = serializers.IntegerField(source="strategy_id")
    strategy_slug = serializers.CharField(source="strategy.slug")
    account = serializers.IntegerField(source="account_id")
    source = serializers.ChoiceField(choices=Signal.Source.choices)  # type: ignore[assignment]  # a field named like Field.source; DRF reads declared fields
    idempotency_key = serializers.CharField()
    action = serializers.ChoiceField(choices=Signal.Action.choices)
    symbol = serializers.CharField()
    quantity = MoneyField(allow_null=True)
    target = MoneyField(allow_null=True)
    order_type = serializers.CharField()
    price = MoneyField(allow_null=True)
    stop_loss = MoneyField(allow_null=True)
    take_profit = MoneyField(allow_null=True)
    status = serializers.ChoiceField(choices=Signal.Status.choices)
    decision_rule = serializers.CharField(allow_blank=True)
    decision_detail = serializers.CharField(allow_blank=True)
    received_at = serializers.DateTimeField()
    accepted_at = serializers.DateTimeField(allow_null=True)
    submitted_at = serializers.DateTimeField(allow_null=True)
    acknowledged_at = serializers.DateTimeField(allow_null=True)
    filled_at = serializers.DateTimeField(allow_null=True)
    latency_ms = serializers.SerializerMethodField()
    orders = SignalOrderOutput(many=True)

    @extend_schema_field(inline_serializer("SignalLatencies", {
        name: serializers.IntegerField(allow_null=True)
        for name in ("accept", "submit", "acknowledge", "fill", "total")
    }))
    def get_latency_ms(self, obj: Signal) -> dict[str, int | None]:
        """Milliseconds of each stage since the previous one, and from receipt to fill."""
        return {
            "accept": _ms(obj.accepted_at, obj.received_at),
            "submit": _ms(obj.submitted_at, obj.accepted_at),
            "acknowledge": _ms(obj.acknowledged_at, obj.submitted_at),
            "fill": _ms(obj.filled_at, obj.acknowledged_at),
            "total": _ms(obj.filled_at, obj.received_at),
        }


class SignalFilter(serializers.Serializer):
    strategy = IdField(required=False)
    source = serializers.ChoiceField(choices=Signal.Source.choices, required=False)  # type: ignore[assignment]  # as above
    status = serializers.ChoiceField(choices=Signal.Status.choices, required=False)
    decision_rule = serializers.CharField(required=False, max_length=32)
    received_after = serializers.DateTimeField(required=False)
    received_before = serializers.DateTimeField(required=False)
    problem = serializers.ChoiceField(choices=list(selectors.SIGNAL_PROBLEMS.items()), required=False)


class SignalListApi(APIView):
    pagination_class = ApiPagination
    @extend_schema(operation_id="signals_list", parameters=[SignalFilter], responses=SignalOutput(many=True),
                   tags=["signals"])
    def get(self, request: Request) -> Response:
        return paginated(request, self, selectors.signal_list(**filters_parse(SignalFilter, request)), SignalOutput)


class SignalDetailApi(APIView):
    @extend_schema(operation_id="signals_retrieve", responses={200: SignalOutput, 404: DetailSerializer},
                   tags=["signals"])
    def get(self, request: Request, signal_id: int) -> Response:
        return Response(SignalOutput(get_object_or_404(selectors.signal_list(), pk=signal_id)).data)


