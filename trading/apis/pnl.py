"""P&L: the summary per strategy and the equity series."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from trading import selectors
from trading.apis.common import MoneyField, IdField, ApiPagination, paginated, filters_parse


class PnlLineOutput(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    account = serializers.IntegerField(source="account_id")
    realized_pnl = MoneyField(help_text="net of fees")
    fees = MoneyField()
    unrealized_pnl = MoneyField(help_text="at the latest feed prices")
    equity = MoneyField()
    open_positions = serializers.IntegerField()


class PnlOutput(serializers.Serializer):
    strategies = PnlLineOutput(many=True)
    accounts = PnlLineOutput(many=True)


class PnlSummaryApi(APIView):
    @extend_schema(operation_id="pnl_summary", responses=PnlOutput, tags=["pnl"])
    def get(self, request: Request) -> Response:
        return Response(PnlOutput(selectors.pnl_summary()).data)


class EquityPointOutput(serializers.Serializer):
    time = serializers.DateTimeField()
    account = serializers.IntegerField(source="account_id")
    strategy = serializers.IntegerField(source="strategy_id", allow_null=True)
    equity = MoneyField()
    cash = MoneyField()
    realized_pnl = MoneyField()
    unrealized_pnl = MoneyField()


class EquityFilter(serializers.Serializer):
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


