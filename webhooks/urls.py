"""Webhook routes, included under api/ by tradesite/urls.py (which also sends POST /api/signals/ here)."""

from django.urls import path

from webhooks import apis

urlpatterns = [
    path("webhooks/tradingview/", apis.tradingview_webhook, name="webhook-tradingview"),
]
