"""POST /api/signals/ through the real URL map: scripts submit signals with a token; GET still lists them."""

from __future__ import annotations

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from trading.models import Signal

pytestmark = pytest.mark.django_db


def test_script_signal_is_accepted_and_deduplicated(api: APIClient, make_account, make_strategy, set_price) -> None:
    strategy = make_strategy(make_account())
    set_price("BTC/USD", "50000")
    body = {"strategy": strategy.slug, "action": "buy", "ticker": "BTCUSD", "contracts": "0.01",
            "time": timezone.now().strftime("%Y-%m-%dT%H:%M:%SZ"), "order_id": "o-1"}
    first = api.post("/api/signals/", body, format="json")
    assert first.status_code == 202, first.content
    again = api.post("/api/signals/", body, format="json")
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert again.json()["signal_id"] == first.json()["signal_id"]
    assert Signal.objects.count() == 1
    listed = api.get("/api/signals/")
    assert listed.status_code == 200 and listed.json()["count"] == 1


def test_script_signal_without_a_token_is_refused(make_account, make_strategy) -> None:
    strategy = make_strategy(make_account())
    response = APIClient().post("/api/signals/", {"strategy": strategy.slug, "action": "buy"}, format="json")
    assert response.status_code == 401
    assert Signal.objects.count() == 0


def test_a_script_signal_records_who_sent_it_even_when_refused(api: APIClient, staff, make_account, make_strategy,
                                                               set_price) -> None:
    from trading import services
    from trading.models import AuditEvent

    strategy = make_strategy(make_account())
    set_price("BTC/USD", "50000")
    body = {"strategy": strategy.slug, "action": "buy", "ticker": "BTCUSD", "contracts": "0.01", "id": "s1"}
    accepted = api.post("/api/signals/", body, format="json")
    assert accepted.status_code == 202, accepted.content
    services.kill_switch_engage(by="test", reason="drill")
    refused = api.post("/api/signals/", {**body, "id": "s2"}, format="json")
    assert refused.status_code == 409, refused.content
    actor = f"api:{staff.get_username()}"
    for signal_id in (int(accepted.json()["signal_id"]), int(refused.json()["fields"]["signal_id"])):
        assert Signal.objects.get(pk=signal_id).payload["submitted_by"] == actor
        assert AuditEvent.objects.filter(action="signal.submitted", actor=actor, entity="signal",
                                         entity_id=str(signal_id)).count() == 1
    api.post("/api/signals/", body, format="json")  # a repeat: no second row, no second audit
    assert AuditEvent.objects.filter(action="signal.submitted").count() == 2
