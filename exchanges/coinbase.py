"""Coinbase Advanced Trade (REST API v3) through ccxt's `coinbase` class: spot markets, CDP keys, Decimal values.

ccxt signs every request (a JWT per request: ES256 with a CDP key's PEM EC key, or EdDSA with an Ed25519 key),
builds the URLs and raises its own exceptions; this module calls the v3 endpoints through ccxt's implicit API
methods with bodies it builds itself, so every size and price on the wire is the exact Decimal string (ccxt's
unified `create_order` would pass them through floats) and our client order id is the one sent (the unified
`clientOrderId` is dropped for this venue). Replies are read from their raw strings, never from ccxt's floats.

Quirks handled (https://docs.cdp.coinbase.com/advanced-trade/docs/welcome):
- A market buy is sized in quote (`quote_size` = quantity x reference price, rounded down to the quote
  increment); its base quantity is known only from its fills.
- Order refusals come back as HTTP 200 with `success: false` and an `error_response`: inspected here.
- Stop and take-profit orders are stop-limit orders (Coinbase has no stop-market): the limit is placed
  `STOP_LIMIT_SLIPPAGE` through the trigger so that it trades once triggered.
- Spot only: no leverage, no short positions, no reduce-only flag (a spot sell can only sell what is held).
- There is no test network for Advanced Trade: its sandbox (api-sandbox.coinbase.com) only returns static canned
  replies for accounts and orders, so `testnet` is refused unless an endpoint is given explicitly.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, UTC
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from email.utils import parsedate_to_datetime
from typing import Any

import ccxt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

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
    VenueCandle,
    VenueConfig,
    VenueFill,
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

VENUE = "coinbase"
MAINNET_URL = "https://api.coinbase.com"
DEFAULT_TIMEOUT = 10.0  # seconds per HTTP request; `<PREFIX>_TIMEOUT` overrides it
MARKETS_TTL = 300.0  # seconds a products list is reused
STOP_LIMIT_SLIPPAGE = Decimal("0.01")  # a stop's limit price lies 1% through its trigger
DEFAULT_FEES = (Decimal("0.006"), Decimal("0.012"))  # (maker, taker) of the lowest tier, when the key cannot say
PAGE_SIZE = 250
CLIENT_ID_SEARCH_PAGES = 4  # newest orders of a market searched for a client order id: 4 x 250
REMEMBERED_ORDERS = 10_000  # client id -> venue id pairs kept in memory (a shortcut, the venue stays the truth)
MAX_CANDLES = 350
MAX_CLOCK_SKEW = 30.0  # seconds; a JWT lives 120 s from our clock
TIMEFRAMES = {
    "1m": ("ONE_MINUTE", 60), "5m": ("FIVE_MINUTE", 300), "15m": ("FIFTEEN_MINUTE", 900),
    "30m": ("THIRTY_MINUTE", 1800), "1h": ("ONE_HOUR", 3600), "2h": ("TWO_HOUR", 7200),
    "6h": ("SIX_HOUR", 21600), "1d": ("ONE_DAY", 86400),
}
ZERO = Decimal("0")

CAPABILITIES = Capabilities(
    venue=VENUE,
    live=True,
    post_only=True,
    reduce_only=False,
    stop_orders=True,
    leverage=False,
    positions=False,
    timeframes=tuple(TIMEFRAMES),
    candle_page=300,  # the venue answers at most 350 a request; ccxt asks 300
    extra={
        "market_buy": "sized in quote: quantity x reference price, rounded down to the quote increment",
        "stop_orders": f"stop-limit with the limit {STOP_LIMIT_SLIPPAGE:%} through the trigger",
        "positions": "spot: none reported; holdings are balances",
        "reduce_only": "implicit on spot: a sell can only sell the base asset held",
        "testnet": "none: testnet needs an explicit endpoint",
    },
)

# ccxt logs request headers (the bearer JWT) at DEBUG on its module logger: give the client a logger of its own
# that is not attached to the logging tree and drops everything below CRITICAL.
_WIRE_LOG = logging.Logger("exchanges.coinbase.wire", logging.CRITICAL)
log = logging.getLogger("exchanges.coinbase")

_KEY_NAME = re.compile(r"^organizations/[^/\s]+/apiKeys/[^/\s]+$")
_TOKEN = re.compile(r"^[A-Za-z0-9._:/-]+$")
_FRACTION = re.compile(r"(\.\d{6})\d+")

_STATUS = {
    "OPEN": VenueOrderStatus.OPEN, "PENDING": VenueOrderStatus.OPEN, "QUEUED": VenueOrderStatus.OPEN,
    "CANCEL_QUEUED": VenueOrderStatus.OPEN, "EDIT_QUEUED": VenueOrderStatus.OPEN,
    "UNKNOWN_ORDER_STATUS": VenueOrderStatus.OPEN, "FILLED": VenueOrderStatus.FILLED,
    "CANCELLED": VenueOrderStatus.CANCELED, "EXPIRED": VenueOrderStatus.CANCELED,
    "FAILED": VenueOrderStatus.REJECTED,
}


# --------------------------------------------------------------------------------------------- credentials


@dataclass(frozen=True)
class CdpKey:
    """A CDP API key: its name (the JWT `kid`/`sub`) and private key; the secret never shows in a repr."""

    name: str
    secret: str = field(repr=False)
    algorithm: str  # "ES256" (PEM EC P-256) or "EdDSA" (Ed25519)


def parse_key(credentials: Mapping[str, str]) -> CdpKey:
    """Validate `api_key` and `api_secret`; raise AuthError with a reason that never quotes them."""
    name = (credentials.get("api_key") or "").strip()
    secret = (credentials.get("api_secret") or "").strip()
    missing = [f"<PREFIX>_{k.upper()}" for k, v in (("api_key", name), ("api_secret", secret)) if not v]
    if missing:
        raise AuthError(f"Coinbase credentials missing: set {' and '.join(missing)}", venue=VENUE)
    if secret.startswith("-----BEGIN"):
        # .env files often carry a PEM on one line with literal "\n" separators.
        pem = secret.replace("\\n", "\n") if "\n" not in secret else secret
        try:
            key = load_pem_private_key(pem.encode(), password=None)
        except (ValueError, TypeError):
            raise AuthError("the Coinbase API secret is not a readable PEM private key (unencrypted EC key "
                            "expected)", venue=VENUE) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
            raise AuthError("the Coinbase API secret must be an EC P-256 (prime256v1) private key", venue=VENUE)
        if not _KEY_NAME.match(name):
            raise AuthError("the Coinbase API key name must look like organizations/{org_id}/apiKeys/{key_id}",
                            venue=VENUE)
        # ccxt signs with a SEC1 PEM: normalise a PKCS#8 one ("BEGIN PRIVATE KEY") to it.
        sec1 = key.private_bytes(Encoding.PEM, PrivateFormat.TraditionalOpenSSL, NoEncryption()).decode()
        return CdpKey(name=name, secret=sec1, algorithm="ES256")
    try:
        raw = base64.b64decode(secret, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) not in (32, 64):
        raise AuthError("the Coinbase API secret is neither a PEM EC private key nor a base64 Ed25519 key",
                        venue=VENUE)
    if len(raw) == 64:
        public = ed25519.Ed25519PrivateKey.from_private_bytes(raw[:32]).public_key().public_bytes_raw()
        if public != raw[32:]:
            raise AuthError("the Coinbase Ed25519 secret is inconsistent (its public half does not match)",
                            venue=VENUE)
    if not _TOKEN.match(name) or len(name) > 200:
        raise AuthError("the Coinbase API key id is malformed", venue=VENUE)
    if len(secret) != 88 and not secret.endswith("="):
        raise AuthError("the Coinbase Ed25519 secret must be the base64 text CDP issued", venue=VENUE)
    return CdpKey(name=name, secret=secret, algorithm="EdDSA")


# --------------------------------------------------------------------------------------------- ccxt client


class _Client(ccxt.coinbase):
    """ccxt's coinbase, letting `success: false` replies through and keeping each error's HTTP facts, and
    spending the rate budget of every request it sends (public market data and private endpoints apart)."""

    on_request: Any = None

    def fetch(self, url: str, method: str = "GET", headers: Any = None, body: Any = None) -> Any:
        if self.on_request is not None:
            # Coinbase limits public endpoints per IP (10/s) and private ones per key (30/s).
            public = "/brokerage/market/" in url or not (headers or {}).get("Authorization")
            self.on_request("public" if public else "private")
        return super().fetch(url, method, headers, body)

    def handle_errors(self, code: int, reason: str, url: str, method: str, headers: Any, body: str,
                      response: Any, request_headers: Any, request_body: Any) -> None:
        if code is not None and 200 <= code < 300 and isinstance(response, dict) and response.get("success") is False:
            return None  # an order refusal: the connector reads its error_response
        try:
            super().handle_errors(code, reason, url, method, headers, body, response, request_headers,
                                  request_body)
            if code is not None and code >= 400:
                self.handle_http_status_code(code, reason, url, method, body)
                raise ccxt.ExchangeError(f"{self.id} {method} {code} {reason}")
        except ccxt.BaseError as exc:
            exc.http_status = code
            exc.payload = response
            exc.retry_after = (headers or {}).get("Retry-After")
            raise
        return None


def _retry_after(value: Any) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, int(Decimal(str(value).strip()) * 1000) / 1000)  # delta-seconds
    except (InvalidOperation, ValueError, OverflowError):
        pass
    try:
        return max(0.0, (parsedate_to_datetime(str(value)) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


def _error_text(payload: Any) -> tuple[str, str]:
    """The venue's error code and message from any of Coinbase's error shapes."""
    if not isinstance(payload, dict):
        return "", ""
    inner = payload.get("error_response")
    if isinstance(inner, dict):
        # The most specific reason wins; the UNKNOWN_* placeholders say nothing.
        candidates = [inner.get("preview_failure_reason"), inner.get("new_order_failure_reason"), inner.get("error")]
        code = next((c for c in candidates if c and not str(c).startswith("UNKNOWN_")), inner.get("error") or "")
        return str(code), str(inner.get("message") or inner.get("error_details") or "")
    errors = payload.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        return str(errors[0].get("id") or ""), str(errors[0].get("message") or "")
    return str(payload.get("error") or ""), str(payload.get("message") or payload.get("error_details")
                                                 or payload.get("error_description") or "")


def _reason(exc: ccxt.BaseError) -> str:
    status = getattr(exc, "http_status", None)
    code, message = _error_text(getattr(exc, "payload", None))
    parts = [f"HTTP {status}" if status else type(exc).__name__]
    if code:
        parts.append(code)
    if message and message != code:
        parts.append(message[:200])
    return ": ".join(parts)


def translate(exc: ccxt.BaseError, *, action: str, context: str = "") -> VenueError:
    """Map a ccxt exception to our error classes; `action` is read, create, cancel, order or market."""
    status = getattr(exc, "http_status", None)
    reason = _reason(exc)
    what = f"coinbase {context or action}"
    ambiguous = action in ("create", "cancel")
    if status == 429 or isinstance(exc, (ccxt.RateLimitExceeded, ccxt.DDoSProtection)):
        retry_after = _retry_after(getattr(exc, "retry_after", None))
        after = f", retry after {retry_after:g}s" if retry_after is not None else ""
        return RateLimitError(f"{what}: rate limited ({reason}){after}", venue=VENUE, retry_after=retry_after)
    if isinstance(exc, ccxt.InvalidNonce):
        return AuthError(f"{what}: the venue refused the request time, check this machine's clock ({reason})",
                         venue=VENUE)
    if status in (401, 403) or isinstance(exc, (ccxt.AuthenticationError, ccxt.PermissionDenied,
                                                ccxt.AccountSuspended)):
        return AuthError(f"{what}: credentials refused ({reason})", venue=VENUE)
    if isinstance(exc, ccxt.InsufficientFunds):
        return InsufficientFundsError(f"{what}: insufficient funds ({reason})", venue=VENUE)
    if isinstance(exc, ccxt.OrderNotFound) or (status == 404 and action in ("order", "cancel")):
        return OrderNotFoundError(f"{what}: no such order ({reason})", venue=VENUE)
    if isinstance(exc, ccxt.BadSymbol) or (status == 404 and action == "market"):
        return MarketNotFoundError(f"{what}: unknown market ({reason})", venue=VENUE)
    if isinstance(exc, ccxt.NetworkError) or (status is not None and status >= 500) or status is None:
        if ambiguous:
            return OrderStatusUnknownError(f"{what}: outcome unknown ({reason}); ask by client order id before "
                                           "resending", venue=VENUE)
        return TemporaryError(f"{what}: venue unavailable ({reason})", venue=VENUE)
    if action == "create":
        return InvalidOrderError(f"{what}: order refused ({reason})", venue=VENUE)
    if action in ("read", "order", "market"):
        return TemporaryError(f"{what}: {reason}", venue=VENUE)
    return VenueError(f"{what}: {reason}", venue=VENUE)


# --------------------------------------------------------------------------------------------- helpers


def _dec(value: Any, default: Decimal | None = None) -> Decimal:
    """A Decimal from a wire string (never from a float)."""
    if value is None or value == "":
        if default is None:
            raise ValueError("missing number")
        return default
    if isinstance(value, float):
        raise ValueError("a float on the wire")  # Coinbase sends numbers as strings
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"not a number: {value!r}") from None
    if not number.is_finite():
        raise ValueError(f"not a finite number: {value!r}")
    return number


def _wire(value: Decimal) -> str:
    """A Decimal as the plain string Coinbase expects (no exponent, no trailing zeros)."""
    return format(value.normalize(), "f")


def _time(value: Any) -> datetime:
    """An aware UTC datetime from Coinbase's ISO 8601 text (nanoseconds trimmed) or epoch seconds."""
    if isinstance(value, str) and value and not value.isdigit():
        parsed = datetime.fromisoformat(_FRACTION.sub(r"\1", value.replace("Z", "+00:00")))
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return datetime.fromtimestamp(int(value), tz=UTC)


