"""The project's URLs plus two bare endpoints, used only by benchmarks/webhook_load.py.

`/bench/bare/` goes through Django's full middleware stack; `/bench/bare-lane/` is named in LEAN_URL_NAMES by
benchmarks/webhook_site.py, so tradesite/wsgi.py serves it through the same lean lane as the webhook.
"""

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


urlpatterns = [path("bench/bare/", bare, name="bench-bare"), path("bench/bare-lane/", bare, name="bench-bare-lane"),
               path("", include("tradesite.urls"))]
