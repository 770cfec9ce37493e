"""A loopback Coinbase Advanced Trade market-data websocket, with the REST routes ccxt.pro reads first, on one port.

One aiohttp app on 127.0.0.1 serves both, in a thread and event loop of its own (sync tests and asyncio tests use it
alike; a stream under test runs on the test's loop, never on this one):
- REST, what `ccxt.pro.coinbase.load_markets()` calls before its first subscribe (no credentials: no
  transaction_summary): `GET /v2/currencies` (fiat), `/v2/currencies/crypto`, `/v2/exchange-rates` and
  `/api/v3/brokerage/market/products` (`?product_type=FUTURE` answers an empty list). Products are the spot
  products of the REST fake (tests/fakes/coinbase_venue.py: `product()`, every field of the recorded listing);
  currency rows and rates are in the shapes quoted in ccxt's coinbase.py (`fetch_currencies`, `fetch_tickers_v2`).
- The websocket at the root path (the venue's is `wss://advanced-trade-ws.coinbase.com`, no path). A client sends
  `{"type": "subscribe"|"unsubscribe", "product_ids": [...], "channel": name}`, one channel a frame (Coinbase
  "WebSocket Overview"). Every server message is the Advanced Trade envelope `{channel, client_id: "", timestamp
  (RFC 3339 with nanoseconds), sequence_num (per connection, from 0), events: [...]}` with numbers as strings, in
  the shapes quoted in ccxt's pro/coinbase.py (`handle_tickers`, `handle_trade`, `handle_heartbeats`,
  `handle_subscription_status`):
  - `ticker`: on subscribe a `snapshot` event with each product's current ticker, then `update` events:
    `tickers[] {type: "ticker", product_id, price, volume_24_h, low_24_h, high_24_h, low_52_w, high_52_w,
    price_percent_chg_24_h, best_bid, best_bid_quantity, best_ask, best_ask_quantity}`;
  - `market_trades`: on subscribe a `snapshot` event replaying each product's most recent trades (`replay`, 50 by
    default), newest first, then `update` events: `trades[] {trade_id, product_id, price, size, side BUY|SELL,
    time}`;
  - `heartbeats`: `{current_time (Go's time.String()), heartbeat_counter}` every `heartbeat_interval` seconds;
  - `subscriptions`: after each (un)subscribe, what the connection now follows, `{subscriptions: {channel: [ids]}}`.
  A frame it cannot read, or an unknown product, gets `{"type": "error", "message": ...}` (the shape ccxt's
  `handle_message` reads; the venue's wording is not recorded here).

Knobs, callable from any thread: `push_ticker`, `push_trades` (the trades also join the replay history),
`push_raw` (a frame as it is, malformed ones included), `silent` (send nothing at all, not even heartbeats or the
subscribe snapshot, but keep answering pings), `answer_pings(False)`, `drop` (close every open connection once what
is queued has gone: a close frame with `code`, or `abort=True` for a bare TCP reset), `refuse(n)` (the next n
websocket handshakes get an HTTP error), `delay(seconds)` (every outgoing frame waits that long). Observations:
`subscriptions()`, `received()`, `rest_requests()`, `handshakes`, `connections_opened`, `open_connections`, `pings`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, UTC
from decimal import Decimal
from http import HTTPStatus
from typing import Any

from aiohttp import WSMsgType, web

from tests.fakes.coinbase_venue import DEFAULT_PRICES, DEFAULT_PRODUCTS, NAMES, fmt

PRODUCTS_PATH = "/api/v3/brokerage/market/products"
FIAT = ("USD", "EUR", "GBP")
Sub = tuple[str, str]  # (channel, product id); ("heartbeats", "") for the heartbeats channel
_CLOSE = object()


def rfc3339_ns(moment_ns: int | None = None) -> str:
    """A time as the envelope's `timestamp`: RFC 3339, UTC, nanoseconds ("2023-02-09T20:30:37.167359596Z")."""
    ns = time.time_ns() if moment_ns is None else moment_ns
    seconds, fraction = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{fraction:09d}Z"


