"""A loopback Hyperliquid: POST /info and POST /exchange in the venue's wire shapes, with real signature checks.

Every /exchange request is authenticated the way the venue does it: the signer is recovered from the EIP-712
"phantom agent" signature with the SDK's own `recover_agent_or_user_from_l1_action` (source "a" on a mainnet fake,
"b" on a testnet one) and must be a registered user or an API wallet approved for one; a nonce is accepted once.
Orders: GTC / IOC / ALO limits and trigger (tp/sl, market) orders against a price the test sets; fills at the
mark for takers and at the limit for resting orders; margin (notional / leverage against account value);
reduce-only; $10 minimum; tick and size rules checked independently of the connector's rounding; a duplicate
cloid answers with the existing order. Per-order failures come back inside a top-level "ok", as on the venue.

Knobs: `set_price`, `partial_fills(n, fraction)`, `lag_status(n)` (orderStatus answers unknownOid n times),
`lag_fills(n)` (fill queries answer no fill n times), `fills_page` (fills per reply), `nest(parent, children)` (show
orders as a grouped order's children), `script(match, reply)` (answer one request with a canned reply),
`candles_depth` and `candles_page` (candleSnapshot keeps the last N candles, answers at most M a reply), and the
shared `plan` (tests/fakes/faults.py).

Wire shapes, compared field by field with the real replies in tests/fixtures/venues/hyperliquid (README there):
clearinghouseState positions carry every field of the recorded one (`maxTradeSzs` as [buy, sell] sizes the free
margin allows) and those the venue's docs add since (`cumFunding` all zero even after `fund`;
`maxLeverage` the asset's; `leverage.rawUsd` when isolated), with `time` and `withdrawable` at the top level;
fundingHistory rows `{coin, fundingRate, premium, time}` and userFunding rows `{delta: {coin, fundingRate, nSamples,
szi, type, usdc}, hash, time}` as recorded, oldest first, filled by `fund` (one hourly funding charged to every
position, the history row a few ms past the hour as recorded);
frontendOpenOrders / orderStatus / historicalOrders orders have the recorded fields, `cloid` null when none, and
`children` (via `nest`: nested in the parent and listed again at the top level, as recorded); userFills rows have
the recorded fields plus `tid` and `feeToken` (newer replies), newest first, `fills_page` a reply; candles and
allMids as recorded; meta adds today's `marginTableId` and `marginTables`. Left different: `liquidationPx` is
always null (the fake computes no liquidation), and `openOrders` rows are the short recorded shape only.

Order faults (`order_faults`) play on IOC orders (what a market order is here), each in the venue's words (gitbook
"Error responses"; statuses as in the SDK's recorded historicalOrders cassette): refuse is a per-order PerpMargin
error "Insufficient margin to place order." (ReduceOnly "Reduce only order would increase position." for a
reduce-only order), nothing created; cancel is IocCancel "Order could not immediately match against any resting
orders.", the order kept with an oid and status iocCancelRejected; partial fills half at the mark and the rest is
canceled ({"filled": {"totalSz"...}}, status canceled); drop works the order and closes the connection unanswered.
Expire is not played: an IOC is decided inside the create reply and never rests, so nothing can expire later.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from typing import Any

from eth_account import Account
from hyperliquid.utils.signing import recover_agent_or_user_from_l1_action, recover_user_from_user_signed_action

from exchanges.base import OrderType, Side
from exchanges.hyperliquid import client_id_for
from tests.fakes.faults import FakeHTTPServer, OrderFault, OrderFaultPlan, Reply, Request, WireOrder
from tests.fakes.venues import VenueHarness

UNIVERSE = [
    {"name": "BTC", "szDecimals": 5, "maxLeverage": 40},
    {"name": "ETH", "szDecimals": 4, "maxLeverage": 25},
    {"name": "SOL", "szDecimals": 2, "maxLeverage": 20},
    {"name": "DOGE", "szDecimals": 0, "maxLeverage": 10, "onlyIsolated": True},
    # Ten markets for benchmarks/stop_to_exit.py: names, szDecimals and maxLeverage as the venue's meta answered in
    # the SDK's recorded cassette (hyperliquid-python-sdk tests/cassettes/info_test/test_get_info.yaml).
    {"name": "AVAX", "szDecimals": 2, "maxLeverage": 50},
    {"name": "BNB", "szDecimals": 3, "maxLeverage": 50},
    {"name": "LTC", "szDecimals": 2, "maxLeverage": 50},
    {"name": "XRP", "szDecimals": 0, "maxLeverage": 50},
    {"name": "LINK", "szDecimals": 1, "maxLeverage": 50},
    {"name": "ARB", "szDecimals": 1, "maxLeverage": 50},
]
PRICES = {"BTC": "43210", "ETH": "2345.6", "SOL": "98.765", "DOGE": "0.081234", "AVAX": "35.123", "BNB": "612.34",
          "LTC": "84.512", "XRP": "0.61234", "LINK": "14.567", "ARB": "1.1234"}
TAKER_FEE = Decimal("0.00045")
MAKER_FEE = Decimal("0.00015")
FEE_QUANTUM = Decimal("0.000001")
NEVER_PLACED = "Order was never placed, already canceled, or filled."
IOC_CANCEL = "Order could not immediately match against any resting orders."
NO_EXPIRY = ("an IOC (a market order here) is decided inside the create reply and never rests, so the venue cannot "
             "take it and expire it later")
APPROVE_AGENT_TYPES = [  # the EIP-712 fields of a user-signed approveAgent (as the SDK's sign_agent)
    {"name": "hyperliquidChain", "type": "string"},
    {"name": "agentAddress", "type": "address"},
    {"name": "agentName", "type": "string"},
    {"name": "nonce", "type": "uint64"},
]


def wire(value: Decimal) -> str:
    """A decimal as the venue writes it: no exponent, no trailing zeros."""
    text = f"{value.normalize():f}"
    return "0" if text == "-0" else text


def price_ok(price: Decimal, sz_decimals: int) -> bool:
    """The venue's perp price rule, written out: <= 6 - szDecimals decimals, and <= 5 significant figures unless
    integral."""
    normal = price.normalize()
    decimals = max(0, -normal.as_tuple().exponent)  # type: ignore[operator]
    if decimals > 6 - sz_decimals:
        return False
    return normal == normal.to_integral_value() or len(normal.as_tuple().digits) <= 5


@dataclass
class _User:
    usdc: Decimal
    positions: dict[str, tuple[Decimal, Decimal]] = field(default_factory=dict)  # coin -> (szi, entry px)
    leverage: dict[str, tuple[str, int]] = field(default_factory=dict)  # coin -> (cross|isolated, value)


@dataclass
class _Order:
    oid: int
    user: str
    coin: str
    is_buy: bool
    limit_px: Decimal
    orig_sz: Decimal
    sz: Decimal  # remaining
    tif: str | None
    reduce_only: bool
    cloid: str | None
    timestamp: int
    trigger: dict[str, Any] | None = None
    status: str = "open"
    status_ts: int = 0
    filled: Decimal = Decimal("0")
    notional: Decimal = Decimal("0")
    children: list[_Order] = field(default_factory=list)  # a grouped order's take-profit and stop (see `nest`)

    def frontend(self) -> dict[str, Any]:
        trigger = self.trigger
        if trigger is None:
            order_type, condition, trigger_px = "Limit", "N/A", "0.0"
        else:
            kind = "Take Profit" if trigger["tpsl"] == "tp" else "Stop"
            order_type = f"{kind} {'Market' if trigger['isMarket'] else 'Limit'}"
            above = (trigger["tpsl"] == "tp") != self.is_buy
            condition = f"Price {'above' if above else 'below'} {trigger['triggerPx']}"
            trigger_px = trigger["triggerPx"]
        return {
            "children": [c.frontend() for c in self.children if c.status in ("open", "triggered")],
            "cloid": self.cloid, "coin": self.coin, "isPositionTpsl": False,
            "isTrigger": trigger is not None, "limitPx": wire(self.limit_px), "oid": self.oid,
            "orderType": order_type, "origSz": wire(self.orig_sz), "reduceOnly": self.reduce_only,
            "side": "B" if self.is_buy else "A", "sz": wire(self.sz), "tif": self.tif, "timestamp": self.timestamp,
            "triggerCondition": condition, "triggerPx": trigger_px,
        }


def _now_ms() -> int:
    return int(time.time() * 1000)


class HyperliquidFake(FakeHTTPServer):
    """The venue's /info and /exchange on 127.0.0.1."""

    def __init__(self, *, mainnet: bool = False) -> None:
        super().__init__()
        self.mainnet = mainnet
        self.universe = [dict(u) for u in UNIVERSE]
        self.sz_decimals = {u["name"]: int(u["szDecimals"]) for u in self.universe}
        self.prices = {coin: Decimal(p) for coin, p in PRICES.items()}
        self.users: dict[str, _User] = {}
        self.agents: dict[str, str] = {}  # API wallet -> user
        self.orders: dict[int, _Order] = {}
        self.fills: list[dict[str, Any]] = []
        self.fills_page = 2000  # fills per userFills(ByTime) reply, as the venue documents
        self.nonces: dict[str, set[int]] = {}
        self.candles: dict[tuple[str, str], list[dict[str, Any]]] = {}  # (coin, interval) -> rows as recorded
        # candleSnapshot as the venue: the last `candles_depth` candles of a coin and interval are kept, and a reply
        # holds at most `candles_page` of them, oldest first (a client pages on the last `t` it received)
        self.candles_depth = 5000
        self.candles_page = 5000
        # fundingHistory rows by coin and userFunding rows by user, as recorded (see `fund`); at most `funding_page`
        # rows a reply, oldest first (a client pages on the last `time` it received)
        self.funding: dict[str, list[dict[str, Any]]] = {}
        self.user_funding: dict[str, list[dict[str, Any]]] = {}
        self.funding_page = 500
        self.created: list[str | None] = []  # cloid of every order created, in order
        self.lock = threading.RLock()
        self._next_oid = 1000
        self._next_tid = 1
        self._partial: list[list[Any]] = []  # [remaining count, fraction]
        self._status_lag = 0
        self._fills_lag = 0
        self._scripted: list[tuple[Callable[[Request], bool], Reply]] = []
        self.order_faults = OrderFaultPlan({OrderFault.EXPIRE: NO_EXPIRY})

    def serve_forever(self, poll_interval: float = 0.05) -> None:
        # A short poll makes stop() (shutdown) return in ~50 ms instead of the default half second.
        super().serve_forever(poll_interval)

    def get_request(self) -> tuple[socket.socket, Any]:
        # Headers and body go out in two writes: without TCP_NODELAY each reply waits ~40 ms for a delayed ACK.
        conn, address = super().get_request()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, address

    # ------------------------------------------------------------------------------------------ test knobs

    def add_user(self, address: str, usdc: Decimal | str) -> None:
        with self.lock:
            self.users[address.lower()] = _User(usdc=Decimal(usdc))

    def approve_agent(self, agent: str, user: str) -> None:
        with self.lock:
            self.agents[agent.lower()] = user.lower()

    def user(self, address: str) -> _User:
        return self.users[address.lower()]

    def partial_fills(self, count: int, fraction: Decimal) -> None:
        """The next `count` fills take only `fraction` of what is left of their order."""
        with self.lock:
            self._partial.append([count, Decimal(fraction)])

    def lag_status(self, count: int) -> None:
        """The next `count` orderStatus queries answer unknownOid (the venue has not caught up)."""
        with self.lock:
            self._status_lag = count

    def lag_fills(self, count: int) -> None:
        """The next `count` fill queries answer without any fill (the fills feed has not caught up)."""
        with self.lock:
            self._fills_lag = count

    def script(self, match: Callable[[Request], bool], reply: Reply) -> None:
        """Answer the next request that matches with `reply` instead of handling it."""
        with self.lock:
            self._scripted.append((match, reply))

    def nest(self, parent_oid: int, child_oids: list[int]) -> None:
        """Show orders as the children of another, as the venue shows a grouped order's take-profit and stop: nested
        in the parent's `children` and listed again at the top level (the SDK's recorded frontendOpenOrders)."""
        with self.lock:
            self.orders[parent_oid].children = [self.orders[oid] for oid in child_oids]

    def created_cloids(self) -> list[str | None]:
        with self.lock:
            return list(self.created)

    def exchange_actions(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Every action received on /exchange (signed or not), optionally of one type."""
        found = []
        for r in self.requests(lambda r: r.path == "/exchange"):
            action = r.json().get("action", {})
            if kind is None or action.get("type") == kind:
                found.append(action)
        return found

    def fund(self, coin: str, hour_ms: int, rate: Decimal | str, *, premium: str = "0.0", stamp_ms: int = 48,
             price: Decimal | str | None = None) -> None:
        """Apply one hourly funding of `coin` at `hour_ms` as the venue does: a fundingHistory row stamped `stamp_ms`
        past the hour (recorded rows are a few ms late), and every user's position charged szi x price (the coin's
        price unless given: the venue's oracle) x rate, in USDC to 6 decimals, with its userFunding row on the hour."""
        rate = Decimal(rate)
        px = self.prices[coin] if price is None else Decimal(price)
        with self.lock:
            self.funding.setdefault(coin, []).append({"coin": coin, "fundingRate": wire(rate), "premium": premium,
                                                      "time": hour_ms + stamp_ms})
            for address, account in self.users.items():
                szi = account.positions.get(coin, (Decimal(0), Decimal(0)))[0]
                if szi == 0:
                    continue
                usdc = (-szi * px * rate).quantize(FEE_QUANTUM)
                account.usdc += usdc
                self.user_funding.setdefault(address, []).append({
                    "delta": {"coin": coin, "fundingRate": wire(rate), "nSamples": 1, "szi": wire(szi),
                              "type": "funding", "usdc": wire(usdc)},
                    "hash": "0x" + "0" * 64, "time": hour_ms})

    def set_price(self, coin: str, price: Decimal | str) -> None:
        """Move a market's mark; resting limits and triggers it crosses execute before this returns."""
        with self.lock:
            self.prices[coin] = Decimal(price)
            for order in sorted(self.orders.values(), key=lambda o: o.oid):
                if order.coin != coin or order.status not in ("open", "triggered"):
                    continue
                if order.trigger is not None:
                    if self._trigger_hit(order, Decimal(price)):
                        order.status = "triggered"
                        self._take(order, reduce_clip=True)
                        if order.status == "triggered":
                            order.status, order.status_ts = "canceled", _now_ms()
                elif (order.is_buy and order.limit_px >= price) or (not order.is_buy and order.limit_px <= price):
                    self._fill(order, order.sz, order.limit_px, crossed=False)

    # ------------------------------------------------------------------------------------------ routing

    def route(self, request: Request) -> Reply:
        with self.lock:
            for i, (match, reply) in enumerate(self._scripted):
                if match(request):
                    del self._scripted[i]
                    return reply
        try:
            body = request.json()
        except ValueError:
            return Reply(400, b"Failed to parse the request body as JSON", {"Content-Type": "text/plain"})
        if request.method != "POST" or not isinstance(body, dict):
            return Reply(405, b"", {"Content-Type": "text/plain"})
        with self.lock:
            if request.path == "/info":
                return self._info(body)
            if request.path == "/exchange":
                return self._exchange(body)
        return Reply(404, b"Not Found", {"Content-Type": "text/plain"})

    # ------------------------------------------------------------------------------------------ /info

    def _info(self, body: dict[str, Any]) -> Reply:
        kind = body.get("type")
        user = str(body.get("user", "")).lower()
        if kind == "meta":
            return Reply(200, self._meta())
        if kind == "metaAndAssetCtxs":
            ctxs = [{"markPx": wire(self.prices[u["name"]]), "midPx": wire(self.prices[u["name"]]),
                     "oraclePx": wire(self.prices[u["name"]]), "funding": "0.0000125", "openInterest": "1000.0",
                     "dayNtlVlm": "0.0", "premium": "0.0", "prevDayPx": wire(self.prices[u["name"]]),
                     "impactPxs": None} for u in self.universe]
            return Reply(200, [self._meta(), ctxs])
        if kind == "spotMeta":
            return Reply(200, {"universe": [], "tokens": []})
        if kind == "allMids":
            return Reply(200, {coin: wire(px) for coin, px in self.prices.items()})
        if kind == "l2Book":
            coin = str(body.get("coin"))
            if coin not in self.prices:
                return Reply(200, None)
            px = wire(self.prices[coin])
            return Reply(200, {"coin": coin, "time": _now_ms(),
                               "levels": [[{"px": px, "sz": "100.0", "n": 1}], [{"px": px, "sz": "100.0", "n": 1}]]})
        if kind == "clearinghouseState":
            return Reply(200, self._clearinghouse(user))
        if kind in ("openOrders", "frontendOpenOrders"):
            rows = [o.frontend() for o in self.orders.values() if o.user == user and o.status in ("open", "triggered")]
            if kind == "openOrders":
                rows = [{k: r[k] for k in ("coin", "limitPx", "oid", "side", "sz", "timestamp")} for r in rows]
            return Reply(200, sorted(rows, key=lambda r: -int(r["timestamp"])))
        if kind == "orderStatus":
            return Reply(200, self._order_status(user, body.get("oid")))
        if kind == "historicalOrders":
            mine = sorted((o for o in self.orders.values() if o.user == user), key=lambda o: -o.oid)
            return Reply(200, [self._history_entry(o) for o in mine][:2000])
        if kind in ("userFills", "userFillsByTime"):
            if self._fills_lag > 0:
                self._fills_lag -= 1
                return Reply(200, [])
            start = int(body.get("startTime") or 0)
            end = body.get("endTime")
            rows = [dict(f) for f in self.fills if f["user"] == user and int(f["time"]) >= start
                    and (end is None or int(f["time"]) <= int(end))]
            for r in rows:
                del r["user"]
            # As the venue (the SDK's recorded userFills / userFillsByTime): newest first, the newest page only.
            rows.sort(key=lambda r: -int(r["time"]))
            return Reply(200, rows[:self.fills_page])
        if kind == "candleSnapshot":
            return Reply(200, self._candles(body.get("req") or {}))
        if kind in ("fundingHistory", "userFunding"):
            if "startTime" not in body or (kind == "fundingHistory" and "coin" not in body):
                return Reply(422, b"Failed to deserialize the JSON body into the target type",
                             {"Content-Type": "text/plain"})
            start, end = int(body["startTime"]), body.get("endTime")
            rows = self.funding.get(str(body["coin"]), []) if kind == "fundingHistory" else self.user_funding.get(
                user, [])
            kept = sorted((r for r in rows if int(r["time"]) >= start and (end is None or int(r["time"]) <= int(end))),
                          key=lambda r: int(r["time"]))
            return Reply(200, kept[:self.funding_page])
        if kind == "userRole":
            if user in self.agents:
                return Reply(200, {"role": "agent", "data": {"user": self.agents[user]}})
            return Reply(200, {"role": "user" if user in self.users else "missing"})
        if kind == "extraAgents":
            return Reply(200, [{"name": "tradesite", "address": a, "validUntil": _now_ms() + 86_400_000}
                               for a, u in self.agents.items() if u == user])
        return Reply(422, b"Failed to deserialize the JSON body into the target type", {"Content-Type": "text/plain"})

    def _clearinghouse(self, user: str) -> dict[str, Any]:
        account = self.users.get(user) or _User(usdc=Decimal(0))
        positions = []
        used = Decimal(0)
        notional = Decimal(0)
        for coin, (szi, entry) in sorted(account.positions.items()):
            if szi == 0:
                continue
            mark = self.prices[coin]
            mode, lev = account.leverage.get(coin, ("cross", 20))
            value = abs(szi) * mark
            margin = value / lev
            used += margin
            notional += value
            pnl = ((mark - entry) * szi).quantize(FEE_QUANTUM)
            leverage: dict[str, Any] = {"type": mode, "value": lev}
            if mode == "isolated":  # the isolated margin's raw USD (docs: leverage.rawUsd)
                leverage["rawUsd"] = wire((margin - value * (1 if szi > 0 else -1)).quantize(FEE_QUANTUM))
            meta = next(u for u in self.universe if u["name"] == coin)
            positions.append({"type": "oneWay", "position": {
                "coin": coin, "szi": wire(szi), "entryPx": wire(entry), "leverage": leverage,
                "liquidationPx": None, "marginUsed": wire(margin.quantize(FEE_QUANTUM)),
                "positionValue": wire(value.quantize(FEE_QUANTUM)),
                "returnOnEquity": wire((pnl * lev / (abs(szi) * entry)).quantize(Decimal("1e-8"))),
                "unrealizedPnl": wire(pnl), "maxLeverage": int(meta["maxLeverage"]),
                # The venue's funding accrual: left at zero (`fund` books payments into userFunding and the cash).
                "cumFunding": {"allTime": "0.0", "sinceOpen": "0.0", "sinceChange": "0.0"},
                "maxTradeSzs": self._max_trade_sizes(account, coin, szi),
            }})
        value = self._account_value(account)
        summary = {"accountValue": wire(value.quantize(FEE_QUANTUM)),
                   "totalMarginUsed": wire(used.quantize(FEE_QUANTUM)),
                   "totalNtlPos": wire(notional.quantize(FEE_QUANTUM)), "totalRawUsd": wire(account.usdc)}
        return {"assetPositions": positions, "marginSummary": summary, "crossMarginSummary": summary,
                "crossMaintenanceMarginUsed": "0.0",
                "withdrawable": wire(max(Decimal(0), value - used).quantize(FEE_QUANTUM)),
                "time": _now_ms()}

    def _max_trade_sizes(self, account: _User, coin: str, szi: Decimal) -> list[str]:
        """[largest buy, largest sell] the free margin allows at the mark, closing the position counting as free."""
        lot = Decimal(1).scaleb(-self.sz_decimals[coin])
        _, lev = account.leverage.get(coin, ("cross", 20))
        opening = max(Decimal(0), self._free_margin(account)) * lev / self.prices[coin]
        buy = opening + (abs(szi) if szi < 0 else 0)
        sell = opening + (szi if szi > 0 else 0)
        return [wire(buy.quantize(lot, rounding=ROUND_DOWN)), wire(sell.quantize(lot, rounding=ROUND_DOWN))]

    def _account_value(self, account: _User) -> Decimal:
        return account.usdc + sum(((self.prices[c] - e) * s for c, (s, e) in account.positions.items()), Decimal(0))

    def _order_status(self, user: str, key: Any) -> dict[str, Any]:
        if self._status_lag > 0:
            self._status_lag -= 1
            return {"status": "unknownOid"}
        found = None
        for order in self.orders.values():
            if order.user == user and (order.oid == key or (isinstance(key, str) and order.cloid == key.lower())):
                found = order
        if found is None:
            return {"status": "unknownOid"}
        return {"status": "order", "order": self._history_entry(found)}

    @staticmethod
    def _history_entry(order: _Order) -> dict[str, Any]:
        """An order as orderStatus's `order` and each historicalOrders entry carry it."""
        return {"order": order.frontend(), "status": order.status,
                "statusTimestamp": order.status_ts or order.timestamp}

    def _meta(self) -> dict[str, Any]:
        """meta as the venue answers today: each asset names its margin table (here one tier per max leverage)."""
        universe = [dict(u, marginTableId=int(u["maxLeverage"])) for u in self.universe]
        tables = [[lev, {"description": "", "marginTiers": [{"lowerBound": "0.0", "maxLeverage": lev}]}]
                  for lev in sorted({int(u["maxLeverage"]) for u in self.universe})]
        return {"universe": universe, "marginTables": tables}

    def _candles(self, req: dict[str, Any]) -> list[dict[str, Any]]:
        coin, interval = str(req.get("coin")), str(req.get("interval"))
        start, end = int(req.get("startTime", 0)), int(req.get("endTime", _now_ms()))
        stored = self.candles.get((coin, interval))
        if stored is None:  # flat candles at the coin's price over the window asked
            step = {"m": 60_000, "h": 3_600_000, "d": 86_400_000}[interval[-1]] * int(interval[:-1])
            px = wire(self.prices[coin])
            first = start - start % step
            return [{"t": t, "T": t + step - 1, "s": coin, "i": interval, "o": px, "c": px, "h": px, "l": px,
                     "v": "0.0", "n": 0} for t in range(first, end + 1, step)][-self.candles_depth:][:self.candles_page]
        kept = sorted(stored, key=lambda c: int(c["t"]))[-self.candles_depth:]
        # As recorded (test_get_candles_snapshot): every candle that overlaps [startTime, endTime], the one open at
        # startTime included.
        return [c for c in kept if int(c["T"]) >= start and int(c["t"]) <= end][:self.candles_page]

    # ------------------------------------------------------------------------------------------ /exchange

    def _exchange(self, body: dict[str, Any]) -> Reply:
        action, nonce, signature = body.get("action"), body.get("nonce"), body.get("signature")
        if not isinstance(action, dict) or not isinstance(nonce, int) or not isinstance(signature, dict):
            return Reply(422, b"Failed to deserialize the JSON body into the target type",
                         {"Content-Type": "text/plain"})
        if action.get("type") == "approveAgent":
            return self._approve_agent(action, nonce, signature)
        try:
            signer = recover_agent_or_user_from_l1_action(
                action, signature, body.get("vaultAddress"), nonce, body.get("expiresAfter"), self.mainnet
            ).lower()
        except Exception:
            return Reply(200, {"status": "err", "response": "Invalid signature"})
        user = self.agents.get(signer) or (signer if signer in self.users else None)
        if user is None:
            return Reply(200, {"status": "err", "response": f"User or API Wallet {signer} does not exist."})
        used = self.nonces.setdefault(signer, set())
        if nonce in used:
            return Reply(200, {"status": "err", "response": f"Invalid nonce: duplicate nonce {nonce}"})
        if abs(nonce - _now_ms()) > 86_400_000:
            return Reply(200, {"status": "err", "response": f"Invalid nonce: {nonce} is too far from the current time"})
        used.add(nonce)
        kind = action.get("type")
        if kind == "order":
            placed = [self._place(user, o) for o in action.get("orders", [])]
            statuses = [status for status, _ in placed]
            return Reply(200, {"status": "ok", "response": {"type": "order", "data": {"statuses": statuses}}},
                         drop=any(fault is OrderFault.DROP for _, fault in placed))
        if kind in ("cancel", "cancelByCloid"):
            statuses = [self._cancel(user, c) for c in action.get("cancels", [])]
            return Reply(200, {"status": "ok", "response": {"type": "cancel", "data": {"statuses": statuses}}})
        if kind == "updateLeverage":
            asset, leverage = int(action["asset"]), int(action["leverage"])
            if not 0 <= asset < len(self.universe) or not 1 <= leverage <= int(self.universe[asset]["maxLeverage"]):
                return Reply(200, {"status": "err", "response": "Invalid leverage value"})
            meta = self.universe[asset]
            if action["isCross"] and meta.get("onlyIsolated"):
                return Reply(200, {"status": "err", "response": "Cross margin is not allowed for this asset."})
            self.users[user].leverage[meta["name"]] = ("cross" if action["isCross"] else "isolated", leverage)
            return Reply(200, {"status": "ok", "response": {"type": "default"}})
        return Reply(422, b"Failed to deserialize the JSON body into the target type", {"Content-Type": "text/plain"})

    def _approve_agent(self, action: dict[str, Any], nonce: int, signature: dict[str, Any]) -> Reply:
        """A user-signed action: the main wallet itself signs (EIP-712 domain HyperliquidSignTransaction)."""
        signed = dict(action, agentName=action.get("agentName", ""))
        try:
            signer = recover_user_from_user_signed_action(
                signed, signature, APPROVE_AGENT_TYPES, "HyperliquidTransaction:ApproveAgent", self.mainnet).lower()
        except Exception:
            return Reply(200, {"status": "err", "response": "Invalid signature"})
        if signer not in self.users:
            return Reply(200, {"status": "err", "response": f"User or API Wallet {signer} does not exist."})
        if action.get("nonce") != nonce or nonce in self.nonces.setdefault(signer, set()):
            return Reply(200, {"status": "err", "response": f"Invalid nonce: duplicate nonce {nonce}"})
        self.nonces[signer].add(nonce)
        self.agents[str(action["agentAddress"]).lower()] = signer
        return Reply(200, {"status": "ok", "response": {"type": "default"}})

    def _place(self, user: str, w: dict[str, Any]) -> tuple[Any, OrderFault | None]:
        """One order of an order action: its status in the reply, and the order fault played on it (if any)."""
        asset = int(w["a"])
        if not 0 <= asset < len(self.universe):
            return {"error": f"Invalid asset {asset}"}, None
        coin = str(self.universe[asset]["name"])
        tag = f" asset={asset}"
        cloid = str(w["c"]).lower() if w.get("c") else None
        if cloid is not None:
            for existing in self.orders.values():
                if existing.user == user and existing.cloid == cloid:
                    return self._status_of(existing, tag, duplicate=True), None
        p, s = str(w["p"]), str(w["s"])
        if wire(Decimal(p)) != p or wire(Decimal(s)) != s:
            # The venue re-serializes the action before checking the signature: a non-canonical number
            # recovers another signer.
            return {"error": f"Order has invalid price or size encoding.{tag}"}, None
        price, size, szd = Decimal(p), Decimal(s), self.sz_decimals[coin]
        if size <= 0 or size != size.quantize(Decimal(1).scaleb(-szd), rounding=ROUND_DOWN):
            return {"error": f"Order has invalid size.{tag}"}, None
        if not price_ok(price, szd):
            return {"error": f"Price must be divisible by tick size.{tag}"}, None
        account = self.users[user]
        szi = account.positions.get(coin, (Decimal(0), Decimal(0)))[0]
        is_buy, reduce_only = bool(w["b"]), bool(w["r"])
        if reduce_only:
            if szi == 0 or (szi > 0) == is_buy:
                return {"error": f"Reduce only order would increase position.{tag}"}, None
            size = min(size, abs(szi))
        elif price * size < 10:
            return {"error": f"Order must have minimum value of $10.{tag}"}, None
        t = w["t"]
        trigger = t.get("trigger")
        tif = None if trigger else str(t["limit"]["tif"])
        mark = self.prices[coin]
        marketable = (is_buy and price >= mark) or (not is_buy and price <= mark)
        if tif == "Alo" and marketable:
            return {"error": "Post only order would have immediately matched, "
                             f"bbo was {wire(mark)}@{wire(mark)}.{tag}"}, None
        if tif == "Ioc" and not marketable:
            return {"error": f"Order could not immediately match against any resting orders.{tag}"}, None
        fault = None
        if tif == "Ioc":
            fault = self.order_faults.take(WireOrder(
                side=Side.BUY if is_buy else Side.SELL, type=OrderType.MARKET, quantity=size, market=coin,
                client_order_id=client_id_for(cloid), reduce_only=reduce_only))
        if fault is OrderFault.REFUSE:
            refusal = ("Reduce only order would increase position." if reduce_only
                       else "Insufficient margin to place order.")
            return {"error": f"{refusal}{tag}"}, fault
        if not reduce_only:
            _, lev = account.leverage.get(coin, ("cross", 20))
            if self._free_margin(account) < price * size / lev:
                return {"error": f"Insufficient margin to place order.{tag}"}, fault
        order = _Order(oid=self._next_oid, user=user, coin=coin, is_buy=is_buy, limit_px=price, orig_sz=size, sz=size,
                       tif=tif, reduce_only=reduce_only, cloid=cloid, timestamp=_now_ms(), trigger=trigger)
        self._next_oid += 1
        self.orders[order.oid] = order
        self.created.append(cloid)
        if trigger is not None:
            if self._trigger_hit(order, mark):
                order.status = "triggered"
                self._take(order, reduce_clip=True)
            return {"resting": {"oid": order.oid, **({"cloid": cloid} if cloid else {})}}, fault
        if fault is OrderFault.CANCEL:
            # Kept with its oid, as the venue's order history shows an IOC that found nothing to match.
            order.status, order.status_ts = "iocCancelRejected", _now_ms()
            return {"error": f"{IOC_CANCEL}{tag}"}, fault
        if fault is OrderFault.PARTIAL:
            half = (size / 2).quantize(Decimal(1).scaleb(-szd), rounding=ROUND_DOWN)
            if half > 0:
                self._fill(order, half, mark, crossed=True)
            order.status, order.status_ts = "canceled", _now_ms()  # the rest of an IOC never rests
            if half == 0:
                order.status = "iocCancelRejected"
                return {"error": f"{IOC_CANCEL}{tag}"}, fault
            return self._status_of(order, tag), fault
        if marketable:
            self._take(order, reduce_clip=False)
            if tif == "Ioc" and order.status == "open":
                order.status, order.status_ts = "canceled", _now_ms()  # the rest of an IOC never rests
        return self._status_of(order, tag), fault

    def _status_of(self, order: _Order, tag: str, duplicate: bool = False) -> Any:
        if order.filled > 0 and order.status != "open":
            return {"filled": {"totalSz": wire(order.filled), "avgPx": wire(order.notional / order.filled),
                               "oid": order.oid, **({"cloid": order.cloid} if order.cloid else {})}}
        if order.status in ("open", "triggered"):
            return {"resting": {"oid": order.oid, **({"cloid": order.cloid} if order.cloid else {})}}
        return {"error": f"Duplicate cloid: order {order.oid} is already {order.status}.{tag}" if duplicate
                else f"Order {order.oid} is {order.status}.{tag}"}

    def _free_margin(self, account: _User) -> Decimal:
        used = Decimal(0)
        for coin, (szi, _) in account.positions.items():
            used += abs(szi) * self.prices[coin] / account.leverage.get(coin, ("cross", 20))[1]
        for order in self.orders.values():
            if self.users.get(order.user) is account and order.status == "open" and not order.reduce_only:
                used += order.sz * order.limit_px / account.leverage.get(order.coin, ("cross", 20))[1]
        return self._account_value(account) - used

    def _trigger_hit(self, order: _Order, price: Decimal) -> bool:
        assert order.trigger is not None
        trigger_px = Decimal(order.trigger["triggerPx"])
        # A sell take-profit and a buy stop fire on the way up; a sell stop and a buy take-profit on the way down.
        above = (order.trigger["tpsl"] == "tp") != order.is_buy
        return price >= trigger_px if above else price <= trigger_px

    def _take(self, order: _Order, *, reduce_clip: bool) -> None:
        """Fill a marketable order (or a triggered one) at the mark, as taker."""
        if reduce_clip and order.reduce_only:
            szi = self.users[order.user].positions.get(order.coin, (Decimal(0), Decimal(0)))[0]
            if szi == 0 or (szi > 0) == order.is_buy:
                order.status, order.status_ts = "reduceOnlyCanceled", _now_ms()
                return
            order.sz = min(order.sz, abs(szi))
        self._fill(order, order.sz, self.prices[order.coin], crossed=True)

    def _fill(self, order: _Order, size: Decimal, price: Decimal, *, crossed: bool) -> None:
        if self._partial:
            plan = self._partial[0]
            lot = Decimal(1).scaleb(-self.sz_decimals[order.coin])
            size = max(lot, (size * plan[1]).quantize(lot, rounding=ROUND_DOWN))
            plan[0] -= 1
            if plan[0] <= 0:
                self._partial.pop(0)
        account = self.users[order.user]
        szi, entry = account.positions.get(order.coin, (Decimal(0), Decimal(0)))
        signed = size if order.is_buy else -size
        closed = Decimal(0)
        if szi != 0 and (szi > 0) != (signed > 0):
            closing = min(abs(szi), size)
            closed = (price - entry) * closing * (1 if szi > 0 else -1)
        new = szi + signed
        if new == 0:
            new_entry = Decimal(0)
        elif szi == 0 or (szi > 0) != (new > 0):
            new_entry = price
        elif (szi > 0) == (signed > 0):
            new_entry = (entry * abs(szi) + price * size) / abs(new)
        else:
            new_entry = entry
        fee = (price * size * (TAKER_FEE if crossed else MAKER_FEE)).quantize(FEE_QUANTUM)
        account.usdc += closed - fee
        account.positions[order.coin] = (new, new_entry.quantize(Decimal("0.000001")) if new else Decimal(0))
        now = _now_ms()
        tid = self._next_tid
        self._next_tid += 1
        direction = ("Open Long" if order.is_buy else "Open Short") if closed == 0 and szi * signed >= 0 else (
            "Close Short" if order.is_buy else "Close Long")
        self.fills.append({
            "user": order.user, "closedPnl": wire(closed.quantize(FEE_QUANTUM)), "coin": order.coin,
            "crossed": crossed, "dir": direction, "fee": wire(fee), "feeToken": "USDC",
            "hash": "0x" + f"{tid:064x}", "oid": order.oid, "px": wire(price), "side": "B" if order.is_buy else "A",
            "startPosition": wire(szi), "sz": wire(size), "time": now, "tid": tid,
        })
        order.sz -= size
        order.filled += size
        order.notional += size * price
        if order.sz == 0:
            order.status, order.status_ts = "filled", now

    def _cancel(self, user: str, c: dict[str, Any]) -> Any:
        asset = int(c.get("a", c.get("asset", -1)))
        for order in self.orders.values():
            hit = order.oid == c.get("o") if "o" in c else order.cloid == str(c.get("cloid", "")).lower()
            if hit and order.user == user and order.status in ("open", "triggered"):
                order.status, order.status_ts = "canceled", _now_ms()
                return "success"
        return {"error": f"{NEVER_PLACED} asset={asset}"}


def exchange_body(request: Request) -> dict[str, Any]:
    """The JSON body of a journalled /exchange request."""
    body: dict[str, Any] = json.loads(request.body)
    return body


@contextmanager
def harness(*, network: str = "testnet") -> Iterator[VenueHarness]:
    """Start a fake Hyperliquid with a funded account and an approved API wallet; yield the harness."""
    from exchanges.hyperliquid import client_id_for

    fake = HyperliquidFake(mainnet=network == "mainnet")
    owner, agent = Account.create(), Account.create()
    fake.add_user(owner.address, Decimal("1000000"))
    fake.approve_agent(agent.address, owner.address)
    with fake:
        yield VenueHarness(
            venue="hyperliquid",
            network=network,
            endpoint=fake.url,
            credentials={"secret_key": "0x" + bytes(agent.key).hex(), "account_address": owner.address,
                         "timeout": "5"},
            symbol="BTC/USDC:USDC",
            price=fake.prices["BTC"],
            set_price=lambda symbol, price: fake.set_price(symbol.split("/")[0], price),
            plan=fake.plan,
            created_client_ids=lambda: [client_id_for(c) for c in fake.created_cloids()],
            partial_fills=fake.partial_fills,
            order_faults=fake.order_faults,
            extra={"fake": fake, "owner": owner, "agent": agent, "client_timeout": 5},
        )
