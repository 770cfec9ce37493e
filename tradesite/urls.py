"""URL map: admin, health probes, and each app's routes."""

from django.contrib import admin
from django.urls import path

from tradesite import health

urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
]
