"""API tokens: list and revoke."""

from __future__ import annotations

from typing import Any

from django.http import Http404
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from trading import selectors, services
from trading.apis.common import ApiPagination, actor, paginated, filters_parse, DetailSerializer


class ApiTokenOutput(serializers.Serializer):
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


class ApiTokenFilter(serializers.Serializer):
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
