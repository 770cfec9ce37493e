"""Strategies: list, create, edit, validate, start, pause, stop, rotate the webhook secret."""

from __future__ import annotations

from typing import Any

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from trading import selectors, services
from trading.apis.common import MoneyField, IdField, ApiPagination, actor, paginated, DetailSerializer, errors_response
from trading.models import Strategy


class StrategyOutput(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    slug = serializers.CharField()
    kind = serializers.CharField()
    symbol = serializers.CharField()
    timeframe = serializers.CharField()
    params = serializers.JSONField()
    account = serializers.IntegerField(source="account_id")
    account_name = serializers.CharField(source="account.name")
    mode = serializers.ChoiceField(choices=Strategy.Mode.choices)
    status = serializers.ChoiceField(choices=Strategy.Status.choices)
    sizing_mode = serializers.ChoiceField(choices=Strategy.SizingMode.choices)
    sizing_value = MoneyField()
    stop_loss_mode = serializers.ChoiceField(choices=Strategy.ExitMode.choices)
    stop_loss_value = MoneyField(allow_null=True)
    take_profit_mode = serializers.ChoiceField(choices=Strategy.ExitMode.choices)
    take_profit_value = MoneyField(allow_null=True)
    leverage = MoneyField()
    protective_orders = serializers.ChoiceField(choices=Strategy.Protection.choices)
    trailing_stop_percent = MoneyField(allow_null=True)
    trailing_activation_percent = MoneyField(allow_null=True)
    last_error = serializers.CharField(allow_blank=True)
    webhook_secret_set_at = serializers.DateTimeField(allow_null=True, help_text="the secret itself is never shown")
    last_evaluated_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class StrategyInput(serializers.Serializer):
    """Strategy settings; the service validates values and params (errors per field, `params.<name>`)."""

    name = serializers.CharField(max_length=100)
    slug = serializers.CharField(max_length=64)
    kind = serializers.CharField(max_length=32, required=False)
    symbol = serializers.CharField(max_length=32)
    timeframe = serializers.CharField(max_length=8, required=False)
    params = serializers.DictField(required=False)
    account = IdField()
    mode = serializers.ChoiceField(choices=Strategy.Mode.choices, required=False)
    sizing_mode = serializers.ChoiceField(choices=Strategy.SizingMode.choices, required=False)
    sizing_value = MoneyField(required=False)
    stop_loss_mode = serializers.ChoiceField(choices=Strategy.ExitMode.choices, required=False)
    stop_loss_value = MoneyField(required=False, allow_null=True)
    take_profit_mode = serializers.ChoiceField(choices=Strategy.ExitMode.choices, required=False)
    take_profit_value = MoneyField(required=False, allow_null=True)
    leverage = MoneyField(required=False)
    protective_orders = serializers.ChoiceField(choices=Strategy.Protection.choices, required=False)
    trailing_stop_percent = MoneyField(required=False, allow_null=True,
                                       help_text="trail distance, % of the price; null: no trailing stop")
    trailing_activation_percent = MoneyField(
        required=False, allow_null=True, help_text="profit % from entry at which trailing starts; null or 0: at once")


class StrategyValidateOutput(serializers.Serializer):
    valid = serializers.BooleanField()
    errors = serializers.DictField(child=serializers.ListField(child=serializers.CharField()))  # type: ignore[assignment]  # a field named like Serializer.errors; DRF reads declared fields


class StrategyListApi(APIView):
    pagination_class = ApiPagination
    @extend_schema(operation_id="strategies_list", responses=StrategyOutput(many=True),
                   parameters=[], tags=["strategies"])
    def get(self, request: Request) -> Response:
        return paginated(request, self, selectors.strategy_list(), StrategyOutput)

    @extend_schema(operation_id="strategies_create", request=StrategyInput,
                   responses={201: StrategyOutput, 400: errors_response()}, tags=["strategies"])
    def post(self, request: Request) -> Response:
        data = StrategyInput(data=request.data)
        data.is_valid(raise_exception=True)
        strategy = services.strategy_create(data=data.validated_data, by=actor(request))
        strategy = selectors.strategy_list().get(pk=strategy.pk)
        return Response(StrategyOutput(strategy).data, status=status.HTTP_201_CREATED)


class StrategyDetailApi(APIView):
    @extend_schema(operation_id="strategies_retrieve", responses={200: StrategyOutput, 404: DetailSerializer},
                   tags=["strategies"])
    def get(self, request: Request, strategy_id: int) -> Response:
        return Response(StrategyOutput(get_object_or_404(selectors.strategy_list(), pk=strategy_id)).data)

    @extend_schema(operation_id="strategies_update", request=StrategyInput(partial=True),
                   responses={200: StrategyOutput, 400: errors_response(), 404: DetailSerializer},
                   tags=["strategies"])
    def patch(self, request: Request, strategy_id: int) -> Response:
        strategy = get_object_or_404(selectors.strategy_list(), pk=strategy_id)
        data = StrategyInput(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        services.strategy_update(strategy=strategy, data=data.validated_data, by=actor(request))
        return Response(StrategyOutput(selectors.strategy_list().get(pk=strategy_id)).data)


class StrategyValidateApi(APIView):
    @extend_schema(operation_id="strategies_validate", request=StrategyInput,
                   responses={200: StrategyValidateOutput}, tags=["strategies"],
                   description="Dry run: check settings without saving; errors per field.")
    def post(self, request: Request) -> Response:
        data = StrategyInput(data=request.data)
        if not data.is_valid():
            errors = {k: [str(m) for m in (v if isinstance(v, list) else [v])] for k, v in data.errors.items()}
            return Response({"valid": False, "errors": errors})
        _, errors = services.strategy_validate(data.validated_data)
        return Response({"valid": not errors, "errors": errors})


class _StrategyTransitionApi(APIView):
    service: Any = None

    def post(self, request: Request, strategy_id: int) -> Response:
        strategy = get_object_or_404(Strategy, pk=strategy_id)
        type(self).service(strategy=strategy, by=actor(request))
        return Response(StrategyOutput(selectors.strategy_list().get(pk=strategy_id)).data)


_transition_schema = extend_schema(request=None, responses={200: StrategyOutput, 404: DetailSerializer},
                                   tags=["strategies"])


@_transition_schema
class StrategyStartApi(_StrategyTransitionApi):
    service = staticmethod(services.strategy_start)


@_transition_schema
class StrategyPauseApi(_StrategyTransitionApi):
    service = staticmethod(services.strategy_pause)


@_transition_schema
class StrategyStopApi(_StrategyTransitionApi):
    service = staticmethod(services.strategy_stop)


class StrategySecretRotateApi(APIView):
    """Issue a new webhook secret for a strategy; the secret is shown in this response only."""

    permission_classes = [IsAdminUser]

    @extend_schema(operation_id="strategies_rotate_secret", request=None, tags=["strategies"],
                   responses={200: inline_serializer("StrategySecretOutput", {"secret": serializers.CharField()}),
                              404: DetailSerializer})
    def post(self, request: Request, strategy_id: int) -> Response:
        strategy = get_object_or_404(Strategy, pk=strategy_id)
        secret = services.strategy_webhook_secret_rotate(strategy=strategy, by=actor(request))
        return Response({"secret": secret}, headers={"Cache-Control": "no-store"})


