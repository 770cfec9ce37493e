"""Orders and positions: list, detail, cancel an order, close a position."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from trading import orders, selectors, services
from trading.apis.common import (
    MoneyField,
    IdField,
    ApiPagination,
    actor,
    paginated,
    filters_parse,
    DetailSerializer,
    errors_response,
)
from trading.models import Order, Position


class OrderOutput(serializers.Serializer):
    id = serializers.IntegerField()
    client_order_id = serializers.CharField()
    venue_order_id = serializers.CharField(allow_blank=True)
    account = serializers.IntegerField(source="account_id")
    account_name = serializers.CharField(source="account.name")
    strategy = serializers.IntegerField(source="strategy_id")
    strategy_slug = serializers.CharField(source="strategy.slug")
    signal = serializers.IntegerField(source="signal_id", allow_null=True)
    symbol = serializers.CharField()
    side = serializers.ChoiceField(choices=Order.Side.choices)
    type = serializers.ChoiceField(choices=Order.Type.choices)
    purpose = serializers.ChoiceField(choices=Order.Purpose.choices)
    reduce_only = serializers.BooleanField()
    quantity = MoneyField()
    price = MoneyField(allow_null=True)
    reference_price = MoneyField(allow_null=True)
    trigger_price = MoneyField(allow_null=True)
    status = serializers.ChoiceField(choices=Order.Status.choices)
    filled_quantity = MoneyField()
    average_fill_price = MoneyField(allow_null=True)
    fees = MoneyField()
    reason = serializers.CharField(allow_blank=True)
    created_at = serializers.DateTimeField()
    submitted_at = serializers.DateTimeField(allow_null=True)
    acknowledged_at = serializers.DateTimeField(allow_null=True)
    updated_at = serializers.DateTimeField()


class OrderFilter(serializers.Serializer):
    strategy = IdField(required=False)
    account = IdField(required=False)
    status = serializers.ChoiceField(choices=Order.Status.choices, required=False)
    symbol = serializers.CharField(required=False, max_length=32)
    created_after = serializers.DateTimeField(required=False)
    created_before = serializers.DateTimeField(required=False)


class OrderListApi(APIView):
    pagination_class = ApiPagination
    @extend_schema(operation_id="orders_list", parameters=[OrderFilter], responses=OrderOutput(many=True),
                   tags=["orders"])
    def get(self, request: Request) -> Response:
        return paginated(request, self, selectors.order_list(**filters_parse(OrderFilter, request)), OrderOutput)


class OrderDetailApi(APIView):
    @extend_schema(operation_id="orders_retrieve", responses={200: OrderOutput, 404: DetailSerializer},
                   tags=["orders"])
    def get(self, request: Request, order_id: int) -> Response:
        return Response(OrderOutput(get_object_or_404(selectors.order_list(), pk=order_id)).data)


class OrderCancelApi(APIView):
    @extend_schema(operation_id="orders_cancel", request=None, tags=["orders"],
                   responses={200: OrderOutput, 404: DetailSerializer, 409: DetailSerializer},
                   description="Cancel a working order (allowed even under the kill switch); 409 if already final.")
    def post(self, request: Request, order_id: int) -> Response:
        order = get_object_or_404(Order, pk=order_id)
        if order.is_final:
            return Response({"detail": f"the order is already {order.status}"}, status=status.HTTP_409_CONFLICT)
        orders.order_cancel(order_id=order.pk, by=actor(request))
        return Response(OrderOutput(selectors.order_list().get(pk=order_id)).data)



class PositionOutput(serializers.Serializer):
    id = serializers.IntegerField()
    account = serializers.IntegerField(source="account_id")
    account_name = serializers.CharField(source="account.name")
    strategy = serializers.IntegerField(source="strategy_id")
    strategy_slug = serializers.CharField(source="strategy.slug")
    symbol = serializers.CharField()
    quantity = MoneyField()
    average_entry = MoneyField(allow_null=True)
    cost_basis = MoneyField()
    realized_pnl = MoneyField(source="net_realized_pnl")
    fees_paid = MoneyField()
    stop_loss = MoneyField(allow_null=True)
    take_profit = MoneyField(allow_null=True)
    opened_at = serializers.DateTimeField(allow_null=True)
    updated_at = serializers.DateTimeField()


class PositionFilter(serializers.Serializer):
    all = serializers.BooleanField(required=False, default=False, help_text="include flat positions")


class PositionListApi(APIView):
    pagination_class = ApiPagination
    @extend_schema(operation_id="positions_list", parameters=[PositionFilter], responses=PositionOutput(many=True),
                   tags=["positions"])
    def get(self, request: Request) -> Response:
        include_flat = bool(filters_parse(PositionFilter, request).get("all"))
        return paginated(request, self, selectors.position_list(include_flat=include_flat), PositionOutput)


class PositionCloseApi(APIView):
    @extend_schema(operation_id="positions_close", request=None, tags=["positions"],
                   responses={202: inline_serializer("PositionCloseOutput", {"signal": serializers.IntegerField()}),
                              400: errors_response(), 404: DetailSerializer},
                   description="Queue a manual close signal (processed by the engine); returns its id.")
    def post(self, request: Request, position_id: int) -> Response:
        position = get_object_or_404(Position.objects.select_related("strategy"), pk=position_id)
        signal = services.position_close(position=position, by=actor(request))
        return Response({"signal": signal.pk}, status=status.HTTP_202_ACCEPTED)


