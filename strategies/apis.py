"""Backtest API: launch a run (queued for a worker), list runs, read one with its metrics and trades."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from strategies.models import BacktestRun
from strategies.services import backtest_run_create
from trading.apis.common import ApiPagination, DetailSerializer, actor, paginated


class BacktestInput(serializers.Serializer):
    kind = serializers.CharField(max_length=32)
    params = serializers.DictField(required=False, default=dict)
    symbol = serializers.CharField(max_length=32)
    timeframe = serializers.CharField(max_length=8, required=False, default="1m")
    venue = serializers.CharField(max_length=32, required=False, default="paper")
    start = serializers.DateTimeField(required=False, allow_null=True, default=None)
    end = serializers.DateTimeField(required=False, allow_null=True, default=None)
    config = serializers.DictField(required=False, default=dict, help_text="BacktestConfig fields, decimals as strings")


class BacktestOutput(serializers.Serializer):
    id = serializers.IntegerField()
    kind = serializers.CharField()
    params = serializers.JSONField()
    venue = serializers.CharField()
    symbol = serializers.CharField()
    timeframe = serializers.CharField()
    start = serializers.DateTimeField(allow_null=True)
    end = serializers.DateTimeField(allow_null=True)
    config = serializers.JSONField()
    status = serializers.ChoiceField(choices=BacktestRun.Status.choices)
    progress = serializers.FloatField(help_text="0..1")
    metrics = serializers.JSONField()
    error = serializers.CharField(allow_blank=True)
    created_by = serializers.CharField(allow_blank=True)
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)


class BacktestDetailOutput(BacktestOutput):
    trades = serializers.JSONField()


class BacktestAcceptedOutput(serializers.Serializer):
    id = serializers.IntegerField()
    status = serializers.ChoiceField(choices=BacktestRun.Status.choices)


class BacktestListApi(APIView):
    pagination_class = ApiPagination
    @extend_schema(operation_id="backtests_list", responses=BacktestOutput(many=True), tags=["backtests"])
    def get(self, request: Request) -> Response:
        runs = BacktestRun.objects.defer("trades").order_by("-created_at", "-id")
        return paginated(request, self, runs, BacktestOutput)

    @extend_schema(operation_id="backtests_create", request=BacktestInput, tags=["backtests"],
                   responses={202: BacktestAcceptedOutput,
                              400: OpenApiResponse(response=OpenApiTypes.OBJECT, description="errors per field")})
    def post(self, request: Request) -> Response:
        data = BacktestInput(data=request.data)
        data.is_valid(raise_exception=True)
        run = backtest_run_create(**data.validated_data, by=actor(request))
        return Response({"id": run.pk, "status": run.status}, status=status.HTTP_202_ACCEPTED)


class BacktestDetailApi(APIView):
    @extend_schema(operation_id="backtests_retrieve", responses={200: BacktestDetailOutput, 404: DetailSerializer},
                   tags=["backtests"])
    def get(self, request: Request, run_id: int) -> Response:
        return Response(BacktestDetailOutput(get_object_or_404(BacktestRun, pk=run_id)).data)
