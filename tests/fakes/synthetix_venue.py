"""A loopback Synthetix perps v3: anvil (a real JSON-RPC node) running the Vyper MockPerpsMarket, behind a
FakeHTTPServer JSON-RPC front so the fault plan (429, 5xx, drops, accept-then-drop, timeouts) applies to the
connector's traffic, and a keeper thread that settles committed orders at the oracle price (or lags, when paused).

    with harness() as h:            # h.endpoint is the faulty front; h.extra["chain"] talks to anvil directly
        connector = registry.build(venue="synthetix", network=h.network, credentials=h.credentials,
                                   endpoint=h.endpoint)

Order faults (`order_faults`, tests/fakes/faults.py) play on a commitOrder broadcast (eth_sendRawTransaction, to the
market or through the multicall forwarder), decoded off the signed transaction. Every outcome is the contracts' own:
the front only moves the oracle price, chain time or the keeper, with the keeper held off meanwhile:
- refuse: the price is moved past the order's acceptable price while the commit is mined, so it reverts on chain
  with AcceptablePriceExceeded(fillPrice, acceptablePrice) (the nonce is spent, nothing is committed), then it is
  moved back;
- cancel: the commit is mined, then the price moves past its acceptable price and the keeper calls cancelOrder
  (OrderCancelled, nothing filled), then the price moves back;
- expire: the commit is mined, no keeper settles it, and chain time passes its settlement window (settlement delay
  + window + 1 s), so it is expired unsettled when the reply arrives (the next commit replaces it:
  PreviousOrderExpired);
- drop: the commit is mined and settled as usual, and the reply is lost (the connection closes unanswered).
Partial fills cannot be played: a Synthetix async order settles whole or not at all (settleOrder applies the
commitment's entire sizeDelta). `WireOrder.reduce_only` is always False here: the contract has no such flag (the
connector checks the open position before committing).
"""

from __future__ import annotations

import http.client
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import rlp
from eth_account import Account
from eth_account.typed_transactions import TypedTransaction
from hexbytes import HexBytes
from web3 import Web3

from exchanges.base import OrderType, Side
from tests.fakes.faults import FakeHTTPServer, OrderFault, OrderFaultPlan, Reply, Request, WireOrder
from tests.fakes.synthetix import Anvil, anvil_path, load_artifact
from tests.fakes.venues import VenueHarness

UNIT = 10**18
ETH_MARKET_ID = 100
BTC_MARKET_ID = 200
START_PRICE = Decimal("3000")
DEPOSIT = Decimal("100000")
CHAIN_IDS = {"testnet": 84532, "mainnet": 8453}
# a fixed test key (never used anywhere real)
TRADER_KEY = "0x" + "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
OTHER_KEY = "0x" + "8da4ef21b864d2cc526dbdb2a120bd2874c36c9d0a1fb7f8c63d7f7a8b41de8f"
NO_PARTIAL = ("a Synthetix async order settles whole or not at all: settleOrder applies the commitment's entire "
              "sizeDelta")


def units(value: Decimal | str) -> int:
    """A Decimal as the contracts' 18-decimal integer."""
    return int(Decimal(value).scaleb(18))


