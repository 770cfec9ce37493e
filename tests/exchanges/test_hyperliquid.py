"""The Hyperliquid connector through the real SDK against the loopback fake venue (signatures checked)."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, UTC
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, ROUND_UP, Decimal
from typing import Any

import pytest
import requests
from eth_account import Account
from hypothesis import given, settings
from hypothesis import strategies as st
from hyperliquid.info import Info
from hyperliquid.utils import constants
from hyperliquid.utils.signing import float_to_wire

from exchanges import registry
from exchanges.base import Connector, OrderRequest, OrderType, Side, VenueOrderStatus
from exchanges.errors import (
    AuthError,
    InsufficientFundsError,
    InvalidOrderError,
    OrderStatusUnknownError,
    RateLimitError,
    TemporaryError,
    VenueError,
)
from exchanges.hyperliquid import HyperliquidConnector, cloid_for, decimal_to_wire, round_price
from tests.conftest import ROOT, wait_for
from tests.exchanges.contract import ConnectorContract, ContractVenue
from tests.fakes.faults import Fault, Reply
from tests.fakes.hyperliquid_venue import HyperliquidFake, harness, price_ok
from tests.fakes.venues import VenueHarness

BTC = "BTC/USDC:USDC"


@pytest.fixture
def hl() -> Iterator[VenueHarness]:
    with harness() as h:
        yield h


def fake_of(h: VenueHarness) -> HyperliquidFake:
    fake = h.extra["fake"]
    assert isinstance(fake, HyperliquidFake)
    return fake


def connect(h: VenueHarness, *, resilient: bool = False, **overrides: str) -> Connector:
    """The connector as the app builds it (through the registry); bare unless `resilient`."""
    return registry.build(venue="hyperliquid", network=h.network, credentials={**h.credentials, **overrides},
                          endpoint=h.endpoint, resilient=resilient)


def order(side: Side = Side.BUY, qty: str = "0.001", type_: OrderType = OrderType.MARKET, price: str | None = None,
          cid: str | None = None, **kw: Any) -> OrderRequest:
    return OrderRequest(client_order_id=cid or hashlib.md5(repr((side, qty, type_, price, kw)).encode()).hexdigest(),
                        symbol=BTC, side=side, type=type_, quantity=Decimal(qty),
                        price=None if price is None else Decimal(price), **kw)


class TestHyperliquidConnectorContract(ConnectorContract):
    # BTC: 5 size decimals, prices to 5 significant figures; DOGE: whole sizes, 6-decimal prices, isolated only.
    @pytest.fixture(params=[BTC, "DOGE/USDC:USDC"])
    def venue(self, hl: VenueHarness, request: pytest.FixtureRequest) -> ContractVenue:
        symbol: str = request.param
        price = fake_of(hl).prices[symbol.split("/")[0]]
        return ContractVenue(connector=connect(hl), symbol=symbol, price=price, set_price=hl.set_price)


# ------------------------------------------------------------------------------------------- client order ids


def test_every_create_carries_the_cloid_derived_from_our_id(hl: VenueHarness) -> None:
    c = connect(hl)
    engine_id, other_id = "0123456789abcdef0123456789abcdef", "manual-close-7"
    c.create_order(order(cid=engine_id))
    c.create_order(order(type_=OrderType.LIMIT, price="20000", cid=other_id))

    sent = [o["c"] for a in fake_of(hl).exchange_actions("order") for o in a["orders"]]
    assert sent == ["0x" + engine_id, "0x" + hashlib.sha256(other_id.encode()).hexdigest()[:32]]
    assert sent == [cloid_for(engine_id), cloid_for(other_id)]
    assert hl.created_client_ids() == [engine_id, other_id]
    assert [o.client_order_id for o in c.open_orders(BTC)] == [other_id]


def test_hashed_client_ids_map_back_through_the_journal_in_a_new_process(hl: VenueHarness) -> None:
    from exchanges import hyperliquid
    from exchanges.base import InMemoryVenueJournal

    journal = InMemoryVenueJournal()
    c = registry.build(venue="hyperliquid", network="testnet", credentials=hl.credentials, endpoint=hl.endpoint,
                       journal=journal, resilient=False)
    placed = c.create_order(order(type_=OrderType.LIMIT, price="20000", cid="reconcile-me"))
    hyperliquid._hashed_ids.clear()  # as after a restart: only the durable journal remembers

    fresh = registry.build(venue="hyperliquid", network="testnet", credentials=hl.credentials,
                           endpoint=hl.endpoint, journal=journal, resilient=False)
    assert fresh.fetch_order(BTC, placed.venue_order_id).client_order_id == "reconcile-me"


# ------------------------------------------------------------------------------------------- auth


def test_a_key_that_is_not_an_approved_api_wallet_raises_auth_error(hl: VenueHarness) -> None:
    stranger = Account.create()
    c = connect(hl, secret_key="0x" + bytes(stranger.key).hex())

    with pytest.raises(AuthError, match="does not exist"):
        c.create_order(order())

    assert fake_of(hl).created_cloids() == []
    checks = {i.name: i for i in c.verify()}
    assert checks["API wallet approved for the account"].ok is False


def test_an_api_wallet_approved_by_a_user_signed_action_can_trade(hl: VenueHarness) -> None:
    from hyperliquid.exchange import Exchange

    owner = hl.extra["owner"]
    empty_meta = {"meta": {"universe": []}, "spot_meta": {"universe": [], "tokens": []}}
    reply, agent_key = Exchange(owner, hl.endpoint, **empty_meta).approve_agent("tradesite")  # type: ignore[arg-type]
    assert reply == {"status": "ok", "response": {"type": "default"}}
    assert connect(hl, secret_key=agent_key).create_order(order()).status is VenueOrderStatus.FILLED

    stranger = Account.create()
    refused, _ = Exchange(stranger, hl.endpoint, **empty_meta).approve_agent()  # type: ignore[arg-type]
    assert refused["status"] == "err" and "does not exist" in refused["response"]


def test_testnet_signature_is_refused_by_a_mainnet_venue_and_mainnet_signs_for_mainnet() -> None:
    with harness(network="mainnet") as h:
        testnet_signer = registry.build(venue="hyperliquid", network="testnet", credentials=h.credentials,
                                        endpoint=h.endpoint, resilient=False)
        with pytest.raises(AuthError):
            testnet_signer.create_order(order())
        placed = connect(h).create_order(order())
        assert placed.status is VenueOrderStatus.FILLED


def test_urls_follow_the_network_unless_an_endpoint_is_given() -> None:
    creds = {"secret_key": "0x" + "11" * 32, "account_address": "0x" + "22" * 20}
    testnet = registry.build(venue="hyperliquid", network="testnet", credentials=creds)
    mainnet = registry.build(venue="hyperliquid", network="mainnet", credentials=creds)
    local = registry.build(venue="hyperliquid", network="mainnet", credentials=creds, endpoint="http://127.0.0.1:9/")
    assert testnet.base_url == constants.TESTNET_API_URL  # type: ignore[attr-defined]
    assert mainnet.base_url == constants.MAINNET_API_URL  # type: ignore[attr-defined]
    assert (local.base_url, local.is_mainnet) == ("http://127.0.0.1:9", True)  # type: ignore[attr-defined]


def test_malformed_credentials_fail_as_auth_errors_without_the_secret() -> None:
    secret = "0xnot-a-key-" + "ab" * 10
    c = registry.build(venue="hyperliquid", network="testnet", credentials={"secret_key": secret},
                       endpoint="http://127.0.0.1:9", resilient=False)
    with pytest.raises(AuthError) as caught:
        c.create_order(order())
    assert secret not in str(caught.value) and secret not in repr(c)
    assert [(i.name, i.ok) for i in c.verify()] == [("secret key well-formed", False)]


def test_secrets_stay_out_of_logs_and_reprs(hl: VenueHarness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    c = connect(hl, resilient=True)
    c.create_order(order())
    c.balances()
    secret = hl.credentials["secret_key"]
    assert secret[2:] not in caplog.text and secret[2:] not in repr(c) and secret[2:] not in repr(vars(c))


def test_verify_reports_each_check(hl: VenueHarness) -> None:
    checks = connect(hl, resilient=True).verify()
    assert [(i.name, i.ok) for i in checks] == [
        ("secret key well-formed", True), ("account address well-formed", True), ("venue reachable", True),
        ("API wallet approved for the account", True), ("signature accepted", True), ("balances read", True),
    ]
    assert fake_of(hl).exchange_actions("cancelByCloid")  # the signed no-op
    assert fake_of(hl).created_cloids() == []


def test_verify_refuses_the_main_wallet_key(hl: VenueHarness) -> None:
    owner = hl.extra["owner"]
    checks = {i.name: i for i in connect(hl, secret_key="0x" + bytes(owner.key).hex()).verify()}  # type: ignore[attr-defined]
    assert checks["API wallet approved for the account"].ok is False
    assert "withdraw" in checks["API wallet approved for the account"].detail


# ------------------------------------------------------------------------------------------- venue errors


def test_a_per_order_error_inside_ok_raises_invalid_order_with_the_venues_text(hl: VenueHarness) -> None:
    c = connect(hl)
    with pytest.raises(InvalidOrderError, match=r"Order must have minimum value of \$10\. asset=0"):
        c.create_order(order(qty="0.0001"))
    with pytest.raises(InvalidOrderError, match="Post only order would have immediately matched"):
        c.create_order(order(type_=OrderType.LIMIT, price="50000", post_only=True))
    with pytest.raises(InvalidOrderError, match="Reduce only order would increase position"):
        c.create_order(order(side=Side.SELL, reduce_only=True))
    assert c.open_orders() == [] and c.positions() == []


def test_insufficient_margin_raises_insufficient_funds(hl: VenueHarness) -> None:
    fake_of(hl).user(hl.credentials["account_address"]).usdc = Decimal("1")
    with pytest.raises(InsufficientFundsError, match="Insufficient margin to place order"):
        connect(hl).create_order(order())


def test_a_key_error_shaped_reply_is_translated(hl: VenueHarness) -> None:
    fake = fake_of(hl)
    c = connect(hl)
    c.markets()
    is_info = lambda r: r.path == "/info"  # noqa: E731
    # The bare SDK raises KeyError on a 4xx JSON body without code/msg: the shape is real.
    fake.script(is_info, Reply(400, {"error": "bad request"}))
    with pytest.raises(KeyError):
        Info(hl.endpoint, skip_ws=True, meta={"universe": []}, spot_meta={"universe": [], "tokens": []}).all_mids()

    fake.script(is_info, Reply(400, {"error": "bad request"}))
    with pytest.raises(VenueError, match="bad request") as read:
        c.ticker(BTC)
    assert not isinstance(read.value, TemporaryError)

    fake.script(lambda r: r.path == "/exchange", Reply(422, {"error": "unknown field"}))
    with pytest.raises(InvalidOrderError, match="unknown field"):
        c.create_order(order())

    fake.script(is_info, Reply(429, {"error": "slow down"}, {"Retry-After": "2"}))
    with pytest.raises(RateLimitError) as limited:
        c.balances()
    assert limited.value.retry_after == 2


def test_a_malformed_create_reply_is_unknown_not_failed(hl: VenueHarness) -> None:
    c = connect(hl)
    c.markets()
    fake_of(hl).script(lambda r: r.path == "/exchange", Reply(200, {"status": "ok", "response": {"type": "order"}}))
    with pytest.raises(OrderStatusUnknownError):
        c.create_order(order(cid="f" * 32))


@pytest.mark.parametrize("fault", [Fault.ACCEPT_THEN_DROP, Fault.TIMEOUT])
def test_a_lost_create_reply_is_unknown_and_the_retry_finds_the_same_order(hl: VenueHarness, fault: Fault) -> None:
    c = connect(hl, timeout="0.5")
    c.markets()
    hl.plan.next(1, fault, match=lambda r: r.path == "/exchange", hold=1.0)
    with pytest.raises(OrderStatusUnknownError):
        c.create_order(order(cid="a" * 32))
    if fault is Fault.TIMEOUT:  # the venue takes the held order after the client gave up
        wait_for(lambda: fake_of(hl).created_cloids(), timeout=5, what="the held order")

    found = c.fetch_order_by_client_id(BTC, "a" * 32)
    again = c.create_order(order(cid="a" * 32))

    assert found is not None and found.status is VenueOrderStatus.FILLED
    assert again.venue_order_id == found.venue_order_id
    assert hl.created_client_ids() == ["a" * 32]
    (position,) = c.positions()
    assert position.quantity == Decimal("0.001")


def test_transport_failures_map_by_what_was_asked(hl: VenueHarness) -> None:
    c = connect(hl, timeout="0.5")
    c.markets()
    hl.plan.next(1, Fault.SERVER_ERROR, status=502)
    with pytest.raises(TemporaryError):
        c.positions()
    hl.plan.next(1, Fault.SERVER_ERROR, status=503, match=lambda r: r.path == "/exchange")
    with pytest.raises(OrderStatusUnknownError):
        c.create_order(order())
    hl.plan.next(1, Fault.RATE_LIMIT, retry_after=3, match=lambda r: r.path == "/exchange")
    with pytest.raises(RateLimitError) as limited:
        c.create_order(order())
    assert limited.value.retry_after == 3
    hl.plan.next(1, Fault.DROP)
    with pytest.raises(TemporaryError):
        c.balances()
    placed = c.create_order(order(type_=OrderType.LIMIT, price="20000"))
    hl.plan.next(1, Fault.ACCEPT_THEN_DROP, match=lambda r: r.path == "/exchange")
    with pytest.raises(OrderStatusUnknownError):
        c.cancel_order(BTC, placed.venue_order_id)
    assert c.fetch_order(BTC, placed.venue_order_id).status is VenueOrderStatus.CANCELED


def test_a_nonce_is_accepted_once(hl: VenueHarness) -> None:
    c = connect(hl)
    c.create_order(order(type_=OrderType.LIMIT, price="20000"))
    (sent,) = fake_of(hl).requests(lambda r: r.path == "/exchange")
    replay = requests.post(hl.endpoint + "/exchange", data=sent.body, headers={"Content-Type": "application/json"},
                           timeout=5).json()
    assert replay["status"] == "err" and "nonce" in replay["response"]
    nonces = [c._next_nonce() for _ in range(50)]  # type: ignore[attr-defined]
    assert nonces == sorted(set(nonces))
    assert len(fake_of(hl).created_cloids()) == 1


# ------------------------------------------------------------------------------------------- fills and state


def test_a_partial_ioc_fill_ends_canceled_with_its_fills(hl: VenueHarness) -> None:
    c = connect(hl)
    hl.partial_fills(1, Decimal("0.5"))
    placed = c.create_order(order(qty="0.002"))
    assert (placed.status, placed.filled_quantity) == (VenueOrderStatus.CANCELED, Decimal("0.001"))
    assert sum(f.quantity for f in placed.fills) == Decimal("0.001")
    assert c.fetch_order(BTC, placed.venue_order_id) == placed
    (position,) = c.positions()
    assert position.quantity == Decimal("0.001")


def test_a_resting_limit_partly_filled_reports_its_fills(hl: VenueHarness) -> None:
    c = connect(hl)
    placed = c.create_order(order(type_=OrderType.LIMIT, price="40000", qty="0.002"))
    hl.partial_fills(1, Decimal("0.5"))
    hl.set_price(BTC, Decimal("39000"))
    (working,) = c.open_orders(BTC)
    assert (working.status, working.filled_quantity) == (VenueOrderStatus.PARTIALLY_FILLED, Decimal("0.001"))
    assert [f.price for f in working.fills] == [Decimal("40000")]
    assert working.fills[0].liquidity == "maker"
    assert c.fetch_order(BTC, placed.venue_order_id) == working


def test_fills_that_lag_the_fill_keep_the_order_working_until_they_show(hl: VenueHarness) -> None:
    c = connect(hl)
    fake_of(hl).lag_fills(1)
    placed = c.create_order(order())
    assert (placed.status, placed.fills) == (VenueOrderStatus.OPEN, ())
    later = c.fetch_order(BTC, placed.venue_order_id)
    assert (later.status, later.filled_quantity) == (VenueOrderStatus.FILLED, Decimal("0.001"))


def test_a_partial_ioc_whose_fills_lag_is_final_only_once_they_show(hl: VenueHarness) -> None:
    c = connect(hl)
    hl.partial_fills(1, Decimal("0.5"))
    fake_of(hl).lag_fills(2)
    placed = c.create_order(order(qty="0.002"))
    assert (placed.status, placed.filled_quantity) == (VenueOrderStatus.OPEN, Decimal("0"))
    assert c.fetch_order(BTC, placed.venue_order_id).status is VenueOrderStatus.OPEN
    done = c.fetch_order(BTC, placed.venue_order_id)
    assert (done.status, done.filled_quantity) == (VenueOrderStatus.CANCELED, Decimal("0.001"))


def test_status_lag_answers_none_then_the_order(hl: VenueHarness) -> None:
    c = connect(hl)
    placed = c.create_order(order(type_=OrderType.LIMIT, price="20000", cid="b" * 32))
    fake_of(hl).lag_status(1)
    assert c.fetch_order_by_client_id(BTC, "b" * 32) is None
    assert c.fetch_order_by_client_id(BTC, "b" * 32) == placed


def test_a_cancel_whose_final_state_lags_is_unknown_then_canceled(hl: VenueHarness) -> None:
    c = connect(hl)
    placed = c.create_order(order(type_=OrderType.LIMIT, price="20000"))
    fake_of(hl).lag_status(1)
    with pytest.raises(OrderStatusUnknownError):
        c.cancel_order(BTC, placed.venue_order_id)
    assert c.cancel_order(BTC, placed.venue_order_id).status is VenueOrderStatus.CANCELED


def test_a_cancel_that_lost_to_a_fill_returns_the_fill(hl: VenueHarness) -> None:
    c = connect(hl)
    placed = c.create_order(order(type_=OrderType.LIMIT, price="40000"))
    hl.set_price(BTC, Decimal("39000"))
    done = c.cancel_order(BTC, placed.venue_order_id)
    assert (done.status, done.filled_quantity) == (VenueOrderStatus.FILLED, Decimal("0.001"))


def test_stop_loss_and_take_profit_are_trigger_orders(hl: VenueHarness) -> None:
    c = connect(hl)
    c.create_order(order(qty="0.002"))
    stop = c.create_order(OrderRequest("c" * 32, BTC, Side.SELL, OrderType.STOP, Decimal("0.002"),
                                       trigger_price=Decimal("41000.3"), reduce_only=True))
    take = c.create_order(OrderRequest("d" * 32, BTC, Side.SELL, OrderType.TAKE_PROFIT, Decimal("0.002"),
                                       trigger_price=Decimal("45000"), reduce_only=True))

    wires = [o for a in fake_of(hl).exchange_actions("order") for o in a["orders"]][1:]
    assert [w["t"] for w in wires] == [
        {"trigger": {"isMarket": True, "triggerPx": "41000", "tpsl": "sl"}},
        {"trigger": {"isMarket": True, "triggerPx": "45000", "tpsl": "tp"}},
    ]
    assert [w["p"] for w in wires] == ["38950", "42750"]  # 5% through the trigger, rounded inside the bound
    assert all(w["r"] for w in wires)
    working = {o.client_order_id: o for o in c.open_orders(BTC)}
    assert {k: (o.type, o.trigger_price, o.status) for k, o in working.items()} == {
        "c" * 32: (OrderType.STOP, Decimal("41000"), VenueOrderStatus.OPEN),
        "d" * 32: (OrderType.TAKE_PROFIT, Decimal("45000"), VenueOrderStatus.OPEN),
    }
    assert working["c" * 32] == stop and working["d" * 32] == take

    hl.set_price(BTC, Decimal("40900"))

    stopped = c.fetch_order(BTC, stop.venue_order_id)
    assert (stopped.status, stopped.filled_quantity) == (VenueOrderStatus.FILLED, Decimal("0.002"))
    assert stopped.fills[0].price == Decimal("40900")
    assert c.positions() == []
    assert c.cancel_order(BTC, take.venue_order_id).status is VenueOrderStatus.CANCELED


@pytest.mark.parametrize("kind, trigger, crossing", [(OrderType.STOP, "44000", "44100"),
                                                     (OrderType.TAKE_PROFIT, "42000", "41900")])
def test_a_short_is_closed_by_a_buy_trigger(hl: VenueHarness, kind: OrderType, trigger: str, crossing: str) -> None:
    c = connect(hl)
    c.create_order(order(side=Side.SELL, qty="0.002"))
    placed = c.create_order(OrderRequest("9" * 32, BTC, Side.BUY, kind, Decimal("0.002"),
                                         trigger_price=Decimal(trigger), reduce_only=True))
    (wire,) = [o for a in fake_of(hl).exchange_actions("order") for o in a["orders"]][1:]
    assert wire["t"]["trigger"]["tpsl"] == ("sl" if kind is OrderType.STOP else "tp") and wire["b"] is True
    assert Decimal(wire["p"]) > Decimal(trigger)  # a buy's bound lies above its trigger
    hl.set_price(BTC, Decimal(trigger) + (Decimal(crossing) - Decimal(trigger)) * -1)  # the other way: nothing
    assert c.fetch_order(BTC, placed.venue_order_id).status is VenueOrderStatus.OPEN
    hl.set_price(BTC, Decimal(crossing))
    assert c.fetch_order(BTC, placed.venue_order_id).status is VenueOrderStatus.FILLED
    assert c.positions() == []


def test_leverage_updates(hl: VenueHarness) -> None:
    fake, owner = fake_of(hl), hl.credentials["account_address"]
    c = connect(hl)
    c.set_leverage(BTC, Decimal("5"))
    assert fake.user(owner).leverage["BTC"] == ("cross", 5)
    for bad in ("2.5", "0", "41"):
        with pytest.raises(InvalidOrderError):
            c.set_leverage(BTC, Decimal(bad))
    connect(hl, margin_mode="isolated").set_leverage(BTC, Decimal("3"))
    assert fake.user(owner).leverage["BTC"] == ("isolated", 3)
    c.set_leverage("DOGE/USDC:USDC", Decimal("2"))  # an isolated-only market
    assert fake.user(owner).leverage["DOGE"] == ("isolated", 2)
    c.create_order(order(leverage=Decimal("7")))
    assert fake.user(owner).leverage["BTC"] == ("cross", 7)


def test_an_orders_leverage_is_set_once_per_account_and_never_for_an_exit(hl: VenueHarness) -> None:
    from exchanges.base import InMemoryVenueJournal

    journal = InMemoryVenueJournal()
    build = lambda: registry.build(venue="hyperliquid", network="testnet", credentials=hl.credentials,  # noqa: E731
                                   endpoint=hl.endpoint, journal=journal, resilient=False)
    first = build()
    first.create_order(order(leverage=Decimal("3"), cid="1" * 32))
    first.create_order(order(leverage=Decimal("3"), cid="2" * 32))
    build().create_order(order(leverage=Decimal("3"), cid="3" * 32))  # another process: the journal remembers
    build().create_order(order(side=Side.SELL, qty="0.003", reduce_only=True, leverage=Decimal("9")))
    assert [a["leverage"] for a in fake_of(hl).exchange_actions("updateLeverage")] == [3]
    assert not list(build().positions())


def test_balances_positions_ticker_and_candles_are_decimal(hl: VenueHarness) -> None:
    fake = fake_of(hl)
    c = connect(hl)
    c.create_order(order(side=Side.SELL, qty="0.01"))
    (balance,) = c.balances()
    (position,) = c.positions()
    assert balance.asset == "USDC" and balance.total < Decimal("1000000") and balance.free <= balance.total
    assert (position.symbol, position.quantity, position.entry_price) == (BTC, Decimal("-0.01"), Decimal("43210"))
    t0 = int((datetime.now(UTC) - timedelta(hours=2)).timestamp()) // 3600 * 3_600_000
    fake.candles[("BTC", "1h")] = [
        {"t": t0 + i * 3_600_000, "T": t0 + (i + 1) * 3_600_000 - 1, "s": "BTC", "i": "1h", "o": "43000.5",
         "c": "43100", "h": "43200", "l": "42900.1", "v": "12.34567", "n": 10} for i in (1, 0)
    ]
    candles = c.candles(BTC, "1h", limit=5)
    assert [x.open_time for x in candles] == sorted(x.open_time for x in candles) and len(candles) == 2
    assert (candles[0].open, candles[0].low, candles[0].volume) == (Decimal("43000.5"), Decimal("42900.1"),
                                                                    Decimal("12.34567"))
    with pytest.raises(VenueError):
        c.candles(BTC, "7m")


def test_the_registry_builds_it_behind_the_resilient_wrapper(hl: VenueHarness) -> None:
    c = registry.build(venue="hyperliquid", network="testnet", credentials=hl.credentials, endpoint=hl.endpoint,
                       account="hl-test")
    placed = c.create_order(order(cid="e" * 32))
    assert c.fetch_order_by_client_id(BTC, "e" * 32) == placed
    assert c.capabilities.venue == "hyperliquid" and type(c).__name__ == "ResilientConnector"


def test_build_makes_no_request() -> None:
    with HyperliquidFake() as fake:
        registry.build(venue="hyperliquid", network="testnet", credentials={}, endpoint=fake.url)
        assert fake.requests() == []


# ------------------------------------------------------------------------------------------- rounding


def test_limit_prices_round_toward_the_safe_side_and_market_bounds_stay_inside_the_slippage(hl: VenueHarness) -> None:
    c = connect(hl)
    buy = c.quantize(order(type_=OrderType.LIMIT, price="38889.9"))
    sell = c.quantize(order(side=Side.SELL, type_=OrderType.LIMIT, price="38889.1"))
    assert (buy.price, sell.price) == (Decimal("38889"), Decimal("38890"))
    c.create_order(order(qty="0.00123456"))
    (wire,) = [o for a in fake_of(hl).exchange_actions("order") for o in a["orders"]]
    assert (wire["p"], wire["s"], wire["t"]) == ("45370", "0.00123", {"limit": {"tif": "Ioc"}})


prices = st.decimals(min_value=Decimal("0.000001"), max_value=Decimal("10000000"), places=9, allow_nan=False,
                     allow_infinity=False).filter(lambda d: d > 0)


@settings(max_examples=300, deadline=None)
@given(price=prices, sz_decimals=st.integers(min_value=0, max_value=5))
def test_rounded_prices_are_valid_on_the_right_side_and_as_close_as_possible(price: Decimal, sz_decimals: int) -> None:
    down = round_price(price, sz_decimals, ROUND_DOWN)
    up = round_price(price, sz_decimals, ROUND_UP)
    nearest = round_price(price, sz_decimals, ROUND_HALF_EVEN)
    assert up > 0 and price_ok(up, sz_decimals) and up >= price
    assert down <= price <= up and down <= nearest <= up
    if down > 0:
        assert price_ok(down, sz_decimals)
    if price_ok(price, sz_decimals):
        assert down == up == nearest == price
    else:
        # Nothing valid lies strictly between: the next valid price above `down` is `up`.
        assert round_price(down + Decimal("1e-12"), sz_decimals, ROUND_UP) == up
    for value in (down, up):
        if value > 0:
            assert decimal_to_wire(value) == float_to_wire(float(str(value)))


def test_a_price_below_the_smallest_tick_is_refused_before_sending(hl: VenueHarness) -> None:
    c = connect(hl)
    with pytest.raises(InvalidOrderError):
        c.create_order(order(type_=OrderType.LIMIT, price="0.01"))
    assert fake_of(hl).exchange_actions() == []


def test_connector_is_constructed_directly_too() -> None:
    c = HyperliquidConnector(network="testnet", secret_key=None, account_address=None)
    assert c.base_url == constants.TESTNET_API_URL
    with pytest.raises(AuthError):
        c.balances()


def test_a_duplicate_client_id_the_venue_does_not_show_yet_is_ambiguous_not_refused(
        hl: VenueHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hyperliquid answers "Duplicate cloid" for a client id it already holds; if its status read lags, the create's
    outcome is unknown (the engine asks again later), never a refusal that would mark the order REJECTED."""
    c = connect(hl)
    resting = order(qty="0.02", type_=OrderType.LIMIT, price="1000", cid="ab" * 16)  # far below the market: rests
    first = c.create_order(resting)
    c.cancel_order(BTC, first.venue_order_id)  # finished without a fill: a repeat now gets "Duplicate cloid"
    monkeypatch.setattr(c, "fetch_order_by_client_id", lambda symbol, cid: None)  # the status read lags
    with pytest.raises(OrderStatusUnknownError, match="Duplicate cloid"):
        c.create_order(resting)