def go_time(moment_ns: int, uptime: float) -> str:
    """A time as a heartbeat's `current_time`: Go's time.String() with the monotonic reading."""
    seconds, fraction = divmod(moment_ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")
    return f"{stamp}.{fraction:09d} +0000 UTC m=+{uptime:.9f}"


def trade_time(moment: datetime | str) -> str:
    """A trade's `time`: RFC 3339 UTC with the fraction the venue sends (here microseconds, trailing zeros cut)."""
    if isinstance(moment, str):
        return moment
    text = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0").rstrip(".")
    return text + "Z"


def ticker_row(product_id: str, price: Decimal | str, **fields: str) -> dict[str, str]:
    """One entry of a ticker event's `tickers`, every field the venue sends (as strings)."""
    px = fmt(Decimal(price)) if isinstance(price, Decimal) else price
    row = {
        "type": "ticker", "product_id": product_id, "price": px, "volume_24_h": "1520.61364482",
        "low_24_h": px, "high_24_h": px, "low_52_w": px, "high_52_w": px, "price_percent_chg_24_h": "0",
        "best_bid": px, "best_bid_quantity": "0.5", "best_ask": px, "best_ask_quantity": "0.5",
    }
    row.update(fields)
    return row


@dataclass(eq=False)
class _Client:
    number: int
    ws: web.WebSocketResponse
    transport: asyncio.BaseTransport | None
    outbox: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    subs: set[Sub] = field(default_factory=set)
    sequence: itertools.count[int] = field(default_factory=itertools.count)
    heartbeat: asyncio.Task[None] | None = None


class FakeCoinbaseWs:
    """Coinbase's public websocket and ccxt's market-loading REST routes on 127.0.0.1 (one port)."""

    def __init__(self, *, replay: int = 50, heartbeat_interval: float = 1.0) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._clients: list[_Client] = []
        self._silent = False
        self._answer_pings = True
        self._delay = 0.0
        self._refuse = 0
        self._refuse_status = HTTPStatus.SERVICE_UNAVAILABLE
        self._received: list[tuple[int, Any]] = []
        self._rest: list[str] = []
        self._trade_ids = itertools.count(1000)
        self._started = time.monotonic()
        self._heartbeats = itertools.count(1)
        self.replay = replay
        self.heartbeat_interval = heartbeat_interval
        self.products: dict[str, dict[str, Any]] = {k: dict(v) for k, v in DEFAULT_PRODUCTS.items()}
        self.tickers: dict[str, dict[str, str]] = {k: ticker_row(k, v) for k, v in DEFAULT_PRICES.items()}
        self.trades: dict[str, list[dict[str, str]]] = {}  # product -> its trades, oldest first
        self.port = 0
        self.handshakes = 0  # websocket handshakes seen, refused ones included
        self.connections_opened = 0
        self.pings = 0  # protocol pings received

    # -- life cycle ------------------------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The REST base URL (what a stream is built with)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> FakeCoinbaseWs:
        ready: Future[None] = Future()
        self._thread = threading.Thread(target=self._serve, args=(ready,), name="FakeCoinbaseWs", daemon=True)
        self._thread.start()
        ready.result(timeout=10)
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._loop = self._thread = None

    def __enter__(self) -> FakeCoinbaseWs:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self, ready: Future[None]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            app = web.Application()
            app.router.add_get("/", self._websocket)
            app.router.add_get("/v2/currencies", self._fiat)
            app.router.add_get("/v2/currencies/crypto", self._crypto)
            app.router.add_get("/v2/exchange-rates", self._rates)
            app.router.add_get(PRODUCTS_PATH, self._products)
            self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            self.port = int(self._runner.addresses[0][1])
            ready.set_result(None)
            loop.run_forever()
        except BaseException as exc:  # noqa: BLE001 - handed to start()
            if not ready.done():
                ready.set_exception(exc)
            raise
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _shutdown(self) -> None:
        for client in list(self._clients):
            if client.heartbeat is not None:
                client.heartbeat.cancel()
            await client.ws.close(code=1001)
        if self._runner is not None:
            await self._runner.cleanup()

    def _run(self, coro: Any) -> Any:
        assert self._loop is not None, "the fake is not started"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    # -- knobs -----------------------------------------------------------------------------------------------------

    def silent(self, on: bool = True) -> None:
        """Send nothing (no data, no heartbeats, no acks; pushes are discarded) but keep answering pings."""
        with self._lock:
            self._silent = on

    def answer_pings(self, on: bool = True) -> None:
        with self._lock:
            self._answer_pings = on

    def delay(self, seconds: float) -> None:
        """Hold every outgoing frame `seconds` before sending it (order kept)."""
        with self._lock:
            self._delay = seconds

    def refuse(self, count: int, status: HTTPStatus = HTTPStatus.SERVICE_UNAVAILABLE) -> None:
        """Answer the next `count` websocket handshakes with HTTP `status` instead of upgrading."""
        with self._lock:
            self._refuse, self._refuse_status = count, status

    def trade(self, product_id: str, price: str, size: str, moment: datetime | str, *, side: str = "BUY",
              trade_id: str | None = None) -> dict[str, str]:
        """A trade in the wire shape (a fresh trade id unless given); not sent."""
        return {"trade_id": trade_id or str(next(self._trade_ids)), "product_id": product_id, "price": price,
                "size": size, "side": side, "time": trade_time(moment)}

    def push_ticker(self, product_id: str, price: str, **fields: str) -> int:
        """Send a ticker update to the connections subscribed to the product's ticker; how many got it."""
        row = ticker_row(product_id, price, **fields)
        with self._lock:
            self.tickers[product_id] = row
        return self._push(("ticker", product_id), "ticker", [{"type": "update", "tickers": [row]}])

    def push_trades(self, product_id: str, trades: Iterable[dict[str, str]]) -> int:
        """Send trades (given oldest first) as one market_trades update, newest first; they join the replay."""
        rows = list(trades)
        with self._lock:
            self.trades.setdefault(product_id, []).extend(rows)
        return self._push(("market_trades", product_id), "market_trades",
                          [{"type": "update", "trades": list(reversed(rows))}])

    def push_raw(self, text: str, to: Sub = ("ticker", "BTC-USD")) -> int:
        """Send a frame as it is to the connections subscribed to `to`; how many got it."""
        async def go() -> int:
            with self._lock:
                if self._silent:
                    return 0
            targets = [client for client in self._clients if to in client.subs]
            for client in targets:
                client.outbox.put_nowait(text)
            return len(targets)
        return int(self._run(go()))

    def drop(self, *, code: int = 1011, abort: bool = False) -> int:
        """Close every open connection once what is already queued has gone; how many were closed."""
        async def go() -> int:
            for client in self._clients:
                client.outbox.put_nowait((_CLOSE, code, abort))
            return len(self._clients)
        return int(self._run(go()))

    def _push(self, to: Sub, channel: str, events: list[dict[str, Any]]) -> int:
        async def go() -> int:
            with self._lock:
                if self._silent:
                    return 0
            targets = [client for client in self._clients if to in client.subs]
            for client in targets:
                self._send(client, channel, events)
            return len(targets)
        return int(self._run(go()))

    # -- observations ----------------------------------------------------------------------------------------------

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._clients)

    def subscriptions(self) -> list[frozenset[Sub]]:
        """The subscriptions of each open connection, oldest connection first."""
        with self._lock:
            return [frozenset(client.subs) for client in self._clients]

    def received(self) -> list[tuple[int, Any]]:
        """Every websocket frame received as (connection number, parsed JSON or the raw text), in order."""
        with self._lock:
            return list(self._received)

    def rest_requests(self) -> list[str]:
        """The REST requests served, as "GET /path?query", in order."""
        with self._lock:
            return list(self._rest)

    # -- REST ------------------------------------------------------------------------------------------------------

    def _journal(self, request: web.Request) -> None:
        with self._lock:
            self._rest.append(f"{request.method} {request.path_qs}")

    async def _fiat(self, request: web.Request) -> web.Response:
        self._journal(request)
        rows = [{"id": code, "name": NAMES.get(code, code), "min_size": "0.01"} for code in FIAT]
        return web.json_response({"data": rows})

    async def _crypto(self, request: web.Request) -> web.Response:
        self._journal(request)
        codes = sorted({p["base_currency_id"] for p in self.products.values()}
                       | {p["quote_currency_id"] for p in self.products.values()} - set(FIAT))
        rows = [{"asset_id": f"00000000-0000-4000-8000-{index:012d}", "code": code, "name": NAMES.get(code, code),
                 "color": "#0052FF", "sort_index": str(index), "exponent": "8", "type": "crypto",
                 "address_regex": "^.+$"} for index, code in enumerate(codes, start=1)]
        return web.json_response({"data": rows})

    async def _rates(self, request: web.Request) -> web.Response:
        self._journal(request)
        with self._lock:
            rates = {"USD": "1"}
            for product_id, row in self.tickers.items():
                base, quote = product_id.split("-")
                if quote == "USD" and row.get("price"):
                    rates[base] = fmt(Decimal(1) / Decimal(row["price"]))
        return web.json_response({"data": {"currency": "USD", "rates": rates}})

    async def _products(self, request: web.Request) -> web.Response:
        self._journal(request)
        if request.query.get("product_type", "SPOT") != "SPOT":
            return web.json_response({"products": [], "num_products": 0})
        with self._lock:
            rows = [dict(p, price=self.tickers[k]["price"] if k in self.tickers else "")
                    for k, p in self.products.items()]
        return web.json_response({"products": rows, "num_products": len(rows)})

    # -- websocket -------------------------------------------------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            self.handshakes += 1
            if self._refuse > 0:
                self._refuse -= 1
                status = self._refuse_status
                return web.Response(status=status, text=f"{status.phrase}\n")
        ws = web.WebSocketResponse(autoping=False, max_msg_size=2 ** 20)
        await ws.prepare(request)
        with self._lock:
            self.connections_opened += 1
            client = _Client(self.connections_opened, ws, request.transport)
            self._clients.append(client)
        pump = asyncio.create_task(self._pump(client))
        try:
            async for message in ws:
                if message.type == WSMsgType.PING:
                    with self._lock:
                        self.pings += 1
                        answer = self._answer_pings
                    if answer:
                        await ws.pong(message.data)
                elif message.type == WSMsgType.TEXT:
                    self._on_frame(client, message.data)
                elif message.type == WSMsgType.CLOSE:
                    break
        finally:
            with self._lock:
                self._clients.remove(client)
            for task in (pump, client.heartbeat):
                if task is not None:
                    task.cancel()
                    try:
                        await task
                    except (asyncio.CancelledError, ConnectionError):
                        pass
        return ws

    async def _pump(self, client: _Client) -> None:
        while True:
            item = await client.outbox.get()
            with self._lock:
                delay = self._delay
            if delay:
                await asyncio.sleep(delay)
            if isinstance(item, tuple) and item[0] is _CLOSE:
                _, code, abort = item
                if abort:
                    if isinstance(client.transport, asyncio.Transport):
                        client.transport.abort()
                else:
                    await client.ws.close(code=code)
                return
            try:
                await client.ws.send_str(item)
            except ConnectionError:
                return

    def _send(self, client: _Client, channel: str, events: list[dict[str, Any]]) -> None:
        """Queue one enveloped message to a client (the caller has checked `silent`)."""
        envelope = {"channel": channel, "client_id": "", "timestamp": rfc3339_ns(),
                    "sequence_num": next(client.sequence), "events": events}
        client.outbox.put_nowait(json.dumps(envelope))

    async def _beat(self, client: _Client) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            with self._lock:
                silent = self._silent
            if not silent:
                now = time.time_ns()
                self._send(client, "heartbeats", [{
                    "current_time": go_time(now, time.monotonic() - self._started),
                    "heartbeat_counter": str(next(self._heartbeats))}])

    def _on_frame(self, client: _Client, raw: str) -> None:
        try:
            message = json.loads(raw)
        except ValueError:
            message = None
        with self._lock:
            self._received.append((client.number, message if message is not None else raw))
            silent = self._silent
        kind = message.get("type") if isinstance(message, dict) else None
        channel = message.get("channel") if isinstance(message, dict) else None
        ids = message.get("product_ids", []) if isinstance(message, dict) else None
        known = ("ticker", "market_trades", "heartbeats")
        if kind not in ("subscribe", "unsubscribe") or channel not in known or not isinstance(ids, list):
            if not silent:
                client.outbox.put_nowait(json.dumps({"type": "error", "message": f"invalid request: {raw[:200]}"}))
            return
        unknown = [p for p in ids if p not in self.products]
        if unknown:
            if not silent:
                client.outbox.put_nowait(json.dumps({"type": "error", "message": f"unknown products {unknown}"}))
            return
        subs = [("heartbeats", "")] if channel == "heartbeats" else [(channel, p) for p in ids]
        with self._lock:
            if kind == "subscribe":
                client.subs.update(subs)
            else:
                client.subs.difference_update(subs)
        if kind == "subscribe" and channel == "heartbeats" and client.heartbeat is None:
            client.heartbeat = asyncio.create_task(self._beat(client))
        if silent:
            return
        if kind == "subscribe" and channel == "ticker":
            with self._lock:
                rows = [dict(self.tickers[p]) for p in ids if p in self.tickers]
            self._send(client, "ticker", [{"type": "snapshot", "tickers": rows}])
        elif kind == "subscribe" and channel == "market_trades":
            for product_id in ids:
                with self._lock:
                    recent = self.trades.get(product_id, [])[-self.replay:] if self.replay else []
                self._send(client, "market_trades", [{"type": "snapshot", "trades": list(reversed(recent))}])
        following: dict[str, list[str]] = {}
        for sub_channel, product_id in sorted(client.subs):
            following.setdefault(sub_channel, [])
            if product_id:
                following[sub_channel].append(product_id)
        self._send(client, "subscriptions", [{"subscriptions": following}])