class RpcFront(FakeHTTPServer):
    """Forwards JSON-RPC bodies to anvil; the fault plan and the journal apply on the way."""

    def __init__(self, upstream_port: int, on_broadcast: threading.Event | None = None,
                 chain: Chain | None = None) -> None:
        super().__init__()
        self.upstream_port = upstream_port
        self.on_broadcast = on_broadcast or threading.Event()
        self._local = threading.local()
        self.hide_logs = 0  # answer this many eth_getLogs calls with no logs: a node whose log index trails
        self.chain = chain  # order faults need it (they move the oracle price, chain time and the keeper)
        self.order_faults = OrderFaultPlan({OrderFault.PARTIAL: NO_PARTIAL})

    def get_request(self) -> tuple[socket.socket, Any]:
        # The base handler writes headers and body separately: without TCP_NODELAY, Nagle's algorithm and the
        # client's delayed ACK add ~40 ms to every JSON-RPC call.
        sock, address = super().get_request()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, address

    def route(self, request: Request) -> Reply:
        if self.hide_logs and b'"eth_getLogs"' in request.body and request.body.lstrip().startswith(b"{"):
            self.hide_logs -= 1
            return Reply(200, {"jsonrpc": "2.0", "id": request.json()["id"], "result": []})
        commit = self._commit_in(request) if self.chain is not None else None
        fault = None if commit is None else self.order_faults.take(commit[0])
        if fault is None or self.chain is None or commit is None:
            return self._forward(request)
        return self._play(fault, request, commit[1])

    def _forward(self, request: Request) -> Reply:
        for attempt in (1, 2):  # one keep-alive connection to anvil per handler thread; reopen once if stale
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=30)
            try:
                conn.request("POST", "/", body=request.body, headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                reply = Reply(response.status, response.read())
                break
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise
        if b"eth_sendRawTransaction" in request.body:
            self.on_broadcast.set()  # wake the keeper
        return reply

    def _commit_in(self, request: Request) -> tuple[WireOrder, dict[str, Any]] | None:
        """The commitOrder a broadcast carries (directly or inside the forwarder's multicall), if any."""
        if b'"eth_sendRawTransaction"' not in request.body:
            return None
        body = request.json()
        if not isinstance(body, dict) or not body.get("params"):
            return None
        assert self.chain is not None
        raw = HexBytes(str(body["params"][0]))
        tx = TypedTransaction.from_bytes(raw).as_dict() if raw[0] < 0xC0 else dict(
            zip(("nonce", "gasPrice", "gas", "to", "value", "data"), rlp.decode(bytes(raw))[:6]))
        to, data = Web3.to_checksum_address(bytes(tx["to"])), bytes(tx["data"])
        calls = [(to, data)]
        if to == self.chain.forwarder.address:
            _, args = self.chain.forwarder.decode_function_input(data)
            calls = [(Web3.to_checksum_address(c["target"]), bytes(c["callData"])) for c in args["calls"]]
        for target, calldata in calls:
            if target != self.chain.market.address:
                continue
            fn, args = self.chain.market.decode_function_input(calldata)
            if fn.fn_name != "commitOrder":
                continue
            c = args["commitment"]  # a struct: decoded by name
            market_id, account_id, size_delta = int(c["marketId"]), int(c["accountId"]), int(c["sizeDelta"])
            symbol = self.chain.market.functions.metadata(market_id).call()[1]
            order = WireOrder(side=Side.BUY if size_delta > 0 else Side.SELL, type=OrderType.MARKET,
                              quantity=Decimal(abs(size_delta)).scaleb(-18), market=f"{symbol}-PERP",
                              client_order_id=bytes(c["trackingCode"]).rstrip(b"\x00").decode("ascii", "replace"))
            return order, {"market_id": market_id, "account_id": account_id, "buy": size_delta > 0,
                           "acceptable": int(c["acceptablePrice"])}
        return None

    def _play(self, fault: OrderFault, request: Request, commit: dict[str, Any]) -> Reply:
        """Broadcast a commit with its planned fault (the keeper held off meanwhile); see the module docstring."""
        chain = self.chain
        assert chain is not None
        market_id, acceptable = commit["market_id"], commit["acceptable"]
        price = int(chain.market.functions.indexPrice(market_id).call())
        # 1% past the acceptable price: a buy cannot fill above it, a sell below it.
        beyond = acceptable * (101 if commit["buy"] else 99) // 100
        with chain.keeper_lock:
            if fault is OrderFault.REFUSE:
                chain.send(chain.market.functions.fake_set_price(market_id, beyond))
                try:
                    return self._forward(request)  # mined, and reverted by the contract
                finally:
                    chain.send(chain.market.functions.fake_set_price(market_id, price))
            reply = self._forward(request)
            if fault is OrderFault.CANCEL:
                chain.send(chain.market.functions.fake_set_price(market_id, beyond))
                chain.send(chain.market.functions.cancelOrder(commit["account_id"]), chain.keeper_address)
                chain.send(chain.market.functions.fake_set_price(market_id, price))
            elif fault is OrderFault.EXPIRE:
                strategy = chain.market.functions.getSettlementStrategy(market_id, 0).call()
                chain.mine(int(strategy[1]) + int(strategy[2]) + 1)
            elif fault is OrderFault.DROP:
                return Reply(reply.status, reply.body, reply.headers, drop=True)
            return reply

    def rpc_methods(self) -> list[str]:
        """JSON-RPC methods received, in order."""
        out = []
        for r in self.requests():
            body = r.json()
            for call in body if isinstance(body, list) else [body]:
                out.append(str(call.get("method")))
        return out


class PriceService(FakeHTTPServer):
    """Pyth's Hermes: `GET /v2/updates/price/latest?ids[]=..&encoding=hex` answers signed update blobs (fake)."""

    def route(self, request: Request) -> Reply:
        if not request.path.startswith("/v2/updates/price/latest"):
            return Reply(404, {"message": "not found"})
        ids = [v for k, v in parse_qsl(urlsplit(request.path).query) if k == "ids[]"]
        if not ids:
            return Reply(400, {"message": "ids[] is required"})
        blob = "504e4155" + "".join(i.removeprefix("0x") for i in ids)  # "PNAU" + the ids: unsigned stand-in
        return Reply(200, {"binary": {"encoding": "hex", "data": [blob]},
                           "parsed": [{"id": i.removeprefix("0x")} for i in ids]})


@dataclass
class Chain:
    """Direct (fault-free) access to the fake chain: deploys, the oracle, the keeper and test helpers."""

    anvil: Anvil
    w3: Web3
    market: Any  # MockPerpsMarket with the mock's own ABI (fake_ knobs included)
    usd: Any
    oracle: Any  # MockPythWrapper (ERC-7412)
    forwarder: Any  # MockForwarder (ERC-2771 multicall)
    deployer: str
    keeper_address: str
    keeper_paused: threading.Event = field(default_factory=threading.Event)
    wake: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    keeper_lock: Any = field(default_factory=threading.RLock)  # held by the keeper while it works

    def send(self, call: Any, sender: str | None = None) -> dict[str, Any]:
        """Send a transaction from an unlocked anvil account and return its receipt."""
        with self.lock:
            tx_hash = call.transact({"from": sender or self.deployer})
            return dict(self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=10, poll_latency=0.01))

    def set_price(self, market_id: int, price: Decimal) -> None:
        self.send(self.market.functions.fake_set_price(market_id, units(price)))

    def settle_pending(self) -> int:
        """Act as the keeper once: settle every pending order, or cancel one that cannot settle; return count."""
        done = 0
        for account_id in self.market.functions.fake_pending().call():
            try:
                self.market.functions.settleOrder(account_id).call({"from": self.keeper_address})
                self.send(self.market.functions.settleOrder(account_id), self.keeper_address)
                done += 1
            except Exception:  # noqa: BLE001 - cannot settle now (price beyond acceptable, window): try cancel
                try:
                    self.market.functions.cancelOrder(account_id).call({"from": self.keeper_address})
                    self.send(self.market.functions.cancelOrder(account_id), self.keeper_address)
                    done += 1
                except Exception:  # noqa: BLE001 - neither: leave it to expire
                    pass
        return done

    def mine(self, seconds: int = 0) -> None:
        """Move chain time on by `seconds` and mine a block."""
        if seconds:
            self.w3.provider.make_request("evm_increaseTime", [seconds])  # type: ignore[arg-type]
        self.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]

    def automine(self, on: bool) -> None:
        self.w3.provider.make_request("evm_setAutomine", [on])  # type: ignore[arg-type]

    def committed(self) -> list[dict[str, Any]]:
        """Every OrderCommitted event on the chain, oldest first."""
        return [dict(e["args"]) | {"tx": "0x" + bytes(e["transactionHash"]).hex()}
                for e in self.market.events.OrderCommitted().get_logs(from_block=0)]

    def created_client_ids(self) -> list[str]:
        return [bytes(e["trackingCode"]).rstrip(b"\x00").decode("ascii", "replace") for e in self.committed()]

    def fund(self, address: str, usd: Decimal) -> None:
        """Give an address gas money and `usd` of the collateral token."""
        self.w3.provider.make_request("anvil_setBalance", [address, hex(10 * UNIT)])  # type: ignore[arg-type]
        self.send(self.usd.functions.fake_mint(address, units(usd)))

    def open_account(self, key: str, deposit: Decimal) -> int:
        """Create a perps account for `key` and deposit collateral, signing locally; return the account id."""
        trader = Account.from_key(key)
        self.fund(trader.address, deposit)
        receipt = self._signed(key, self.market.functions.createAccount())
        account_id = int.from_bytes(bytes(receipt["logs"][0]["topics"][1]), "big")
        self._signed(key, self.usd.functions.approve(self.market.address, units(deposit)))
        self._signed(key, self.market.functions.modifyCollateral(account_id, 0, units(deposit)))
        return account_id

    def _signed(self, key: str, call: Any) -> dict[str, Any]:
        trader = Account.from_key(key)
        with self.lock:
            tx = call.build_transaction({"from": trader.address,
                                         "nonce": self.w3.eth.get_transaction_count(trader.address)})
            signed = trader.sign_transaction(tx)
            tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
            receipt = dict(self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=10, poll_latency=0.01))
        assert receipt["status"] == 1
        return receipt


