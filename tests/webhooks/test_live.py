"""The webhook on real servers (the web role's gunicorn, the intake role's uvicorn) with real Celery workers: alert to
fill, and concurrent redeliveries."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import pytest
from django.utils import timezone

from tests.conftest import wait_for, worker_env
from tests.webhooks.server import gunicorn, intake, request
from trading import services
from trading.models import Fill, Order, Position, Signal, VenueAccount

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
URL = "/api/webhooks/tradingview/"


def _server_env() -> dict[str, str]:
    return worker_env(TRADESITE_COMPONENT="web", WEBHOOK_RATE_LIMIT_PER_IP="1000000",
                      WEBHOOK_RATE_LIMIT_PER_STRATEGY="1000000")


def _serve(kind: str, workers: int, log_path: Path):  # type: ignore[no-untyped-def]
    """The web role (gunicorn, gthread) or the intake role (uvicorn) on a free port."""
    if kind == "web":
        return gunicorn(_server_env(), workers=workers, log_path=log_path)
    return intake({**_server_env(), "TRADESITE_COMPONENT": "intake"}, workers=workers, log_path=log_path)


SERVERS = pytest.mark.parametrize("kind", ["web", "intake"])


def _alert(strategy, secret: str, **fields) -> bytes:  # type: ignore[no-untyped-def]
    body = {"passphrase": secret, "strategy": strategy.slug, "ticker": "BTCUSD",
            "time": timezone.now().strftime("%Y-%m-%dT%H:%M:%SZ"), **fields}
    return json.dumps(body).encode()


@SERVERS
def test_alert_to_fill_through_a_server_and_a_worker(kind, workers, make_account, make_strategy, set_price,
                                                     tmp_path) -> None:
    workers.start()
    account = make_account()
    strategy = make_strategy(account)
    secret = services.strategy_webhook_secret_rotate(strategy=strategy, by="test")
    set_price("BTC/USD", "50000")
    with _serve(kind, 2, tmp_path / "server.log") as port:
        status, body = request(port, "POST", URL, _alert(strategy, secret, action="buy", contracts="0.02",
                                                          order_id="Long"), "text/plain")
        assert status == 202, body
        opened = body["signal_id"]
        wait_for(lambda: Signal.objects.get(pk=opened).status == "executed", what="entry filled")
        position = Position.objects.get(strategy=strategy)
        assert position.quantity == Decimal("0.02")

        set_price("BTC/USD", "51000")
        status, body = request(port, "POST", URL, _alert(strategy, secret, action="sell", contracts="0.02",
                                                          position_size="0", order_id="Close"))
        assert status == 202, body
        closed = body["signal_id"]
        wait_for(lambda: Signal.objects.get(pk=closed).status == "executed", what="exit filled")

    position.refresh_from_db()
    fills = {f.side: f for f in Fill.objects.filter(strategy=strategy)}
    assert position.quantity == 0
    assert position.realized_pnl == (fills["sell"].price - fills["buy"].price) * Decimal("0.02") > 0
    fees = fills["buy"].fee + fills["sell"].fee
    assert position.fees_paid == fees
    assert VenueAccount.objects.get(pk=account.pk).cash == Decimal("10000") + position.realized_pnl - fees
    assert Order.objects.filter(strategy=strategy).count() == 2


@SERVERS
def test_concurrent_identical_deliveries_make_one_signal_and_one_order(kind, workers, make_account, make_strategy,
                                                                       set_price, tmp_path) -> None:
    workers.start()
    strategy = make_strategy(make_account(paper_initial_cash="1000000"))
    secret = services.strategy_webhook_secret_rotate(strategy=strategy, by="test")
    set_price("BTC/USD", "50000")
    rounds, copies = 20, 200
    statuses: list[int] = []
    ids: list[set[int]] = []
    with _serve(kind, 3, tmp_path / "server.log") as port, \
            ThreadPoolExecutor(max_workers=copies) as pool:
        for n in range(rounds):
            body = _alert(strategy, secret, action="buy", contracts="0.001", order_id=f"Long-{n}")
            results = list(pool.map(lambda _: request(port, "POST", URL, body), range(copies)))  # noqa: B023 - called within this iteration
            statuses.extend(s for s, _ in results)
            assert sorted({s for s, _ in results}) == [200, 202], results[:3]
            assert sum(1 for s, _ in results if s == 202) == 1
            ids.append({b["signal_id"] for _, b in results})
    assert all(len(i) == 1 for i in ids)
    assert not [s for s in statuses if s >= 500]
    assert Signal.objects.filter(strategy=strategy).count() == rounds
    wait_for(lambda: Signal.objects.filter(strategy=strategy, status="executed").count() == rounds, timeout=60,
             what="every alert filled")
    for signal in Signal.objects.filter(strategy=strategy):
        assert Order.objects.filter(signal=signal).count() == 1
    assert Position.objects.get(strategy=strategy).quantity == Decimal("0.001") * rounds
