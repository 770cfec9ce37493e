"""The control API: thin views over trading services (writes) and selectors (reads).

Every authenticated user shares one book (there is no per-user ownership yet); the kill switch and account
writes and credential fields are for staff only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import QuerySet
from django.http import Http404
from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field, inline_serializer
from rest_framework import serializers, status
from rest_framework.exceptions import ValidationError as DrfValidationError
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.permissions import IsAdminUser, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework.views import exception_handler as drf_exception_handler

from trading import orders, selectors, services
from trading.fields import ID_MAX, INT32_MAX, tidy
from trading.models import Order, Position, Signal, Strategy, VenueAccount

DECIMAL_PATTERN = r"^-?[0-9]+(\.[0-9]+)?$"


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, plus services' django ValidationError(dict) as 400 with errors per field."""
    if isinstance(exc, DjangoValidationError):
        detail = exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        exc = DrfValidationError(detail)
    return drf_exception_handler(exc, context)


@extend_schema_field({"type": "string", "format": "decimal", "pattern": DECIMAL_PATTERN})
class MoneyField(serializers.Field):  # type: ignore[type-arg]
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


class DetailSerializer(serializers.Serializer):  # type: ignore[type-arg]
    detail = serializers.CharField()


def _errors_response(description: str = "errors per field") -> OpenApiResponse:
    return OpenApiResponse(response=OpenApiTypes.OBJECT, description=description)


# --------------------------------------------------------------------------------------------- strategies


class StrategyOutput(serializers.Serializer):  # type: ignore[type-arg]
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


class StrategyInput(serializers.Serializer):  # type: ignore[type-arg]
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
    trailing_activation_percent = MoneyField(required=False, allow_null=True,
                                             help_text="profit % from entry at which trailing starts; null or 0: at once")


class StrategyValidateOutput(serializers.Serializer):  # type: ignore[type-arg]
    valid = serializers.BooleanField()
    errors = serializers.DictField(child=serializers.ListField(child=serializers.CharField()))


class StrategyListApi(APIView):
    pagination_class = ApiPagination
    @extend_schema(operation_id="strategies_list", responses=StrategyOutput(many=True),
                   parameters=[], tags=["strategies"])
    def get(self, request: Request) -> Response:
        return paginated(request, self, selectors.strategy_list(), StrategyOutput)

    @extend_schema(operation_id="strategies_create", request=StrategyInput,
                   responses={201: StrategyOutput, 400: _errors_response()}, tags=["strategies"])
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
                   responses={200: StrategyOutput, 400: _errors_response(), 404: DetailSerializer},
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


# --------------------------------------------------------------------------------------------- accounts


class AccountOutput(serializers.Serializer):  # type: ignore[type-arg]
    id = serializers.IntegerField()
    name = serializers.CharField()
    venue = serializers.ChoiceField(choices=VenueAccount.Venue.choices)
    network = serializers.ChoiceField(choices=VenueAccount.Network.choices)
    quote_asset = serializers.CharField()
    cash = MoneyField()
    max_leverage = MoneyField()
    market_leverage_caps = serializers.DictField(child=serializers.CharField())
    max_open_positions = serializers.IntegerField(allow_null=True)
    max_symbol_exposure = MoneyField(allow_null=True)
    max_account_exposure = MoneyField(allow_null=True)
    daily_loss_limit = MoneyField(allow_null=True)
    paper_initial_cash = MoneyField()
    paper_slippage_bps = MoneyField()
    paper_max_volume_share = MoneyField(allow_null=True)
    paper_latency_ms = serializers.IntegerField()
    last_reconciled_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()
    # Staff only (null for others): the env-var prefix and which of its variables are set, masked.
    credentials_env = serializers.SerializerMethodField()
    credentials = serializers.SerializerMethodField()

    def _staff(self) -> bool:
        request = self.context.get("request")
        return bool(request and request.user.is_staff)

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_credentials_env(self, obj: VenueAccount) -> str | None:
        return obj.credentials_env if self._staff() else None

    @extend_schema_field(serializers.DictField(child=serializers.CharField(), allow_null=True))
    def get_credentials(self, obj: VenueAccount) -> dict[str, str] | None:
        return selectors.account_credentials_masked(obj) if self._staff() else None