def _deploy(w3: Web3, deployer: str, name: str, *args: Any) -> Any:
    contract = load_artifact()["contracts"][name]
    factory = w3.eth.contract(abi=contract["abi"], bytecode=contract["bytecode"])
    receipt = w3.eth.wait_for_transaction_receipt(factory.constructor(*args).transact({"from": deployer}),
                                                  timeout=10, poll_latency=0.01)
    return w3.eth.contract(address=receipt["contractAddress"], abi=contract["abi"])


def _keeper(chain: Chain, stop: threading.Event) -> None:
    while not stop.is_set():
        chain.wake.wait(0.1)  # a broadcast through the front wakes the keeper at once
        chain.wake.clear()
        if chain.keeper_paused.is_set() or stop.is_set():
            continue
        try:
            with chain.keeper_lock:  # an order fault being played holds the keeper off
                chain.settle_pending()
        except Exception:  # noqa: BLE001 - the node is going away at teardown
            if stop.is_set():
                return


@contextmanager
def chain(network: str = "testnet") -> Iterator[Chain]:
    """Start anvil with the mocks deployed, ETH-PERP and BTC-PERP listed, and the keeper running."""
    if anvil_path() is None:
        message = "anvil is not installed: run `npm ci --prefix tests/fakes/synthetix` (make test does)"
        if os.environ.get("TRADESITE_SKIP_ANVIL") == "1":  # a deliberate choice, never a silent one
            pytest.skip(message)
        pytest.fail(message + " (or set TRADESITE_SKIP_ANVIL=1 to skip the Synthetix tests on purpose)")
    node = Anvil(chain_id=CHAIN_IDS[network])
    stop = threading.Event()
    keeper: threading.Thread | None = None
    try:
        w3 = Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 10}), middleware=[])
        deployer, keeper_address = w3.eth.accounts[0], w3.eth.accounts[1]
        usd = _deploy(w3, deployer, "MockUSD")
        oracle = _deploy(w3, deployer, "MockPythWrapper")
        forwarder = _deploy(w3, deployer, "MockForwarder")
        market = _deploy(w3, deployer, "MockPerpsMarket", usd.address, forwarder.address, oracle.address)
        c = Chain(anvil=node, w3=w3, market=market, usd=usd, oracle=oracle, forwarder=forwarder, deployer=deployer,
                  keeper_address=keeper_address)
        # fees 2 and 5 bps, 50x max leverage (2% minimum initial margin), 50 USD minimum position margin
        c.send(market.functions.fake_create_market(ETH_MARKET_ID, "Ethereum", "ETH", units(START_PRICE),
                                                   units("0.0002"), units("0.0005"), units("0.02"), units("50")))
        c.send(market.functions.fake_create_market(BTC_MARKET_ID, "Bitcoin", "BTC", units("60000"),
                                                   units("0.0002"), units("0.0005"), units("0.02"), units("50")))
        keeper = threading.Thread(target=_keeper, args=(c, stop), name="synthetix-keeper", daemon=True)
        keeper.start()
        yield c
    finally:
        stop.set()
        if keeper is not None:
            c.wake.set()
            keeper.join(timeout=5)
        node.stop()


