"""Synthetix perps v3 through web3 against anvil running the Vyper MockPerpsMarket (tests/fakes/synthetix_venue.py)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from decimal import ROUND_DOWN, Decimal
from typing import Any

import pytest
from eth_abi import encode as abi_encode
from eth_account import Account
from eth_utils import function_abi_to_4byte_selector, keccak
from web3.exceptions import TransactionNotFound

from exchanges import registry
from exchanges.base import InMemoryVenueJournal, OrderRequest, OrderType, Side, VenueJournal, VenueOrderStatus
from exchanges.errors import (
    AuthError,
    InsufficientFundsError,
    InvalidOrderError,
    MarketNotFoundError,
    OrderStatusUnknownError,
    RateLimitError,
    TemporaryError,
    VenueError,
)
from exchanges.synthetix import SynthetixConnector, decode_revert, error_for_revert, load_abi
from tests.exchanges.contract import ConnectorContract, ContractVenue
from tests.fakes.faults import Fault, Request
from tests.fakes.synthetix import HERE as SYNTHETIX_FAKE
from tests.fakes.synthetix import compile_contracts, load_artifact
from tests.fakes.synthetix_venue import (
    DEPOSIT,
    ETH_MARKET_ID,
    OTHER_KEY,
    TRADER_KEY,
    units,
    Chain,
    PriceService,
    RpcFront,
    harness,
    wait_until,
)
from tests.fakes.venues import VenueHarness


class TestSynthetixConnectorContract(ConnectorContract):
    @pytest.fixture
    def venue(self) -> Iterator[ContractVenue]:
        with harness() as h:
            connector = registry.build(venue="synthetix", network=h.network, credentials=h.credentials,
                                       endpoint=h.endpoint, journal=InMemoryVenueJournal())
            yield ContractVenue(connector=connector, symbol=h.symbol, price=h.price, set_price=h.set_price)


# ------------------------------------------------------------------------------------------- helpers


@pytest.fixture
def h() -> Iterator[VenueHarness]:
    with harness() as running:
        yield running


def connect(h: VenueHarness, journal: VenueJournal | None = None, **overrides: str) -> SynthetixConnector:
    """Build the bare connector through the registry (no retries: the venue's raw answers) against the faulty front."""
    connector = registry.build(venue="synthetix", network=h.network, credentials={**h.credentials, **overrides},
                               endpoint=h.endpoint, journal=journal if journal is not None else InMemoryVenueJournal(),
                               resilient=False)
    assert isinstance(connector, SynthetixConnector)
    return connector


def market_order(cid: str, side: Side = Side.BUY, quantity: str = "0.01", **kw: Any) -> OrderRequest:
    return OrderRequest(client_order_id=cid, symbol="ETH-PERP", side=side, type=OrderType.MARKET,
                        quantity=Decimal(quantity), **kw)


def chain_of(h: VenueHarness) -> Chain:
    chain = h.extra["chain"]
    assert isinstance(chain, Chain)
    return chain


def is_broadcast(request: Request) -> bool:
    return b"eth_sendRawTransaction" in request.body


def broadcasts(h: VenueHarness) -> list[Request]:
    front = h.extra["front"]
    assert isinstance(front, RpcFront)
    return front.requests(is_broadcast)


def trader_nonce(h: VenueHarness) -> int:
    chain = chain_of(h)
    return int(chain.w3.eth.get_transaction_count(chain.w3.to_checksum_address(
        Account.from_key(TRADER_KEY).address)))


# ------------------------------------------------------------------------------------------- the ABI and the mock


def test_committed_artifact_recompiles_identically() -> None:
    assert compile_contracts() == load_artifact()


def test_mock_speaks_only_the_real_abi() -> None:
    real = load_abi("PerpsMarketProxy")
    real_selectors = {function_abi_to_4byte_selector(e) for e in real if e["type"] == "function"}
    real_events = {(e["name"], tuple((i["type"], i["indexed"]) for i in e["inputs"])) for e in real
                   if e["type"] == "event"}
    real_errors = {f"{e['name']}({','.join(i['type'] for i in e['inputs'])})" for e in real if e["type"] == "error"}
    mock = load_artifact()["contracts"]["MockPerpsMarket"]["abi"]

    functions = [e for e in mock
                 if e["type"] == "function" and not e["name"].startswith("fake_") and e["name"] != "usd"]
    events = {(e["name"], tuple((i["type"], i["indexed"]) for i in e["inputs"])) for e in mock if e["type"] == "event"}
    raised = set(re.findall(r'method_id\("([^"]+)"\)', (SYNTHETIX_FAKE / "MockPerpsMarket.vy").read_text()))

    assert len(functions) >= 20 and {function_abi_to_4byte_selector(e) for e in functions} <= real_selectors
    assert events <= real_events and len(events) == 6
    assert raised <= real_errors and "InsufficientMargin(int256,uint256)" in raised


ERROR_CASES = [
    ("InsufficientMargin", [-5 * 10**18, 50 * 10**18], InsufficientFundsError, "available -5 USD, required 50 USD"),
    ("AcceptablePriceExceeded", [3000 * 10**18, 2020 * 10**18], InvalidOrderError,
     "fill price 3000, acceptable price 2020"),
    ("AcceptablePriceNotExceeded", [3000 * 10**18, 3030 * 10**18], InvalidOrderError, "can still settle"),
    ("InsufficientCollateralAvailableForWithdraw", [10**18, 2 * 10**18], InsufficientFundsError, "requested 2 USD"),
    ("InsufficientCollateral", [0, 1, 2], InsufficientFundsError, "insufficient collateral"),
    ("InvalidMarket", [7], MarketNotFoundError, "market with id 7"),
    ("PermissionDenied", [1, b"\x00" * 32, "0x" + "11" * 20], AuthError, "PermissionDenied"),
    ("AccountNotFound", [9], AuthError, "AccountNotFound"),
    ("PendingOrderExists", [], TemporaryError, "still waiting for settlement"),
    ("OrderNotValid", [], InvalidOrderError, "no pending order"),
    ("ZeroSizeOrder", [], InvalidOrderError, "size is zero"),
    ("SettlementWindowExpired", [3, 1, 2], InvalidOrderError, "SettlementWindowExpired"),
    ("MaxOpenInterestReached", [100, 5, 6], InvalidOrderError, "open interest cap"),
    ("InvalidAmountDelta", [0], InvalidOrderError, "InvalidAmountDelta"),
    ("OracleDataRequired", ["0x" + "22" * 20, b"query"], TemporaryError, "ERC-7412"),
]


@pytest.mark.parametrize(("name", "args", "error", "text"), ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_custom_errors_decode_by_selector_into_our_errors(name: str, args: list[Any], error: type, text: str) -> None:
    (abi,) = [e for e in load_abi("PerpsMarketProxy") if e["type"] == "error" and e["name"] == name]
    data = function_abi_to_4byte_selector(abi) + abi_encode([i["type"] for i in abi["inputs"]], args)

    exc = error_for_revert(decode_revert("0x" + data.hex()))

    assert type(exc) is error and text in str(exc) and exc.revert.name == name


def test_unknown_revert_selector_is_an_invalid_order_naming_it() -> None:
    exc = error_for_revert(decode_revert("0xdeadbeef"))
    assert type(exc) is InvalidOrderError and "0xdeadbeef" in str(exc)


# ------------------------------------------------------------------------------------------- venue errors on chain


def test_insufficient_margin_is_refused_before_anything_is_signed(h: VenueHarness) -> None:
    connector = connect(h)
    with pytest.raises(InsufficientFundsError) as caught:
        connector.create_order(market_order("big", quantity="5000"))
    assert "available 100000 USD" in str(caught.value)
    assert caught.value.revert.name == "InsufficientMargin"  # type: ignore[attr-defined]
    assert broadcasts(h) == [] and h.created_client_ids() == []


def test_acceptable_price_exceeded_names_both_prices(h: VenueHarness) -> None:
    connector = connect(h)
    with pytest.raises(InvalidOrderError) as caught:
        connector.create_order(market_order("stale", price=Decimal("2000")))  # 1% above 2000 < index 3000
    assert "fill price 3000, acceptable price 2020" in str(caught.value)
    assert h.created_client_ids() == []


def test_an_account_owned_by_another_key_is_an_auth_error(h: VenueHarness) -> None:
    other = chain_of(h).open_account(OTHER_KEY, Decimal("1000"))
    connector = connect(h, account_id=str(other))
    with pytest.raises(AuthError):
        connector.create_order(market_order("not-mine"))
    assert [c.ok for c in connector.verify()] == [True, False]
    assert [(c.name, c.ok) for c in connect(h).verify()] == [
        ("rpc chain", True), ("perps account", True), ("gas balance", True), ("credentials accepted", True)]


def test_a_second_commit_while_one_waits_for_the_keeper_is_temporary(h: VenueHarness) -> None:
    chain = chain_of(h)
    connector = connect(h, settle_timeout="0.3")
    chain.keeper_paused.set()
    first = connector.create_order(market_order("waits"))
    assert first.status is VenueOrderStatus.OPEN and first.fills == ()
    assert [(o.client_order_id, o.venue_order_id) for o in connector.open_orders("ETH-PERP")] == [
        ("waits", first.venue_order_id)]

    with pytest.raises(TemporaryError, match="still waiting for settlement"):
        connector.create_order(market_order("second"))

    chain.keeper_paused.clear()
    wait_until(lambda: connector.fetch_order("ETH-PERP", first.venue_order_id).status is VenueOrderStatus.FILLED)
    assert connector.open_orders() == [] and h.created_client_ids() == ["waits"]


def test_an_order_no_keeper_settles_expires_as_canceled(h: VenueHarness) -> None:
    chain = chain_of(h)
    connector = connect(h, settle_timeout="0.2")
    chain.keeper_paused.set()
    placed = connector.create_order(market_order("late"))
    assert placed.status is VenueOrderStatus.OPEN

    chain.mine(seconds=120)  # past the 60 s settlement window

    expired = connector.fetch_order_by_client_id("ETH-PERP", "late")
    assert expired is not None and expired.status is VenueOrderStatus.CANCELED and "expired" in expired.reason
    assert connector.cancel_order("ETH-PERP", placed.venue_order_id) == expired
    assert connector.open_orders() == [] and connector.positions() == []


def test_a_settled_order_whose_event_is_not_readable_yet_stays_open_never_canceled(h: VenueHarness) -> None:
    chain = chain_of(h)
    connector = connect(h, settle_timeout="0.2")
    chain.keeper_paused.set()
    order = connector.create_order(market_order("lagging-logs"))
    assert order.status is VenueOrderStatus.OPEN
    assert chain.settle_pending() == 1  # settled on chain: the pending slot is empty now
    front = h.extra["front"]
    assert isinstance(front, RpcFront)

    front.hide_logs = 1
    seen = connector.fetch_order("ETH-PERP", order.venue_order_id)
    assert seen.status is VenueOrderStatus.OPEN and "not readable yet" in seen.reason

    filled = connector.fetch_order("ETH-PERP", order.venue_order_id)
    assert filled.status is VenueOrderStatus.FILLED and filled.filled_quantity == Decimal("0.01")


def test_cancel_refuses_a_settleable_order_and_cancels_one_beyond_its_acceptable_price(h: VenueHarness) -> None:
    chain = chain_of(h)
    connector = connect(h, settle_timeout="0.2")
    chain.keeper_paused.set()
    placed = connector.create_order(market_order("to-cancel"))

    with pytest.raises(InvalidOrderError, match="can still settle"):
        connector.cancel_order("ETH-PERP", placed.venue_order_id)

    chain.set_price(ETH_MARKET_ID, Decimal("3100"))  # above the buy's acceptable 3030
    canceled = connector.cancel_order("ETH-PERP", placed.venue_order_id)

    assert canceled.status is VenueOrderStatus.CANCELED
    assert "fill price 3100 beyond the acceptable price 3030" in canceled.reason
    assert connector.open_orders() == [] and connector.positions() == []


def test_the_keeper_cancels_an_order_the_price_ran_away_from(h: VenueHarness) -> None:
    chain = chain_of(h)
    connector = connect(h, settle_timeout="0.2")
    chain.keeper_paused.set()
    placed = connector.create_order(market_order("ran-away", side=Side.SELL))
    chain.set_price(ETH_MARKET_ID, Decimal("2900"))  # below the sell's acceptable 2970
    chain.keeper_paused.clear()

    wait_until(lambda: connector.fetch_order("ETH-PERP", placed.venue_order_id).status is VenueOrderStatus.CANCELED)
    assert connector.positions() == []


# ------------------------------------------------------------------------------------------- durability and nonces


class Crash(Exception):
    """The process dies between signing and broadcasting."""


def test_raw_transaction_is_journalled_before_broadcast_and_resent_byte_for_byte(
        h: VenueHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = InMemoryVenueJournal()
    before = connect(h, journal)
    nonce = trader_nonce(h)

    def crash(key: str, entry: dict[str, Any]) -> dict[str, Any]:
        raise Crash

    monkeypatch.setattr(before, "_broadcast", crash)
    with pytest.raises(Crash):
        before.create_order(market_order("crash-1"))

    stored = journal.get("tx:crash-1")
    assert stored is not None and stored["state"] == "signed" and stored["nonce"] == nonce
    assert "0x" + keccak(hexstr=stored["raw"]).hex() == stored["hash"]
    with pytest.raises(TransactionNotFound):
        chain_of(h).w3.eth.get_transaction(stored["hash"])
    assert broadcasts(h) == [] and trader_nonce(h) == nonce

    after = connect(h, journal)  # the restarted process asks by client id before anything else
    found = after.fetch_order_by_client_id("ETH-PERP", "crash-1")
    resent = after.create_order(market_order("crash-1"))

    assert found is not None and found.venue_order_id == resent.venue_order_id == stored["hash"]
    assert resent.status is VenueOrderStatus.FILLED
    assert h.created_client_ids() == ["crash-1"] and trader_nonce(h) == nonce + 1
    assert [r.json()["params"][0] for r in broadcasts(h)] == [stored["raw"]]  # the stored bytes, once


def test_a_stored_unsent_transaction_goes_out_before_any_new_nonce(
        h: VenueHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = InMemoryVenueJournal()
    before = connect(h, journal)
    monkeypatch.setattr(before, "_broadcast", lambda key, entry: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        before.create_order(market_order("first"))

    after = connect(h, journal)
    second = after.create_order(market_order("second", side=Side.SELL))

    assert second.status is VenueOrderStatus.FILLED
    assert h.created_client_ids() == ["first", "second"]
    first = after.fetch_order_by_client_id("ETH-PERP", "first")
    assert first is not None and first.status is VenueOrderStatus.FILLED
    nonces = sorted(int(e["nonce"]) for _, e in journal.items("tx:"))
    assert nonces == [nonces[0], nonces[0] + 1] and trader_nonce(h) == nonces[0] + 2


def test_nonces_are_consecutive_and_never_reused(h: VenueHarness) -> None:
    journal = InMemoryVenueJournal()
    connector = connect(h, journal)
    start = trader_nonce(h)
    for cid, side in [("n1", Side.BUY), ("n2", Side.SELL), ("n3", Side.BUY), ("n2", Side.SELL)]:
        connector.create_order(market_order(cid, side=side))
    chain_of(h).fund(Account.from_key(TRADER_KEY).address, Decimal("10"))
    connector.deposit(Decimal("10"), token=chain_of(h).usd.address)

    nonces = [int(e["nonce"]) for _, e in journal.items("tx:")]
    assert sorted(nonces) == list(range(start, start + 5)) and trader_nonce(h) == start + 5
    assert h.created_client_ids() == ["n1", "n2", "n3"]


def test_no_new_nonce_is_signed_while_the_previous_transaction_is_pending(h: VenueHarness) -> None:
    chain = chain_of(h)
    journal = InMemoryVenueJournal()
    connector = connect(h, journal, receipt_timeout="0.3", settle_timeout="0.2")
    chain.keeper_paused.set()
    chain.automine(False)
    pending = connector.create_order(market_order("in-mempool"))
    assert pending.status is VenueOrderStatus.OPEN and "not mined" in pending.reason

    with pytest.raises(TemporaryError, match="not mined yet"):
        connector.create_order(market_order("must-wait"))
    assert journal.get("tx:must-wait") is None

    chain.automine(True)
    chain.mine()
    chain.keeper_paused.clear()
    wait_until(lambda: connector.fetch_order_by_client_id("ETH-PERP", "in-mempool").status  # type: ignore[union-attr]
               is VenueOrderStatus.FILLED)
    assert connector.create_order(market_order("must-wait", side=Side.SELL)).status is VenueOrderStatus.FILLED
    assert h.created_client_ids() == ["in-mempool", "must-wait"]


def test_a_stored_transaction_whose_nonce_went_elsewhere_is_rejected_as_dropped(
        h: VenueHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = InMemoryVenueJournal()
    connector = connect(h, journal)
    monkeypatch.setattr(connector, "_broadcast", lambda key, entry: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        connector.create_order(market_order("orphan"))
    chain_of(h).open_account(TRADER_KEY, Decimal("1"))  # the same key used elsewhere takes the nonce

    order = connect(h, journal).fetch_order_by_client_id("ETH-PERP", "orphan")

    assert order is not None and order.status is VenueOrderStatus.REJECTED and "dropped" in order.reason
    assert h.created_client_ids() == []


# ------------------------------------------------------------------------------------------- faults on the RPC


def test_accept_then_drop_on_broadcast_is_unknown_then_resolved_by_client_id(h: VenueHarness) -> None:
    connector = connect(h)
    h.plan.next(1, Fault.ACCEPT_THEN_DROP, match=is_broadcast)
    with pytest.raises(OrderStatusUnknownError):
        connector.create_order(market_order("lost-reply"))

    wait_until(lambda: (o := connector.fetch_order_by_client_id("ETH-PERP", "lost-reply")) is not None
               and o.status is VenueOrderStatus.FILLED)
    again = connector.create_order(market_order("lost-reply"))  # the engine's resend finds it

    assert again.status is VenueOrderStatus.FILLED and h.created_client_ids() == ["lost-reply"]


def test_a_dropped_broadcast_is_resent_as_the_same_bytes(h: VenueHarness) -> None:
    connector = connect(h)
    h.plan.next(1, Fault.DROP, match=is_broadcast)
    with pytest.raises(OrderStatusUnknownError):
        connector.create_order(market_order("dropped"))
    assert h.created_client_ids() == []  # the node never got it

    found = connector.fetch_order_by_client_id("ETH-PERP", "dropped")  # re-sends the stored bytes
    order = connector.create_order(market_order("dropped"))

    sent = [r.json()["params"][0] for r in broadcasts(h)]
    assert found is not None and found.venue_order_id == order.venue_order_id
    assert order.status is VenueOrderStatus.FILLED and len(sent) == 2 and sent[0] == sent[1]
    assert h.created_client_ids() == ["dropped"]


def test_a_broadcast_timeout_is_unknown_and_a_resend_cannot_duplicate(h: VenueHarness) -> None:
    connector = connect(h, rpc_timeout="0.3")
    h.plan.next(1, Fault.TIMEOUT, match=is_broadcast, hold=0.8)
    with pytest.raises(OrderStatusUnknownError, match="timed out"):
        connector.create_order(market_order("slow"))

    order = connector.create_order(market_order("slow"))  # resends the same bytes while the first is held
    time.sleep(0.8)  # the held broadcast reaches the node too

    assert order.status is VenueOrderStatus.FILLED and h.created_client_ids() == ["slow"]
    assert len({r.json()["params"][0] for r in broadcasts(h)}) == 1


def test_rpc_429_is_a_rate_limit_with_retry_after_and_5xx_is_temporary(h: VenueHarness) -> None:
    connector = connect(h)
    h.plan.next(1, Fault.RATE_LIMIT, retry_after=7)
    with pytest.raises(RateLimitError) as caught:
        connector.ticker("ETH-PERP")
    assert caught.value.retry_after == 7

    h.plan.fail_for(0.3, status=503)
    with pytest.raises(TemporaryError):
        connector.balances()
    time.sleep(0.3)
    assert connector.ticker("ETH-PERP").price == Decimal("3000")


def test_a_5xx_on_broadcast_is_unknown_and_one_order_results(h: VenueHarness) -> None:
    connector = connect(h)
    h.plan.next(1, Fault.SERVER_ERROR, match=is_broadcast, status=502)
    with pytest.raises(OrderStatusUnknownError):
        connector.create_order(market_order("bad-gateway"))

    order = connector.create_order(market_order("bad-gateway"))

    assert order.status is VenueOrderStatus.FILLED and h.created_client_ids() == ["bad-gateway"]


# ------------------------------------------------------------------------------------------- ERC-7412 price pushes


def price_requests(h: VenueHarness) -> list[Request]:
    prices = h.extra["prices"]
    assert isinstance(prices, PriceService)
    return prices.requests()


def test_a_stale_oracle_price_is_pushed_in_the_same_transaction_as_the_commit(h: VenueHarness) -> None:
    chain = chain_of(h)
    chain.send(chain.market.functions.fake_set_staleness(60))  # no feed has ever been pushed: every price is stale
    connector = connect(h)

    order = connector.create_order(market_order("needs-price"))

    assert order.status is VenueOrderStatus.FILLED and h.created_client_ids() == ["needs-price"]
    assert chain.oracle.functions.updates().call() == 1
    feed = "0x" + bytes(keccak(text="ETH")).hex()
    assert [r.path for r in price_requests(h)] == [f"/v2/updates/price/latest?ids%5B%5D={feed}&encoding=hex"]
    assert len(broadcasts(h)) == 1  # one transaction carries the update and the commit
    tx = chain.w3.eth.get_transaction(order.venue_order_id)
    assert tx["to"] == chain.forwarder.address and tx["value"] == 0

    # Within the staleness tolerance the next commit needs no update and goes straight to the proxy.
    second = connector.create_order(market_order("fresh-enough", side=Side.SELL))
    assert second.status is VenueOrderStatus.FILLED
    assert chain.oracle.functions.updates().call() == 1 and len(price_requests(h)) == 1
    assert chain.w3.eth.get_transaction(second.venue_order_id)["to"] == chain.market.address


def test_the_oracle_fee_is_paid_with_the_price_update(h: VenueHarness) -> None:
    chain = chain_of(h)
    chain.send(chain.market.functions.fake_set_staleness(60))
    chain.send(chain.oracle.functions.fake_set_fee(12_345))  # wei per update, answered by FeeRequired

    order = connect(h).create_order(market_order("pays-fee"))

    assert order.status is VenueOrderStatus.FILLED
    assert chain.w3.eth.get_transaction(order.venue_order_id)["value"] == 12_345
    assert chain.w3.eth.get_balance(chain.oracle.address) == 12_345
    assert len(broadcasts(h)) == 1


@pytest.mark.parametrize(("status", "error"), [(503, TemporaryError), (429, RateLimitError)])
def test_a_price_service_failure_signs_nothing(h: VenueHarness, status: int, error: type[Exception]) -> None:
    chain = chain_of(h)
    chain.send(chain.market.functions.fake_set_staleness(60))
    prices = h.extra["prices"]
    assert isinstance(prices, PriceService)
    nonce = trader_nonce(h)
    if status == 429:
        prices.plan.next(1, Fault.RATE_LIMIT, retry_after=3)
    else:
        prices.plan.next(1, Fault.SERVER_ERROR, status=status)

    with pytest.raises(error, match="price service"):
        connect(h).create_order(market_order("no-price"))

    assert broadcasts(h) == [] and h.created_client_ids() == [] and trader_nonce(h) == nonce
    assert connect(h).create_order(market_order("no-price")).status is VenueOrderStatus.FILLED  # once it is back


def test_an_oracle_query_of_an_unknown_kind_is_temporary_and_names_it(h: VenueHarness) -> None:
    connector = connect(h)
    revert = decode_revert("0x" + (bytes(keccak(text="OracleDataRequired(address,bytes)")[:4]) + abi_encode(
        ["address", "bytes"], [chain_of(h).oracle.address, abi_encode(["uint8"], [2])])).hex())
    assert revert.name == "OracleDataRequired"
    with pytest.raises(TemporaryError, match="does not know|update type 2"):
        connector._price_update(revert)


# ------------------------------------------------------------------------------------------- accounts, values, data


def test_account_creation_and_deposit_are_exact(h: VenueHarness) -> None:
    chain = chain_of(h)
    newcomer = Account.from_key(OTHER_KEY)
    chain.fund(newcomer.address, Decimal("500"))
    journal = InMemoryVenueJournal()
    connector = connect(h, journal, private_key=OTHER_KEY, account_id="")
    with pytest.raises(AuthError, match="ACCOUNT_ID"):
        connector.balances()

    account_id = connector.create_account()
    assert connector.create_account() == account_id and connect(h, journal, private_key=OTHER_KEY,
                                                                account_id="").account_id() == account_id
    connector.deposit(Decimal("250.000000000000000001"), token=chain.usd.address)

    (balance,) = connector.balances()
    assert balance.total == Decimal("250.000000000000000001") == balance.free
    assert chain.market.functions.getAccountOwner(account_id).call() == newcomer.address


def test_prices_fills_margin_and_entry_are_exact_decimals(h: VenueHarness) -> None:
    connector = connect(h)
    h.set_price("ETH-PERP", Decimal("3000.123456789012345678"))
    assert connector.ticker("ETH-PERP").price == Decimal("3000.123456789012345678")

    order = connector.create_order(market_order("exact", quantity="0.5"))
    (fill,) = order.fills
    assert fill.price == Decimal("3000.123456789012345678")
    assert fill.fee == Decimal("0.750030864197253086")  # 0.5 * price * 5 bps, truncated to 18 decimals on chain
    h.set_price("ETH-PERP", Decimal("3100"))

    (position,) = connector.positions()
    (balance,) = connector.balances()
    assert (position.quantity, position.entry_price) == (Decimal("0.5"), Decimal("3000.123456789012345678"))
    pnl = (Decimal("3100") - Decimal("3000.123456789012345678")) * Decimal("0.5")
    assert balance.total == DEPOSIT - fill.fee + pnl.quantize(Decimal("1e-18"), rounding=ROUND_DOWN)


def test_market_data_and_capabilities(h: VenueHarness) -> None:
    connector = connect(h)
    eth = connector.market("ETH-PERP")
    assert (eth.tick_size, eth.lot_size, eth.min_qty, eth.max_leverage) == (
        Decimal("0.01"), Decimal("0.0001"), Decimal("0.0001"), Decimal("50"))
    assert (eth.maker_fee, eth.taker_fee, eth.kind, eth.quote) == (Decimal("0.0002"), Decimal("0.0005"), "perp", "USD")
    assert connector.market("BTC-PERP").lot_size == Decimal("0.00001")
    assert connector.capabilities.extra["limit_orders"] == "false" and not connector.capabilities.stop_orders

    connector.set_leverage("ETH-PERP", Decimal("10"))
    with pytest.raises(InvalidOrderError):
        connector.set_leverage("ETH-PERP", Decimal("51"))
    with pytest.raises(VenueError, match="no candle"):
        connector.candles("ETH-PERP", "1m")
    with pytest.raises(InvalidOrderError, match="only market orders"):
        connector.create_order(market_order("lim", type=OrderType.LIMIT, price=Decimal("2900")) if False else
                               OrderRequest("lim", "ETH-PERP", Side.BUY, OrderType.LIMIT, Decimal("0.01"),
                                            price=Decimal("2900")))


def test_reduce_only_never_increases_a_position(h: VenueHarness) -> None:
    connector = connect(h)
    connector.create_order(market_order("open"))
    with pytest.raises(InvalidOrderError, match="would not reduce"):
        connector.create_order(market_order("more", reduce_only=True))
    with pytest.raises(InvalidOrderError, match="would not reduce"):
        connector.create_order(market_order("flip", side=Side.SELL, quantity="0.02", reduce_only=True))

    closed = connector.create_order(market_order("close", side=Side.SELL, reduce_only=True))

    assert closed.status is VenueOrderStatus.FILLED and connector.positions() == []


def test_mainnet_uses_its_own_chain_and_refuses_a_testnet_rpc() -> None:
    with harness("mainnet") as h:
        connector = connect(h)
        assert connector.create_order(market_order("main")).status is VenueOrderStatus.FILLED
        assert connector.chain_id == 8453
        testnet_config = registry.build(venue="synthetix", network="testnet", credentials=h.credentials,
                                        endpoint=h.endpoint, resilient=False)
        with pytest.raises(VenueError, match="serves chain 8453"):
            testnet_config.ticker("ETH-PERP")


def test_published_networks_are_the_defaults() -> None:
    connector = registry.build(venue="synthetix", network="testnet", credentials={"private_key": TRADER_KEY},
                               resilient=False)
    assert isinstance(connector, SynthetixConnector)
    assert (connector.rpc_url, connector.chain_id, connector.proxy.address) == (
        "https://sepolia.base.org", 84532, "0xf53Ca60F031FAf0E347D44FbaA4870da68250c8d")
    mainnet = registry.build(venue="synthetix", network="mainnet", credentials={"private_key": TRADER_KEY},
                             resilient=False)
    assert isinstance(mainnet, SynthetixConnector)
    assert (mainnet.chain_id, mainnet.proxy.address) == (8453, "0x0A2AF931eFFd34b81ebcc57E3d3c9B1E1dE1C9Ce")


def test_the_private_key_never_shows(h: VenueHarness) -> None:
    secret = TRADER_KEY[2:]
    with pytest.raises(AuthError) as caught:
        registry.build(venue="synthetix", network="testnet", credentials={"private_key": secret[:-2] + "zz"})
    assert secret[:-2] not in str(caught.value)
    with pytest.raises(AuthError, match="PRIVATE_KEY"):
        registry.build(venue="synthetix", network="testnet", credentials={})

    journal = InMemoryVenueJournal()
    connector = connect(h, journal)
    connector.create_order(market_order("quiet"))
    with pytest.raises(InsufficientFundsError) as refused:
        connector.create_order(market_order("loud", quantity="5000"))

    shown = [repr(connector), str(refused.value), json.dumps(journal.items()),
             *(r.body.decode() for r in h.extra["front"].requests())]  # type: ignore[attr-defined]
    assert not any(secret in text or secret.upper() in text for text in shown)


def test_a_node_behind_our_last_mined_nonce_signs_nothing(h: VenueHarness) -> None:
    journal = InMemoryVenueJournal()
    connector = connect(h, journal)
    connector.create_order(market_order("before"))
    assert journal.items("pending:") == []  # resolved transactions leave the unresolved index
    journal.put(f"nonce:{connector.address}", {"nonce": trader_nonce(h) + 5})  # as if a lagging RPC answered

    with pytest.raises(TemporaryError, match="node is behind"):
        connector.create_order(market_order("after"))
    assert journal.get("tx:after") is None and h.created_client_ids() == ["before"]


def test_a_commit_that_reverts_on_chain_is_rejected_with_the_decoded_reason(h: VenueHarness) -> None:
    chain = chain_of(h)
    connector = connect(h, receipt_timeout="0.2", settle_timeout="0.2")
    chain.keeper_paused.set()
    chain.automine(False)
    pending = connector.create_order(market_order("outbid"))  # passed the pre-flight at 3000, waits in the mempool
    assert pending.status is VenueOrderStatus.OPEN
    # A price move with a higher tip lands first in the same block: the commit then reverts on chain.
    chain.market.functions.fake_set_price(ETH_MARKET_ID, units(Decimal("4000"))).transact(
        {"from": chain.deployer, "maxPriorityFeePerGas": 10**11, "maxFeePerGas": 10**12})
    chain.mine()
    chain.automine(True)

    rejected = connector.fetch_order_by_client_id("ETH-PERP", "outbid")

    assert rejected is not None and rejected.status is VenueOrderStatus.REJECTED
    assert "fill price 4000, acceptable price 3030" in rejected.reason
    with pytest.raises(InvalidOrderError, match="reverted on chain"):
        connector.create_order(market_order("outbid"))  # the same client id is never signed again
    chain.keeper_paused.clear()
    assert h.created_client_ids() == [] and connector.create_order(
        market_order("next", price=Decimal("4000"))).status is VenueOrderStatus.FILLED


@pytest.mark.django_db(transaction=True)
def test_the_signed_transaction_outlives_a_rolled_back_transaction_in_the_durable_journal(
        h: VenueHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    from django.db import transaction

    from trading.journal import DjangoVenueJournal

    before = connect(h, DjangoVenueJournal(4242))
    monkeypatch.setattr(before, "_broadcast", lambda key, entry: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash), transaction.atomic():  # the engine's work rolls back; the journal entry must not
        before.create_order(market_order("durable"))

    stored = DjangoVenueJournal(4242).get("tx:durable")
    assert stored is not None and stored["state"] == "signed"
    order = connect(h, DjangoVenueJournal(4242)).create_order(market_order("durable"))  # a new process

    assert order.status is VenueOrderStatus.FILLED and order.venue_order_id == stored["hash"]
    assert h.created_client_ids() == ["durable"]
    assert DjangoVenueJournal(4242).items("pending:") == []


@pytest.mark.django_db(transaction=True)
def test_two_processes_signing_for_one_wallet_take_turns_through_the_journal_lock(
        h: VenueHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from trading.journal import DjangoVenueJournal
    from trading.sidedb import side_connections_close

    # Two connectors with nothing shared in memory (as two worker processes): only the durable journal.
    first, second = connect(h, DjangoVenueJournal(4343)), connect(h, DjangoVenueJournal(4343))
    chosen = first._next_nonce

    def slow_nonce() -> int:
        nonce = chosen()
        time.sleep(0.5)  # chosen, not yet journalled: the window in which a second signer would take it too
        return nonce

    monkeypatch.setattr(first, "_next_nonce", slow_nonce)
    results: dict[str, Any] = {}

    def place(connector: SynthetixConnector, cid: str, delay: float) -> None:
        time.sleep(delay)
        try:
            for _ in range(100):
                try:
                    results[cid] = connector.create_order(market_order(cid))
                    return
                except TemporaryError:  # a pending order of the account, or the other signer's: try again
                    time.sleep(0.1)
        except Exception as exc:  # noqa: BLE001 - reported below
            results[cid] = exc

    threads = [threading.Thread(target=place, args=(first, "one", 0)),
               threading.Thread(target=place, args=(second, "two", 0.2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    side_connections_close()  # both threads' at once, once both are done (one closing them all broke the other)

    assert {cid: getattr(o, "status", o) for cid, o in results.items()} == {
        "one": VenueOrderStatus.FILLED, "two": VenueOrderStatus.FILLED}
    assert sorted(h.created_client_ids()) == ["one", "two"]
    nonces = sorted(int(DjangoVenueJournal(4343).get(f"tx:{cid}")["nonce"]) for cid in ("one", "two"))
    assert nonces[1] == nonces[0] + 1


def test_two_processes_creating_one_client_id_commit_it_once(h: VenueHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    """One process waits (behind a pending order, or for the signing lock) while another creates the same client id:
    the first must find the other's journalled transaction under the signing lock and not sign a second commit."""
    import threading

    journal = InMemoryVenueJournal()  # the accounts' shared journal (the database, across processes)
    first, second = connect(h, journal), connect(h, journal)
    held, release = threading.Event(), threading.Event()
    original = SynthetixConnector._await_no_pending

    def waits_in_first(self: SynthetixConnector, account_id: int) -> None:
        if self is first:
            held.set()
            assert release.wait(60)
        original(self, account_id)

    monkeypatch.setattr(SynthetixConnector, "_await_no_pending", waits_in_first)
    answers: dict[str, Any] = {}
    waiting = threading.Thread(target=lambda: answers.setdefault("first", first.create_order(market_order("dup-1"))))
    waiting.start()
    assert held.wait(30)
    answers["second"] = second.create_order(market_order("dup-1"))
    release.set()
    waiting.join(60)
    assert h.created_client_ids().count("dup-1") == 1
    assert answers["first"].venue_order_id == answers["second"].venue_order_id
    assert abs(first.positions()[0].quantity) == Decimal("0.01")
