"""Hyperliquid perpetuals through hyperliquid-python-sdk: an API (agent) wallet trades for the main account.

What this module relies on from the SDK, and why not more of it:
- `Info` (skip_ws=True, built with empty metadata so construction makes no request) for every read, and its
  `post` (requests session) as the transport of signed actions too.
- `hyperliquid.utils.signing` to build and sign actions (`order_wires_to_order_action`, `sign_l1_action`).
  `Exchange` is not used: it signs as mainnet only when its base URL *is* the public mainnet URL (so a mainnet
  endpoint override would sign for testnet), and it takes floats for px/sz (`float_to_wire`). Here prices and
  sizes stay Decimal: rounded to the venue's rules, then written with `decimal_to_wire`, which gives the same
  string `float_to_wire` would give for that value, without a float.
- The SDK's `API._handle_exception` raises KeyError on a 4xx JSON body without `code`/`msg` (and loses the
  status and Retry-After); `_Info` reads such bodies itself. Any KeyError/IndexError/ValueError/TypeError
  that still escapes the SDK or a malformed reply is translated at the boundary.

Venue rules (https://hyperliquid.gitbook.io/hyperliquid-docs/for-developers/api/tick-and-lot-size):
a perp price has at most 5 significant figures (integers always allowed) and at most 6 - szDecimals decimals;
a size is a multiple of 10^-szDecimals; an order is worth at least $10.

Symbols are ccxt-style `BTC/USDC:USDC` (perps only; spot markets are not listed). Our client order id becomes the
order's `cloid`: a 32-hex id (the engine's format) is used as it is, any other id by the first 16 bytes of its
sha256 (remembered in this process and in the VenueJournal, so the venue's cloid maps back to our id).
Leverage updates use cross margin unless `margin_mode=isolated` (or the market is isolated-only).
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta, UTC
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, ROUND_UP, Decimal, InvalidOperation
from typing import Any, Literal

import requests
from eth_account import Account
from eth_account.signers.local import LocalAccount
from hyperliquid.info import Info
from hyperliquid.utils import constants
from hyperliquid.utils.error import ClientError, ServerError
from hyperliquid.utils.signing import order_wires_to_order_action, sign_l1_action

from exchanges.base import (
    Balance,
    Capabilities,
    CheckItem,
    Connector,
    Market,
    OrderRequest,
    OrderType,
    Side,
    Ticker,
    FundingRate,
    VenueCandle,
    VenueConfig,
    VenueFill,
    VenueFunding,
    VenueJournal,
    VenueOrder,
    VenueOrderStatus,
    VenuePosition,
    datetime_to_ms,
    ms_to_datetime,
    round_sig_price,
    sig_price_step,
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

VENUE = "hyperliquid"
QUOTE = "USDC"
URLS = {"mainnet": constants.MAINNET_API_URL, "testnet": constants.TESTNET_API_URL}
MAX_PERP_DECIMALS = 6
SIG_FIGS = 5
MIN_NOTIONAL = Decimal("10")
MAKER_FEE = Decimal("0.00015")  # base tier, fraction of notional
TAKER_FEE = Decimal("0.00045")
DEFAULT_SLIPPAGE = Decimal("0.05")  # market orders: IOC limit this far through the reference price (as the SDK)
DEFAULT_TIMEOUT = 10.0
META_TTL = 600.0  # seconds a loaded market list is reused
FILLS_PAGE = 2000  # userFillsByTime answers at most this many fills per call
FILLS_SETTLED_MS = 60_000  # an order filled this long ago has all its fills readable: any shortfall is real
INTERVALS = ("1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "8h", "12h", "1d", "3d", "1w", "1M")
# candleSnapshot keeps only the last 5000 candles of a coin and interval, and a reply may hold fewer than asked:
# a history download pages on the last candle received (docs, "Info endpoint", "Candle snapshot").
CANDLE_DEPTH = 5000
CANDLES_PER_WEIGHT = 60  # a candleSnapshot reply weighs 1 more per 60 candles it holds (docs, "Rate limits")
# Funding is paid every hour, on the hour, at 1/8 of the 8-hour rate (docs, "Funding"); fundingHistory and userFunding
# answer at most FUNDING_PAGE rows a reply (paged on the last time received), and a reply weighs 1 more per 20 rows.
FUNDING_INTERVAL = timedelta(hours=1)
FUNDING_PAGE = 500
FUNDING_ROWS_PER_WEIGHT = 20
_HEX32 = re.compile(r"[0-9a-f]{32}")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_Kind = Literal["read", "create", "cancel"]

# cloid -> our client order id, for ids that are hashed (the engine's 32-hex ids map to themselves)
_hashed_ids: dict[str, str] = {}
_hashed_lock = threading.Lock()


def cloid_for(client_order_id: str) -> str:
    """Return the order's cloid ("0x" + 32 hex): our id itself when it is 32 lower-case hex, else sha256's first
    half."""
    if _HEX32.fullmatch(client_order_id):
        return "0x" + client_order_id
    cloid = "0x" + hashlib.sha256(client_order_id.encode()).hexdigest()[:32]
    with _hashed_lock:
        _hashed_ids[cloid] = client_order_id
    return cloid


def client_id_for(cloid: str | None, journal: VenueJournal | None = None) -> str:
    """Return our client order id for a venue cloid ("" for an order placed without one)."""
    if not cloid:
        return ""
    cloid = cloid.lower()
    with _hashed_lock:
        known = _hashed_ids.get(cloid)
    if known is not None:
        return known
    if journal is not None:
        entry = journal.get(_journal_key(cloid))
        if entry is not None:
            with _hashed_lock:
                _hashed_ids[cloid] = str(entry["client_order_id"])
            return str(entry["client_order_id"])
    return cloid[2:]


def _journal_key(cloid: str) -> str:
    return f"{VENUE}/cloid/{cloid}"


def price_tick(sz_decimals: int, max_decimals: int = MAX_PERP_DECIMALS) -> Decimal:
    """The finest price step of a market: 10^-(max_decimals - szDecimals)."""
    return Decimal(1).scaleb(-(max_decimals - sz_decimals))


def price_step(price: Decimal, sz_decimals: int, max_decimals: int = MAX_PERP_DECIMALS) -> Decimal:
    """The price increment at this price's magnitude: 5 significant figures, integers always allowed, capped
    decimals."""
    return sig_price_step(price, tick=price_tick(sz_decimals, max_decimals), sig_figs=SIG_FIGS)


def round_price(price: Decimal, sz_decimals: int, rounding: str = ROUND_HALF_EVEN,
                max_decimals: int = MAX_PERP_DECIMALS) -> Decimal:
    """Round a price to the venue's rules (ROUND_DOWN / ROUND_UP / ROUND_HALF_EVEN); 0 when nothing valid is left.

    The rule itself is `exchanges.base.round_sig_price`, which the paper venue applies to these markets too
    (`Market.price_sig_figs`)."""
    if not price.is_finite() or price <= 0:
        raise InvalidOrderError(f"price {price} is not a positive number", venue=VENUE)
    return round_sig_price(price, tick=price_tick(sz_decimals, max_decimals), sig_figs=SIG_FIGS, rounding=rounding)


def is_valid_price(price: Decimal, sz_decimals: int, max_decimals: int = MAX_PERP_DECIMALS) -> bool:
    """Whether the venue accepts this perp price as it is."""
    return price > 0 and round_price(price, sz_decimals, ROUND_DOWN, max_decimals) == price


def decimal_to_wire(value: Decimal) -> str:
    """Write a Decimal as the SDK's float_to_wire writes the same value: at most 8 decimals, no trailing zeros."""
    if not value.is_finite() or value != value.quantize(Decimal("1e-8"), rounding=ROUND_DOWN):
        raise InvalidOrderError(f"{value} has more than 8 decimals", venue=VENUE)
    text = f"{value.normalize():f}"
    return "0" if text in ("-0", "0") else text


