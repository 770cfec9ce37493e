"""Dashboard page of the webhook app: the alert tester (a dry run; it stores no signal and no order)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_http_methods

from trading.views import page
from webhooks import selectors

EXAMPLE = """{
  "strategy": "my-strategy",
  "passphrase": "paste the secret",
  "action": "buy",
  "ticker": "BTCUSD",
  "contracts": "0.01",
  "time": "%s"
}"""


@page
@require_http_methods(["GET", "POST"])
def webhook_tester(request: HttpRequest) -> HttpResponse:
    """Paste an alert body: see how it parses, which strategy it reaches and what risk would decide."""
    now = timezone.now()
    body = request.POST.get("body", "") if request.method == "POST" else EXAMPLE % now.strftime("%Y-%m-%dT%H:%M:%SZ")
    check_time = request.POST.get("ignore_time") != "yes"
    preview = None
    if request.method == "POST":
        preview = selectors.alert_preview(body=body.encode(), content_type="application/json", now=now,
                                          check_passphrase=request.user.is_staff, check_time=check_time)
    response = render(request, "dashboard/webhook_tester.html",
                      {"body": body, "preview": preview, "check_time": check_time})
    response["Cache-Control"] = "no-store"  # the pasted body may hold a passphrase
    return response
