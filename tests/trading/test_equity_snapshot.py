"""Equity snapshots: each account's is independent; an account that cannot be valued is reported, never guessed."""

from __future__ import annotations

import logging
import socket
import uuid
from decimal import Decimal
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from trading import selectors, services
from trading.models import EquitySnapshot, Position, Strategy, VenueAccount, VenueHealth

PEM = ec.generate_private_key(ec.SECP256R1()).private_bytes(
    Encoding.PEM, PrivateFormat.TraditionalOpenSSL, NoEncryption()).decode()


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _live_account(name: str, env: str, network: str = "testnet") -> VenueAccount:
    return VenueAccount.objects.create(name=name, venue="coinbase", network=network, credentials_env=env,
                                       quote_asset="USD", cash=Decimal("500"))


def _open_position(account: VenueAccount, strategy: Any, qty: str = "0.1", entry: str = "1000") -> None:
    Position.objects.create(account=account, strategy=strategy, symbol="BTC/USD", quantity=Decimal(qty),
                            cost_basis=Decimal(qty) * Decimal(entry), average_entry=Decimal(entry),
                            opened_at=timezone.now(), updated_at=timezone.now())


@pytest.fixture
def accounts(make_account, make_strategy, set_price, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Three paper accounts, a live one whose credentials are not set, and a live one whose venue is down."""
    for name in [k for k in __import__("os").environ if k.startswith(("SNAPNOKEY_", "SNAPDOWN_"))]:
        monkeypatch.delenv(name)
    set_price("BTC/USD", "1000")
    papers = [make_account() for _ in range(3)]
    for paper in papers:
        _open_position(paper, make_strategy(paper, start=False))
    set_price("BTC/USD", "1100")
    nokey = _live_account("live-nokey", "SNAPNOKEY", "mainnet")  # SNAPNOKEY_API_KEY / _API_SECRET missing
    monkeypatch.setenv("SNAPDOWN_API_KEY", f"organizations/{uuid.uuid4()}/apiKeys/{uuid.uuid4()}")
    monkeypatch.setenv("SNAPDOWN_API_SECRET", PEM)
    monkeypatch.setenv("SNAPDOWN_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("SNAPDOWN_TIMEOUT", "1")
    down = _live_account("live-down", "SNAPDOWN")
    # Its strategy is stored as is (creating one through the service asks the venue, which is down).
    strategy = Strategy.objects.create(name="live", slug=f"s-{uuid.uuid4().hex[:10]}", symbol="BTC/USD",
                                       account=down, mode=Strategy.Mode.LIVE)
    _open_position(down, strategy)  # its mark must come from the venue
    return {"papers": papers, "nokey": nokey, "down": down}


def _metric(name: str, **labels: str) -> float | None:
    text = Client(REMOTE_ADDR="127.0.0.1").get("/metrics").content.decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def test_one_broken_account_never_stops_the_others_snapshots(accounts, caplog) -> None:
    caplog.set_level(logging.WARNING)
    written = services.equity_snapshot_take()

    for paper in accounts["papers"]:  # every good account: its own row and its strategy's, marked at 1100
        own = EquitySnapshot.objects.get(account=paper, strategy=None)
        assert own.unrealized_pnl == Decimal("10")
        assert EquitySnapshot.objects.filter(account=paper).count() == 2
    assert written == 6
    # No guessed equity for the accounts that could not be valued.
    assert not EquitySnapshot.objects.filter(account__in=[accounts["nokey"], accounts["down"]]).exists()

    # Reported: in the log (no secret), in venue health, on the API and in /metrics.
    for broken in (accounts["nokey"], accounts["down"]):
        assert any(broken.name in r.getMessage() and "snapshot" in r.getMessage() for r in caplog.records), broken
        health = VenueHealth.objects.get(account=broken)
        assert health.snapshot_failures == 1 and health.snapshot_error and health.snapshot_failed_at is not None
        assert PEM not in health.snapshot_error
        assert _metric("tradesite_equity_snapshot_failures", account=broken.name, venue="coinbase") == 1
    assert "AuthError" in VenueHealth.objects.get(account=accounts["nokey"]).snapshot_error
    assert "PRIVATE KEY" not in caplog.text and PEM.splitlines()[1] not in caplog.text
    for paper in accounts["papers"]:
        assert _metric("tradesite_equity_snapshot_failures", account=paper.name, venue="paper") == 0
    lines = {line.account_name: line for line in selectors.venue_health_list()}
    assert lines["live-nokey"].snapshot_failures == 1 and "AuthError" in lines["live-nokey"].snapshot_error

    # Failing again counts up; once the account can be valued again its count is back to 0.
    services.equity_snapshot_take()
    assert VenueHealth.objects.get(account=accounts["nokey"]).snapshot_failures == 2
    Position.objects.filter(account=accounts["down"]).update(quantity=0, cost_basis=0)  # no mark needed now
    services.equity_snapshot_take()
    health = VenueHealth.objects.get(account=accounts["down"])
    assert health.snapshot_failures == 0 and health.snapshot_error == ""
    assert EquitySnapshot.objects.filter(account=accounts["down"], strategy=None).count() == 1
    assert _metric("tradesite_equity_snapshot_failures", account="live-down", venue="coinbase") == 0


def test_a_second_snapshot_at_the_same_time_writes_nothing(make_account) -> None:
    account = make_account()
    now = timezone.now()
    assert services.account_equity_snapshot_take(account_id=account.pk, now=now) == 1
    assert services.account_equity_snapshot_take(account_id=account.pk, now=now) == 0  # a redelivered task
    assert EquitySnapshot.objects.filter(account=account).count() == 1


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_the_beat_task_snapshots_every_good_account_through_a_worker(accounts, workers) -> None:
    from tests.conftest import wait_for, worker_env
    from trading.tasks import equity_snapshot_task

    workers.env = worker_env()  # with the accounts' credential variables (and the missing ones missing)
    workers.start()
    equity_snapshot_task.delay()
    wait_for(lambda: VenueHealth.objects.filter(snapshot_failures=1).count() == 2, what="both broken accounts reported")
    wait_for(lambda: all(EquitySnapshot.objects.filter(account=paper).count() == 2 for paper in accounts["papers"]),
             what="every good account's snapshot")
    times = set(EquitySnapshot.objects.values_list("time", flat=True))
    assert len(times) == 1  # one tick, one time for every account
    assert not EquitySnapshot.objects.filter(account__in=[accounts["nokey"], accounts["down"]]).exists()
    assert PEM.splitlines()[1] not in workers.logs()
