"""The project's URLs with the webhook routes first, so POST /api/signals/ reaches SignalCreateApi."""

from django.urls import include, path

urlpatterns = [path("api/", include("webhooks.urls")), path("", include("tradesite.urls"))]