REAL_FILLS = ROOT / "tests" / "fixtures" / "venues" / "hyperliquid" / "user_fills.json"


@pytest.mark.parametrize("page", [2000, 120])
def test_real_fills_without_a_trade_id_are_each_kept_once(hl: VenueHarness, monkeypatch: pytest.MonkeyPatch,
                                                          page: int) -> None:
    """500 real fills recorded by the SDK (no `tid`, newest first, several per transaction and per order), served
    by the fake as the venue serves them, in pages: every fill is kept once and every order gets all of its size."""
    import json
    from collections import defaultdict

    from exchanges import hyperliquid

    recorded = json.loads(REAL_FILLS.read_text())
    connector = connect(hl)
    assert isinstance(connector, HyperliquidConnector)
    fake = fake_of(hl)
    user = connector._user()
    fake.fills.extend({**row, "user": user} for row in recorded)
    fake.fills_page = page
    monkeypatch.setattr(hyperliquid, "FILLS_PAGE", page)

    by_oid = connector._fills(min(int(r["time"]) for r in recorded))

    assert sum(len(f) for f in by_oid.values()) == len(recorded) == 500
    expected: dict[int, Decimal] = defaultdict(Decimal)
    for row in recorded:
        expected[int(row["oid"])] += Decimal(row["sz"])
    assert {oid: sum((f.quantity for f in fills), Decimal(0)) for oid, fills in by_oid.items()} == expected
    again = connector._fills(min(int(r["time"]) for r in recorded))  # read again: the same ids
    assert {f.fill_id for fs in again.values() for f in fs} == {f.fill_id for fs in by_oid.values() for f in fs}
    assert max(len(f.fill_id) for fs in by_oid.values() for f in fs) <= 128