def _order_reason(raw: Mapping[str, Any]) -> str:
    """Why the venue refused or canceled an order: the first of its messages that is not a placeholder (every
    order carries reject_reason "REJECT_REASON_UNSPECIFIED", and empty messages, as recorded)."""
    for key in ("reject_message", "cancel_message", "reject_reason"):
        text = str(raw.get(key) or "")
        if text and text != "REJECT_REASON_UNSPECIFIED" and not text.startswith("UNKNOWN_"):
            return text
    return ""


def _configuration(raw: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    configuration = raw.get("order_configuration") or {}
    for kind, values in configuration.items():
        if isinstance(values, dict):
            return kind, values
    return "", {}


# --------------------------------------------------------------------------------------------- connector


@dataclass
class _Tables:
    """The spot products as markets, read at monotonic time `at`."""

    at: float
    markets: dict[str, Market] = field(default_factory=dict)  # symbol -> market
    ids: dict[str, str] = field(default_factory=dict)  # symbol -> product id
    symbols: dict[str, str] = field(default_factory=dict)  # product id -> symbol
    quote_steps: dict[str, Decimal] = field(default_factory=dict)  # symbol -> quote increment (market buy size)


class CoinbaseConnector(Connector):
    """The Connector interface on Coinbase Advanced Trade spot markets.

    Without a key (`key=None`, `build_public`) it reads public market data only (products, ticker, candles): every
    private call is refused with AuthError before anything is sent."""

    capabilities = CAPABILITIES
    meters_requests = True

    def __init__(self, *, key: CdpKey | None, base_url: str, timeout: float = DEFAULT_TIMEOUT,
                 account: str = "") -> None:
        self.key, self.base_url, self.account = key, base_url.rstrip("/"), account
        self.client = _Client({
            "apiKey": key.name if key is not None else "",
            "secret": key.secret if key is not None else "",
            "timeout": int(timeout * 1000),
            "enableRateLimit": False,  # the resilience wrapper owns rate limiting and retries
            "verbose": False,
            "options": {"maxRetriesOnFailure": 0, "adjustForTimeDifference": False},
        })
        self.client.urls["api"] = {"rest": self.base_url}
        self.client.on_request = self._metered
        self.client.logger = _WIRE_LOG
        self._lock = threading.Lock()
        self._markets: _Tables | None = None
        self._venue_ids: dict[str, str] = {}  # client order id -> venue order id, for orders this process sent
        self._requested: dict[str, Decimal] = {}  # venue order id -> base quantity asked, for quote-sized buys

    def __repr__(self) -> str:
        key = self.key.algorithm if self.key is not None else "none (public data only)"
        return f"CoinbaseConnector(base_url={self.base_url!r}, key={key}, account={self.account!r})"

    # ------------------------------------------------------------------ wire

    def _call(self, method: str, params: Mapping[str, Any] | None = None, *, action: str = "read",
              context: str = "") -> Any:
        if self.key is None and "Private" in method:  # ccxt's implicit names: v3Private... / v3Public...
            raise AuthError(f"coinbase {context or action}: this connector reads public market data only (no key)",
                            venue=VENUE)
        try:
            return getattr(self.client, method)(dict(params or {}))
        except ccxt.BaseError as exc:
            raise translate(exc, action=action, context=context) from exc

    @staticmethod
    def _dict(reply: Any, what: str, *, action: str = "read") -> dict[str, Any]:
        if not isinstance(reply, dict):
            if action in ("create", "cancel"):
                raise OrderStatusUnknownError(f"coinbase {what}: malformed reply; ask by client order id",
                                              venue=VENUE)
            raise TemporaryError(f"coinbase {what}: malformed reply", venue=VENUE)
        return reply

    # ------------------------------------------------------------------ markets

    def _market_tables(self) -> _Tables:
        with self._lock:
            cached = self._markets
            if cached is not None and time.monotonic() - cached.at < MARKETS_TTL:
                return cached
        reply = self._dict(self._call("v3PublicGetBrokerageMarketProducts", {"product_type": "SPOT"},
                                      context="products"), "products")
        products = reply.get("products")
        if not isinstance(products, list):
            raise TemporaryError("coinbase products: malformed reply (no product list)", venue=VENUE)
        maker, taker = self._fees()
        tables = _Tables(at=time.monotonic())
        for p in products:
            if not isinstance(p, dict) or (p.get("product_type") or "SPOT") != "SPOT" or p.get("trading_disabled") \
                    or p.get("is_disabled"):
                continue
            try:
                base, quote, product_id = str(p["base_currency_id"]), str(p["quote_currency_id"]), str(p["product_id"])
                market = Market(
                    symbol=f"{base}/{quote}", base=base, quote=quote,
                    tick_size=_dec(p.get("price_increment") or p.get("quote_increment")),
                    lot_size=_dec(p.get("base_increment")),
                    min_qty=_dec(p.get("base_min_size"), ZERO),
                    min_notional=_dec(p.get("quote_min_size"), ZERO),
                    maker_fee=maker, taker_fee=taker,
                )
                quote_step = _dec(p.get("quote_increment"))
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("coinbase product %s skipped: malformed (%s)", p.get("product_id"), exc)
                continue
            if min(market.tick_size, market.lot_size, quote_step) <= 0:
                log.warning("coinbase product %s skipped: non-positive increments", product_id)
                continue
            tables.markets[market.symbol] = market
            tables.ids[market.symbol] = product_id
            tables.symbols[product_id] = market.symbol
            tables.quote_steps[market.symbol] = quote_step
        with self._lock:
            self._markets = tables
        return tables

    def _fees(self) -> tuple[Decimal, Decimal]:
        if self.key is None:
            return DEFAULT_FEES  # public data only: no fee tier to ask for
        try:
            reply = self._call("v3PrivateGetBrokerageTransactionSummary", context="fee tier")
        except AuthError as exc:
            log.warning("coinbase fee tier unavailable, using the lowest tier's fees: %s", exc)
            return DEFAULT_FEES
        tier = reply.get("fee_tier") if isinstance(reply, dict) else None
        if not isinstance(tier, dict):
            return DEFAULT_FEES
        try:
            return _dec(tier.get("maker_fee_rate")), _dec(tier.get("taker_fee_rate"))
        except ValueError:
            return DEFAULT_FEES

    def markets(self) -> Sequence[Market]:
        return list(self._market_tables().markets.values())

    def market(self, symbol: str) -> Market:
        found = self._market_tables().markets.get(symbol)
        if found is None:
            raise MarketNotFoundError(f"coinbase has no spot market {symbol!r}", venue=VENUE)
        return found

    def _product_id(self, symbol: str) -> str:
        product_id = self._market_tables().ids.get(symbol)
        if product_id is None:
            raise MarketNotFoundError(f"coinbase has no spot market {symbol!r}", venue=VENUE)
        return product_id

    def _symbol(self, product_id: str) -> str:
        return self._market_tables().symbols.get(product_id) or product_id.replace("-", "/")

    # ------------------------------------------------------------------ account and prices

    def balances(self) -> Sequence[Balance]:
        totals: dict[str, tuple[Decimal, Decimal]] = {}
        cursor = ""
        for _ in range(100):
            params: dict[str, Any] = {"limit": PAGE_SIZE}
            if cursor:
                params["cursor"] = cursor
            reply = self._dict(self._call("v3PrivateGetBrokerageAccounts", params, context="accounts"), "accounts")
            try:
                for a in reply.get("accounts") or []:
                    free = _dec((a.get("available_balance") or {}).get("value"), ZERO)
                    hold = _dec((a.get("hold") or {}).get("value"), ZERO)
                    old_free, old_total = totals.get(a["currency"], (ZERO, ZERO))
                    totals[a["currency"]] = (old_free + free, old_total + free + hold)
            except (KeyError, TypeError, ValueError) as exc:
                raise TemporaryError(f"coinbase accounts: malformed reply ({exc})", venue=VENUE) from None
            cursor = reply.get("cursor") or ""
            if not reply.get("has_next") or not cursor:
                break
        return [Balance(asset=asset, free=free, total=total) for asset, (free, total) in sorted(totals.items())]

    def ticker(self, symbol: str) -> Ticker:
        product = self._product_id(symbol)
        reply = self._dict(self._call("v3PublicGetBrokerageMarketProductsProductIdTicker",
                                      {"product_id": product, "limit": 1}, action="market",
                                      context=f"ticker {symbol}"), f"ticker {symbol}")
        try:
            trades = reply.get("trades") or []
            if trades:
                return Ticker(symbol=symbol, price=_dec(trades[0]["price"]), time=_time(trades[0]["time"]))
            bid, ask = _dec(reply.get("best_bid"), ZERO), _dec(reply.get("best_ask"), ZERO)
        except (KeyError, TypeError, ValueError) as exc:
            raise TemporaryError(f"coinbase ticker {symbol}: malformed reply ({exc})", venue=VENUE) from None
        if bid <= 0 or ask <= 0:
            raise TemporaryError(f"coinbase ticker {symbol}: no trades and no quotes", venue=VENUE)
        return Ticker(symbol=symbol, price=(bid + ask) / 2, time=datetime.now(UTC))

    def candles(self, symbol: str, timeframe: str, *, since: datetime | None = None,
                limit: int = 300) -> Sequence[VenueCandle]:
        if timeframe not in TIMEFRAMES:
            raise VenueError(f"coinbase has no {timeframe} candles (it has {', '.join(TIMEFRAMES)})", venue=VENUE)
        granularity, seconds = TIMEFRAMES[timeframe]
        limit = max(1, min(limit, MAX_CANDLES - 1))
        now = int(time.time())
        if since is None:
            start = (now // seconds - limit + 1) * seconds
            end = now
        else:
            start = int(since.timestamp()) // seconds * seconds
            end = min(now, start + limit * seconds - 1)
        reply = self._dict(self._call("v3PublicGetBrokerageMarketProductsProductIdCandles", {
            "product_id": self._product_id(symbol), "granularity": granularity, "start": str(start),
            "end": str(end), "limit": limit,
        }, action="market", context=f"candles {symbol}"), f"candles {symbol}")
        try:
            found = [
                VenueCandle(open_time=_time(c["start"]), open=_dec(c["open"]), high=_dec(c["high"]),
                            low=_dec(c["low"]), close=_dec(c["close"]), volume=_dec(c["volume"]))
                for c in reply.get("candles") or []
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise TemporaryError(f"coinbase candles {symbol}: malformed reply ({exc})", venue=VENUE) from None
        found.sort(key=lambda c: c.open_time)  # Coinbase sends newest first
        return found[-limit:]

    def positions(self) -> Sequence[VenuePosition]:
        """Spot holds no positions: what an account holds is in balances()."""
        return []

    def set_leverage(self, symbol: str, leverage: Decimal) -> None:
        self.market(symbol)
        if leverage != 1:
            raise InvalidOrderError(f"coinbase spot trades without leverage (asked {leverage}x on {symbol})",
                                    venue=VENUE)

    # ------------------------------------------------------------------ orders

    def _order_body(self, request: OrderRequest, market: Market) -> dict[str, Any]:
        side = request.side.value.upper()
        qty = request.quantity
        if request.leverage is not None and request.leverage != 1:
            raise InvalidOrderError(f"coinbase spot trades without leverage (asked {request.leverage}x)",
                                    venue=VENUE)
        configuration: dict[str, dict[str, str | bool]]
        if request.type is OrderType.MARKET:
            if request.side is Side.SELL:
                configuration = {"market_market_ioc": {"base_size": _wire(qty)}}
            else:
                price = request.price if request.price is not None else self.ticker(request.symbol).price
                quote_step = self._market_tables().quote_steps[request.symbol]
                quote_size = round_down(qty * price, quote_step)
                if quote_size <= 0 or quote_size < market.min_notional:
                    raise InvalidOrderError(f"order value {quote_size} {market.quote} is below the minimum "
                                            f"{market.min_notional}", venue=VENUE)
                configuration = {"market_market_ioc": {"quote_size": _wire(quote_size)}}
        elif request.type is OrderType.LIMIT:
            assert request.price is not None  # Connector.create_order checked it
            if qty * request.price < market.min_notional:
                raise InvalidOrderError(f"order value {qty * request.price} {market.quote} is below the minimum "
                                        f"{market.min_notional}", venue=VENUE)
            configuration = {"limit_limit_gtc": {"base_size": _wire(qty), "limit_price": _wire(request.price),
                                                 "post_only": bool(request.post_only)}}
        else:
            trigger = request.trigger_price
            assert trigger is not None  # Connector.create_order checked it
            # Coinbase has stop-limit only: the limit goes through the trigger so it trades once triggered.
            if request.side is Side.SELL:
                limit = round_down(trigger * (1 - STOP_LIMIT_SLIPPAGE), market.tick_size)
            else:
                limit = round_up(trigger * (1 + STOP_LIMIT_SLIPPAGE), market.tick_size)
            falling = (request.side is Side.SELL) == (request.type is OrderType.STOP)
            configuration = {"stop_limit_stop_limit_gtc": {
                "base_size": _wire(qty), "limit_price": _wire(limit), "stop_price": _wire(trigger),
                "stop_direction": "STOP_DIRECTION_STOP_DOWN" if falling else "STOP_DIRECTION_STOP_UP",
            }}
        return {"client_order_id": request.client_order_id, "product_id": self._product_id(request.symbol),
                "side": side, "order_configuration": configuration}

    def _create_order(self, request: OrderRequest, market: Market) -> VenueOrder:
        body = self._order_body(request, market)
        reply = self._dict(self._call("v3PrivatePostBrokerageOrders", body, action="create",
                                      context=f"create order {request.client_order_id}"),
                           f"create order {request.client_order_id}", action="create")
        if reply.get("success") is False:
            raise self._refusal(reply, request.client_order_id)
        accepted = reply.get("success_response") or {}
        order_id = str(accepted.get("order_id") or reply.get("order_id") or "")
        if reply.get("success") is not True or not order_id:
            raise OrderStatusUnknownError(f"coinbase create order {request.client_order_id}: a reply that neither "
                                          "refuses nor names the order; ask by client order id", venue=VENUE)
        with self._lock:
            self._remember(request.client_order_id, order_id)
            if "quote_size" in body["order_configuration"].get("market_market_ioc", {}):
                self._requested[order_id] = request.quantity
        try:
            return self.fetch_order(request.symbol, order_id)
        except VenueError as exc:
            # Accepted: whatever the follow-up read says (status lag, a 5xx, even a credentials or clock error), the
            # venue holds the order; report it working with its id, never refused.
            log.info("coinbase order %s accepted, state not readable yet: %s", order_id, exc)
            return VenueOrder(
                client_order_id=request.client_order_id, venue_order_id=order_id, symbol=request.symbol,
                side=request.side, type=request.type, status=VenueOrderStatus.OPEN, quantity=request.quantity,
                price=request.price if request.type is OrderType.LIMIT else None,
                trigger_price=request.trigger_price, reduce_only=request.reduce_only,
            )

    def _remember(self, client_order_id: str, venue_order_id: str) -> None:
        """Keep a client id's venue id (caller holds the lock); the oldest are forgotten past the cap."""
        self._venue_ids.pop(client_order_id, None)
        self._venue_ids[client_order_id] = venue_order_id
        while len(self._venue_ids) > REMEMBERED_ORDERS:
            del self._venue_ids[next(iter(self._venue_ids))]

    @staticmethod
    def _refusal(reply: Mapping[str, Any], client_order_id: str) -> VenueError:
        code, message = _error_text(reply)
        code = code or str(reply.get("failure_reason") or "UNKNOWN_FAILURE_REASON")
        text = f"coinbase refused order {client_order_id}: {code}" + (f" ({message})" if message else "")
        if "INSUFFICIENT_FUND" in code:
            return InsufficientFundsError(text, venue=VENUE)
        if code in ("INVALID_PRODUCT_ID", "UNKNOWN_PRODUCT"):
            return MarketNotFoundError(text, venue=VENUE)
        if code in ("PERMISSION_DENIED", "UNAUTHORIZED"):
            return AuthError(text, venue=VENUE)
        return InvalidOrderError(text, venue=VENUE)

    def cancel_order(self, symbol: str, venue_order_id: str) -> VenueOrder:
        reply = self._dict(self._call("v3PrivatePostBrokerageOrdersBatchCancel", {"order_ids": [venue_order_id]},
                                      action="cancel", context=f"cancel order {venue_order_id}"),
                           f"cancel order {venue_order_id}", action="cancel")
        results = reply.get("results") or [{}]
        result = results[0] if isinstance(results[0], dict) else {}
        order = self.fetch_order(symbol, venue_order_id)  # OrderNotFoundError when the venue never had it
        if result.get("success") is True or order.status.is_final:
            # A cancel that lost the race to a fill comes back as the filled order, not as an error.
            return order
        reason = result.get("failure_reason") or "UNKNOWN_CANCEL_FAILURE_REASON"
        raise VenueError(f"coinbase did not cancel order {venue_order_id}: {reason}", venue=VENUE)

    def fetch_order(self, symbol: str, venue_order_id: str) -> VenueOrder:
        reply = self._dict(self._call("v3PrivateGetBrokerageOrdersHistoricalOrderId", {"order_id": venue_order_id},
                                      action="order", context=f"order {venue_order_id}"), f"order {venue_order_id}")
        raw = reply.get("order")
        if not isinstance(raw, dict):
            raise OrderNotFoundError(f"coinbase order {venue_order_id}: not found", venue=VENUE)
        return self._parse_order(raw)

    def fetch_order_by_client_id(self, symbol: str, client_order_id: str) -> VenueOrder | None:
        with self._lock:
            known = self._venue_ids.get(client_order_id)
        if known:
            try:
                return self.fetch_order(symbol, known)
            except OrderNotFoundError:
                pass
        # Coinbase lists orders newest first and cannot filter by client order id: search this market's newest.
        cursor = ""
        for _ in range(CLIENT_ID_SEARCH_PAGES):
            params: dict[str, Any] = {"product_ids": [self._product_id(symbol)], "limit": PAGE_SIZE}
            if cursor:
                params["cursor"] = cursor
            reply = self._dict(self._call("v3PrivateGetBrokerageOrdersHistoricalBatch", params,
                                          context=f"orders of {symbol}"), f"orders of {symbol}")
            for raw in reply.get("orders") or []:
                if isinstance(raw, dict) and raw.get("client_order_id") == client_order_id:
                    with self._lock:
                        self._remember(client_order_id, str(raw["order_id"]))
                    return self._parse_order(raw)
            cursor = reply.get("cursor") or ""
            if not reply.get("has_next") or not cursor:
                return None
        log.warning("coinbase client order id %s not among the newest %d orders of %s", client_order_id,
                    CLIENT_ID_SEARCH_PAGES * PAGE_SIZE, symbol)
        return None

    def open_orders(self, symbol: str | None = None) -> Sequence[VenueOrder]:
        found: list[VenueOrder] = []
        cursor = ""
        for _ in range(100):
            params: dict[str, Any] = {"order_status": ["OPEN"], "limit": PAGE_SIZE}
            if symbol is not None:
                params["product_ids"] = [self._product_id(symbol)]
            if cursor:
                params["cursor"] = cursor
            reply = self._dict(self._call("v3PrivateGetBrokerageOrdersHistoricalBatch", params,
                                          context="open orders"), "open orders")
            found.extend(self._parse_order(raw) for raw in reply.get("orders") or [] if isinstance(raw, dict))
            cursor = reply.get("cursor") or ""
            if not reply.get("has_next") or not cursor:
                break
        return [o for o in found if not o.status.is_final]

    def _fills(self, order_id: str) -> list[dict[str, Any]]:
        fills: list[dict[str, Any]] = []
        cursor = ""
        for _ in range(100):
            params: dict[str, Any] = {"order_ids": [order_id], "limit": PAGE_SIZE}
            if cursor:
                params["cursor"] = cursor
            reply = self._dict(self._call("v3PrivateGetBrokerageOrdersHistoricalFills", params,
                                          context=f"fills of {order_id}"), f"fills of {order_id}")
            fills.extend(f for f in reply.get("fills") or [] if isinstance(f, dict))
            cursor = reply.get("cursor") or ""
            if not cursor:
                break
        return fills

    def _parse_order(self, raw: Mapping[str, Any]) -> VenueOrder:
        order_id = str(raw.get("order_id") or "")
        try:
            return self._parse_order_fields(raw, order_id)
        except (KeyError, TypeError, ValueError) as exc:
            raise TemporaryError(f"coinbase order {order_id}: malformed reply ({exc})", venue=VENUE) from None

    def _parse_order_fields(self, raw: Mapping[str, Any], order_id: str) -> VenueOrder:
        symbol = self._symbol(str(raw["product_id"]))
        side = Side.BUY if raw["side"] == "BUY" else Side.SELL
        kind, config = _configuration(raw)
        if kind.startswith("stop_limit"):
            falling = config.get("stop_direction") == "STOP_DIRECTION_STOP_DOWN"
            type_ = OrderType.STOP if falling == (side is Side.SELL) else OrderType.TAKE_PROFIT
        elif kind.startswith("market") or raw.get("order_type") == "MARKET":
            type_ = OrderType.MARKET
        else:
            type_ = OrderType.LIMIT
        status = _STATUS.get(str(raw.get("status")), VenueOrderStatus.OPEN)
        filled_size = _dec(raw.get("filled_size"), ZERO)
        fills: list[VenueFill] = []
        if filled_size > 0:
            market = self._market_tables().markets.get(symbol)
            fills = self._parse_fills(self._fills(order_id), raw, filled_size,
                                      fee_currency=market.quote if market else symbol.split("/")[-1],
                                      lot=market.lot_size if market else Decimal("1e-8"))
        filled = sum((f.quantity for f in fills), ZERO)
        # A filled order has no refusal or cancel reason, whatever text it carries (a filled market buy can come with
        # cancel_message "Internal error", as ccxt quotes one).
        reason = "" if status is VenueOrderStatus.FILLED else _order_reason(raw)
        if filled < filled_size and status.is_final:
            # The fills list lags the order: keep the order working until every fill is readable.
            status, reason = VenueOrderStatus.PARTIALLY_FILLED, "fills still arriving"
        elif status is VenueOrderStatus.OPEN and filled > 0:
            status = VenueOrderStatus.PARTIALLY_FILLED
        if "base_size" in config:
            quantity = _dec(config["base_size"])
        elif status.is_final:
            quantity = filled
            with self._lock:
                self._requested.pop(order_id, None)
        else:
            with self._lock:
                quantity = self._requested.get(order_id, filled)
        return VenueOrder(
            client_order_id=str(raw.get("client_order_id") or ""),
            venue_order_id=order_id,
            symbol=symbol,
            side=side,
            type=type_,
            status=status,
            quantity=quantity,
            filled_quantity=filled,
            price=_dec(config["limit_price"]) if config.get("limit_price") else None,
            trigger_price=_dec(config["stop_price"]) if config.get("stop_price") else None,
            fills=tuple(fills),
            reason=reason,
        )

    @staticmethod
    def _parse_fills(rows: Sequence[Mapping[str, Any]], raw: Mapping[str, Any], filled_size: Decimal, *,
                     fee_currency: str, lot: Decimal) -> list[VenueFill]:
        """An order's fills, oldest first. A fill sized in quote (`size_in_quote`) is converted to base, floored to
        the lot; once every fill is readable (as many as the order's number_of_fills), the last one takes what the
        flooring left over, so the fills add up to the order's filled_size (the venue's own base amount) exactly."""
        fills: list[VenueFill] = []
        in_quote = False
        for f in rows:
            price = _dec(f["price"])
            qty = _dec(f["size"])
            if f.get("size_in_quote"):
                in_quote = True
                qty = (qty / price).quantize(lot, rounding=ROUND_DOWN)  # never more than the venue filled
            fills.append(VenueFill(
                fill_id=str(f.get("trade_id") or f.get("entry_id")), quantity=qty, price=price,
                fee=_dec(f.get("commission"), ZERO), fee_currency=fee_currency, time=_time(f["trade_time"]),
                liquidity="maker" if f.get("liquidity_indicator") == "MAKER" else "taker",
            ))
        fills.sort(key=lambda x: (x.time, x.fill_id))
        expected = raw.get("number_of_fills")
        complete = expected not in (None, "") and len(fills) >= int(str(expected))
        if in_quote and complete and fills:
            rest = filled_size - sum((f.quantity for f in fills[:-1]), ZERO)
            if rest > 0:
                fills[-1] = replace(fills[-1], quantity=rest)
        return fills

    # ------------------------------------------------------------------ checks

    def verify(self) -> Sequence[CheckItem]:
        """Key format, server clock, signature and permissions (a key that can transfer funds is refused)."""
        if self.key is None:
            return [CheckItem("key format", False, "no key: this connector reads public market data only")]
        kind = "CDP key, EC P-256 PEM (ES256)" if self.key.algorithm == "ES256" else "CDP key, Ed25519 (EdDSA)"
        items = [CheckItem("key format", True, kind)]
        try:
            reply = self._dict(self._call("v3PublicGetBrokerageTime", context="server time"), "server time")
            skew = int(_dec(reply.get("epochSeconds"))) - time.time()
        except (VenueError, ValueError) as exc:
            items.append(CheckItem("server time", False, f"{type(exc).__name__}: {exc}"))
        else:
            ok = abs(skew) <= MAX_CLOCK_SKEW
            items.append(CheckItem("server time", ok, f"clock off by {skew:+.1f} s" + (
                "" if ok else f" (more than {MAX_CLOCK_SKEW:g} s: signed requests will be refused)")))
        try:
            permissions = self._dict(self._call("v3PrivateGetBrokerageKeyPermissions", context="key permissions"),
                                     "key permissions")
        except VenueError as exc:
            items.append(CheckItem("signature accepted", False, f"{type(exc).__name__}: {exc}"))
            return items
        items.append(CheckItem("signature accepted", True, "key permissions read with a signed request"))
        problems = []
        if permissions.get("can_transfer") is not False:
            problems.append("the key can transfer funds: create a key with view and trade only")
        if permissions.get("can_trade") is not True:
            problems.append("the key cannot trade")
        if permissions.get("can_view") is not True:
            problems.append("the key cannot view the account")
        portfolio = permissions.get("portfolio_type") or "unknown"
        items.append(CheckItem("permissions", not problems,
                               "; ".join(problems) if problems else f"view and trade, no transfer ({portfolio} "
                                                                    "portfolio)"))
        return items


def _timeout(credentials: Mapping[str, str]) -> float:
    text = (credentials.get("timeout") or "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = int(Decimal(text) * 1000) / 1000
    except (InvalidOperation, ValueError):
        raise VenueError(f"<PREFIX>_TIMEOUT must be a number of seconds, not {text!r}", venue=VENUE) from None
    if not 0 < value <= 120:
        raise VenueError("<PREFIX>_TIMEOUT must be between 0 and 120 seconds", venue=VENUE)
    return value


def build(config: VenueConfig) -> Connector:
    """Build the Coinbase connector; raise AuthError for missing or malformed credentials."""
    if config.network == "testnet" and not config.endpoint:
        raise VenueError(
            "Coinbase Advanced Trade has no test network (its sandbox only returns static canned replies): use "
            "network=mainnet with a small view+trade key, or set <PREFIX>_ENDPOINT to a stand-in", venue=VENUE)
    if config.network not in ("testnet", "mainnet"):
        raise VenueError(f"unknown network {config.network!r}", venue=VENUE)
    key = parse_key(config.credentials)
    return CoinbaseConnector(key=key, base_url=config.endpoint or MAINNET_URL, timeout=_timeout(config.credentials),
                             account=config.account)


def build_public(config: VenueConfig) -> Connector:
    """Build a connector for public market data (products, tickers, candles): no credentials, no private call."""
    if config.network not in ("testnet", "mainnet"):
        raise VenueError(f"unknown network {config.network!r}", venue=VENUE)
    if config.network == "testnet" and not config.endpoint:
        raise VenueError("Coinbase Advanced Trade has no test network: its market data is mainnet's", venue=VENUE)
    return CoinbaseConnector(key=None, base_url=config.endpoint or MAINNET_URL, timeout=_timeout(config.credentials),
                             account=config.account)