def _dec(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError(f"expected a decimal string, got {type(value).__name__}")
    return Decimal(value)


def _retry_after(headers: Any) -> float | None:
    try:
        value = headers.get("Retry-After") if headers is not None else None
        return None if value is None else max(0, int(Decimal(str(value)) * 1000)) / 1000
    except (InvalidOperation, ValueError, AttributeError):
        return None


def environment_read_once(session: requests.Session, url: str) -> None:
    """Resolve once what `requests` otherwise reads from the environment on every call (the proxy for `url`, with
    NO_PROXY applied, and a CA bundle from REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE), and stop it reading again.

    That per-call read walks the whole environment twice: on a worker it was about a tenth of an exit's CPU
    (benchmarks/stop_to_exit.py). Settings made in the environment after the connector was built are not seen:
    the connector cache rebuilds connectors when their account changes, and a restart picks up the rest."""
    session.proxies.update(requests.utils.get_environ_proxies(url))
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        session.verify = bundle
    session.trust_env = False


class _Info(Info):
    """The SDK's Info with the 4xx handling fixed: any 4xx body becomes a ClientError keeping status and headers."""

    def _handle_exception(self, response: requests.Response) -> None:
        status = response.status_code
        if 400 <= status < 500:
            try:
                body = response.json()
            except ValueError:
                body = None
            code = body.get("code") if isinstance(body, dict) else None
            message = body.get("msg") if isinstance(body, dict) else None
            raise ClientError(status, code, message or response.text, response.headers, None)
        super()._handle_exception(response)


class HyperliquidConnector(Connector):
    """Trades Hyperliquid perps for `account_address`, signing with an approved API wallet's key."""

    meters_requests = True

    def __init__(
        self,
        *,
        network: str,
        secret_key: str | None,
        account_address: str | None,
        base_url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        slippage: Decimal = DEFAULT_SLIPPAGE,
        margin_mode: str = "cross",
        journal: VenueJournal | None = None,
        account: str = "",
    ) -> None:
        if network not in URLS:
            raise VenueError(f"unknown network {network!r}", venue=VENUE)
        if not Decimal(0) < slippage < Decimal(1):
            raise VenueError(f"slippage {slippage} must be between 0 and 1", venue=VENUE)
        if margin_mode not in ("cross", "isolated"):
            raise VenueError(f"margin_mode {margin_mode!r} must be cross or isolated", venue=VENUE)
        self.network = network
        self.is_mainnet = network == "mainnet"
        self.base_url = (base_url or URLS[network]).rstrip("/")
        self.slippage = slippage
        self.margin_mode = margin_mode
        self.journal = journal
        self.account_name = account
        self.capabilities = Capabilities(
            venue=VENUE, live=True, timeframes=INTERVALS, candle_page=CANDLE_DEPTH, funding_interval=FUNDING_INTERVAL,
            extra={"network": network, "margin": margin_mode, "market orders": f"IOC limit, {slippage} slippage bound",
                   "markets": "perps only"},
        )
        self.__secret_key = secret_key or ""
        self._account_address = account_address or ""
        self._wallet_obj: LocalAccount | None = None
        # No request here: empty metadata keeps the SDK from fetching spotMeta/meta at construction.
        self._info = _Info(self.base_url, skip_ws=True, meta={"universe": []},
                           spot_meta={"universe": [], "tokens": []}, timeout=timeout)
        environment_read_once(self._info.session, self.base_url)
        self._lock = threading.Lock()
        self._last_nonce = 0
        self._markets: dict[str, Market] = {}
        self._coins: dict[str, tuple[int, int, bool]] = {}  # coin -> (asset id, szDecimals, isolated only)
        self._markets_at = 0.0
        self._leverage: dict[str, dict[str, Any]] = {}  # symbol -> the leverage setting this account has

    def __repr__(self) -> str:
        return (f"HyperliquidConnector(network={self.network!r}, base_url={self.base_url!r}, "
                f"account={self.account_name!r})")

    # ----------------------------------------------------------------------------------------- credentials

    def _wallet(self) -> LocalAccount:
        if self._wallet_obj is None:
            if not self.__secret_key:
                raise AuthError("no secret key (API wallet private key) is configured", venue=VENUE)
            try:
                self._wallet_obj = Account.from_key(self.__secret_key)
            except Exception:
                raise AuthError("the secret key is not a valid private key (64 hex digits)", venue=VENUE) from None
        return self._wallet_obj

    def _user(self) -> str:
        """The main account's address (the API wallet's own when none is configured)."""
        address = self._account_address or self._wallet().address
        if not _ADDRESS.fullmatch(address):
            raise AuthError("the account address is not a 0x address of 40 hex digits", venue=VENUE)
        return address.lower()

    # ----------------------------------------------------------------------------------------- transport

    @contextmanager
    def _boundary(self, kind: _Kind, what: str) -> Iterator[None]:
        """Translate every library exception into our errors; `kind` says what an ambiguous failure means."""
        ambiguous = kind != "read"
        try:
            yield
        except VenueError:
            raise
        except ClientError as exc:
            text = str(exc.error_message or "")[:300]
            if exc.status_code == 429:
                raise RateLimitError(f"{what}: rate limited (429)", venue=VENUE,
                                     retry_after=_retry_after(exc.header)) from None
            if kind == "create":
                raise InvalidOrderError(f"{what}: venue refused ({exc.status_code}) {text}", venue=VENUE) from None
            raise VenueError(f"{what}: venue refused ({exc.status_code}) {text}", venue=VENUE) from None
        except ServerError as exc:
            message = f"{what}: venue error {exc.status_code}"
            if ambiguous:
                raise OrderStatusUnknownError(message + " after sending; ask by client id", venue=VENUE) from None
            raise TemporaryError(message, venue=VENUE) from None
        except requests.RequestException as exc:
            message = f"{what}: {type(exc).__name__}"
            if ambiguous:
                raise OrderStatusUnknownError(message + " after sending; ask by client id", venue=VENUE) from None
            raise TemporaryError(message, venue=VENUE) from None
        except (KeyError, IndexError, ValueError, TypeError, AttributeError, InvalidOperation) as exc:
            message = f"{what}: unexpected reply ({type(exc).__name__})"
            if ambiguous:
                raise OrderStatusUnknownError(message + "; ask by client id", venue=VENUE) from None
            raise TemporaryError(message, venue=VENUE) from None

    def _read(self, payload: Mapping[str, Any], what: str) -> Any:
        self._metered(f"info:{payload.get('type')}")  # weighed by request type (see resilience.VENUE_RATES)
        with self._boundary("read", what):
            reply = self._info.post("/info", dict(payload))
        if isinstance(reply, dict) and set(reply) == {"error"}:
            raise TemporaryError(f"{what}: unreadable reply", venue=VENUE)
        return reply

    def _next_nonce(self) -> int:
        """Milliseconds, strictly increasing in this process (the venue refuses a nonce used twice)."""
        with self._lock:
            self._last_nonce = max(int(time.time() * 1000), self._last_nonce + 1)
            return self._last_nonce

    def _post_action(self, action: dict[str, Any]) -> tuple[Any, int]:
        """Sign an L1 action with the API wallet (as mainnet or testnet by network, whatever the URL) and send it."""
        batch = len(action.get("orders") or action.get("cancels") or ())
        self._metered("exchange", 1 + batch // 40)  # an action weighs 1 + floor(batch length / 40)
        wallet = self._wallet()
        nonce = self._next_nonce()
        signature = sign_l1_action(wallet, action, None, nonce, None, self.is_mainnet)
        payload = {"action": action, "nonce": nonce, "signature": signature, "vaultAddress": None,
                   "expiresAfter": None}
        return self._info.post("/exchange", payload), nonce

    def _refused(self, response: Any, kind: _Kind) -> VenueError:
        """The error for a whole request the venue answered with status "err"."""
        text = str(response)[:300]
        low = text.lower()
        if "does not exist" in low or "signature" in low or "not authorized" in low:
            return AuthError(f"venue refused the signature: {text}", venue=VENUE)
        if "nonce" in low:
            return TemporaryError(f"venue refused the nonce (nothing was done): {text}", venue=VENUE)
        if "rate limit" in low or "too many" in low:
            return RateLimitError(f"venue refused: {text}", venue=VENUE)
        if kind == "create":
            return InvalidOrderError(f"venue refused the order: {text}", venue=VENUE)
        return VenueError(f"venue refused: {text}", venue=VENUE)

    # ----------------------------------------------------------------------------------------- markets

    def _load_markets(self) -> None:
        with self._lock:
            if self._markets and time.monotonic() - self._markets_at < META_TTL:
                return
        meta = self._read({"type": "meta", "dex": ""}, "meta")
        markets: dict[str, Market] = {}
        coins: dict[str, tuple[int, int, bool]] = {}
        with self._boundary("read", "meta"):
            for asset, info in enumerate(meta["universe"]):
                coin, sz_decimals = str(info["name"]), int(info["szDecimals"])
                coins[coin] = (asset, sz_decimals, bool(info.get("onlyIsolated", False)))
                if info.get("isDelisted"):
                    continue
                lot = Decimal(1).scaleb(-sz_decimals)
                markets[f"{coin}/{QUOTE}:{QUOTE}"] = Market(
                    symbol=f"{coin}/{QUOTE}:{QUOTE}", base=coin, quote=QUOTE,
                    tick_size=price_tick(sz_decimals), lot_size=lot, min_qty=lot,
                    min_notional=MIN_NOTIONAL, max_leverage=Decimal(int(info.get("maxLeverage", 1))), kind="perp",
                    maker_fee=MAKER_FEE, taker_fee=TAKER_FEE, price_sig_figs=SIG_FIGS,
                )
            self._info.set_perp_meta(meta, 0)
        with self._lock:
            self._markets, self._coins, self._markets_at = markets, coins, time.monotonic()

    def markets(self) -> Sequence[Market]:
        self._load_markets()
        return list(self._markets.values())

    def market(self, symbol: str) -> Market:
        self._load_markets()
        found = self._markets.get(symbol)
        if found is None:
            raise MarketNotFoundError(f"unknown market {symbol!r} (symbols look like BTC/USDC:USDC)", venue=VENUE)
        return found

    def _coin(self, symbol: str) -> tuple[str, int, int]:
        """Return (coin, asset id, szDecimals) of a market."""
        coin = self.market(symbol).base
        asset, sz_decimals, _ = self._coins[coin]
        return coin, asset, sz_decimals

    def _symbol(self, coin: str) -> str:
        return f"{coin}/{QUOTE}:{QUOTE}"

    def quantize(self, request: OrderRequest) -> OrderRequest:
        """Round size down to the lot and prices to the venue's rules, never past what was asked.

        A limit buy rounds down and a limit sell up (a worse price for us is never sent); a trigger price rounds to
        the nearest valid price. A market order's reference price is left as asked: its IOC limit is the reference
        moved by the slippage, rounded once, inside the bound (`_slipped`).
        """
        market = self.market(request.symbol)
        _, _, sz_decimals = self._coin(request.symbol)
        limit_rounding = ROUND_DOWN if request.side is Side.BUY else ROUND_UP
        price_rounding = limit_rounding if request.type is OrderType.LIMIT else ROUND_HALF_EVEN
        return replace(
            request,
            quantity=market.round_qty(request.quantity),
            price=(request.price if request.price is None or request.type is OrderType.MARKET
                   else round_price(request.price, sz_decimals, price_rounding)),
            trigger_price=(None if request.trigger_price is None
                           else round_price(request.trigger_price, sz_decimals, ROUND_HALF_EVEN)),
        )

    # ----------------------------------------------------------------------------------------- reads

    def balances(self) -> Sequence[Balance]:
        state = self._read({"type": "clearinghouseState", "user": self._user(), "dex": ""}, "clearinghouseState")
        with self._boundary("read", "clearinghouseState"):
            return [Balance(QUOTE, free=_dec(state["withdrawable"]),
                            total=_dec(state["marginSummary"]["accountValue"]))]

    def positions(self) -> Sequence[VenuePosition]:
        state = self._read({"type": "clearinghouseState", "user": self._user(), "dex": ""}, "clearinghouseState")
        found = []
        with self._boundary("read", "clearinghouseState"):
            for item in state["assetPositions"]:
                position = item["position"]
                quantity = _dec(position["szi"])
                if quantity != 0:
                    entry = position.get("entryPx")
                    found.append(VenuePosition(self._symbol(position["coin"]), quantity,
                                               _dec(entry) if entry is not None else Decimal(0)))
        return found

    def _mid(self, coin: str) -> Decimal:
        mids = self._read({"type": "allMids", "dex": ""}, "allMids")
        with self._boundary("read", "allMids"):
            if coin not in mids:
                raise TemporaryError(f"no mid price for {coin}", venue=VENUE)
            return _dec(mids[coin])

    def ticker(self, symbol: str) -> Ticker:
        coin, _, _ = self._coin(symbol)
        return Ticker(symbol=symbol, price=self._mid(coin), time=datetime.now(UTC))

    def tickers(self, symbols: Sequence[str]) -> dict[str, Ticker]:
        """Every market's mid from one allMids (weight 2, whatever the number of markets)."""
        coins = {symbol: self._coin(symbol)[0] for symbol in dict.fromkeys(symbols)}
        if not coins:
            return {}
        mids = self._read({"type": "allMids", "dex": ""}, "allMids")
        now = datetime.now(UTC)
        found: dict[str, Ticker] = {}
        for symbol, coin in coins.items():
            try:
                with self._boundary("read", "allMids"):
                    if coin in mids:
                        found[symbol] = Ticker(symbol=symbol, price=_dec(mids[coin]), time=now)
            except VenueError:
                continue  # a malformed mid: left out, as the contract says
        return found

    def candles(self, symbol: str, timeframe: str, *, since: datetime | None = None,
                limit: int = 300) -> Sequence[VenueCandle]:
        coin, _, _ = self._coin(symbol)
        if timeframe not in INTERVALS:
            raise VenueError(f"timeframe {timeframe!r} is not one of {', '.join(INTERVALS)}", venue=VENUE)
        step = _interval(timeframe)
        now = datetime.now(UTC)
        start = since if since is not None else now - step * limit
        req = {"coin": coin, "interval": timeframe, "startTime": datetime_to_ms(start),
               "endTime": datetime_to_ms(now)}
        rows = self._read({"type": "candleSnapshot", "req": req}, "candleSnapshot")
        if isinstance(rows, list) and len(rows) >= CANDLES_PER_WEIGHT:
            self._metered("info:candleSnapshot:rows", len(rows) // CANDLES_PER_WEIGHT)
        with self._boundary("read", "candleSnapshot"):
            candles = sorted(
                (VenueCandle(open_time=ms_to_datetime(int(r["t"])), open=_dec(r["o"]), high=_dec(r["h"]),
                             low=_dec(r["l"]), close=_dec(r["c"]), volume=_dec(r["v"])) for r in rows),
                key=lambda c: c.open_time,
            )
        return candles[:limit] if since is not None else candles[-limit:]

    def funding_rates(self, symbol: str, *, since: datetime, until: datetime | None = None) -> Sequence[FundingRate]:
        """The market's hourly funding rates from `fundingHistory` (`time` a few ms past the hour, as the venue
        stamps it; an hour the venue skipped is absent), oldest first, paged on the last time received."""
        coin, _, _ = self._coin(symbol)
        rows = self._paged({"type": "fundingHistory", "coin": coin}, "fundingHistory", since, until)
        with self._boundary("read", "fundingHistory"):
            found = {int(r["time"]): FundingRate(symbol=symbol, time=ms_to_datetime(int(r["time"])),
                                                 rate=_dec(r["fundingRate"])) for r in rows if r["coin"] == coin}
        return [found[t] for t in sorted(found)]

    def funding_payments(self, *, since: datetime, until: datetime | None = None) -> Sequence[VenueFunding]:
        """Our account's funding payments from `userFunding` (`usdc` signed as the cash moved), oldest first."""
        rows = self._paged({"type": "userFunding", "user": self._user()}, "userFunding", since, until)
        found: dict[tuple[int, str], VenueFunding] = {}
        with self._boundary("read", "userFunding"):
            for r in rows:
                delta = r["delta"]
                if delta.get("type") != "funding":
                    continue
                coin, ms = str(delta["coin"]), int(r["time"])
                found[(ms, coin)] = VenueFunding(
                    symbol=self._symbol(coin), time=ms_to_datetime(ms), amount=_dec(delta["usdc"]),
                    rate=_dec(delta["fundingRate"]), size=_dec(delta["szi"]), ref=str(r.get("hash") or ""))
        return [found[key] for key in sorted(found)]

    def _paged(self, payload: Mapping[str, Any], what: str, since: datetime,
               until: datetime | None) -> list[Mapping[str, Any]]:
        """Every row of a time-ranged info request (oldest first, at most FUNDING_PAGE a reply): the next page
        starts just after the last time received."""
        start, end = datetime_to_ms(since), None if until is None else datetime_to_ms(until)
        rows: list[Mapping[str, Any]] = []
        for _ in range(100):
            page = self._read({**payload, "startTime": start, **({} if end is None else {"endTime": end})}, what)
            if isinstance(page, list) and len(page) >= FUNDING_ROWS_PER_WEIGHT:
                self._metered(f"info:{what}:rows", len(page) // FUNDING_ROWS_PER_WEIGHT)
            with self._boundary("read", what):
                rows.extend(page)
                if len(page) < FUNDING_PAGE:
                    return rows
                start = max(int(r["time"]) for r in page) + 1
        raise TemporaryError(f"{what}: more than {100 * FUNDING_PAGE} rows since {since.isoformat()}", venue=VENUE)

    def _fills(self, since_ms: int) -> dict[int, list[VenueFill]]:
        """Our account's fills since a time (ms), grouped by venue order id, oldest first.

        The venue answers newest first, at most FILLS_PAGE fills a call: a full page is followed by the next older
        one (the same start, the end moved back to the page's oldest time; fills on that millisecond come twice and
        are kept once)."""
        by_oid: dict[int, list[VenueFill]] = {}
        seen: set[str] = set()
        end: int | None = None
        for _ in range(10):
            rows = self._read({"type": "userFillsByTime", "user": self._user(), "startTime": since_ms,
                               "endTime": end, "aggregateByTime": False}, "userFillsByTime")
            with self._boundary("read", "userFillsByTime"):
                new = 0
                for r in rows:
                    fill_id = _fill_id(r)
                    if fill_id in seen:
                        continue
                    seen.add(fill_id)
                    new += 1
                    by_oid.setdefault(int(r["oid"]), []).append(VenueFill(
                        fill_id=fill_id, quantity=_dec(r["sz"]), price=_dec(r["px"]), fee=_dec(r.get("fee", "0")),
                        fee_currency=str(r.get("feeToken") or QUOTE), time=ms_to_datetime(int(r["time"])),
                        liquidity="taker" if r.get("crossed", True) else "maker",
                    ))
                if len(rows) < FILLS_PAGE or not new:
                    break
                end = min(int(r["time"]) for r in rows)
        for fills in by_oid.values():
            fills.sort(key=lambda f: (f.time, f.fill_id))
        return by_oid

    def _order_status(self, oid: int | str) -> dict[str, Any] | None:
        reply = self._read({"type": "orderStatus", "user": self._user(), "oid": oid}, "orderStatus")
        with self._boundary("read", "orderStatus"):
            if reply.get("status") != "order":
                return None
            found: dict[str, Any] = reply["order"]
            return found

    def _order_from_venue(self, wire: Mapping[str, Any], venue_status: str,
                          fills: Sequence[VenueFill] | None = None, status_ms: int | None = None) -> VenueOrder:
        """Build our view of an order from the venue's frontend order (orderStatus / frontendOpenOrders)."""
        with self._boundary("read", "order"):
            quantity = _dec(wire["origSz"])
            remaining = _dec(wire["sz"])
            is_trigger = bool(wire.get("isTrigger"))
            if fills is None:
                needs_fills = venue_status != "open" or remaining < quantity
                fills = self._fills(int(wire["timestamp"]) - 1000).get(int(wire["oid"]), []) if needs_fills else []
            filled = sum((f.quantity for f in fills), Decimal(0))
            status, reason = _status(venue_status, quantity, filled, remaining)
            if (venue_status == "filled" and not status.is_final and status_ms is not None
                    and time.time() * 1000 - status_ms > FILLS_SETTLED_MS):
                # Filled long ago and the fills still fall short: not lag but the venue filling less (a reduce-only
                # trigger clipped to the position left). Final with what the fills say, so nothing waits for ever.
                status = VenueOrderStatus.FILLED
                reason = f"the venue calls it filled; its fills add up to {decimal_to_wire(filled)} of " \
                         f"{decimal_to_wire(quantity)}"
            return VenueOrder(
                client_order_id=client_id_for(wire.get("cloid"), self.journal),
                venue_order_id=str(wire["oid"]),
                symbol=self._symbol(str(wire["coin"])),
                side=Side.BUY if wire["side"] == "B" else Side.SELL,
                type=_order_type(str(wire.get("orderType", "Limit")), wire.get("tif")),
                status=status,
                quantity=quantity,
                filled_quantity=filled,
                price=_dec(wire["limitPx"]),
                trigger_price=_dec(wire["triggerPx"]) if is_trigger else None,
                reduce_only=bool(wire.get("reduceOnly", False)),
                fills=tuple(fills),
                reason=reason,
            )

    def fetch_order(self, symbol: str, venue_order_id: str) -> VenueOrder:
        self.market(symbol)
        if not venue_order_id.isdigit():
            raise OrderNotFoundError(f"no order {venue_order_id!r} (venue ids are integers)", venue=VENUE)
        found = self._order_status(int(venue_order_id))
        if found is None:
            raise OrderNotFoundError(f"the venue does not know order {venue_order_id}", venue=VENUE)
        return self._order_from_venue(found["order"], str(found["status"]), status_ms=_status_ms(found))

    def fetch_order_by_client_id(self, symbol: str, client_order_id: str) -> VenueOrder | None:
        self.market(symbol)
        found = self._order_status(cloid_for(client_order_id))
        if found is None:
            return None
        order = self._order_from_venue(found["order"], str(found["status"]), status_ms=_status_ms(found))
        return replace(order, client_order_id=client_order_id)

    def open_orders(self, symbol: str | None = None) -> Sequence[VenueOrder]:
        coin = None if symbol is None else self.market(symbol).base
        self._load_markets()
        rows = self._read({"type": "frontendOpenOrders", "user": self._user(), "dex": ""}, "frontendOpenOrders")
        with self._boundary("read", "frontendOpenOrders"):
            mine = [r for r in rows if (coin is None or r["coin"] == coin) and self._symbol(r["coin"]) in self._markets]
            partly = [r for r in mine if _dec(r["sz"]) < _dec(r["origSz"])]
            fills = self._fills(min(int(r["timestamp"]) for r in partly) - 1000) if partly else {}
            mine.sort(key=lambda r: (int(r["timestamp"]), int(r["oid"])))
        return [self._order_from_venue(r, "open", fills.get(int(r["oid"]), [])) for r in mine]

    # ----------------------------------------------------------------------------------------- writes

    def set_leverage(self, symbol: str, leverage: Decimal) -> None:
        market = self.market(symbol)
        _, asset, _ = self._coin(symbol)
        if leverage != leverage.to_integral_value() or not Decimal(1) <= leverage <= market.max_leverage:
            raise InvalidOrderError(
                f"leverage {leverage} must be a whole number from 1 to {market.max_leverage} on {symbol}", venue=VENUE
            )
        setting = self._leverage_setting(symbol, leverage)
        action = {"type": "updateLeverage", "asset": asset, "isCross": setting["cross"],
                  "leverage": setting["leverage"]}
        # Setting leverage is idempotent: a lost reply is safe to retry, so it fails like a read.
        with self._boundary("read", "updateLeverage"):
            reply, _ = self._post_action(action)
            if reply.get("status") != "ok":
                raise self._refused(reply.get("response"), "create")
        self._leverage[symbol] = setting
        if self.journal is not None:
            self.journal.put(f"{VENUE}/leverage/{market.base}", setting)

    def _leverage_setting(self, symbol: str, leverage: Decimal) -> dict[str, Any]:
        isolated = self.margin_mode == "isolated" or self._coins[self.market(symbol).base][2]
        return {"leverage": int(leverage), "cross": not isolated}

    def _apply_leverage(self, symbol: str, leverage: Decimal) -> None:
        """Set an order's leverage unless this account already has it (remembered here and in the journal)."""
        if leverage != leverage.to_integral_value():
            raise InvalidOrderError(f"leverage {leverage} must be a whole number on {symbol}", venue=VENUE)
        setting = self._leverage_setting(symbol, leverage)
        if self._leverage.get(symbol) == setting:
            return
        if self.journal is not None and self.journal.get(f"{VENUE}/leverage/{self.market(symbol).base}") == setting:
            self._leverage[symbol] = setting
            return
        self.set_leverage(symbol, leverage)

    def _check_order(self, request: OrderRequest) -> None:
        super()._check_order(request)
        self._user()  # credentials first: a missing or malformed key fails before any request

    def _create_order(self, request: OrderRequest, market: Market) -> VenueOrder:
        coin, asset, sz_decimals = self._coin(request.symbol)
        if request.leverage is not None and not request.reduce_only:
            # Closing needs no margin, and a venue that refuses a leverage change must not block an exit.
            self._apply_leverage(request.symbol, request.leverage)

        buy = request.side is Side.BUY
        trigger: Decimal | None = None
        if request.type is OrderType.LIMIT:
            assert request.price is not None  # Connector.create_order checked it
            price = request.price
            order_type: dict[str, Any] = {"limit": {"tif": "Alo" if request.post_only else "Gtc"}}
        elif request.type is OrderType.MARKET:
            reference = request.price if request.price is not None else self._mid(coin)
            price = self._slipped(reference, buy, sz_decimals)
            order_type = {"limit": {"tif": "Ioc"}}
        else:
            trigger = request.trigger_price
            assert trigger is not None  # Connector.create_order checked it
            price = self._slipped(trigger, buy, sz_decimals)
            order_type = {"trigger": {"isMarket": True, "triggerPx": decimal_to_wire(trigger),
                                      "tpsl": "sl" if request.type is OrderType.STOP else "tp"}}
        if price <= 0:
            raise InvalidOrderError(f"price {request.price} is below the smallest price of {request.symbol}",
                                    venue=VENUE)

        cloid = cloid_for(request.client_order_id)
        if self.journal is not None and cloid[2:] != request.client_order_id:
            self.journal.put(_journal_key(cloid), {"client_order_id": request.client_order_id})
        wire = {"a": asset, "b": buy, "p": decimal_to_wire(price), "s": decimal_to_wire(request.quantity),
                "r": request.reduce_only, "t": order_type, "c": cloid}
        action = order_wires_to_order_action([wire], None, "na")
        what = f"create {request.client_order_id}"
        with self._boundary("create", what):
            reply, nonce = self._post_action(action)
        with self._boundary("create", what):
            if reply.get("status") != "ok":
                raise self._refused(reply.get("response"), "create")
            (status,) = reply["response"]["data"]["statuses"]
        placed = VenueOrder(
            client_order_id=request.client_order_id, venue_order_id="", symbol=request.symbol, side=request.side,
            type=request.type, status=VenueOrderStatus.OPEN, quantity=request.quantity, price=price,
            trigger_price=trigger, reduce_only=request.reduce_only,
        )
        return self._placed(placed, status, nonce)

    def _slipped(self, reference: Decimal, buy: bool, sz_decimals: int) -> Decimal:
        """The IOC limit of a market order: `slippage` through the reference, rounded inside the bound."""
        bound = reference * (1 + self.slippage) if buy else reference * (1 - self.slippage)
        return round_price(bound, sz_decimals, ROUND_DOWN if buy else ROUND_UP)

    def _placed(self, placed: VenueOrder, status: Any, nonce: int) -> VenueOrder:
        """Turn one per-order status of a create reply into our order, or raise the venue's refusal."""
        what = f"create {placed.client_order_id}"
        if isinstance(status, dict) and "error" in status:
            text = str(status["error"])
            if "cloid" in text.lower():
                existing = self.fetch_order_by_client_id(placed.symbol, placed.client_order_id)
                if existing is not None:
                    return existing
                if "duplicate" in text.lower():
                    # The venue has this client id but its status read lags: ambiguous, never a refusal (a
                    # refusal would mark REJECTED an order the venue holds).
                    raise OrderStatusUnknownError(f"{what}: {text}; not readable yet, ask by client id",
                                                  venue=VENUE)
            raise _order_error(text)
        with self._boundary("create", what):
            if isinstance(status, dict) and "resting" in status:
                return replace(placed, venue_order_id=str(int(status["resting"]["oid"])))
            if not (isinstance(status, dict) and "filled" in status):
                raise OrderStatusUnknownError(f"{what}: unexpected order status; ask by client id", venue=VENUE)
            oid, total = int(status["filled"]["oid"]), _dec(status["filled"]["totalSz"])
        try:
            fills = self._fills(nonce - 60_000).get(oid, [])
        except VenueError as exc:
            raise OrderStatusUnknownError(
                f"{what}: filled as order {oid} but its fills could not be read ({type(exc).__name__}); ask again",
                venue=VENUE,
            ) from None
        filled = sum((f.quantity for f in fills), Decimal(0))
        if filled < total:  # the venue reported more than its fills show yet: working until they do
            state = VenueOrderStatus.PARTIALLY_FILLED if filled > 0 else VenueOrderStatus.OPEN
        elif filled < placed.quantity:
            state = VenueOrderStatus.CANCELED  # an IOC whose rest found no liquidity
        else:
            state = VenueOrderStatus.FILLED
        return replace(placed, venue_order_id=str(oid), status=state, filled_quantity=filled, fills=tuple(fills))

    def cancel_order(self, symbol: str, venue_order_id: str) -> VenueOrder:
        _, asset, _ = self._coin(symbol)
        if not venue_order_id.isdigit():
            raise OrderNotFoundError(f"no order {venue_order_id!r} (venue ids are integers)", venue=VENUE)
        action = {"type": "cancel", "cancels": [{"a": asset, "o": int(venue_order_id)}]}
        what = f"cancel {venue_order_id}"
        with self._boundary("cancel", what):
            reply, _ = self._post_action(action)
        with self._boundary("cancel", what):
            if reply.get("status") != "ok":
                raise self._refused(reply.get("response"), "cancel")
            (status,) = reply["response"]["data"]["statuses"]
        try:
            order = self.fetch_order(symbol, venue_order_id)
        except (OrderNotFoundError, TemporaryError) as exc:
            if status != "success":
                raise
            raise OrderStatusUnknownError(f"{what}: canceled, but its final state is not readable yet "
                                          f"({type(exc).__name__}); ask again", venue=VENUE) from None
        if status == "success":
            if not order.status.is_final:
                order = replace(order, status=VenueOrderStatus.CANCELED)
            return order
        if order.status.is_final:
            return order  # a cancel that lost to a fill (or an earlier cancel) is that final state, not an error
        raise VenueError(f"{what}: venue refused: {status}", venue=VENUE)

    # ----------------------------------------------------------------------------------------- checks

    def verify(self) -> Sequence[CheckItem]:
        """Key and address well-formed, venue reachable, API wallet approved, signature accepted, balance read."""
        items: list[CheckItem] = []
        try:
            wallet = self._wallet()
            items.append(CheckItem("secret key well-formed", True, f"API wallet {wallet.address}"))
        except AuthError as exc:
            return [CheckItem("secret key well-formed", False, str(exc))]
        if not self._account_address:
            return items + [CheckItem("account address set", False, "set <PREFIX>_ACCOUNT_ADDRESS to the main account")]
        try:
            user = self._user()
            items.append(CheckItem("account address well-formed", True, user))
        except AuthError as exc:
            return items + [CheckItem("account address well-formed", False, str(exc))]
        try:
            count = len(self.markets())
            items.append(CheckItem("venue reachable", True, f"{self.network} {self.base_url}: {count} perp markets"))
            role = self._read({"type": "userRole", "user": wallet.address.lower()}, "userRole")
        except VenueError as exc:
            return items + [CheckItem("venue reachable", False, f"{type(exc).__name__}: {exc}")]
        kind = role.get("role") if isinstance(role, dict) else None
        master = str((role.get("data") or {}).get("user", "")).lower() if isinstance(role, dict) else ""
        if kind == "agent" and master == user:
            items.append(CheckItem("API wallet approved for the account", True,
                                   "an API wallet can trade but cannot withdraw or transfer"))
        elif kind == "user" and wallet.address.lower() == user:
            return items + [CheckItem("API wallet approved for the account", False,
                                      "the key is the account's own key, which can withdraw funds: "
                                      "approve an API wallet and use its key")]
        else:
            return items + [CheckItem("API wallet approved for the account", False,
                                      f"the venue says this key is {kind or 'unknown'}"
                                      + (f" for {master}" if master else ""))]
        items.append(self._check_signature())
        try:
            (balance,) = self.balances()
            items.append(CheckItem("balances read", True, f"{balance.total} {balance.asset} account value"))
        except VenueError as exc:
            items.append(CheckItem("balances read", False, f"{type(exc).__name__}: {exc}"))
        return items

    def _check_signature(self) -> CheckItem:
        """Sign a cancel of an order that cannot exist: the venue checks the signer and changes nothing."""
        asset = min((a for a, _, _ in self._coins.values()), default=0)
        probe = "0x" + hashlib.sha256(f"verify:{time.time_ns()}".encode()).hexdigest()[:32]
        action = {"type": "cancelByCloid", "cancels": [{"asset": asset, "cloid": probe}]}
        try:
            with self._boundary("read", "signature check"):
                reply, _ = self._post_action(action)
                if reply.get("status") != "ok":
                    raise self._refused(reply.get("response"), "cancel")
        except VenueError as exc:
            return CheckItem("signature accepted", False, f"{type(exc).__name__}: {exc}")
        return CheckItem("signature accepted", True, "a signed no-op cancel was accepted")


def build_public(config: VenueConfig) -> Connector:
    """Build a connector for public market data (markets, mids, candles): no key, and any signed call is refused."""
    return HyperliquidConnector(network=config.network, secret_key=None, account_address=None,
                                base_url=config.endpoint, account=config.account)


def _interval(timeframe: str) -> timedelta:
    count, unit = int(timeframe[:-1]), timeframe[-1]
    if unit == "M":
        return timedelta(days=30 * count)
    return timedelta(**{{"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[unit]: count})


def _order_type(order_type: str, tif: Any) -> OrderType:
    if order_type.startswith("Stop"):
        return OrderType.STOP
    if order_type.startswith("Take Profit"):
        return OrderType.TAKE_PROFIT
    if order_type == "Market" or tif in ("Ioc", "FrontendMarket"):
        return OrderType.MARKET
    return OrderType.LIMIT



def _fill_id(row: Mapping[str, Any]) -> str:
    """A fill's id: the venue's trade id, or for replies without one (older ones) the order, the transaction and
    what the fill did (position before it, size, price). One transaction holds several fills of one order and of
    other orders, so neither the hash nor hash:startPosition is unique (104 of 500 recorded real fills collide);
    this is unique on the recorded data and the same each time the fill is read."""
    if row.get("tid") is not None:
        return str(row["tid"])
    found = f"{row['oid']}:{row['hash']}:{row['startPosition']}:{row['sz']}@{row['px']}"
    # The column holds 128 characters; a longer id (huge sizes) is kept as its digest, still stable.
    return found if len(found) <= 128 else "sha256:" + hashlib.sha256(found.encode()).hexdigest()

def _status_ms(found: Mapping[str, Any]) -> int | None:
    stamp = found.get("statusTimestamp")
    return int(stamp) if stamp is not None else None


def _status(venue_status: str, quantity: Decimal, filled: Decimal,
            remaining: Decimal) -> tuple[VenueOrderStatus, str]:
    """Map the venue's order status (open, filled, canceled, triggered, marginCanceled, tickRejected, ...).

    `filled` is what the fills we could read add up to: an order the venue calls filled, or canceled with less left
    than it started with, stays working (not final) until its fills are readable, so every fill gets recorded.
    """
    low = venue_status.lower()
    if low.endswith("rejected"):
        return VenueOrderStatus.REJECTED, venue_status
    working = VenueOrderStatus.PARTIALLY_FILLED if filled > 0 else VenueOrderStatus.OPEN
    if low.endswith("canceled") or low == "scheduledcancel":
        if 0 < remaining < quantity and filled < quantity - remaining:
            return working, ""
        return VenueOrderStatus.CANCELED, "" if low == "canceled" else venue_status
    if low == "filled" and filled >= quantity:
        return VenueOrderStatus.FILLED, ""
    return working, ""


def _order_error(text: str) -> VenueError:
    """The error for one order's {"error": ...} inside an "ok" reply, with the venue's words."""
    low = text.lower()
    if "insufficient" in low and ("margin" in low or "balance" in low):
        return InsufficientFundsError(text, venue=VENUE)
    if "too many" in low or "rate limit" in low:
        return RateLimitError(text, venue=VENUE)
    return InvalidOrderError(text, venue=VENUE)


def _option(credentials: Mapping[str, str], key: str, default: str) -> str:
    value = credentials.get(key)
    return default if value is None or value == "" else value


def build(config: VenueConfig) -> Connector:
    """Build the connector from `<PREFIX>_SECRET_KEY` (API wallet key) and `<PREFIX>_ACCOUNT_ADDRESS` (main account).

    Optional, not secret: `<PREFIX>_SLIPPAGE` (market orders, default 0.05), `<PREFIX>_MARGIN_MODE` (cross or
    isolated), `<PREFIX>_TIMEOUT` (seconds per request, default 10). Makes no request.
    """
    credentials = config.credentials
    try:
        slippage = Decimal(_option(credentials, "slippage", str(DEFAULT_SLIPPAGE)))
        timeout = Decimal(_option(credentials, "timeout", str(DEFAULT_TIMEOUT)))
    except InvalidOperation:
        raise VenueError("slippage and timeout must be numbers", venue=VENUE) from None
    if not timeout > 0:
        raise VenueError("timeout must be positive", venue=VENUE)
    return HyperliquidConnector(
        network=config.network,
        secret_key=credentials.get("secret_key"),
        account_address=credentials.get("account_address"),
        base_url=config.endpoint,
        timeout=int(timeout * 1000) / 1000,
        slippage=slippage,
        margin_mode=_option(credentials, "margin_mode", "cross").lower(),
        journal=config.journal,
        account=config.account,
    )