def test_an_order_filled_long_ago_whose_fills_fall_short_is_final_not_working_for_ever(hl: VenueHarness) -> None:
    """A reduce-only trigger the venue clipped to the position left is "filled" with fewer fills than its size.
    Just after the fill that looks like fills still arriving (working); a minute later it is final, with what the
    fills add up to, so an exit waiting on it goes on."""
    connector = connect(hl)
    fake = fake_of(hl)
    placed = connector.create_order(order(qty="0.002"))
    assert placed.status is VenueOrderStatus.FILLED
    venue = fake.orders[int(placed.venue_order_id)]
    fake.fills[:] = [f for f in fake.fills if f["oid"] != venue.oid] + [
        {**f, "sz": "0.001"} for f in fake.fills if f["oid"] == venue.oid]  # the venue filled 0.001 of 0.002
    venue.status_ts = int(time.time() * 1000)
    assert connector.fetch_order(BTC, placed.venue_order_id).status is VenueOrderStatus.PARTIALLY_FILLED  # lag
    venue.status_ts -= 120_000
    found = connector.fetch_order(BTC, placed.venue_order_id)
    assert (found.status, found.filled_quantity) == (VenueOrderStatus.FILLED, Decimal("0.001"))
    assert "0.001 of 0.002" in found.reason


def test_the_proxy_and_ca_bundle_of_the_environment_are_read_once_at_construction(monkeypatch) -> None:
    """requests reads proxies and the CA bundle from the environment on every call unless told not to; the
    connector reads them once: a proxy set for the venue is used, NO_PROXY still exempts a host."""
    from exchanges.hyperliquid import HyperliquidConnector

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    proxied = HyperliquidConnector(network="testnet", secret_key=None, account_address=None)
    session = proxied._info.session
    assert session.proxies.get("https") == "http://proxy.internal:3128"
    assert session.verify == "/etc/ssl/certs/ca-certificates.crt"
    assert session.trust_env is False  # nothing more is read per call
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    exempt = HyperliquidConnector(network="testnet", secret_key=None, account_address=None,
                                  base_url="https://127.0.0.1:9")
    assert "https" not in exempt._info.session.proxies
