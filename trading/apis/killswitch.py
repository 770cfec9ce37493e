"""The kill switch: read, engage, release (staff only)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from trading import selectors, services
from trading.apis.common import actor, DetailSerializer, errors_response


class KillSwitchOutput(serializers.Serializer):
    engaged = serializers.BooleanField()
    reason = serializers.CharField(allow_blank=True)
    changed_at = serializers.DateTimeField(allow_null=True)
    changed_by = serializers.CharField(allow_blank=True)
    flat_at = serializers.DateTimeField(allow_null=True, help_text="when every venue last said every market was flat")
    still_open = serializers.ListField(child=serializers.DictField(child=serializers.CharField()),
                                       help_text="per account and market: book and venue quantities, working orders")


class KillSwitchEngageInput(serializers.Serializer):
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
                   responses={200: KillSwitchOutput, 400: errors_response(), 403: DetailSerializer})
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


