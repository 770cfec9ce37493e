"""Synthetix perps v3 (the PerpsMarketProxy on Base Sepolia and Base) through web3.py.

Quirks, kept as data in CAPABILITIES and explained where they bite:
- Orders are asynchronous market orders: `commitOrder` stores one pending order per account with an acceptable
  price (our slippage bound around the index price); a keeper settles it with a fresh Pyth price inside the
  settlement window, or it expires. A committed order that no keeper settled yet is OPEN. No limit, stop or
  post-only orders; no partial fills; no venue candles; leverage is implied by margin.
- The venue order id is the commit transaction's hash; our client order id travels as the commit's
  `trackingCode` (ASCII, zero-padded; an id longer than 32 bytes is hashed and found through the journal).
- On-chain values are 18-decimal integers, converted exactly to and from Decimal.
- Every transaction is signed, then stored with its hash in the VenueJournal (`tx:<client_order_id>`), and only
  then broadcast. No new nonce is signed while an earlier transaction's fate (mined, reverted, dropped) is
  unknown; a stored transaction the node has never seen is re-broadcast byte for byte (the same hash and nonce:
  it cannot execute twice) instead of being signed anew.
- Custom errors in revert data are matched by 4-byte selector against the vendored ABI (exchanges/abi/) and
  become exchanges.errors classes.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, UTC
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import requests
from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_account import Account
from eth_utils import event_abi_to_log_topic, function_abi_to_4byte_selector, keccak, to_checksum_address
from web3 import HTTPProvider, Web3
from web3.exceptions import (
    ContractCustomError,
    ContractLogicError,
    ContractPanicError,
    TransactionNotFound,
    Web3Exception,
    Web3RPCError,
)

from exchanges.base import (
    Balance,
    Capabilities,
    CheckItem,
    Connector,
    InMemoryVenueJournal,
    Market,
    OrderRequest,
    OrderType,
    Side,
    Ticker,
    VenueCandle,
    VenueConfig,
    VenueFill,
    VenueJournal,
    VenueOrder,
    VenueOrderStatus,
    VenuePosition,
    round_down,
    round_up,
)
from exchanges.errors import (
    AuthError,
    InsufficientFundsError,
    InvalidOrderError,
    MarketNotFoundError,
    OrderNotFoundError,
    OrderStatusUnknownError,
    RateLimitError,
    TemporaryError,
    VenueError,
)

log = logging.getLogger("venues.synthetix")

VENUE = "synthetix"
ABI_DIR = Path(__file__).resolve().parent / "abi"
UNIT_EXP = 18
ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
T = TypeVar("T")


@dataclass(frozen=True)
class Network:
    """Where Synthetix perps v3 lives on one network."""

    chain_id: int
    rpc_url: str
    perps_market_proxy: str
    # ERC-2771 multicall forwarder the proxy trusts (price updates go in the same transaction as the order)
    forwarder: str = "0xE2C5658cC5C448B48141168f3e475dF8f65A1e3e"
    price_service_url: str = "https://hermes.pyth.network"  # Pyth's Hermes: signed price updates (ERC-7412)


# PerpsMarketProxy addresses from Synthetix's own deployment manifests (python-sdk deployments/<chain>/perpsFactory).
NETWORKS: dict[str, Network] = {
    "testnet": Network(chain_id=84532, rpc_url="https://sepolia.base.org",
                       perps_market_proxy="0xf53Ca60F031FAf0E347D44FbaA4870da68250c8d"),
    "mainnet": Network(chain_id=8453, rpc_url="https://mainnet.base.org",
                       perps_market_proxy="0x0A2AF931eFFd34b81ebcc57E3d3c9B1E1dE1C9Ce"),
}

CAPABILITIES = Capabilities(
    venue=VENUE,
    live=True,
    post_only=False,
    reduce_only=True,  # checked against the open position before committing: the contract has no such flag
    stop_orders=False,
    leverage=False,
    positions=True,
    candles=False,  # the chain has no candles
    timeframes=(),
    extra={
        "order_types": "market",
        "limit_orders": "false",
        "settlement": "async: commitOrder on chain, a keeper settles it at the oracle price or it expires",
        "partial_fills": "never",
        "candles": "none",
        "leverage": "implied by margin; set_leverage only checks the market's maximum",
        "cancel": "only an order that can no longer settle (expired, or beyond its acceptable price)",
        "venue_order_id": "commit transaction hash",
        "client_order_id": "commit trackingCode (bytes32)",
    },
)

_DEFAULTS = {
    "slippage": "0.01",  # acceptable price = reference price * (1 +- slippage)
    "settle_timeout": "20",  # seconds create_order waits for a keeper to settle before returning OPEN
    "receipt_timeout": "30",  # seconds to wait for a transaction to be mined
    "poll_interval": "1",  # Base makes a block every 2 s; each poll costs 4 RPC calls
    "rpc_timeout": "10",  # seconds per JSON-RPC request
    "log_blocks": "5000",  # blocks searched for settlement events after a commit (RPCs cap eth_getLogs ranges)
    "settlement_strategy_id": "0",
    "market_ttl": "300",  # seconds the market list is cached
}
MAX_ORACLE_ROUNDS = 4  # OracleDataRequired answers followed per transaction before giving up


# --------------------------------------------------------------------------------------------- ABI and values


@cache
def load_abi(name: str) -> list[dict[str, Any]]:
    """Return a vendored ABI from exchanges/abi/ (see each file's `_source`)."""
    abi: list[dict[str, Any]] = json.loads((ABI_DIR / f"{name}.json").read_text())["abi"]
    return abi


def to_units(value: Decimal, *, what: str = "value") -> int:
    """Convert a Decimal to the contract's 18-decimal integer exactly, refusing anything finer than 1e-18."""
    scaled = value.scaleb(UNIT_EXP)
    if not scaled.is_finite() or scaled != scaled.to_integral_value():
        raise InvalidOrderError(f"{what} {value} has more than {UNIT_EXP} decimals", venue=VENUE)
    return int(scaled)


def from_units(value: int) -> Decimal:
    """Convert the contract's 18-decimal integer to a Decimal exactly."""
    return Decimal(value).scaleb(-UNIT_EXP)


def tracking_code(client_order_id: str) -> bytes:
    """Our client order id as a bytes32 trackingCode: ASCII zero-padded, or its keccak hash when longer."""
    raw = client_order_id.encode()
    if len(raw) <= 32 and b"\x00" not in raw:
        return raw.ljust(32, b"\x00")
    return bytes(keccak(raw))


def client_id_from_tracking(code: bytes) -> str | None:
    """Recover a client order id from a trackingCode, or None when it is not one of ours in plain text."""
    text = bytes(code).rstrip(b"\x00")
    try:
        decoded = text.decode("ascii")
    except UnicodeDecodeError:
        return None
    return decoded if decoded and decoded.isprintable() else None


def seconds(text: str) -> float:
    """Parse a duration in seconds (millisecond precision) from text."""
    return int(Decimal(text.strip()) * 1000) / 1000


def _topic_uint(value: int) -> str:
    return "0x" + value.to_bytes(32, "big").hex()


def _hex(value: bytes | str) -> str:
    if isinstance(value, str):
        return value if value.startswith("0x") else "0x" + value
    return "0x" + bytes(value).hex()


# --------------------------------------------------------------------------------------------- revert decoding


@dataclass(frozen=True)
class Revert:
    """A decoded revert: the custom error's name and its arguments (18-decimal amounts left as ints)."""

    name: str
    args: dict[str, Any]
    data: str


@cache
def _error_table() -> dict[bytes, dict[str, Any]]:
    entries = [e for name in ("PythERC7412Wrapper", "PerpsMarketProxy") for e in load_abi(name) if e["type"] == "error"]
    table = {function_abi_to_4byte_selector(e): e for e in entries}  # type: ignore[arg-type]  # a JSON ABI entry
    table[bytes(keccak(text="Error(string)")[:4])] = {"name": "Error",
                                                      "inputs": [{"name": "message", "type": "string"}]}
    table[bytes(keccak(text="Panic(uint256)")[:4])] = {"name": "Panic", "inputs": [{"name": "code", "type": "uint256"}]}
    return table


def decode_revert(data: str | bytes | None) -> Revert:
    """Match revert data's selector against the ABI's custom errors and decode the arguments."""
    raw = bytes.fromhex(data[2:] if data.startswith("0x") else data) if isinstance(data, str) else bytes(data or b"")
    entry = _error_table().get(raw[:4])
    if entry is None:
        return Revert("unknown", {}, _hex(raw))
    types = [i["type"] for i in entry["inputs"]]
    try:
        values = abi_decode(types, raw[4:]) if types else ()
    except Exception:  # noqa: BLE001 - malformed arguments still name the error
        values = ()
    return Revert(entry["name"], {i["name"]: v for i, v in zip(entry["inputs"], values)}, _hex(raw))


def _usd(value: int) -> str:
    return f"{from_units(value).normalize():f}"


def error_for_revert(revert: Revert) -> VenueError:
    """Translate a decoded revert into our error class, with the amounts in the message."""
    a = revert.args
    name = revert.name
    if name == "InsufficientMargin":
        exc: VenueError = InsufficientFundsError(
            f"insufficient margin: available {_usd(a['availableMargin'])} USD, required {_usd(a['minMargin'])} USD",
            venue=VENUE)
    elif name in ("InsufficientCollateralAvailableForWithdraw",):
        exc = InsufficientFundsError(
            f"insufficient withdrawable margin: {_usd(a['withdrawableMarginUsd'])} USD, "
            f"requested {_usd(a['requestedMarginUsd'])} USD", venue=VENUE)
    elif name in ("InsufficientCollateral", "InsufficientSynthCollateral"):
        exc = InsufficientFundsError(f"insufficient collateral: {revert.name}({a})", venue=VENUE)
    elif name == "AcceptablePriceExceeded":
        exc = InvalidOrderError(
            f"acceptable price exceeded: fill price {_usd(a['fillPrice'])}, acceptable price "
            f"{_usd(a['acceptablePrice'])}", venue=VENUE)
    elif name == "AcceptablePriceNotExceeded":
        exc = InvalidOrderError(
            f"the order can still settle (fill price {_usd(a['fillPrice'])} within acceptable price "
            f"{_usd(a['acceptablePrice'])}): Synthetix cancels only orders that cannot settle", venue=VENUE)
    elif name == "InvalidMarket":
        exc = MarketNotFoundError(f"no perps market with id {a.get('marketId')}", venue=VENUE)
    elif name in ("PermissionDenied", "AccountNotFound", "InvalidAccountId", "PermissionNotGranted"):
        exc = AuthError(f"account refused: {name}(account {a.get('accountId')}) - check <PREFIX>_ACCOUNT_ID "
                        f"and that the key owns it", venue=VENUE)
    elif name == "PendingOrderExists":
        exc = TemporaryError("a previous order of this account is still waiting for settlement", venue=VENUE)
    elif name in ("OracleDataRequired", "FeeRequired"):
        exc = TemporaryError(
            "the market's oracle price is stale: the chain wants a fresh Pyth price pushed first (ERC-7412), "
            "which this connector does not do; retry once a keeper or another trader has updated it", venue=VENUE)
    elif name == "ZeroSizeOrder":
        exc = InvalidOrderError("order size is zero", venue=VENUE)
    elif name == "OrderNotValid":
        exc = InvalidOrderError("no pending order for this account", venue=VENUE)
    elif name in ("SettlementWindowExpired", "SettlementWindowNotOpen"):
        exc = InvalidOrderError(f"{name}: {a}", venue=VENUE)
    elif name in ("MaxOpenInterestReached", "MaxUSDOpenInterestReached"):
        exc = InvalidOrderError(f"market open interest cap reached: {name}", venue=VENUE)
    elif name == "Error":
        exc = InvalidOrderError(f"reverted: {a.get('message', '')}", venue=VENUE)
    elif name == "unknown":
        exc = InvalidOrderError(f"reverted with an unknown error {revert.data[:10]}", venue=VENUE)
    else:
        exc = InvalidOrderError(f"reverted: {name}({', '.join(f'{k}={v}' for k, v in a.items())})", venue=VENUE)
    exc.revert = revert  # type: ignore[attr-defined]
    return exc


# --------------------------------------------------------------------------------------------- transport errors


def _retry_after(response: requests.Response | None) -> float | None:
    if response is None:
        return None
    value = response.headers.get("Retry-After")
    try:
        return None if value is None else max(0.0, seconds(value))
    except (ValueError, InvalidOperation):
        return None


def translate(exc: Exception, *, sending: bool = False) -> VenueError:
    """Translate a web3/requests exception; `sending` marks a broadcast, where a lost reply is ambiguous."""
    if isinstance(exc, VenueError):
        return exc
    if isinstance(exc, ContractCustomError):
        return error_for_revert(decode_revert(exc.data if isinstance(exc.data, str) else exc.message))
    if isinstance(exc, ContractPanicError):
        return InvalidOrderError(f"reverted with a panic: {exc.message}", venue=VENUE)
    if isinstance(exc, ContractLogicError):
        if isinstance(exc.data, str) and exc.data.startswith("0x") and len(exc.data) >= 10:
            return error_for_revert(decode_revert(exc.data))
        return InvalidOrderError(f"reverted: {exc.message}", venue=VENUE)
    if isinstance(exc, requests.HTTPError):
        response = exc.response
        status = response.status_code if response is not None else 0
        if status == 429:
            return RateLimitError("RPC rate limited (HTTP 429)", venue=VENUE, retry_after=_retry_after(response))
        if status in (401, 403):
            return AuthError(f"RPC refused the request (HTTP {status}): check the RPC URL or its key", venue=VENUE)
        if sending and status >= 500:
            return OrderStatusUnknownError(f"RPC answered HTTP {status} to a broadcast", venue=VENUE)
        return TemporaryError(f"RPC answered HTTP {status}", venue=VENUE)
    if isinstance(exc, (requests.Timeout, requests.ConnectionError)):
        kind = "timed out" if isinstance(exc, requests.Timeout) else "connection failed"
        if sending:
            return OrderStatusUnknownError(f"RPC {kind} during a broadcast", venue=VENUE)
        return TemporaryError(f"RPC {kind}", venue=VENUE)
    if isinstance(exc, Web3RPCError):
        message = str(exc)
        if "limit" in message.lower() and ("rate" in message.lower() or "exceeded" in message.lower()):
            return RateLimitError(f"RPC rate limited: {message[:200]}", venue=VENUE)
        if sending:
            return OrderStatusUnknownError(f"RPC error during a broadcast: {message[:200]}", venue=VENUE)
        return TemporaryError(f"RPC error: {message[:200]}", venue=VENUE)
    if isinstance(exc, (Web3Exception, ValueError, requests.RequestException)):
        if sending:
            return OrderStatusUnknownError(f"broadcast failed ambiguously: {type(exc).__name__}", venue=VENUE)
        return TemporaryError(f"RPC reply not understood: {type(exc).__name__}: {str(exc)[:200]}", venue=VENUE)
    raise exc


# --------------------------------------------------------------------------------------------- the connector


@dataclass(frozen=True)
class _MarketInfo:
    market_id: int
    market: Market


class _MeteredProvider(HTTPProvider):
    """web3's HTTP provider, spending one unit of the RPC budget per JSON-RPC call (each call of a batch)."""

    on_request: Any = None

    def make_request(self, method: Any, params: Any) -> Any:
        if self.on_request is not None:
            self.on_request("rpc", None)
        return super().make_request(method, params)

    def make_batch_request(self, requests: Any) -> Any:
        if self.on_request is not None:
            self.on_request("rpc", len(requests))
        return super().make_batch_request(requests)


class SynthetixConnector(Connector):
    """Synthetix perps v3 through web3.py: one perps account, cross-margined, async market orders."""

    capabilities = CAPABILITIES
    meters_requests = True

    def __init__(self, *, network: str, rpc_url: str, proxy_address: str, private_key: str, chain_id: int,
                 account_id: int | None, journal: VenueJournal, options: Mapping[str, str],
                 forwarder_address: str = NETWORKS["testnet"].forwarder,
                 price_service_url: str = NETWORKS["testnet"].price_service_url) -> None:
        opts = {**_DEFAULTS, **{k: v for k, v in options.items() if k in _DEFAULTS}}
        try:
            self._slippage = Decimal(opts["slippage"])
            self._settle_timeout = seconds(opts["settle_timeout"])
            self._receipt_timeout = seconds(opts["receipt_timeout"])
            self._poll = seconds(opts["poll_interval"])
            self._log_blocks = int(opts["log_blocks"])
            self._strategy_id = int(opts["settlement_strategy_id"])
            self._market_ttl = seconds(opts["market_ttl"])
            rpc_timeout = seconds(opts["rpc_timeout"])
        except (ValueError, InvalidOperation) as exc:
            raise VenueError(f"bad Synthetix option: {exc}", venue=VENUE) from None
        self.network = network
        self.chain_id = chain_id
        self.rpc_url = rpc_url
        self._signer = Account.from_key(private_key)
        self.address: str = self._signer.address
        self._journal = journal
        self._configured_account_id = account_id
        provider = _MeteredProvider(rpc_url, request_kwargs={"timeout": rpc_timeout},
                                    exception_retry_configuration=None)
        provider.on_request = self._metered
        self.w3 = Web3(provider, middleware=[])
        self.proxy = self.w3.eth.contract(address=to_checksum_address(proxy_address), abi=load_abi("PerpsMarketProxy"))
        self.forwarder = self.w3.eth.contract(address=to_checksum_address(forwarder_address),
                                              abi=load_abi("TrustedMulticallForwarder"))
        self._oracle_abi = load_abi("PythERC7412Wrapper")
        self.price_service_url = price_service_url.rstrip("/")
        self._http_timeout = rpc_timeout
        self._topics = {e["name"]: _hex(event_abi_to_log_topic(e))  # type: ignore[arg-type]  # a JSON ABI entry
                        for e in load_abi("PerpsMarketProxy") if e["type"] == "event"}
        self._tx_lock = threading.RLock()
        self._markets: dict[str, _MarketInfo] = {}
        self._markets_at = 0.0
        self._chain_checked = False
        self._block_times: dict[int, datetime] = {}

    def __repr__(self) -> str:
        return f"SynthetixConnector(network={self.network!r}, address={self.address!r})"

    # ---- plumbing

    def _rpc(self, fn: Callable[[], T]) -> T:
        """Run one read against the node, translating library errors."""
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - translated, or re-raised when not a library error
            raise translate(exc) from exc

    def _check_chain(self) -> None:
        if self._chain_checked:
            return
        served = self._rpc(lambda: self.w3.eth.chain_id)
        if served != self.chain_id:
            raise VenueError(f"the RPC serves chain {served}, but {self.network} Synthetix is on chain "
                             f"{self.chain_id}", venue=VENUE)
        self._chain_checked = True

    def account_id(self) -> int:
        """Our perps account id: from the credentials, else the one this connector created (journal)."""
        if self._configured_account_id is not None:
            return self._configured_account_id
        stored = self._journal.get("account")
        if stored is not None:
            return int(stored["account_id"])
        raise AuthError("no Synthetix perps account: set <PREFIX>_ACCOUNT_ID or call create_account()", venue=VENUE)

    def _now(self) -> datetime:
        return datetime.now(UTC)

    def _block_time(self, number: int) -> datetime:
        cached = self._block_times.get(number)
        if cached is None:
            block = self._rpc(lambda: self.w3.eth.get_block(number))
            cached = datetime.fromtimestamp(int(block["timestamp"]), tz=UTC)
            self._block_times[number] = cached
        return cached

    # ---- markets and prices

    def _load_markets(self) -> dict[str, _MarketInfo]:
        if self._markets and time.monotonic() - self._markets_at < self._market_ttl:
            return self._markets
        self._check_chain()
        found: dict[str, _MarketInfo] = {}
        for market_id in self._rpc(lambda: self.proxy.functions.getMarkets().call()):
            _name, symbol = self._rpc(lambda: self.proxy.functions.metadata(market_id).call())  # noqa: B023 - called within this iteration
            price = from_units(self._rpc(lambda: self.proxy.functions.indexPrice(market_id).call()))  # noqa: B023 - called within this iteration
            maker, taker = self._rpc(lambda: self.proxy.functions.getOrderFees(market_id).call())  # noqa: B023 - called within this iteration
            liquidation = self._rpc(lambda: self.proxy.functions.getLiquidationParameters(market_id).call())  # noqa: B023 - called within this iteration
            min_imr = from_units(liquidation[1])
            found[f"{symbol}-PERP"] = _MarketInfo(int(market_id), Market(
                symbol=f"{symbol}-PERP", base=symbol, quote="USD",
                tick_size=_tick_for(price), lot_size=_lot_for(price), min_qty=_lot_for(price),
                max_leverage=_max_leverage(min_imr), kind="perp",
                maker_fee=from_units(maker), taker_fee=from_units(taker),
            ))
        self._markets, self._markets_at = found, time.monotonic()
        return found

    def _info(self, symbol: str) -> _MarketInfo:
        info = self._load_markets().get(symbol)
        if info is None:
            raise MarketNotFoundError(f"unknown market {symbol!r}", venue=VENUE)
        return info

    def _symbol_of(self, market_id: int) -> str:
        for symbol, info in self._load_markets().items():
            if info.market_id == market_id:
                return symbol
        return f"market-{market_id}"

    def markets(self) -> Sequence[Market]:
        """List perps markets; tick and lot derive from the index price when first listed (the chain has none)."""
        return [info.market for info in self._load_markets().values()]

    def market(self, symbol: str) -> Market:
        """Return one market, or raise MarketNotFoundError."""
        return self._info(symbol).market

    def ticker(self, symbol: str) -> Ticker:
        """Return the market's index (oracle) price."""
        market_id = self._info(symbol).market_id
        price = self._rpc(lambda: self.proxy.functions.indexPrice(market_id).call())
        return Ticker(symbol=symbol, price=from_units(price), time=self._now())

    def candles(self, symbol: str, timeframe: str, *, since: datetime | None = None,
                limit: int = 300) -> Sequence[VenueCandle]:
        """Synthetix perps keeps no candles on chain: raise VenueError (use another source for candles)."""
        raise VenueError("Synthetix perps has no candle data on chain (prices come from Pyth at settlement); "
                         "take candles from another venue or a price feed", venue=VENUE)

    # ---- account state

    def balances(self) -> Sequence[Balance]:
        """Margin in USD: total = available margin (collateral plus P&L), free = what new orders can still use."""
        account_id = self.account_id()
        self._check_chain()
        available = self._rpc(lambda: self.proxy.functions.getAvailableMargin(account_id).call())
        withdrawable = self._rpc(lambda: self.proxy.functions.getWithdrawableMargin(account_id).call())
        return [Balance(asset="USD", free=from_units(withdrawable), total=from_units(available))]

    def positions(self) -> Sequence[VenuePosition]:
        """Open positions; the entry price is the index price less the position's unrealized P&L per unit."""
        account_id = self.account_id()
        self._check_chain()
        result = []
        for market_id in self._rpc(lambda: self.proxy.functions.getAccountOpenPositions(account_id).call()):
            pnl, funding, size, interest = self._rpc(
                lambda: self.proxy.functions.getOpenPosition(account_id, market_id).call())  # noqa: B023 - called within this iteration
            if size == 0:
                continue
            price = from_units(self._rpc(lambda: self.proxy.functions.indexPrice(market_id).call()))  # noqa: B023 - called within this iteration
            quantity = from_units(size)
            price_pnl = from_units(pnl) - from_units(funding) + from_units(interest)
            entry = (price - price_pnl / quantity).quantize(Decimal(1).scaleb(-UNIT_EXP))
            result.append(VenuePosition(symbol=self._symbol_of(int(market_id)), quantity=quantity, entry_price=entry))
        return result

    def set_leverage(self, symbol: str, leverage: Decimal) -> None:
        """Synthetix has no leverage setting (margin decides it): only check the market's maximum."""
        market = self.market(symbol)
        if leverage <= 0 or leverage > market.max_leverage:
            raise InvalidOrderError(f"leverage {leverage} outside 0..{market.max_leverage} for {symbol}",
                                    venue=VENUE)

    # ---- transactions: journal before broadcast, one nonce at a time

    def _unresolved(self) -> list[tuple[str, dict[str, Any]]]:
        """Our journalled transactions whose fate is not known yet (indexed under `pending:`), oldest nonce first."""
        found = []
        for pointer_key, pointer in self._journal.items("pending:"):
            entry = self._journal.get(str(pointer["key"]))
            if entry is None or entry.get("state") not in ("signed", "sent"):
                self._journal.delete(pointer_key)  # signed-then-crashed before the entry, or already final
                continue
            if entry.get("from") == self.address:
                found.append((str(pointer["key"]), dict(entry)))
        return sorted(found, key=lambda item: int(item[1]["nonce"]))

    def _finish(self, key: str, entry: dict[str, Any]) -> dict[str, Any]:
        """Store a transaction's final state, drop it from the unresolved index, remember the highest used nonce."""
        self._journal.put(key, entry)
        if entry["state"] in ("mined", "reverted"):
            last = self._journal.get(f"nonce:{self.address}")
            if last is None or int(last["nonce"]) < int(entry["nonce"]):
                self._journal.put(f"nonce:{self.address}", {"nonce": int(entry["nonce"])})
        self._journal.delete(f"pending:{key}")
        return entry

    def _receipt(self, tx_hash: str) -> dict[str, Any] | None:
        try:
            return dict(self.w3.eth.get_transaction_receipt(tx_hash))  # type: ignore[arg-type]
        except TransactionNotFound:
            return None
        except Exception as exc:  # noqa: BLE001
            raise translate(exc) from exc

    def _known_to_node(self, tx_hash: str) -> bool:
        try:
            self.w3.eth.get_transaction(tx_hash)  # type: ignore[arg-type]
        except TransactionNotFound:
            return False
        except Exception as exc:  # noqa: BLE001
            raise translate(exc) from exc
        return True

    def _resolve(self, key: str, entry: dict[str, Any], *, rebroadcast: bool) -> dict[str, Any]:
        """Learn a stored transaction's fate; re-send its stored bytes when the node has never seen it."""
        if entry["state"] in ("mined", "reverted", "dropped"):
            return entry
        receipt = self._receipt(entry["hash"])
        if receipt is not None:
            return self._record_receipt(key, entry, receipt)
        if self._known_to_node(entry["hash"]):
            if entry["state"] != "sent":
                entry = {**entry, "state": "sent"}
                self._journal.put(key, entry)
            return entry
        used = self._rpc(lambda: self.w3.eth.get_transaction_count(self.address, "latest"))  # type: ignore[arg-type]
        if used > int(entry["nonce"]):
            # Our nonce went to another transaction, and ours has no receipt: it can never execute now.
            return self._finish(key, {**entry, "state": "dropped"})
        if rebroadcast:
            entry = self._broadcast(key, entry)
        return entry

    def _record_receipt(self, key: str, entry: dict[str, Any], receipt: Mapping[str, Any]) -> dict[str, Any]:
        ok = int(receipt["status"]) == 1
        entry = {**entry, "state": "mined" if ok else "reverted", "block": int(receipt["blockNumber"])}
        if not ok:
            entry["reason"] = self._replay_reason(entry)
        return self._finish(key, entry)

    def _replay_reason(self, entry: Mapping[str, Any]) -> str:
        """Why a mined transaction reverted: replay its call at its block and decode the custom error."""
        try:
            tx = self.w3.eth.get_transaction(entry["hash"])
            self.w3.eth.call({"from": tx["from"], "to": tx["to"], "data": tx["input"], "gas": tx["gas"]},
                             block_identifier=int(entry["block"]))
        except (ContractCustomError, ContractLogicError, ContractPanicError) as exc:
            return str(translate(exc))
        except Exception:  # noqa: BLE001 - the reason is best effort; the revert itself is certain
            return "transaction reverted"
        return "transaction reverted"

    def _broadcast(self, key: str, entry: dict[str, Any]) -> dict[str, Any]:
        """Send a stored raw transaction (the same bytes every time) and mark it sent."""
        try:
            self.w3.eth.send_raw_transaction(entry["raw"])
        except Web3RPCError as exc:
            message = str(exc).lower()
            if "already known" not in message and "known transaction" not in message:
                if "nonce too low" in message or "nonce is too low" in message:
                    # Someone used our nonce, or this very transaction is already mined: the receipt decides.
                    return self._resolve(key, {**entry, "state": "sent"}, rebroadcast=False)
                raise translate(exc, sending=True) from exc
        except Exception as exc:  # noqa: BLE001
            raise translate(exc, sending=True) from exc
        entry = {**entry, "state": "sent"}
        self._journal.put(key, entry)
        return entry

    def _wait_receipt(self, key: str, entry: dict[str, Any], timeout: float) -> dict[str, Any]:
        if entry["state"] != "sent":
            return entry
        deadline = time.monotonic() + timeout
        while True:
            receipt = self._receipt(entry["hash"])
            if receipt is not None:
                return self._record_receipt(key, entry, receipt)
            if time.monotonic() >= deadline:
                return entry
            time.sleep(self._poll)

    @contextmanager
    def _signing(self) -> Iterator[None]:
        """Hold the wallet's signing lock: this process's threads, and every process sharing the journal's store
        (a nonce is chosen, signed, journalled and broadcast by one holder at a time)."""
        with self._tx_lock, self._journal.lock(f"synthetix:{self.chain_id}:{self.address}"):
            yield

    def _settle_outstanding(self) -> None:
        """Resolve every unfinished transaction of ours before a new nonce is signed; refuse while one is pending."""
        for key, entry in self._unresolved():
            entry = self._resolve(key, entry, rebroadcast=True)
            if entry["state"] == "sent":
                entry = self._wait_receipt(key, entry, self._receipt_timeout)
            if entry["state"] in ("signed", "sent"):
                raise TemporaryError(
                    f"transaction {entry['hash']} (nonce {entry['nonce']}) is not mined yet; no new transaction "
                    f"is signed until its fate is known", venue=VENUE)

    def _next_nonce(self) -> int:
        nonce = int(self._rpc(lambda: self.w3.eth.get_transaction_count(self.address, "latest")))  # type: ignore[arg-type]
        last = self._journal.get(f"nonce:{self.address}")
        if last is not None and nonce <= int(last["nonce"]):
            raise TemporaryError(f"the node reports nonce {nonce} but nonce {last['nonce']} is already mined: "
                                 f"the node is behind", venue=VENUE)
        return nonce

    def _transact(self, key: str, call: Any, meta: Mapping[str, Any]) -> dict[str, Any]:
        """Pre-flight, sign, journal, then broadcast one contract call; return its journal entry.

        If the key was journalled meanwhile (another process created the same order while this one waited for the
        signing lock or for a pending order to settle), that transaction is the order: it is resolved, and nothing
        new is signed, so a client id can never be committed on chain twice."""
        with self._signing():
            existing = self._journal.get(key)
            if existing is not None:
                log.warning("synthetix tx %s was signed by another process meanwhile: not signing it again", key)
                return self._resolve(key, dict(existing), rebroadcast=True)
            self._check_chain()
            self._settle_outstanding()
            fields, gas = self._prepare(call)
            nonce = self._next_nonce()
            block = self._rpc(lambda: self.w3.eth.get_block("latest"))
            tip = int(self._rpc(lambda: self.w3.eth.max_priority_fee))
            base_fee = int(block.get("baseFeePerGas") or 0)
            tx = {**fields, "from": self.address, "nonce": nonce, "gas": gas + gas // 5 + 10_000,
                  "chainId": self.chain_id, "maxPriorityFeePerGas": tip, "maxFeePerGas": 2 * base_fee + tip}
            signed = self._signer.sign_transaction(tx)
            entry = {
                **meta, "from": self.address, "nonce": nonce, "hash": _hex(signed.hash),
                "raw": _hex(signed.raw_transaction), "state": "signed", "signed_at": self._now().isoformat(),
            }
            self._journal.put(f"pending:{key}", {"key": key})  # the unresolved index, before the entry
            self._journal.put(key, entry)  # durable before anything leaves this process
            self._journal.put(f"hash:{entry['hash']}", {"key": key})  # venue order id -> journal key
            log.info("synthetix tx %s signed: %s nonce %s", key, entry["hash"], nonce)
            return self._broadcast(key, entry)

    def _prepare(self, call: Any) -> tuple[dict[str, Any], int]:
        """Pre-flight a call (nothing is signed yet); when the chain wants fresh prices (ERC-7412), fetch them from
        the price service and send them first in the same transaction through the trusted multicall forwarder."""
        target = {"to": call.address, "data": call._encode_transaction_data(), "value": 0}
        updates: list[dict[str, Any]] = []  # price pushes: {"to", "data", "value"}
        for _ in range(MAX_ORACLE_ROUNDS + 1):
            tx = target if not updates else self._multicall([*updates, target])
            try:
                return tx, int(self.w3.eth.estimate_gas({"from": self.address, **tx}))  # type: ignore[typeddict-item]
            except ContractCustomError as exc:
                revert = decode_revert(exc.data if isinstance(exc.data, str) else exc.message)
                if revert.name == "OracleDataRequired" and len(updates) < MAX_ORACLE_ROUNDS:
                    updates.append(self._price_update(revert))
                    continue
                if revert.name == "FeeRequired" and updates:
                    fee = int(next(iter(revert.args.values())))
                    short = next((u for u in updates if u["value"] < fee), None)
                    if short is not None:
                        short["value"] = fee
                        continue
                raise translate(exc) from exc
            except Exception as exc:  # noqa: BLE001 - a revert here means nothing was signed or sent
                raise translate(exc) from exc
        raise TemporaryError("the chain still wants oracle data after several price updates", venue=VENUE)

    def _multicall(self, calls: list[dict[str, Any]]) -> dict[str, Any]:
        fn = self.forwarder.functions.aggregate3Value(
            [(to_checksum_address(c["to"]), True, int(c["value"]), c["data"]) for c in calls])
        return {"to": self.forwarder.address, "data": fn._encode_transaction_data(),
                "value": sum(int(c["value"]) for c in calls)}

    def _price_update(self, revert: Revert) -> dict[str, Any]:
        """Answer OracleDataRequired: fetch signed Pyth updates from the price service for the queried feeds."""
        oracle = to_checksum_address(revert.args["oracleContract"])
        try:
            update_type, tolerance, feed_ids = abi_decode(["uint8", "uint64", "bytes32[]"], revert.args["oracleQuery"])
        except Exception:  # noqa: BLE001
            raise TemporaryError("the oracle asked for data in a form this connector does not know",
                                 venue=VENUE) from None
        if update_type != 1:
            raise TemporaryError(f"the oracle asked for update type {update_type} (only latest prices are "
                                 f"fetched)", venue=VENUE)
        params = [("ids[]", _hex(f)) for f in feed_ids] + [("encoding", "hex")]
        try:
            response = requests.get(f"{self.price_service_url}/v2/updates/price/latest", params=params,
                                    timeout=self._http_timeout)
            response.raise_for_status()
            blobs = [bytes.fromhex(x[2:] if x.startswith("0x") else x) for x in response.json()["binary"]["data"]]
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status == 429:
                raise RateLimitError("price service rate limited (HTTP 429)", venue=VENUE,
                                     retry_after=_retry_after(exc.response)) from None
            raise TemporaryError(f"price service answered HTTP {status}", venue=VENUE) from None
        except (requests.RequestException, ValueError, KeyError, TypeError) as exc:
            raise TemporaryError(f"price service unavailable: {type(exc).__name__}", venue=VENUE) from None
        payload = abi_encode(["uint8", "uint64", "bytes32[]", "bytes[]"], [1, tolerance, list(feed_ids), blobs])
        wrapper = self.w3.eth.contract(address=oracle, abi=self._oracle_abi)
        return {"to": oracle, "data": wrapper.functions.fulfillOracleQuery(payload)._encode_transaction_data(),
                "value": 0}

    # ---- account setup

    def create_account(self) -> int:
        """Create a perps account owned by our key, remember its id in the journal, and return it."""
        stored = self._journal.get("account")
        if stored is not None:
            return int(stored["account_id"])
        key = "tx:~create-account"
        entry = self._journal.get(key)
        entry = dict(entry) if entry is not None else self._transact(
            key, self.proxy.functions.createAccount(), {"kind": "create-account"})
        entry = self._resolve(key, entry, rebroadcast=True)
        entry = self._wait_receipt(key, entry, self._receipt_timeout)
        if entry["state"] != "mined":
            raise OrderStatusUnknownError(f"createAccount transaction {entry['hash']} is {entry['state']}",
                                          venue=VENUE)
        receipt = self._receipt(entry["hash"]) or {}
        for raw_log in receipt.get("logs", []):
            if raw_log["topics"] and _hex(raw_log["topics"][0]) == self._topics["AccountCreated"]:
                account_id = int.from_bytes(bytes(raw_log["topics"][1]), "big")
                self._journal.put("account", {"account_id": str(account_id)})
                return account_id
        raise VenueError("createAccount mined without an AccountCreated event", venue=VENUE)

    def deposit(self, amount: Decimal, *, token: str, collateral_id: int = 0) -> None:
        """Approve the proxy for `amount` of the collateral token (18 decimals) and add it as margin."""
        if amount <= 0:
            raise InvalidOrderError(f"deposit amount must be positive, got {amount}", venue=VENUE)
        account_id = self.account_id()
        units = to_units(amount, what="deposit amount")
        erc20 = self.w3.eth.contract(address=to_checksum_address(token), abi=load_abi("ERC20"))
        stamp = f"{int(time.time() * 1000)}"
        for key, call, kind in (
            (f"tx:~approve:{stamp}", erc20.functions.approve(self.proxy.address, units), "approve"),
            (f"tx:~deposit:{stamp}", self.proxy.functions.modifyCollateral(account_id, collateral_id, units),
             "deposit"),
        ):
            entry = self._transact(key, call, {"kind": kind, "amount": str(amount)})
            entry = self._wait_receipt(key, entry, self._receipt_timeout)
            if entry["state"] == "reverted":
                raise InvalidOrderError(f"{kind} reverted: {entry.get('reason', '')}", venue=VENUE)
            if entry["state"] != "mined":
                raise OrderStatusUnknownError(f"{kind} transaction {entry['hash']} is not mined yet", venue=VENUE)

    # ---- orders

    def quantize(self, request: OrderRequest) -> OrderRequest:
        """Round the size down to the lot; a price stays as asked (the acceptable price is rounded from it)."""
        return replace(request, quantity=self.market(request.symbol).round_qty(request.quantity))

    def _order_placed(self, request: OrderRequest) -> VenueOrder | None:
        """Return the order this client id committed (from the journal), resolving it as after a send."""
        key = f"tx:{request.client_order_id}"
        existing = self._journal.get(key) if request.client_order_id else None
        if existing is None:
            return None
        with self._signing():
            entry = self._resolve(key, dict(existing), rebroadcast=True)
        return self._order_after_send(key, entry)

    def _create_order(self, request: OrderRequest, market: Market) -> VenueOrder:
        """Commit an async market order (acceptable price = reference +- slippage) and wait for its settlement."""
        info = self._info(request.symbol)
        key = f"tx:{request.client_order_id}"
        if request.type is not OrderType.MARKET:
            raise InvalidOrderError(f"Synthetix perps v3 takes only market orders (async, keeper-settled), not "
                                    f"{request.type.value}", venue=VENUE)  # so no post-only either
        quantity = request.quantity
        account_id = self.account_id()
        if request.reduce_only:
            size = from_units(self._rpc(
                lambda: self.proxy.functions.getOpenPositionSize(account_id, info.market_id).call()))
            if size == 0 or (size > 0) == (request.side is Side.BUY) or quantity > abs(size):
                raise InvalidOrderError(f"reduce-only {request.side.value} of {quantity} would not reduce the "
                                        f"position of {size}", venue=VENUE)
        reference = request.price
        if reference is None:
            reference = from_units(self._rpc(lambda: self.proxy.functions.indexPrice(info.market_id).call()))
        if request.side is Side.BUY:
            acceptable = round_up(reference * (1 + self._slippage), market.tick_size)
        else:
            acceptable = round_down(reference * (1 - self._slippage), market.tick_size)
        size_delta = to_units(quantity, what="quantity") * request.side.sign
        with self._signing():
            self._check_chain()
            self._settle_outstanding()
        self._await_no_pending(account_id)
        call = self.proxy.functions.commitOrder((
            info.market_id, account_id, size_delta, self._strategy_id, to_units(acceptable, what="price"),
            tracking_code(request.client_order_id), ZERO_ADDRESS))
        meta = {"kind": "commit", "client_order_id": request.client_order_id, "symbol": request.symbol,
                "side": request.side.value, "quantity": str(quantity), "acceptable_price": str(acceptable),
                "market_id": info.market_id, "account_id": str(account_id)}
        entry = self._transact(key, call, meta)
        return self._order_after_send(key, entry)

    def _await_no_pending(self, account_id: int) -> None:
        """Wait (up to settle_timeout) while the account's one pending order can still settle."""
        deadline = time.monotonic() + self._settle_timeout
        while True:
            pending = self._rpc(lambda: self.proxy.functions.getOrder(account_id).call())
            commitment_time = int(pending[0])
            if commitment_time == 0:
                return
            market_id, strategy_id = int(pending[1][0]), int(pending[1][3])
            strategy = self._rpc(lambda: self.proxy.functions.getSettlementStrategy(market_id, strategy_id).call())  # noqa: B023 - called within this iteration
            expires = commitment_time + int(strategy[1]) + int(strategy[2])
            now = int(self._rpc(lambda: self.w3.eth.get_block("latest"))["timestamp"])
            if now > expires or time.monotonic() >= deadline:
                return  # expired: the commit replaces it; still valid: the pre-flight says PendingOrderExists
            time.sleep(self._poll)

    def _order_after_send(self, key: str, entry: dict[str, Any]) -> VenueOrder:
        entry = self._wait_receipt(key, entry, self._receipt_timeout)
        if entry["state"] == "reverted":
            raise self._reverted_error(entry)
        order = self._order_from_entry(key, entry)
        if order is None:  # stored but the node never saw it, and it was not re-sent: cannot happen after _resolve
            raise OrderStatusUnknownError(f"order {entry.get('client_order_id')} is not known to the node",
                                          venue=VENUE)
        deadline = time.monotonic() + self._settle_timeout
        while order.status is VenueOrderStatus.OPEN and entry["state"] == "mined" and time.monotonic() < deadline:
            time.sleep(self._poll)
            order = self._order_from_entry(key, entry) or order
        return order

    def _reverted_error(self, entry: Mapping[str, Any]) -> VenueError:
        reason = str(entry.get("reason") or "transaction reverted")
        cls = InsufficientFundsError if reason.startswith("insufficient") else InvalidOrderError
        return cls(f"commit reverted on chain: {reason}", venue=VENUE)

    def _order_from_entry(self, key: str, entry: dict[str, Any], *, rebroadcast: bool = True) -> VenueOrder | None:
        """The venue's view of a journalled commit.

        A commit we signed but the node has never seen is broadcast now (its stored bytes, while its nonce is
        free): once signed, an order goes out exactly once, so a later resend can never revive a forgotten one.
        """
        if entry.get("kind") != "commit":
            return None
        with self._signing():
            entry = self._resolve(key, entry, rebroadcast=rebroadcast)
        base: dict[str, Any] = dict(
            client_order_id=entry["client_order_id"], venue_order_id=entry["hash"], symbol=entry["symbol"],
            side=Side(entry["side"]), type=OrderType.MARKET, quantity=Decimal(entry["quantity"]),
            price=Decimal(entry["acceptable_price"]),
        )
        state = entry["state"]
        if state == "signed":
            return None
        if state == "sent":
            return VenueOrder(status=VenueOrderStatus.OPEN, reason="commit transaction not mined yet", **base)
        if state == "dropped":
            return VenueOrder(status=VenueOrderStatus.REJECTED,
                              reason="commit transaction dropped: its nonce went to another transaction", **base)
        if state == "reverted":
            return VenueOrder(status=VenueOrderStatus.REJECTED, reason=str(entry.get("reason", "reverted")), **base)
        receipt = self._receipt(entry["hash"])
        if receipt is None:  # reorged out: treat as not mined yet
            return VenueOrder(status=VenueOrderStatus.OPEN, reason="commit transaction not mined yet", **base)
        order = self._order_from_receipt(receipt, client_order_id=entry["client_order_id"])
        if order is None:
            return VenueOrder(status=VenueOrderStatus.REJECTED, reason="commit emitted no OrderCommitted", **base)
        return order

    def _committed_event(self, receipt: Mapping[str, Any]) -> dict[str, Any] | None:
        for raw_log in receipt.get("logs", []):
            topics = raw_log.get("topics") or []
            if topics and _hex(topics[0]) == self._topics["OrderCommitted"] \
                    and str(raw_log["address"]).lower() == self.proxy.address.lower():
                return dict(self.proxy.events.OrderCommitted().process_log(raw_log)["args"])
        return None

    def _order_from_receipt(self, receipt: Mapping[str, Any], *, client_order_id: str | None) -> VenueOrder | None:
        """Derive an order's state from its commit receipt, the settle/cancel events and the pending order."""
        committed = self._committed_event(receipt)
        if committed is None:
            return None
        market_id, account_id = int(committed["marketId"]), int(committed["accountId"])
        code = bytes(committed["trackingCode"])
        size_delta = int(committed["sizeDelta"])
        cid = client_order_id or client_id_from_tracking(code) or _hex(code)
        base: dict[str, Any] = dict(
            client_order_id=cid, venue_order_id=_hex(receipt["transactionHash"]), symbol=self._symbol_of(market_id),
            side=Side.BUY if size_delta > 0 else Side.SELL, type=OrderType.MARKET,
            quantity=from_units(abs(size_delta)), price=from_units(int(committed["acceptablePrice"])),
        )
        commit_block = int(receipt["blockNumber"])
        # One snapshot: the pending order and the events read at the same block, so a keeper settling between
        # two reads cannot make a filled order look replaced.
        snapshot = self._rpc(lambda: self.w3.eth.get_block("latest"))
        at = int(snapshot["number"])
        pending = self._rpc(lambda: self.proxy.functions.getOrder(account_id).call(block_identifier=at))
        # Settlement happens within the settlement window after the commit, so the window of blocks after the
        # commit block holds its event however old the order is.
        params = {"address": self.proxy.address, "fromBlock": commit_block,
                  "toBlock": min(at, commit_block + self._log_blocks),
                  "topics": [[self._topics["OrderSettled"], self._topics["OrderCancelled"]],
                             _topic_uint(market_id), _topic_uint(account_id), _hex(code)]}
        events: list[dict[str, Any]] = [dict(x) for x in self._rpc(lambda: self.w3.eth.get_logs(params))]  # type: ignore[arg-type]
        for event_log in events:
            if not self._after(event_log, receipt):
                continue
            if _hex(event_log["topics"][0]) == self._topics["OrderSettled"]:
                settled = self.proxy.events.OrderSettled().process_log(event_log)["args"]
                quantity = from_units(abs(int(settled["sizeDelta"])))
                fill = VenueFill(
                    fill_id=f"{_hex(event_log['transactionHash'])}:{int(event_log['logIndex'])}",
                    quantity=quantity, price=from_units(int(settled["fillPrice"])),
                    fee=from_units(int(settled["totalFees"])), fee_currency="USD",
                    time=self._block_time(int(event_log["blockNumber"])), liquidity="taker",
                )
                return VenueOrder(status=VenueOrderStatus.FILLED, filled_quantity=quantity, fills=(fill,), **base)
            canceled = self.proxy.events.OrderCancelled().process_log(event_log)["args"]
            return VenueOrder(status=VenueOrderStatus.CANCELED, reason=(
                f"canceled unsettled: fill price {from_units(int(canceled['fillPrice'])).normalize():f} beyond the "
                f"acceptable price {from_units(int(canceled['desiredPrice'])).normalize():f}"), **base)
        commitment_time, pending_request = int(pending[0]), pending[1]
        expiration = int(committed["expirationTime"])
        if commitment_time == int(committed["commitmentTime"]) and bytes(pending_request[5]) == code:
            if int(snapshot["timestamp"]) > expiration:
                return VenueOrder(status=VenueOrderStatus.CANCELED, reason=(
                    f"expired unsettled: no keeper settled it before "
                    f"{datetime.fromtimestamp(expiration, tz=UTC).isoformat()}"), **base)
            return VenueOrder(status=VenueOrderStatus.OPEN, reason="committed, waiting for a keeper to settle", **base)
        if at < commit_block:  # a lagging node behind the receipt's block: nothing to conclude yet
            return VenueOrder(status=VenueOrderStatus.OPEN, reason="committed, waiting for a keeper to settle", **base)
        if int(snapshot["timestamp"]) <= expiration:
            # The order left the pending slot while it could still settle, yet no settle or cancel event is
            # readable: a node whose log index trails its state. Never conclude "canceled" from an absence that
            # may be a fill: ask again.
            return VenueOrder(status=VenueOrderStatus.OPEN,
                              reason="left the pending slot; its settlement event is not readable yet", **base)
        return VenueOrder(status=VenueOrderStatus.CANCELED,
                          reason="expired unsettled: replaced by a later commit", **base)

    @staticmethod
    def _after(event_log: Mapping[str, Any], receipt: Mapping[str, Any]) -> bool:
        block, commit_block = int(event_log["blockNumber"]), int(receipt["blockNumber"])
        if block != commit_block:
            return block > commit_block
        return int(event_log["transactionIndex"]) > int(receipt["transactionIndex"])

    def fetch_order(self, symbol: str, venue_order_id: str) -> VenueOrder:
        """Return an order by its commit transaction hash."""
        tx_hash = venue_order_id.lower()
        if not (tx_hash.startswith("0x") and len(tx_hash) == 66 and _is_hex(tx_hash[2:])):
            raise OrderNotFoundError(f"{venue_order_id!r} is not a commit transaction hash", venue=VENUE)
        found = self._journalled(tx_hash)
        if found is not None and found[1].get("kind") == "commit":
            order = self._order_from_entry(*found)
            if order is not None:
                return order
        receipt = self._receipt(tx_hash)
        order = None if receipt is None else self._order_from_receipt(receipt, client_order_id=None)
        if order is None:
            raise OrderNotFoundError(f"no commit with transaction hash {venue_order_id}", venue=VENUE)
        return order

    def fetch_order_by_client_id(self, symbol: str, client_order_id: str) -> VenueOrder | None:
        """Return an order by client id (journal first, then OrderCommitted events by trackingCode); None if unseen.

        A journalled commit the node never received is re-broadcast byte for byte and reported (see
        _order_from_entry); a commit whose nonce went to another transaction is REJECTED.
        """
        key = f"tx:{client_order_id}"
        entry = self._journal.get(key)
        if entry is not None:
            return self._order_from_entry(key, dict(entry))
        self._check_chain()
        latest = int(self._rpc(lambda: self.w3.eth.block_number))
        account_id = self.account_id()
        params = {"address": self.proxy.address, "fromBlock": max(0, latest - self._log_blocks), "toBlock": latest,
                  "topics": [self._topics["OrderCommitted"], None, _topic_uint(account_id),
                             _hex(tracking_code(client_order_id))]}
        found = self._rpc(lambda: self.w3.eth.get_logs(params))  # type: ignore[arg-type]
        if not found:
            return None
        receipt = self._receipt(_hex(found[-1]["transactionHash"]))
        return None if receipt is None else self._order_from_receipt(receipt, client_order_id=client_order_id)

    def open_orders(self, symbol: str | None = None) -> Sequence[VenueOrder]:
        """Commits not yet settled: mined and pending on the account, or broadcast and not yet mined."""
        orders: dict[str, VenueOrder] = {}
        for key, entry in self._unresolved():
            if entry.get("kind") == "commit" and (symbol is None or entry["symbol"] == symbol):
                order = self._order_from_entry(key, entry)
                if order is not None and order.status is VenueOrderStatus.OPEN:
                    orders[order.venue_order_id] = order
        account_id = self.account_id()
        pending = self._rpc(lambda: self.proxy.functions.getOrder(account_id).call())
        if int(pending[0]) != 0:
            market_id, code = int(pending[1][0]), bytes(pending[1][5])
            if symbol is None or self._symbol_of(market_id) == symbol:
                latest = int(self._rpc(lambda: self.w3.eth.block_number))
                params = {"address": self.proxy.address, "fromBlock": max(0, latest - self._log_blocks),
                          "toBlock": latest, "topics": [self._topics["OrderCommitted"], _topic_uint(market_id),
                                                        _topic_uint(account_id), _hex(code)]}
                found = self._rpc(lambda: self.w3.eth.get_logs(params))  # type: ignore[arg-type]
                if found:
                    receipt = self._receipt(_hex(found[-1]["transactionHash"]))
                    order = None if receipt is None else self._order_from_receipt(receipt, client_order_id=None)
                    if order is not None and order.status is VenueOrderStatus.OPEN:
                        journalled = self._client_id_for_hash(order.venue_order_id)
                        if journalled is not None:
                            order = _with_client_id(order, journalled)
                        orders[order.venue_order_id] = order
        return list(orders.values())

    def _journalled(self, tx_hash: str) -> tuple[str, dict[str, Any]] | None:
        """The journal key and entry of one of our transactions by hash."""
        pointer = self._journal.get(f"hash:{tx_hash.lower()}")
        if pointer is None:
            return None
        entry = self._journal.get(str(pointer["key"]))
        return None if entry is None else (str(pointer["key"]), dict(entry))

    def _client_id_for_hash(self, tx_hash: str) -> str | None:
        found = self._journalled(tx_hash)
        cid = None if found is None else found[1].get("client_order_id")
        return None if cid is None else str(cid)

    def cancel_order(self, symbol: str, venue_order_id: str) -> VenueOrder:
        """Cancel a commit that can no longer settle; a settled one is returned FILLED (it lost the race)."""
        order = self.fetch_order(symbol, venue_order_id)
        if order.status.is_final:
            return order
        receipt = self._receipt(order.venue_order_id)
        if receipt is None:
            raise TemporaryError("the commit transaction is not mined yet; it cannot be canceled before", venue=VENUE)
        committed = self._committed_event(receipt) or {}
        account_id = int(committed.get("accountId", self.account_id()))
        key = f"tx:~cancel:{order.venue_order_id}"
        entry = self._transact(key, self.proxy.functions.cancelOrder(account_id), {"kind": "cancel"})
        entry = self._wait_receipt(key, entry, self._receipt_timeout)
        if entry["state"] != "mined":
            raise OrderStatusUnknownError(f"cancel transaction {entry['hash']} is {entry['state']}", venue=VENUE)
        return self.fetch_order(symbol, venue_order_id)

    # ---- checks

    def verify(self) -> Sequence[CheckItem]:
        """Check the RPC's chain, the account's owner and a margin read; never shows the key."""
        items = []
        try:
            self._check_chain()
            items.append(CheckItem("rpc chain", True, f"chain {self.chain_id} ({self.network})"))
        except VenueError as exc:
            return [CheckItem("rpc chain", False, f"{type(exc).__name__}: {exc}")]
        try:
            account_id = self.account_id()
            owner = self._rpc(lambda: self.proxy.functions.getAccountOwner(account_id).call())
        except VenueError as exc:
            return [*items, CheckItem("perps account", False, f"{type(exc).__name__}: {exc}")]
        if str(owner).lower() != self.address.lower():
            return [*items, CheckItem("perps account", False,
                                      f"account {account_id} is not owned by {self.address}")]
        items.append(CheckItem("perps account", True, f"account {account_id} owned by {self.address}"))
        wei = int(self._rpc(lambda: self.w3.eth.get_balance(self.address)))  # type: ignore[arg-type]
        items.append(CheckItem("gas balance", wei > 0, f"{from_units(wei).normalize():f} ETH to pay gas"))
        return [*items, *super().verify()]


# --------------------------------------------------------------------------------------------- helpers


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True


def _with_client_id(order: VenueOrder, client_order_id: str) -> VenueOrder:
    from dataclasses import replace

    return replace(order, client_order_id=client_order_id)


def _tick_for(price: Decimal) -> Decimal:
    """Price tick we quantize to: about six significant figures of the index price (the chain has no tick)."""
    if price <= 0:
        return Decimal("0.000001")
    return Decimal(1).scaleb(price.adjusted() - 5)


def _lot_for(price: Decimal) -> Decimal:
    """Size lot we quantize to: the power of ten worth between 0.1 and 1 USD (the chain takes 1e-18)."""
    if price <= 0:
        return Decimal("0.000001")
    return Decimal(1).scaleb(-(price.adjusted() + 1))


def _max_leverage(min_initial_margin_ratio: Decimal) -> Decimal:
    if min_initial_margin_ratio <= 0:
        return Decimal(1)
    return max(Decimal(1), (Decimal(1) / min_initial_margin_ratio).quantize(Decimal(1), rounding=ROUND_DOWN))


def build(config: VenueConfig) -> Connector:
    """Build the Synthetix perps connector from a VenueConfig (credentials: private_key, optional account_id)."""
    network = NETWORKS.get(config.network)
    if network is None:
        raise VenueError(f"Synthetix perps has no {config.network!r} network", venue=VENUE)
    credentials = dict(config.credentials)
    private_key = (credentials.get("private_key") or "").strip()
    if not private_key:
        raise AuthError("Synthetix needs <PREFIX>_PRIVATE_KEY (the wallet that owns the perps account)", venue=VENUE)
    try:
        Account.from_key(private_key)
    except Exception:  # noqa: BLE001 - never echo the key
        raise AuthError("<PREFIX>_PRIVATE_KEY is not a valid 32-byte hex private key", venue=VENUE) from None
    account_raw = (credentials.get("account_id") or "").strip()
    try:
        account_id = int(account_raw) if account_raw else None
    except ValueError:
        raise AuthError("<PREFIX>_ACCOUNT_ID must be an integer perps account id", venue=VENUE) from None
    proxy = (credentials.get("proxy_address") or network.perps_market_proxy).strip()
    forwarder = (credentials.get("forwarder_address") or network.forwarder).strip()
    for name, address in (("proxy", proxy), ("forwarder", forwarder)):
        if not Web3.is_address(address):
            raise VenueError(f"{name} address {address!r} is not an address", venue=VENUE)
    return SynthetixConnector(
        network=config.network, rpc_url=config.endpoint or network.rpc_url, proxy_address=proxy,
        private_key=private_key, chain_id=network.chain_id, account_id=account_id,
        journal=config.journal if config.journal is not None else InMemoryVenueJournal(),
        options={k: v for k, v in credentials.items() if k in _DEFAULTS},
        forwarder_address=forwarder,
        price_service_url=(credentials.get("price_service_url") or network.price_service_url).strip(),
    )
