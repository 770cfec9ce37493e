"""The project's URLs plus `POST /bench/bare/`, used only by benchmarks/webhook_load.py."""

from __future__ import annotations

import json

from django.http import HttpRequest, HttpResponse
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt


@csrf_exempt
def bare(request: HttpRequest) -> HttpResponse:
    """The floor: decode the JSON body and answer 202; no auth, no database, no queue."""
    data = json.loads(request.body)
    return HttpResponse(json.dumps({"ok": isinstance(data, dict)}), status=202, content_type="application/json")


urlpatterns = [path("bench/bare/", bare), path("", include("tradesite.urls"))]