class AccountInput(serializers.Serializer):  # type: ignore[type-arg]
    """Account settings; secrets are never sent here, only the prefix of the env variables that hold them."""

    name = serializers.CharField(max_length=64)
    venue = serializers.ChoiceField(choices=VenueAccount.Venue.choices, required=False)
    network = serializers.ChoiceField(choices=VenueAccount.Network.choices, required=False)
    credentials_env = serializers.CharField(max_length=64, required=False, allow_blank=True)
    quote_asset = serializers.CharField(max_length=16, required=False)
    max_leverage = MoneyField(required=False)
    market_leverage_caps = serializers.DictField(child=MoneyField(), required=False)
    max_open_positions = serializers.IntegerField(min_value=1, max_value=INT32_MAX, required=False,
                                                    allow_null=True)
    max_symbol_exposure = MoneyField(required=False, allow_null=True)
    max_account_exposure = MoneyField(required=False, allow_null=True)
    daily_loss_limit = MoneyField(required=False, allow_null=True)
    paper_initial_cash = MoneyField(required=False)
    paper_slippage_bps = MoneyField(required=False)
    paper_max_volume_share = MoneyField(required=False, allow_null=True)
    paper_latency_ms = serializers.IntegerField(min_value=0, max_value=60000, required=False)


class _AdminWrites(IsAuthenticated):
    """Anyone authenticated reads; only staff write."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        if not super().has_permission(request, view):
            return False
        return request.method in ("GET", "HEAD", "OPTIONS") or bool(request.user.is_staff)


class AccountListApi(APIView):
    pagination_class = ApiPagination
    permission_classes = [_AdminWrites]

    @extend_schema(operation_id="accounts_list", responses=AccountOutput(many=True), tags=["accounts"])
    def get(self, request: Request) -> Response:
        return paginated(request, self, selectors.account_list(), AccountOutput, {"request": request})

    @extend_schema(operation_id="accounts_create", request=AccountInput, tags=["accounts"],
                   responses={201: AccountOutput, 400: _errors_response(), 403: DetailSerializer})
    def post(self, request: Request) -> Response:
        data = AccountInput(data=request.data)
        data.is_valid(raise_exception=True)
        account = services.account_create(data=data.validated_data, by=actor(request))
        return Response(AccountOutput(account, context={"request": request}).data, status=status.HTTP_201_CREATED)


class AccountDetailApi(APIView):
    permission_classes = [_AdminWrites]

    @extend_schema(operation_id="accounts_retrieve", responses={200: AccountOutput, 404: DetailSerializer},
                   tags=["accounts"])
    def get(self, request: Request, account_id: int) -> Response:
        account = get_object_or_404(VenueAccount, pk=account_id)
        return Response(AccountOutput(account, context={"request": request}).data)

    @extend_schema(operation_id="accounts_update", request=AccountInput(partial=True), tags=["accounts"],
                   responses={200: AccountOutput, 400: _errors_response(), 403: DetailSerializer,
                              404: DetailSerializer})
    def patch(self, request: Request, account_id: int) -> Response:
        account = get_object_or_404(VenueAccount, pk=account_id)
        data = AccountInput(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        account = services.account_update(account=account, data=data.validated_data, by=actor(request))
        return Response(AccountOutput(account, context={"request": request}).data)


# --------------------------------------------------------------------------------------------- orders


class OrderOutput(serializers.Serializer):  # type: ignore[type-arg]
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


class OrderFilter(serializers.Serializer):  # type: ignore[type-arg]
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


# --------------------------------------------------------------------------------------------- positions


class PositionOutput(serializers.Serializer):  # type: ignore[type-arg]
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


class PositionFilter(serializers.Serializer):  # type: ignore[type-arg]
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
                              400: _errors_response(), 404: DetailSerializer},
                   description="Queue a manual close signal (processed by the engine); returns its id.")
    def post(self, request: Request, position_id: int) -> Response:
        position = get_object_or_404(Position.objects.select_related("strategy"), pk=position_id)
        signal = services.position_close(position=position, by=actor(request))
        return Response({"signal": signal.pk}, status=status.HTTP_202_ACCEPTED)


# --------------------------------------------------------------------------------------------- signals


class SignalOrderOutput(serializers.Serializer):  # type: ignore[type-arg]
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


class SignalOutput(serializers.Serializer):  # type: ignore[type-arg]
    id = serializers.IntegerField()
    strategy = serializers.IntegerField(source="strategy_id")
    strategy_slug = serializers.CharField(source="strategy.slug")
    account = serializers.IntegerField(source="account_id")
    source = serializers.ChoiceField(choices=Signal.Source.choices)
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


class SignalFilter(serializers.Serializer):  # type: ignore[type-arg]
    strategy = IdField(required=False)
    source = serializers.ChoiceField(choices=Signal.Source.choices, required=False)
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


# --------------------------------------------------------------------------------------------- P&L


class PnlLineOutput(serializers.Serializer):  # type: ignore[type-arg]
    id = serializers.IntegerField()
    name = serializers.CharField()
    account = serializers.IntegerField(source="account_id")
    realized_pnl = MoneyField(help_text="net of fees")
    fees = MoneyField()
    unrealized_pnl = MoneyField(help_text="at the latest feed prices")
    equity = MoneyField()
    open_positions = serializers.IntegerField()


class PnlOutput(serializers.Serializer):  # type: ignore[type-arg]
    strategies = PnlLineOutput(many=True)
    accounts = PnlLineOutput(many=True)


class PnlSummaryApi(APIView):
    @extend_schema(operation_id="pnl_summary", responses=PnlOutput, tags=["pnl"])
    def get(self, request: Request) -> Response:
        return Response(PnlOutput(selectors.pnl_summary()).data)


class EquityPointOutput(serializers.Serializer):  # type: ignore[type-arg]
    time = serializers.DateTimeField()
    account = serializers.IntegerField(source="account_id")
    strategy = serializers.IntegerField(source="strategy_id", allow_null=True)
    equity = MoneyField()
    cash = MoneyField()
    realized_pnl = MoneyField()
    unrealized_pnl = MoneyField()


class EquityFilter(serializers.Serializer):  # type: ignore[type-arg]
    account = IdField(required=False)
    strategy = IdField(required=False)
    since = serializers.DateTimeField(required=False)


class EquitySeriesApi(APIView):
    pagination_class = ApiPagination
    @extend_schema(operation_id="pnl_equity", parameters=[EquityFilter], responses=EquityPointOutput(many=True),
                   tags=["pnl"], description="Equity snapshots, oldest first: a strategy's, else accounts' own.")
    def get(self, request: Request) -> Response:
        return paginated(request, self, selectors.equity_series(**filters_parse(EquityFilter, request)),
                         EquityPointOutput)


# --------------------------------------------------------------------------------------------- kill switch


class KillSwitchOutput(serializers.Serializer):  # type: ignore[type-arg]
    engaged = serializers.BooleanField()
    reason = serializers.CharField(allow_blank=True)
    changed_at = serializers.DateTimeField(allow_null=True)
    changed_by = serializers.CharField(allow_blank=True)
    flat_at = serializers.DateTimeField(allow_null=True, help_text="when every venue last said every market was flat")
    still_open = serializers.ListField(child=serializers.DictField(child=serializers.CharField()),
                                       help_text="per account and market: book and venue quantities, working orders")


class KillSwitchEngageInput(serializers.Serializer):  # type: ignore[type-arg]
    reason = serializers.CharField(max_length=500)


class KillSwitchApi(APIView):
    permission_classes = [IsAdminUser]

    @extend_schema(operation_id="kill_switch_retrieve", responses={200: KillSwitchOutput, 403: DetailSerializer},
                   tags=["kill switch"])
    def get(self, request: Request) -> Response:
        return Response(KillSwitchOutput(selectors.kill_switch_get()).data)


class KillSwitchEngageApi(APIView):
    permission_classes = [IsAdminUser]

    @extend_schema(operation_id="kill_switch_engage", request=KillSwitchEngageInput, tags=["kill switch"],
                   responses={200: KillSwitchOutput, 400: _errors_response(), 403: DetailSerializer})
    def post(self, request: Request) -> Response:
        data = KillSwitchEngageInput(data=request.data)
        data.is_valid(raise_exception=True)
        switch = services.kill_switch_engage(by=actor(request), reason=data.validated_data["reason"])
        return Response(KillSwitchOutput(switch).data)


class KillSwitchReleaseApi(APIView):
    permission_classes = [IsAdminUser]

    @extend_schema(operation_id="kill_switch_release", request=None, tags=["kill switch"],
                   responses={200: KillSwitchOutput, 403: DetailSerializer})
    def post(self, request: Request) -> Response:
        return Response(KillSwitchOutput(services.kill_switch_release(by=actor(request))).data)


# --------------------------------------------------------------------------------------------- venue health


class VenueHealthOutput(serializers.Serializer):  # type: ignore[type-arg]
    account = serializers.IntegerField(source="account_id")
    account_name = serializers.CharField()
    venue = serializers.ChoiceField(choices=VenueAccount.Venue.choices)
    network = serializers.ChoiceField(choices=VenueAccount.Network.choices)
    breaker_state = serializers.ChoiceField(
        choices=["closed", "open", "half_open", "none"],
        help_text="the venue's circuit breaker as last reported by a worker; none for paper accounts")
    breaker_since = serializers.DateTimeField(allow_null=True)
    consecutive_failures = serializers.IntegerField()
    last_error = serializers.CharField(allow_blank=True, help_text="error class and message, never a secret")
    reported_by = serializers.CharField(allow_blank=True, help_text="host:pid of the reporting process")
    last_reconciled_at = serializers.DateTimeField(allow_null=True)
    reconcile_summary = serializers.DictField(
        help_text="ok, error, and counts of the last reconciliation report (unknown venue orders, position "
                  "differences, updated orders, ...)")
    snapshot_failures = serializers.IntegerField(
        help_text="consecutive equity snapshots that could not value the account (no row written); 0 when the last "
                  "one did")
    snapshot_error = serializers.CharField(allow_blank=True, help_text="the latest failed snapshot's error, never a "
                                                                       "secret; empty once one succeeds again")
    snapshot_failed_at = serializers.DateTimeField(allow_null=True)


class VenueHealthListApi(APIView):
    @extend_schema(operation_id="venues_list", responses=VenueHealthOutput(many=True), tags=["venues"],
                   description="Per account: venue, network, circuit-breaker state, last error, last reconciliation, "
                               "equity snapshot failures.")
    def get(self, request: Request) -> Response:
        return Response(VenueHealthOutput(selectors.venue_health_list(), many=True).data)


# --------------------------------------------------------------------------------------------- API tokens


class ApiTokenOutput(serializers.Serializer):  # type: ignore[type-arg]
    prefix = serializers.SerializerMethodField(help_text="the key's first 8 characters: names the token, never "
                                                         "enough to use it")
    user = serializers.CharField(source="user.username")
    created = serializers.DateTimeField()
    expiry = serializers.DateTimeField(allow_null=True, help_text="null: never expires")
    expired = serializers.SerializerMethodField()

    @extend_schema_field(OpenApiTypes.STR)
    def get_prefix(self, token: Any) -> str:
        return str(token.token_key[:services.TOKEN_PREFIX_LENGTH])

    @extend_schema_field(OpenApiTypes.BOOL)
    def get_expired(self, token: Any) -> bool:
        return token.expiry is not None and token.expiry <= self.context["now"]


class ApiTokenFilter(serializers.Serializer):  # type: ignore[type-arg]
    all = serializers.BooleanField(required=False, default=False, help_text="staff: every user's tokens")


def _token_owner(request: Request) -> Any:
    """Whose tokens a request may see and revoke: staff anyone's, others their own."""
    return None if request.user.is_staff else request.user


