"""A loopback Coinbase Advanced Trade (REST v3) that speaks the real wire format and checks each request's JWT.

`CoinbaseFake` serves the endpoints our connector calls (public products, ticker, candles and time; accounts,
orders, batch cancel, historical orders and fills, transaction summary, key permissions) with Coinbase's reply
shapes (numbers as strings, `success: false` + `error_response` in a 200 for order refusals, 401 "Unauthorized"
for a bad JWT). Every private request must carry `Authorization: Bearer <JWT>` signed by a registered test key:
ES256 (CDP key, P-256) or EdDSA (Ed25519), with the right issuer, audience, subject, expiry and `uri` claim.

The matching engine trades each product against one settable price: market orders fill at it (IOC), limits rest
until the price reaches them, stop-limits trigger on their direction; client order ids are idempotent (the same id
again returns the existing order), and knobs add partial fills, status lag and forced refusals.

Wire shapes, compared field by field with the replies in tests/fixtures/venues/coinbase (README there): products
carry every field of the recorded spot products (full `base_name`/`quote_name`, `approximate_quote_24h_volume`,
`new_at`); orders every field of the recorded and quoted ones, with the venue's placeholders where it sends them
(`reject_reason` "REJECT_REASON_UNSPECIFIED", `margin_type` "UNKNOWN_MARGIN_TYPE", `fee` "", `edit_history` [],
a `cursor` on each listed order) and, as knobs, a `cancel_message` on canceled orders and
`filled_market_cancel_message` on filled market orders (ccxt quotes "Internal error" on one); fills the recorded
fields (a 64-hex `entry_id`, a `cursor` on each), reported in quote with `report_fills_in_quote`; balances written
with 16 decimals as quoted ("0.0000000000000000"). Left different: timestamps have microseconds (the venue writes
milliseconds to nanoseconds), ids are fake, `completion_percentage` has no fixed decimals, and the fee tier is the
fake's own (no recording of transaction_summary was found).

Order faults (`order_faults`, tests/fakes/faults.py), in the shapes ccxt's coinbase.py records for the venue:
refuse is `success: false` with an `error_response` (INSUFFICIENT_FUND, "Insufficient balance in source account",
preview PREVIEW_INSUFFICIENT_FUND); cancel is a created order that ends CANCELLED with `filled_size` "0"; partial is an
IOC that fills half and ends CANCELLED; expire is a created order the create's own read still sees OPEN (the venue
works orders after acknowledging them) and every later read sees EXPIRED, nothing filled; drop works the order and
closes the connection unanswered.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, UTC
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from exchanges.base import OrderType, Side
from tests.fakes.faults import FakeHTTPServer, OrderFault, Reply, Request, WireOrder, _Handler
from tests.fakes.venues import VenueHarness

API = "/api/v3/brokerage/"
ZERO = Decimal("0")
MAKER_FEE = Decimal("0.004")
TAKER_FEE = Decimal("0.006")


def fmt(value: Decimal) -> str:
    """A Decimal the way Coinbase writes numbers: a plain string."""
    return format(value.normalize(), "f") if value else "0"


def fmt_balance(value: Decimal) -> str:
    """A balance as the accounts endpoint writes it: 16 decimals ("0.0000000000000000"), more only when needed."""
    return format(value if -value.as_tuple().exponent > 16 else value.quantize(Decimal("1e-16")), "f")  # type: ignore[operator]


NAMES = {"BTC": "Bitcoin", "ETH": "Ethereum", "XLM": "Stellar", "USD": "US Dollar", "USDC": "USDC", "USDT": "Tether"}


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _steps(value: Decimal, step: Decimal) -> bool:
    """Whether value is a whole multiple of step."""
    return (value / step) == (value / step).to_integral_value()


def product(product_id: str, *, base_increment: str, price_increment: str, quote_increment: str,
            base_min_size: str, quote_min_size: str) -> dict[str, Any]:
    """A product in the shape of GET /api/v3/brokerage/market/products."""
    base, quote = product_id.split("-")
    return {
        "product_id": product_id, "price": "", "price_percentage_change_24h": "0", "volume_24h": "0",
        "volume_percentage_change_24h": "0", "base_increment": base_increment, "quote_increment": quote_increment,
        "quote_min_size": quote_min_size, "quote_max_size": "150000000", "base_min_size": base_min_size,
        "base_max_size": "3400", "base_name": NAMES.get(base, base), "quote_name": NAMES.get(quote, quote),
        "watched": False, "is_disabled": False,
        "new": False, "status": "online", "cancel_only": False, "limit_only": False, "post_only": False,
        "trading_disabled": False, "auction_mode": False, "product_type": "SPOT", "quote_currency_id": quote,
        "base_currency_id": base, "fcm_trading_session_details": None, "mid_market_price": "", "alias": "",
        "alias_to": [], "base_display_symbol": base, "quote_display_symbol": quote, "view_only": False,
        "price_increment": price_increment, "display_name": product_id, "product_venue": "CBE",
        "approximate_quote_24h_volume": "0", "new_at": "2023-01-01T00:00:00Z",
    }


DEFAULT_PRODUCTS = {
    "BTC-USD": product("BTC-USD", base_increment="0.00000001", price_increment="0.01", quote_increment="0.01",
                       base_min_size="0.00000001", quote_min_size="1"),
    "ETH-USD": product("ETH-USD", base_increment="0.00000001", price_increment="0.01", quote_increment="0.01",
                       base_min_size="0.00000001", quote_min_size="1"),
    # a market with a tiny tick: prices such as 0.00000271 must survive the round trip exactly
    "XLM-BTC": product("XLM-BTC", base_increment="1", price_increment="0.00000001", quote_increment="0.00000001",
                       base_min_size="1", quote_min_size="0.00001"),
}
DEFAULT_PRICES = {"BTC-USD": Decimal("50000"), "ETH-USD": Decimal("2500"), "XLM-BTC": Decimal("0.00000271")}


class _NoDelayHandler(_Handler):
    """Replies leave at once: without TCP_NODELAY each keep-alive request waits ~40 ms on delayed ACKs."""

    disable_nagle_algorithm = True


@dataclass
class _Key:
    public: Any  # EllipticCurvePublicKey or Ed25519PublicKey
    algorithm: str
    permissions: dict[str, Any]


@dataclass
class _Fill:
    trade_id: str
    price: Decimal
    size: Decimal
    commission: Decimal
    liquidity: str
    time: datetime


@dataclass
class _Order:
    order_id: str
    client_order_id: str
    product_id: str
    side: str  # BUY | SELL
    kind: str  # market_market_ioc | limit_limit_gtc | stop_limit_stop_limit_gtc
    config: dict[str, Any]
    created: datetime
    size: Decimal | None  # base size; None for a quote-sized market buy
    quote_size: Decimal | None
    limit: Decimal | None
    stop: Decimal | None
    direction: str
    post_only: bool
    status: str = "OPEN"
    triggered: bool = False
    cap: Decimal | None = None  # partial fill: how much may fill the first time the order trades
    expire_reads: int | None = None  # planned expiry: reads that still see it OPEN before the venue expires it
    fills: list[_Fill] = field(default_factory=list)

    @property
    def filled(self) -> Decimal:
        return sum((f.size for f in self.fills), ZERO)

    @property
    def final(self) -> bool:
        return self.status in ("FILLED", "CANCELLED", "EXPIRED", "FAILED")


class CoinbaseFake(FakeHTTPServer):
    """Coinbase Advanced Trade on 127.0.0.1: JWT-checked, with a small matching engine and a fault plan."""

    def __init__(self) -> None:
        super().__init__()
        self.RequestHandlerClass = _NoDelayHandler
        self.lock = threading.RLock()
        self.keys: dict[str, _Key] = {}
        self.products: dict[str, dict[str, Any]] = {k: dict(v) for k, v in DEFAULT_PRODUCTS.items()}
        self.prices: dict[str, Decimal] = dict(DEFAULT_PRICES)
        self.balances: dict[str, Decimal] = {}
        self.orders: dict[str, _Order] = {}
        self.by_client: dict[str, str] = {}
        self.candle_rows: dict[str, list[dict[str, str]]] = {}  # product -> candles in the wire shape
        self.clock_offset = 0.0  # seconds the venue's clock runs ahead of ours
        self.auth_failures: list[str] = []
        self._quote_pieces = 0
        self.cancel_message = ""  # the venue's cancel_message on the orders it cancels (empty, as recorded)
        # The cancel_message of filled market orders: empty as recorded, but ccxt quotes a FILLED quote-sized market
        # buy carrying "Internal error" (ccxt coinbase.py, fetch_orders).
        self.filled_market_cancel_message = ""
        self._partials: list[Decimal] = []
        self._lag = 0
        self._rejections: list[dict[str, str]] = []

    def serve_forever(self, poll_interval: float = 0.05) -> None:
        """Serve, checking for shutdown every 50 ms (the default 0.5 s would slow every test's teardown)."""
        super().serve_forever(poll_interval)

    # ------------------------------------------------------------------ knobs

    def now(self) -> datetime:
        return datetime.fromtimestamp(time.time() + self.clock_offset, tz=UTC)

    def add_key(self, algorithm: str = "ES256", *, can_view: bool = True, can_trade: bool = True,
                can_transfer: bool = False, register: bool = True) -> dict[str, str]:
        """Make a CDP key, register its public half (unless told not to) and return the connector's credentials."""
        if algorithm == "ES256":
            private = ec.generate_private_key(ec.SECP256R1())
            name = f"organizations/{uuid.uuid4()}/apiKeys/{uuid.uuid4()}"
            secret = private.private_bytes(Encoding.PEM, PrivateFormat.TraditionalOpenSSL, NoEncryption()).decode()
            public: Any = private.public_key()
        else:
            signing = ed25519.Ed25519PrivateKey.generate()
            seed = signing.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
            public = signing.public_key()
            secret = base64.b64encode(seed + public.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
            name = str(uuid.uuid4())
        if register:
            self.keys[name] = _Key(public, algorithm, {
                "can_view": can_view, "can_trade": can_trade, "can_transfer": can_transfer,
                "portfolio_uuid": str(uuid.uuid4()), "portfolio_type": "DEFAULT",
            })
        return {"api_key": name, "api_secret": secret}

    def fund(self, currency: str, amount: Decimal | str) -> None:
        with self.lock:
            self.balances[currency] = Decimal(amount)

    def set_price(self, symbol: str, price: Decimal) -> None:
        """Move a market (BTC/USD or BTC-USD); resting and stop orders react before this returns."""
        product_id = symbol.replace("/", "-")
        with self.lock:
            self.prices[product_id] = Decimal(price)
            for order in list(self.orders.values()):
                if order.product_id == product_id and not order.final and order.expire_reads is None:
                    self._work(order, placing=False)

    def report_fills_in_quote(self, pieces: int) -> None:
        """Report each fill of a quote-sized market order as `pieces` fills sized in quote (`size_in_quote`), as
        the venue may: their base amounts are not multiples of the lot, only their sum (the order's filled_size)."""
        self._quote_pieces = pieces

    def partial_fills(self, count: int, fraction: Decimal) -> None:
        """The next `count` orders fill only `fraction` of their size when they first trade."""
        with self.lock:
            self._partials.extend([Decimal(fraction)] * count)

    def lag(self, reads: int) -> None:
        """The next `reads` GETs of one order answer 404, as right after a create on the real venue."""
        with self.lock:
            self._lag = reads

    def reject_next(self, error: str, message: str = "", *, preview: str = "", new_order: str = "") -> None:
        """Refuse the next create with this error_response."""
        with self.lock:
            self._rejections.append({"error": error, "message": message, "error_details": "",
                                     "preview_failure_reason": preview, "new_order_failure_reason": new_order})

    def created_client_ids(self) -> list[str]:
        """Client order ids of every order the venue created, oldest first (one entry per venue order)."""
        with self.lock:
            return [o.client_order_id for o in sorted(self.orders.values(), key=lambda o: o.created)]

    def order_bodies(self) -> list[dict[str, Any]]:
        """Bodies of every POST /orders received, in order."""
        return [r.json() for r in self.requests(lambda r: r.method == "POST" and r.path == API + "orders")]

    # ------------------------------------------------------------------ auth

    def _authenticate(self, request: Request, path: str) -> str | None:
        """Return the key name of a valid JWT, or None (the reason goes to auth_failures)."""
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer "):
            return self._refuse("no bearer token")
        try:
            head_b64, claims_b64, signature_b64 = header[len("Bearer "):].split(".")
            head = json.loads(_b64url(head_b64))
            claims = json.loads(_b64url(claims_b64))
            signature = _b64url(signature_b64)
        except (ValueError, json.JSONDecodeError):
            return self._refuse("malformed token")
        key = self.keys.get(head.get("kid", ""))
        if key is None:
            return self._refuse("unknown key")
        signed = f"{head_b64}.{claims_b64}".encode()
        try:
            if head.get("alg") == "ES256" and key.algorithm == "ES256" and len(signature) == 64:
                der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
                key.public.verify(der, signed, ec.ECDSA(hashes.SHA256()))
                issuer, audience, uris = "coinbase-cloud", "retail_rest_api_proxy", [claims.get("uri")]
            elif head.get("alg") == "EdDSA" and key.algorithm == "EdDSA":
                key.public.verify(signature, signed)
                issuer, audience, uris = "cdp", "cdp_service", list(claims.get("uris") or [])
            else:
                return self._refuse("wrong algorithm")
        except InvalidSignature:
            return self._refuse("bad signature")
        now = time.time() + self.clock_offset
        if claims.get("iss") != issuer or audience not in (claims.get("aud") or []):
            return self._refuse("wrong issuer or audience")
        if claims.get("sub") != head.get("kid"):
            return self._refuse("subject is not the key")
        if not (claims.get("nbf", now + 1e9) <= now + 5 and now < claims.get("exp", 0) <= claims["nbf"] + 120):
            return self._refuse("expired or not yet valid")
        host = request.headers.get("host", "")
        # Coinbase signs "METHOD host/path"; ccxt keeps the scheme of a plain-http base URL ("GET http://host/path").
        expected = {f"{request.method} {host}{path}", f"{request.method} http://{host}{path}"}
        if not uris or uris[0] not in expected:
            return self._refuse(f"uri claim {uris[:1]} does not match {request.method} {path}")
        return str(head["kid"])

    def _refuse(self, why: str) -> None:
        self.auth_failures.append(why)
        return None

    # ------------------------------------------------------------------ routing

    def route(self, request: Request) -> Reply:
        parts = urlsplit(request.path)
        path, query = parts.path, parse_qs(parts.query)
        if not path.startswith(API):
            return Reply(404, {"error": "NOT_FOUND", "message": "Not Found"})
        resource = path[len(API):]
        with self.lock:
            if resource == "time":
                now = self.now()
                return Reply(200, {"iso": _iso(now), "epochSeconds": str(int(now.timestamp())),
                                   "epochMillis": str(int(now.timestamp() * 1000))})
            if resource.startswith("market/"):
                return self._public(resource[len("market/"):], query)
            kid = self._authenticate(request, path)
            if kid is None:
                return Reply(401, b"Unauthorized\n", {"Content-Type": "text/plain; charset=utf-8"})
            return self._private(request, resource, query, kid)

    def _public(self, resource: str, query: dict[str, list[str]]) -> Reply:
        if resource == "products":
            if query.get("product_type", ["SPOT"])[0] != "SPOT":
                return Reply(200, {"products": [], "num_products": 0})
            products = [dict(p, price=fmt(self.prices[k])) for k, p in self.products.items()]
            return Reply(200, {"products": products, "num_products": len(products)})
        segments = resource.split("/")
        if segments[0] != "products" or len(segments) < 2:
            return Reply(404, {"error": "NOT_FOUND", "message": "Not Found"})
        product_id = segments[1]
        if product_id not in self.products:
            return Reply(404, {"error": "NOT_FOUND", "error_details": "ProductID is invalid",
                               "message": "ProductID is invalid"})
        if len(segments) == 2:
            return Reply(200, dict(self.products[product_id], price=fmt(self.prices[product_id])))
        if segments[2] == "ticker":
            return Reply(200, self._ticker(product_id))
        if segments[2] == "candles":
            return self._candles(product_id, query)
        return Reply(404, {"error": "NOT_FOUND", "message": "Not Found"})

    def _ticker(self, product_id: str) -> dict[str, Any]:
        price = self.prices[product_id]
        tick = Decimal(self.products[product_id]["price_increment"])
        return {
            "trades": [{"trade_id": str(int(time.time() * 1000)), "product_id": product_id, "price": fmt(price),
                        "size": "0.01", "time": _iso(self.now()), "side": "BUY", "bid": "", "ask": "",
                        "exchange": "CBE"}],
            "best_bid": fmt(price - tick), "best_ask": fmt(price + tick),
        }

    def _candles(self, product_id: str, query: dict[str, list[str]]) -> Reply:
        seconds = {"ONE_MINUTE": 60, "FIVE_MINUTE": 300, "FIFTEEN_MINUTE": 900, "THIRTY_MINUTE": 1800,
                   "ONE_HOUR": 3600, "TWO_HOUR": 7200, "SIX_HOUR": 21600, "ONE_DAY": 86400}
        granularity = query.get("granularity", [""])[0]
        try:
            start, end = int(query["start"][0]), int(query["end"][0])
        except (KeyError, ValueError):
            return Reply(400, {"error": "INVALID_ARGUMENT", "error_details": "start and end are required",
                               "message": "start and end are required"})
        if granularity not in seconds:
            return Reply(400, {"error": "INVALID_ARGUMENT", "error_details": "invalid granularity",
                               "message": "invalid granularity"})
        step = seconds[granularity]
        if (end - start) // step >= 350:
            return Reply(400, {"error": "INVALID_ARGUMENT", "message": "number of candles requested should be "
                               "less than 350", "error_details": "number of candles requested should be less than 350"})
        rows = self.candle_rows.get(product_id)
        if rows is None:
            price = fmt(self.prices[product_id])
            first = start // step * step
            rows = [{"start": str(t), "low": price, "high": price, "open": price, "close": price, "volume": "0"}
                    for t in range(first, end + 1, step)]
        chosen = [r for r in rows if start <= int(r["start"]) <= end]
        chosen.sort(key=lambda r: int(r["start"]), reverse=True)
        return Reply(200, {"candles": chosen})

    def _private(self, request: Request, resource: str, query: dict[str, list[str]], kid: str) -> Reply:
        if request.method == "GET" and resource == "accounts":
            return self._accounts(query)
        if request.method == "GET" and resource == "key_permissions":
            return Reply(200, self.keys[kid].permissions)
        if request.method == "GET" and resource == "transaction_summary":
            return Reply(200, {"total_volume": 0, "total_fees": 0, "fee_tier": {
                "pricing_tier": "Advanced 1", "usd_from": "0", "usd_to": "10000",
                "taker_fee_rate": fmt(TAKER_FEE), "maker_fee_rate": fmt(MAKER_FEE)}, "margin_rate": None,
                "goods_and_services_tax": None, "advanced_trade_only_volume": 0, "advanced_trade_only_fees": 0,
                "coinbase_pro_volume": 0, "coinbase_pro_fees": 0})
        if request.method == "GET" and resource == "best_bid_ask":
            books = []
            for product_id in query.get("product_ids", list(self.products)):
                if product_id in self.products:
                    t = self._ticker(product_id)
                    books.append({"product_id": product_id, "bids": [{"price": t["best_bid"], "size": "1"}],
                                  "asks": [{"price": t["best_ask"], "size": "1"}], "time": _iso(self.now())})
            return Reply(200, {"pricebooks": books})
        if request.method == "POST" and resource == "orders":
            return self._create(request)
        if request.method == "POST" and resource == "orders/batch_cancel":
            return self._cancel(request)
        if request.method == "GET" and resource == "orders/historical/batch":
            return self._list(query)
        if request.method == "GET" and resource == "orders/historical/fills":
            return self._fills(query)
        if request.method == "GET" and resource.startswith("orders/historical/"):
            order = self.orders.get(resource[len("orders/historical/"):])
            if self._lag > 0:
                self._lag -= 1
                order = None
            if order is None:
                return Reply(404, {"error": "NOT_FOUND", "error_details": "order with this orderID was not found",
                                   "message": "order with this orderID was not found"})
            self._aged(order)
            return Reply(200, {"order": self._wire(order)})
        return Reply(404, {"error": "NOT_FOUND", "message": "Not Found"})

    # ------------------------------------------------------------------ accounts

    def _held(self, currency: str) -> Decimal:
        held = ZERO
        for o in self.orders.values():
            if o.final or o.kind == "market_market_ioc" or o.size is None or o.limit is None:
                continue
            base, quote = o.product_id.split("-")
            rest = o.size - o.filled
            if o.side == "SELL" and currency == base:
                held += rest
            elif o.side == "BUY" and currency == quote:
                held += rest * o.limit * (1 + MAKER_FEE)
        return held

    def available(self, currency: str) -> Decimal:
        with self.lock:
            return self.balances.get(currency, ZERO) - self._held(currency)

    def _accounts(self, query: dict[str, list[str]]) -> Reply:
        limit = int(query.get("limit", ["49"])[0])
        offset = int(query.get("cursor", ["0"])[0] or 0)
        currencies = sorted(self.balances)
        page = currencies[offset:offset + limit]
        accounts = []
        for currency in page:
            held = self._held(currency)
            accounts.append({
                "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, currency)), "name": f"{currency} Wallet",
                "currency": currency,
                "available_balance": {"value": fmt_balance(self.balances[currency] - held), "currency": currency},
                "default": True, "active": True, "created_at": "2024-01-01T00:00:00Z",
                "updated_at": "2024-01-01T00:00:00Z", "deleted_at": None,
                "type": "ACCOUNT_TYPE_FIAT" if currency in ("USD", "EUR", "GBP") else "ACCOUNT_TYPE_CRYPTO",
                "ready": True, "hold": {"value": fmt_balance(held), "currency": currency},
                "retail_portfolio_id": "default",
            })
        more = offset + limit < len(currencies)
        return Reply(200, {"accounts": accounts, "has_next": more, "cursor": str(offset + limit) if more else "",
                           "size": len(accounts)})

    # ------------------------------------------------------------------ orders

    @staticmethod
    def _refusal(error: str, message: str = "", *, preview: str = "", new_order: str = "",
                 configuration: Any = None) -> Reply:
        return Reply(200, {"success": False, "failure_reason": "UNKNOWN_FAILURE_REASON", "order_id": "",
                           "error_response": {"error": error, "message": message, "error_details": "",
                                              "preview_failure_reason": preview,
                                              "new_order_failure_reason": new_order},
                           "order_configuration": configuration})

    def _create(self, request: Request) -> Reply:
        try:
            body = request.json()
        except json.JSONDecodeError:
            return Reply(400, {"error": "INVALID_ARGUMENT", "error_details": "bad json", "message": "bad json"})
        client_id = body.get("client_order_id") if isinstance(body, dict) else None
        if not client_id:
            return Reply(400, {"error": "INVALID_ARGUMENT", "error_details": "client_order_id is required",
                               "message": "client_order_id is required"})
        configuration = body.get("order_configuration") or {}
        existing = self.by_client.get(client_id)
        if existing is not None:  # idempotent on the client order id: the order already made is the answer
            order = self.orders[existing]
            return Reply(200, {"success": True, "success_response": {
                "order_id": order.order_id, "product_id": order.product_id, "side": order.side,
                "client_order_id": client_id}, "order_configuration": {order.kind: order.config}})
        if self._rejections:
            refusal = self._rejections.pop(0)
            return self._refusal(refusal["error"], refusal["message"], preview=refusal["preview_failure_reason"],
                                 new_order=refusal["new_order_failure_reason"], configuration=configuration)
        product_id = body.get("product_id")
        if product_id not in self.products:
            return self._refusal("INVALID_PRODUCT_ID", "Invalid product_id", new_order="INVALID_PRODUCT_ID",
                                 configuration=configuration)
        side = body.get("side")
        if side not in ("BUY", "SELL") or len(configuration) != 1:
            return Reply(400, {"error": "INVALID_ARGUMENT", "error_details": "invalid order",
                               "message": "invalid order"})
        ((kind, config),) = configuration.items()
        if kind not in ("market_market_ioc", "limit_limit_gtc", "stop_limit_stop_limit_gtc"):
            return self._refusal("UNSUPPORTED_ORDER_CONFIGURATION", "unsupported order configuration",
                                 new_order="UNSUPPORTED_ORDER_CONFIGURATION", configuration=configuration)
        p = self.products[product_id]
        try:
            size = Decimal(config["base_size"]) if "base_size" in config else None
            quote_size = Decimal(config["quote_size"]) if "quote_size" in config else None
            limit = Decimal(config["limit_price"]) if "limit_price" in config else None
            stop = Decimal(config["stop_price"]) if "stop_price" in config else None
        except (InvalidOperation, TypeError):
            return Reply(400, {"error": "INVALID_ARGUMENT", "error_details": "invalid number",
                               "message": "invalid number"})
        if (size is None) == (quote_size is None) or (kind != "market_market_ioc" and (size is None or limit is None)):
            return Reply(400, {"error": "INVALID_ARGUMENT", "error_details": "size and price required",
                               "message": "size and price required"})
        if quote_size is not None and side == "SELL":
            return self._refusal("INVALID_ARGUMENT", "quote_size is for market buys", configuration=configuration)
        if size is not None and not _steps(size, Decimal(p["base_increment"])):
            return self._refusal("INVALID_SIZE_PRECISION", "Invalid order size precision",
                                 new_order="INVALID_SIZE_PRECISION", configuration=configuration)
        if quote_size is not None and not _steps(quote_size, Decimal(p["quote_increment"])):
            return self._refusal("INVALID_SIZE_PRECISION", "Invalid order size precision",
                                 new_order="INVALID_SIZE_PRECISION", configuration=configuration)
        tick = Decimal(p["price_increment"])
        if any(x is not None and (x <= 0 or not _steps(x, tick)) for x in (limit, stop)):
            return self._refusal("INVALID_PRICE_PRECISION", "Invalid price precision",
                                 new_order="INVALID_PRICE_PRECISION", configuration=configuration)
        price = self.prices[product_id]
        if size is not None and size < Decimal(p["base_min_size"]):
            return self._refusal("UNKNOWN_FAILURE_REASON", "", preview="PREVIEW_INVALID_BASE_SIZE_TOO_SMALL",
                                 configuration=configuration)
        notional = quote_size if quote_size is not None else size * (limit or price)  # type: ignore[operator]
        if notional < Decimal(p["quote_min_size"]):
            return self._refusal("UNKNOWN_FAILURE_REASON", "", preview="PREVIEW_INVALID_QUOTE_SIZE_TOO_SMALL",
                                 configuration=configuration)
        direction = config.get("stop_direction", "")
        if stop is not None:
            if direction == "STOP_DIRECTION_STOP_DOWN" and stop >= price:
                return self._refusal("UNKNOWN_FAILURE_REASON", "",
                                     preview="PREVIEW_STOP_PRICE_ABOVE_LAST_TRADE_PRICE", configuration=configuration)
            if direction == "STOP_DIRECTION_STOP_UP" and stop <= price:
                return self._refusal("UNKNOWN_FAILURE_REASON", "",
                                     preview="PREVIEW_STOP_PRICE_BELOW_LAST_TRADE_PRICE", configuration=configuration)
        post_only = bool(config.get("post_only"))
        if post_only and limit is not None and (
                (side == "BUY" and limit >= price) or (side == "SELL" and limit <= price)):
            return self._refusal("INVALID_LIMIT_PRICE_POST_ONLY", "Invalid limit price for post only order",
                                 preview="PREVIEW_INVALID_LIMIT_PRICE_POST_ONLY", configuration=configuration)
        base, quote = product_id.split("-")
        fault = self.order_faults.take(self._wire_order(body, kind, config, price))
        if fault is OrderFault.REFUSE:
            return self._refusal("INSUFFICIENT_FUND", "Insufficient balance in source account",
                                 preview="PREVIEW_INSUFFICIENT_FUND", configuration=configuration)
        if side == "BUY":
            cost = (quote_size if quote_size is not None else size * (limit or price))  # type: ignore[operator]
            need, currency = cost * (1 + TAKER_FEE), quote
        else:
            need, currency = size, base  # type: ignore[assignment]
        if need > self.available(currency):
            return self._refusal("INSUFFICIENT_FUND", "Insufficient balance in source account",
                                 preview="PREVIEW_INSUFFICIENT_FUND", configuration=configuration)
        order = _Order(order_id=str(uuid.uuid4()), client_order_id=client_id, product_id=product_id, side=side,
                       kind=kind, config=dict(config), created=self.now(), size=size, quote_size=quote_size,
                       limit=limit, stop=stop, direction=direction, post_only=post_only)
        if self._partials:
            order.cap = self._partials.pop(0)
        self.orders[order.order_id] = order
        self.by_client[client_id] = order.order_id
        if fault is OrderFault.CANCEL:
            order.status = "CANCELLED"  # taken, nothing matched
        elif fault is OrderFault.EXPIRE:
            order.expire_reads = 1
        else:
            if fault is OrderFault.PARTIAL:
                order.cap = Decimal("0.5")
            self._work(order, placing=True)
            if fault is OrderFault.PARTIAL and not order.final:
                order.status = "CANCELLED"  # a resting order's rest is canceled too
        return Reply(200, {"success": True, "success_response": {
            "order_id": order.order_id, "product_id": product_id, "side": side, "client_order_id": client_id},
            "order_configuration": {kind: config}}, drop=fault is OrderFault.DROP)

    def _wire_order(self, body: dict[str, Any], kind: str, config: dict[str, Any], price: Decimal) -> WireOrder:
        """The order a create body asks for, as fault predicates see it."""
        side = Side.BUY if body["side"] == "BUY" else Side.SELL
        if kind == "market_market_ioc":
            type_ = OrderType.MARKET
        elif kind == "limit_limit_gtc":
            type_ = OrderType.LIMIT
        else:
            falling = config.get("stop_direction") == "STOP_DIRECTION_STOP_DOWN"
            type_ = OrderType.STOP if falling == (side is Side.SELL) else OrderType.TAKE_PROFIT
        quantity = Decimal(config["base_size"]) if "base_size" in config else Decimal(config["quote_size"]) / price
        return WireOrder(side=side, type=type_, quantity=quantity, market=str(body["product_id"]),
                         client_order_id=str(body["client_order_id"]))

    @staticmethod
    def _aged(order: _Order) -> None:
        """Play a planned expiry: the reads it had left see the order OPEN; the next one finds it EXPIRED."""
        if order.expire_reads is None or order.final:
            return
        if order.expire_reads > 0:
            order.expire_reads -= 1
        else:
            order.status = "EXPIRED"

    def _work(self, order: _Order, *, placing: bool) -> None:
        """Trade an order against its product's price (taker when placing or triggering, maker when resting)."""
        if order.expire_reads is not None:
            return  # planned to expire unfilled
        price = self.prices[order.product_id]
        lot = Decimal(self.products[order.product_id]["base_increment"])
        if order.stop is not None and not order.triggered:
            falling = order.direction == "STOP_DIRECTION_STOP_DOWN"
            if not ((falling and price <= order.stop) or (not falling and price >= order.stop)):
                return
            order.triggered, placing = True, True
        if order.kind == "market_market_ioc":
            total = order.size if order.size is not None else \
                (order.quote_size / price).quantize(lot, rounding=ROUND_DOWN)  # type: ignore[operator]
            self._fill(order, total, price, "TAKER", lot)
            order.status = "FILLED" if order.filled == total else "CANCELLED"  # IOC: the rest is canceled
            return
        assert order.limit is not None and order.size is not None
        crosses = price <= order.limit if order.side == "BUY" else price >= order.limit
        if not crosses:
            return
        fill_price = price if placing else order.limit
        self._fill(order, order.size, fill_price, "TAKER" if placing else "MAKER", lot)
        if order.filled == order.size:
            order.status = "FILLED"

    def _fill(self, order: _Order, total: Decimal, price: Decimal, liquidity: str, lot: Decimal) -> None:
        qty = total - order.filled
        if order.cap is not None:
            qty = min(qty, (total * order.cap).quantize(lot, rounding=ROUND_DOWN))
            order.cap = None
        if qty <= 0:
            return
        fee = qty * price * (MAKER_FEE if liquidity == "MAKER" else TAKER_FEE)
        base, quote = order.product_id.split("-")
        sign = 1 if order.side == "BUY" else -1
        self.balances[base] = self.balances.get(base, ZERO) + sign * qty
        self.balances[quote] = self.balances.get(quote, ZERO) - sign * qty * price - fee
        order.fills.append(_Fill(str(uuid.uuid4()), price, qty, fee, liquidity, self.now()))

    def _cancel(self, request: Request) -> Reply:
        results = []
        for order_id in (request.json() or {}).get("order_ids") or []:
            order = self.orders.get(order_id)
            if order is None:
                results.append({"success": False, "failure_reason": "UNKNOWN_CANCEL_ORDER", "order_id": order_id})
            elif order.final:
                results.append({"success": False, "failure_reason": "INVALID_CANCEL_REQUEST", "order_id": order_id})
            else:
                order.status = "CANCELLED"
                results.append({"success": True, "failure_reason": "UNKNOWN_CANCEL_FAILURE_REASON",
                                "order_id": order_id})
        return Reply(200, {"results": results})

    def _list(self, query: dict[str, list[str]]) -> Reply:
        for order in self.orders.values():
            self._aged(order)
        orders = sorted(self.orders.values(), key=lambda o: o.created, reverse=True)
        if "order_status" in query:
            orders = [o for o in orders if o.status in query["order_status"]]
        if "product_ids" in query:
            orders = [o for o in orders if o.product_id in query["product_ids"]]
        if "order_ids" in query:
            orders = [o for o in orders if o.order_id in query["order_ids"]]
        limit = int(query.get("limit", ["100"])[0])
        offset = int(query.get("cursor", ["0"])[0] or 0)
        page = orders[offset:offset + limit]
        more = offset + limit < len(orders)
        items = [dict(self._wire(o), cursor=str(offset + n + 1)) for n, o in enumerate(page)]  # as recorded
        return Reply(200, {"orders": items, "sequence": "0", "has_next": more,
                           "cursor": str(offset + limit) if more else ""})

    def _fills(self, query: dict[str, list[str]]) -> Reply:
        wanted = set(query.get("order_ids", []))
        fills = []
        for o in self.orders.values():
            if wanted and o.order_id not in wanted:
                continue
            for f in o.fills:
                for n, (size, commission, in_quote) in enumerate(self._reported(o, f)):
                    trade_id = f.trade_id if n == 0 else f"{f.trade_id}-{n}"
                    fills.append({
                        "entry_id": hashlib.sha256(trade_id.encode()).hexdigest(), "trade_id": trade_id,
                        "order_id": o.order_id,
                        "trade_time": _iso(f.time), "trade_type": "FILL", "price": fmt(f.price), "size": fmt(size),
                        "commission": fmt(commission), "product_id": o.product_id,
                        "sequence_timestamp": _iso(f.time), "liquidity_indicator": f.liquidity,
                        "size_in_quote": in_quote, "user_id": "fake-user", "side": o.side,
                        "retail_portfolio_id": "default", "cursor": str(len(fills) + 1),
                    })
        return Reply(200, {"fills": fills, "cursor": ""})

    def _reported(self, o: _Order, f: _Fill) -> list[tuple[Decimal, Decimal, bool]]:
        """How one fill is reported: (size, commission, size_in_quote) per reported fill."""
        if not (self._quote_pieces and o.quote_size is not None):
            return [(f.size, f.commission, False)]
        quote = f.size * f.price
        share = (quote / self._quote_pieces).quantize(Decimal("0.00000001"), rounding=ROUND_DOWN)
        sizes = [share] * (self._quote_pieces - 1) + [quote - share * (self._quote_pieces - 1)]
        return [(size, (f.commission * size / quote).quantize(Decimal("0.00000001")), True) for size in sizes]

    def _cancel_message(self, o: _Order) -> str:
        if o.status == "CANCELLED":
            return self.cancel_message
        return self.filled_market_cancel_message if o.status == "FILLED" and o.kind == "market_market_ioc" else ""

    def _wire(self, o: _Order) -> dict[str, Any]:
        filled = o.filled
        value = sum((f.size * f.price for f in o.fills), ZERO)
        fees = sum((f.commission for f in o.fills), ZERO)
        total = o.size if o.size is not None else None
        done = (filled / total * 100) if total else (Decimal(100) if o.status == "FILLED" else ZERO)
        order_type = {"market_market_ioc": "MARKET", "limit_limit_gtc": "LIMIT"}.get(o.kind, "STOP_LIMIT")
        trigger = "INVALID_ORDER_TYPE" if o.stop is None else ("STOP_TRIGGERED" if o.triggered else "STOP_PENDING")
        return {
            "order_id": o.order_id, "product_id": o.product_id, "user_id": "fake-user",
            "order_configuration": {o.kind: o.config}, "side": o.side, "client_order_id": o.client_order_id,
            "status": o.status,
            "time_in_force": "IMMEDIATE_OR_CANCEL" if o.kind == "market_market_ioc" else "GOOD_UNTIL_CANCELLED",
            "created_time": _iso(o.created), "completion_percentage": fmt(done), "filled_size": fmt(filled),
            "average_filled_price": fmt(value / filled) if filled else "0", "fee": "",
            "number_of_fills": str(sum(len(self._reported(o, f)) for f in o.fills)), "filled_value": fmt(value),
            "pending_cancel": False,
            "size_in_quote": o.quote_size is not None, "total_fees": fmt(fees), "size_inclusive_of_fees": False,
            "total_value_after_fees": fmt(value + fees if o.side == "BUY" else value - fees),
            "trigger_status": trigger, "order_type": order_type,
            # Placeholders as the venue sends them (ccxt's recorded coinbase replies), never empty strings.
            "reject_reason": "REJECT_REASON_UNSPECIFIED", "settled": o.final, "product_type": "SPOT",
            "reject_message": "", "cancel_message": self._cancel_message(o),
            "order_placement_source": "RETAIL_ADVANCED", "outstanding_hold_amount": "0", "is_liquidation": False,
            "last_fill_time": _iso(o.fills[-1].time) if o.fills else None, "edit_history": [], "leverage": "",
            "margin_type": "UNKNOWN_MARGIN_TYPE",
            "retail_portfolio_id": "default", "originating_order_id": "", "attached_order_id": "",
        }


@contextmanager
def harness(*, algorithm: str = "ES256") -> Iterator[VenueHarness]:
    """Start a funded CoinbaseFake (100,000 USD) trading BTC/USD at 50,000 and yield its harness.

    The credentials carry `timeout` (seconds per request, env `<PREFIX>_TIMEOUT`) of 2 s, so a held request
    (Fault.TIMEOUT) times out quickly instead of after the production default of 10 s.
    """
    fake = CoinbaseFake()
    credentials = {**fake.add_key(algorithm), "timeout": "2"}
    fake.fund("USD", "100000")
    fake.fund("BTC", "0")
    with fake:
        yield VenueHarness(
            venue="coinbase",
            network="mainnet",
            endpoint=fake.url,
            credentials=credentials,
            symbol="BTC/USD",
            price=fake.prices["BTC-USD"],
            set_price=fake.set_price,
            plan=fake.plan,
            created_client_ids=fake.created_client_ids,
            partial_fills=fake.partial_fills,
            order_faults=fake.order_faults,
            extra={"fake": fake},
        )
