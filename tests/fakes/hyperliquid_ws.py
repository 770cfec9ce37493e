"""A loopback Hyperliquid websocket (`ws://127.0.0.1:PORT/ws`) speaking the venue's market-data protocol.

Message shapes as hyperliquid-python-sdk 0.24's `hyperliquid/websocket_manager.py` and `hyperliquid/utils/types.py`
read and write them, and as the venue's docs ("Websocket", "Subscriptions", "Timeouts and heartbeats") give them:
- a client sends `{"method": "subscribe"|"unsubscribe", "subscription": {"type": "allMids"}}` or
  `{..., "subscription": {"type": "candle", "coin": "BTC", "interval": "1m"}}`, and `{"method": "ping"}`;
- the server first sends the plain-text frame "Websocket connection established." (the SDK skips it), acks each
  (un)subscribe on channel `subscriptionResponse` with the request echoed as `data`, answers a ping with
  `{"channel": "pong"}`, and sends data as `{"channel": "allMids", "data": {"mids": {coin: px}}}` and
  `{"channel": "candle", "data": {"t", "T", "s", "i", "o", "c", "h", "l", "v", "n"}}` (prices and volume as strings,
  `t`/`T` the candle's open and close in epoch ms, `n` the trade count: as the recorded candleSnapshot rows in
  tests/fixtures/venues/hyperliquid/candle_snapshot.json), only to the connections subscribed to them.
- A request it cannot read gets `{"channel": "error", "data": "..."}` (the venue's text is not recorded here).

Knobs, callable from any thread (the server runs on its own event loop in its own thread, so sync tests and
asyncio tests use it alike): `push_mids`, `push_candle`, `push_raw` (what was sent to whom: the number of
connections it went to), `silent` (send nothing, not even acks, but keep answering pings: protocol pings are
answered by websockets itself, app pings by this fake), `answer_pings(False)` (no pong), `drop` (close every open
connection after what is already queued: with a close frame, or `abort=True` for a bare TCP reset), `refuse(n)`
(the next n handshakes get an HTTP error), `delay(seconds)` (each outgoing frame waits that long), and `flood`
(pre-encoded frames sent back to back, for benchmarks; `compression=None` turns permessage-deflate off).
Observations: `subscriptions()`, `received()`,
`handshakes`, `connections_opened`, `open_connections`, `pings`.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

WELCOME = "Websocket connection established."
MINUTE = 60_000
INTERVAL_MS = {"1m": MINUTE, "3m": 3 * MINUTE, "5m": 5 * MINUTE, "15m": 15 * MINUTE, "30m": 30 * MINUTE,
               "1h": 60 * MINUTE, "2h": 120 * MINUTE, "4h": 240 * MINUTE, "8h": 480 * MINUTE, "12h": 720 * MINUTE,
               "1d": 1440 * MINUTE, "3d": 3 * 1440 * MINUTE, "1w": 7 * 1440 * MINUTE}

Sub = tuple[str, ...]  # ("allMids",) or ("candle", coin, interval)
_CLOSE = object()


def candle_data(coin: str, interval: str, t: int, *, o: str, h: str, l: str, c: str, v: str,  # noqa: E741
                n: int = 1) -> dict[str, Any]:
    """A candle message's data as the venue sends it: `t` the open in epoch ms, `T` the last ms of the interval."""
    return {"t": t, "T": t + INTERVAL_MS[interval] - 1, "s": coin, "i": interval, "o": o, "c": c, "h": h, "l": l,
            "v": v, "n": n}


def mids_frame(mids: Mapping[str, str]) -> str:
    return json.dumps({"channel": "allMids", "data": {"mids": dict(mids)}})


def candle_frame(data: Mapping[str, Any]) -> str:
    return json.dumps({"channel": "candle", "data": dict(data)})


def _sub_key(subscription: Any) -> Sub | None:
    if not isinstance(subscription, dict):
        return None
    if subscription.get("type") == "allMids":
        return ("allMids",)
    if subscription.get("type") == "candle" and isinstance(subscription.get("coin"), str) \
            and subscription.get("interval") in INTERVAL_MS:
        return ("candle", subscription["coin"], subscription["interval"])
    return None


@dataclass(eq=False)
class _Client:
    number: int
    ws: ServerConnection
    outbox: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    subs: set[Sub] = field(default_factory=set)