class ApiTokenListApi(APIView):
    pagination_class = ApiPagination

    @extend_schema(operation_id="tokens_list", parameters=[ApiTokenFilter], responses=ApiTokenOutput(many=True),
                   tags=["tokens"], description="Your API tokens (staff: `?all=1` for everyone's), newest first. Keys "
                                                "are never shown here: only when a token is created.")
    def get(self, request: Request) -> Response:
        every = filters_parse(ApiTokenFilter, request).get("all") and request.user.is_staff
        tokens = selectors.api_token_list(user=None if every else request.user)
        return paginated(request, self, tokens, ApiTokenOutput, context={"now": timezone.now()})


class ApiTokenRevokeApi(APIView):
    @extend_schema(operation_id="tokens_revoke", request=None, tags=["tokens"],
                   responses={200: ApiTokenOutput, 404: DetailSerializer},
                   description="Revoke a token by its prefix (8 to 15 first characters of its key): its key is "
                               "refused from the next request on. Your own tokens; staff: anyone's.")
    def post(self, request: Request, prefix: str) -> Response:
        token = selectors.api_token_find(prefix=prefix, user=_token_owner(request))
        if token is None:
            raise Http404("no single token has this prefix")
        data = ApiTokenOutput(token, context={"now": timezone.now()}).data
        services.api_token_revoke(token=token, by=actor(request))
        return Response(data)
