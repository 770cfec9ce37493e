"""Entry points: the TradingView webhook (plain Django view, own auth) and the token-authenticated signal API."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.views import APIView

from trading.auth import ApiTokenAuthentication
from webhooks import parsers, services
from webhooks.parsers import Rejection



def _respond(result: services.Accepted | Rejection) -> HttpResponse:
    response = HttpResponse(services.dumps(result.body()), status=result.status, content_type="application/json")
    response["Cache-Control"] = "no-store"
    return response


def _guarded(call: Any) -> HttpResponse:
    return _respond(services.intake_guarded(call))


@csrf_exempt
def tradingview_webhook(request: HttpRequest) -> HttpResponse:
    """Receive one TradingView alert: 202 stored and queued, 200 duplicate, 4xx refused (see README)."""
    if request.method != "POST":
        response = _respond(parsers.METHOD_NOT_ALLOWED)
        response["Allow"] = "POST"
        return response
    if parsers.declared_too_large(request.META.get("CONTENT_LENGTH")):
        return _respond(parsers.TOO_LARGE)
    body = request.read(parsers.MAX_BODY_BYTES + 1)
    return _guarded(lambda: services.body_intake(body=body, content_type=request.META.get("CONTENT_TYPE"),
                                                 meta=request.META))


class SignalCreateApi(APIView):
    """Submit a signal from a script: the webhook's fields without passphrase, API token auth."""

    authentication_classes = [ApiTokenAuthentication]
    permission_classes = [IsAuthenticated]
    parser_classes: list[Any] = []  # the body is decoded by webhooks.parsers, like the webhook's

    def post(self, request: Request) -> HttpResponse:
        raw = request._request  # noqa: SLF001 - the untouched Django request and its body
        body = raw.read(parsers.MAX_BODY_BYTES + 1)
        data = parsers.body_decode(body, raw.META.get("CONTENT_TYPE"))
        if isinstance(data, Rejection):
            return _respond(data)
        decoded, actor = data, f"api:{request.user.get_username()}"
        return _guarded(lambda: services.alert_intake(data=decoded, authenticated=True, actor=actor))