@contextmanager
def harness(network: str = "testnet", **options: str) -> Iterator[VenueHarness]:
    """A funded Synthetix account on ETH-PERP behind the faulty JSON-RPC front; `options` go to credentials."""
    with chain(network) as c:
        account_id = c.open_account(TRADER_KEY, DEPOSIT)
        front = RpcFront(c.anvil.port, on_broadcast=c.wake, chain=c).start()
        prices = PriceService().start()
        try:
            def set_price(symbol: str, price: Decimal) -> None:
                market_id = {"ETH-PERP": ETH_MARKET_ID, "BTC-PERP": BTC_MARKET_ID}[symbol]
                c.set_price(market_id, price)
                c.settle_pending()

            credentials = {"private_key": TRADER_KEY, "account_id": str(account_id),
                           "proxy_address": c.market.address, "forwarder_address": c.forwarder.address,
                           "price_service_url": prices.url, "poll_interval": "0.01", "settle_timeout": "15",
                           "receipt_timeout": "10", "rpc_timeout": "2", **options}
            yield VenueHarness(
                venue="synthetix", network=network, endpoint=front.url, credentials=credentials, symbol="ETH-PERP",
                price=START_PRICE, set_price=set_price, plan=front.plan, created_client_ids=c.created_client_ids,
                order_faults=front.order_faults,
                extra={"chain": c, "front": front, "prices": prices, "account_id": account_id},
            )
        finally:
            prices.stop()
            front.stop()


def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    """Poll `predicate` until true (for the keeper thread); fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)
