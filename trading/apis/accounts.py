"""Venue accounts: list, create, edit (writes are for staff)."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from trading import selectors, services
from trading.apis.common import MoneyField, ApiPagination, actor, paginated, DetailSerializer, errors_response
from trading.fields import INT32_MAX
from trading.models import PriceFeed, VenueAccount
from trading.prices import price_feed_of


class AccountOutput(serializers.Serializer):
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
    price_feed = serializers.SerializerMethodField()
    last_reconciled_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()
    # Staff only (null for others): the env-var prefix and which of its variables are set, masked.
    credentials_env = serializers.SerializerMethodField()
    credentials = serializers.SerializerMethodField()

    def _staff(self) -> bool:
        request = self.context.get("request")
        return bool(request and request.user.is_staff)

    @extend_schema_field(serializers.CharField())
    def get_price_feed(self, obj: VenueAccount) -> str:
        """Where the account's prices come from (a paper account's choice; a live account's venue)."""
        return price_feed_of(obj)

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_credentials_env(self, obj: VenueAccount) -> str | None:
        return obj.credentials_env if self._staff() else None

    @extend_schema_field(serializers.DictField(child=serializers.CharField(), allow_null=True))
    def get_credentials(self, obj: VenueAccount) -> dict[str, str] | None:
        return selectors.account_credentials_masked(obj) if self._staff() else None


class AccountInput(serializers.Serializer):
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
    price_feed = serializers.ChoiceField(choices=PriceFeed.choices, required=False,
                                         help_text="paper accounts: the demo feed or a venue's live prices")


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
                   responses={201: AccountOutput, 400: errors_response(), 403: DetailSerializer})
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
                   responses={200: AccountOutput, 400: errors_response(), 403: DetailSerializer,
                              404: DetailSerializer})
    def patch(self, request: Request, account_id: int) -> Response:
        account = get_object_or_404(VenueAccount, pk=account_id)
        data = AccountInput(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        account = services.account_update(account=account, data=data.validated_data, by=actor(request))
        return Response(AccountOutput(account, context={"request": request}).data)