class FakeHyperliquidWs:
    """The venue's websocket on 127.0.0.1; `base_url` is what a stream is built with (REST-style http URL)."""

    def __init__(self, *, compression: str | None = "deflate") -> None:
        self._compression = compression  # permessage-deflate offered, as websockets does by default
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Server | None = None
        self._clients: list[_Client] = []
        self._silent = False
        self._answer_pings = True
        self._delay = 0.0
        self._refuse = 0
        self._refuse_status = HTTPStatus.SERVICE_UNAVAILABLE
        self._received: list[tuple[int, Any]] = []
        self.port = 0
        self.handshakes = 0  # opening handshakes seen, refused ones included
        self.connections_opened = 0
        self.pings = 0  # app-level {"method": "ping"} frames received

    # -- life cycle ------------------------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeHyperliquidWs:
        ready: Future[None] = Future()
        self._thread = threading.Thread(target=self._serve, args=(ready,), name="FakeHyperliquidWs", daemon=True)
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

    def __enter__(self) -> FakeHyperliquidWs:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self, ready: Future[None]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            self._server = loop.run_until_complete(self._open())
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set_result(None)
            loop.run_forever()
        except BaseException as exc:  # noqa: BLE001 - handed to start()
            if not ready.done():
                ready.set_exception(exc)
            raise
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _open(self) -> Server:
        return await serve(self._handler, "127.0.0.1", 0, process_request=self._process_request,
                           compression=self._compression)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _run(self, coro: Any) -> Any:
        assert self._loop is not None, "the fake is not started"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    # -- knobs -----------------------------------------------------------------------------------------------------

    def silent(self, on: bool = True) -> None:
        """Send nothing (no data, no acks; pushes are discarded) but keep answering pings."""
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
        """Answer the next `count` opening handshakes with HTTP `status` instead of upgrading."""
        with self._lock:
            self._refuse, self._refuse_status = count, status

    def push_mids(self, mids: Mapping[str, str]) -> int:
        """Send allMids to every connection subscribed to it; how many got it."""
        return self._push(("allMids",), mids_frame(mids))

    def push_candle(self, coin: str, interval: str, t: int, *, o: str, h: str, l: str, c: str, v: str,  # noqa: E741
                    n: int = 1) -> int:
        """Send one candle update to the connections subscribed to (coin, interval); how many got it."""
        data = candle_data(coin, interval, t, o=o, h=h, l=l, c=c, v=v, n=n)
        return self._push(("candle", coin, interval), candle_frame(data))

    def push_raw(self, text: str, to: Sub = ("allMids",)) -> int:
        """Send a frame as it is (malformed ones included) to the connections subscribed to `to`."""
        return self._push(to, text)

    def drop(self, *, code: int = 1011, reason: str = "", abort: bool = False) -> int:
        """Close every open connection once what is already queued has gone; how many were closed."""
        async def go() -> int:
            for client in self._clients:
                client.outbox.put_nowait((_CLOSE, code, reason, abort))
            return len(self._clients)
        return int(self._run(go()))

    def flood(self, frames: Iterable[str], to: Sub = ("allMids",)) -> int:
        """Send pre-encoded frames back to back (no queue, no delay) to the subscribed connections; frames sent."""
        frames = list(frames)

        async def go() -> int:
            sent = 0
            for client in [c for c in self._clients if to in c.subs]:
                try:
                    for frame in frames:
                        await client.ws.send(frame)
                        sent += 1
                except ConnectionClosed:
                    pass
            return sent
        assert self._loop is not None
        return int(asyncio.run_coroutine_threadsafe(go(), self._loop).result())

    def _push(self, to: Sub, text: str) -> int:
        async def go() -> int:
            with self._lock:
                if self._silent:
                    return 0
            targets = [client for client in self._clients if to in client.subs]
            for client in targets:
                client.outbox.put_nowait(text)
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
        """Every frame received as (connection number, parsed JSON or the raw text), in order."""
        with self._lock:
            return list(self._received)

    # -- the server ------------------------------------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        with self._lock:
            self.handshakes += 1
            if request.path != "/ws":
                return connection.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
            if self._refuse > 0:
                self._refuse -= 1
                return connection.respond(self._refuse_status, f"{self._refuse_status.phrase}\n")
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        with self._lock:
            self.connections_opened += 1
            client = _Client(self.connections_opened, ws)
            self._clients.append(client)
            if not self._silent:
                client.outbox.put_nowait(WELCOME)
        pump = asyncio.create_task(self._pump(client))
        try:
            async for raw in ws:
                self._on_frame(client, raw)
        except ConnectionClosed:
            pass
        finally:
            with self._lock:
                self._clients.remove(client)
            pump.cancel()
            try:
                await pump
            except (asyncio.CancelledError, ConnectionClosed):
                pass

    async def _pump(self, client: _Client) -> None:
        while True:
            item = await client.outbox.get()
            with self._lock:
                delay = self._delay
            if delay:
                await asyncio.sleep(delay)
            if isinstance(item, tuple) and item[0] is _CLOSE:
                _, code, reason, abort = item
                if abort:
                    client.ws.transport.abort()
                else:
                    await client.ws.close(code, reason)
                return
            await client.ws.send(item)

    def _on_frame(self, client: _Client, raw: str | bytes) -> None:
        try:
            message = json.loads(raw)
        except ValueError:
            message = None
        with self._lock:
            self._received.append((client.number, message if message is not None else raw))
            silent, answer_pings = self._silent, self._answer_pings
        method = message.get("method") if isinstance(message, dict) else None
        if method == "ping":
            with self._lock:
                self.pings += 1
            if answer_pings:
                client.outbox.put_nowait(json.dumps({"channel": "pong"}))
            return
        key = _sub_key(message.get("subscription")) if isinstance(message, dict) else None
        if method in ("subscribe", "unsubscribe") and key is not None:
            with self._lock:
                if method == "subscribe":
                    client.subs.add(key)
                else:
                    client.subs.discard(key)
            if not silent:
                client.outbox.put_nowait(json.dumps({"channel": "subscriptionResponse", "data": message}))
            return
        if not silent:
            text = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
            client.outbox.put_nowait(json.dumps({"channel": "error", "data": f"Invalid request: {text}"}))
