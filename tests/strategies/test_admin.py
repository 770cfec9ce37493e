"""The strategies app's admin pages render and are read-only."""

import pytest
from django.test import Client


@pytest.mark.django_db
def test_strategies_admin_pages_render_read_only(admin_client: Client) -> None:
    for model in ("candle", "strategyevaluation", "backtestrun"):
        assert admin_client.get(f"/admin/strategies/{model}/").status_code == 200, model
        assert admin_client.get(f"/admin/strategies/{model}/add/").status_code == 403, model
