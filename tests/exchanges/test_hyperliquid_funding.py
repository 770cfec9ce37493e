"""Hyperliquid's funding through the connector: the market's rates (`fundingHistory`) and our account's payments
(`userFunding`) read from real recorded replies (tests/fixtures/venues/hyperliquid, from the SDK's cassettes), paged
as the venue pages them, and the loopback fake answering in those shapes."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import datetime, UTC
from decimal import Decimal
from typing import Any

import pytest
import requests

from exchanges.base import ms_to_datetime
from exchanges.hyperliquid import HyperliquidConnector
from tests.fakes.faults import Reply, Request
from tests.fakes.hyperliquid_venue import HyperliquidFake
from tests.fakes.replay import ReplayVenue, body, info_type, recorded_json

D = Decimal
RECORDED_USER = "0xb7b6f3cea3f66bf525f5d8f965f6dbf6d9b017b2"  # the account of the recorded userFunding
HOUR_MS = 3_600_000


def _time_filtered(name: str) -> Any:
    """A recorded list answered with the venue's own [startTime, endTime] filter."""
    def answer(request: Request) -> Reply:
        payload = request.json()
        start, end = int(payload["startTime"]), payload.get("endTime")
        return Reply(200, [r for r in recorded_json(name)
                           if int(r["time"]) >= start and (end is None or int(r["time"]) <= int(end))])
    return answer


@pytest.fixture
def recorded() -> Iterator[tuple[HyperliquidConnector, ReplayVenue]]:
    venue = ReplayVenue([
        (info_type("meta"), body("hyperliquid/meta.json")),
        (info_type("fundingHistory"), _time_filtered("hyperliquid/funding_history.json")),
        (info_type("userFunding"), _time_filtered("hyperliquid/user_funding.json")),
    ])
    with venue:
        yield HyperliquidConnector(network="mainnet", secret_key="0x" + secrets.token_hex(32),
                                   account_address=RECORDED_USER, base_url=venue.url, timeout=5), venue
    assert not venue.unmatched, [r.body.decode() for r in venue.unmatched]


def test_funding_rates_from_the_recorded_funding_history(recorded: tuple[HyperliquidConnector, ReplayVenue]) -> None:
    connector, venue = recorded
    rates = connector.funding_rates("BTC/USDC:USDC", since=datetime(2023, 5, 1, tzinfo=UTC))
    assert len(rates) == 34  # every recorded row (8-hourly in May 2023), oldest first
    assert rates[0].time == ms_to_datetime(1683849600048) and rates[0].rate == D("-0.00061334")
    assert rates[-1].time == ms_to_datetime(1684800000022) and rates[-1].rate == D("-0.00018991")
    assert [r.time for r in rates] == sorted(r.time for r in rates)
    assert {r.symbol for r in rates} == {"BTC/USDC:USDC"}
    (request,) = venue.requests(lambda r: "fundingHistory" in r.body.decode())
    assert request.json() == {"type": "fundingHistory", "coin": "BTC", "startTime": 1682899200000}


def test_funding_payments_from_the_recorded_user_funding(recorded: tuple[HyperliquidConnector, ReplayVenue]) -> None:
    connector, _ = recorded
    payments = connector.funding_payments(since=ms_to_datetime(1681923833000),
                                          until=ms_to_datetime(1682010233000))
    assert len(payments) == 13
    btc = next(p for p in payments if p.symbol == "BTC/USDC:USDC")
    assert (btc.time, btc.amount, btc.rate, btc.size) == (ms_to_datetime(1681948800000), D("5.950454"),
                                                          D("0.00010081"), D("-0.68582"))
    assert btc.ref == "0xabf969efeb47a3a53180729ca55352862084d5842f8dc7f0d73806a308adf773"
    avax = next(p for p in payments if p.symbol == "AVAX/USDC:USDC")
    assert avax.amount == D("-0.572915")  # a long paying: the cash moved out


def test_the_reads_page_on_the_last_time_received_and_keep_each_row_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from exchanges import hyperliquid

    monkeypatch.setattr(hyperliquid, "FUNDING_PAGE", 4)  # the venue's 500, smaller
    with HyperliquidFake(mainnet=True) as fake:
        fake.funding_page = 4
        first = 1_700_000_000_000 // HOUR_MS * HOUR_MS
        for i in range(10):
            fake.fund("BTC", first + i * HOUR_MS, D("0.0000125") + i * D("0.000001"))
        connector = HyperliquidConnector(network="mainnet", secret_key=None, account_address=None,
                                         base_url=fake.url, timeout=5)
        rates = connector.funding_rates("BTC/USDC:USDC", since=ms_to_datetime(first))
        asked = [r.json()["startTime"] for r in fake.requests(lambda r: "fundingHistory" in r.body.decode())]
    assert [r.rate for r in rates] == [D("0.0000125") + i * D("0.000001") for i in range(10)]
    assert [r.time for r in rates] == [ms_to_datetime(first + i * HOUR_MS + 48) for i in range(10)]
    assert asked == [first, first + 3 * HOUR_MS + 49, first + 7 * HOUR_MS + 49]  # 4 + 4 + 2 rows


def test_the_fake_sends_every_field_of_the_recorded_funding_replies() -> None:
    from eth_account import Account

    owner = Account.create().address.lower()
    with HyperliquidFake(mainnet=True) as fake:
        fake.add_user(owner, "1000")
        fake.user(owner).positions["BTC"] = (D("-0.5"), D("60000"))
        fake.fund("BTC", 1_700_000_000_000 // HOUR_MS * HOUR_MS, "0.0000125", price="60000")
        history = requests.post(fake.url + "/info", json={"type": "fundingHistory", "coin": "BTC", "startTime": 0},
                                timeout=5).json()
        mine = requests.post(fake.url + "/info", json={"type": "userFunding", "user": owner, "startTime": 0},
                             timeout=5).json()
        cash = fake.user(owner).usdc
    recorded_history, recorded_mine = (recorded_json("hyperliquid/funding_history.json"),
                                       recorded_json("hyperliquid/user_funding.json"))
    assert set(history[0]) == set(recorded_history[0]) and set(mine[0]) == set(recorded_mine[0])
    assert set(mine[0]["delta"]) == set(recorded_mine[0]["delta"])
    assert mine[0]["delta"]["usdc"] == "0.375" and cash == D("1000.375")  # a short receives 0.5 x 60000 x 0.0000125
    assert mine[0]["time"] % HOUR_MS == 0 and history[0]["time"] % HOUR_MS == 48  # on the hour / a few ms past
