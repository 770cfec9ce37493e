"""Fault injection and a journal shared by the loopback fake venues.

A fake venue is a `FakeHTTPServer` (127.0.0.1, a free port, one thread per connection) with a venue-specific
`route(request) -> Reply`. Before routing, the server consults its `FaultPlan`; the plan can delay, refuse
(429 with Retry-After, 5xx), drop the connection without an answer, or let the request through and then drop the
reply (accept-then-drop: the venue took the order, the client never hears). Every request is journalled.

    plan.fail_for(20, status=503)              # every request answers 503 for 20 s
    plan.next(3, Fault.RATE_LIMIT, retry_after=1)
    plan.next(1, Fault.ACCEPT_THEN_DROP, match=lambda r: r.path.endswith("/orders"))
    plan.latency = 0.05

Order faults are the venue's own: `OrderFaultPlan` (each fake's `order_faults`) is consulted by the fake's order
create path with the order it read off the wire (`WireOrder`), and the fake answers in its venue's words (a refusal,
an order canceled or expired unfilled, an IOC filled in part, a reply lost after the order was worked):

    fake.order_faults.next(2, OrderFault.REFUSE, match=lambda order: order.side is Side.SELL)
"""

from __future__ import annotations

import enum
import json
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from exchanges.base import OrderType, Side


class Fault(enum.Enum):
    RATE_LIMIT = "429"
    SERVER_ERROR = "5xx"
    DROP = "drop"  # close the connection before the request is processed
    ACCEPT_THEN_DROP = "accept-then-drop"  # process the request, then close without replying
    TIMEOUT = "timeout"  # hold the request for `hold` seconds before processing it (longer than the client waits)


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # with the query string
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body or b"null")


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any = None  # JSON-serialisable, or bytes sent as they are
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False  # the request was worked, but the connection closes without this answer


Matcher = Callable[[Request], bool]


@dataclass
class _Planned:
    fault: Fault
    remaining: int
    match: Matcher | None
    status: int
    retry_after: float | None
    hold: float


class FaultPlan:
    """What the fake does wrong, consumed request by request; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._planned: list[_Planned] = []
        self._fail_until = 0.0
        self._fail_status = 503
        self._fail_match: Matcher | None = None
        self.latency = 0.0  # seconds added to every request

    def next(self, count: int, fault: Fault, *, match: Matcher | None = None, status: int = 503,
             retry_after: float | None = None, hold: float = 30.0) -> None:
        """Apply `fault` to the next `count` requests that `match` (all requests when None)."""
        with self._lock:
            self._planned.append(_Planned(fault, count, match, status, retry_after, hold))

    def fail_for(self, seconds: float, *, status: int = 503, match: Matcher | None = None) -> None:
        """Answer `status` to every matching request for `seconds`."""
        with self._lock:
            self._fail_until, self._fail_status, self._fail_match = time.monotonic() + seconds, status, match

    def clear(self) -> None:
        with self._lock:
            self._planned.clear()
            self._fail_until = 0.0
            self.latency = 0.0

    def take(self, request: Request) -> _Planned | None:
        """Return the fault for this request, if any (consuming one planned occurrence)."""
        with self._lock:
            if time.monotonic() < self._fail_until and (self._fail_match is None or self._fail_match(request)):
                return _Planned(Fault.SERVER_ERROR, 1, None, self._fail_status, None, 0.0)
            for planned in self._planned:
                if planned.remaining > 0 and (planned.match is None or planned.match(request)):
                    planned.remaining -= 1
                    return planned
        return None


class OrderFault(enum.Enum):
    """What a fake venue does with an order it is asked to create, in its own wire format."""

    REFUSE = "refuse"  # the venue's own refusal: nothing is created
    CANCEL = "cancel"  # taken, then canceled with nothing filled (an IOC with nothing to match)
    PARTIAL = "partial"  # half filled (floored to the lot), the rest canceled
    EXPIRE = "expire"  # taken, then expired by the venue with nothing filled
    DROP = "drop"  # taken and worked as usual, but the reply is lost (the connection closes unanswered)


@dataclass(frozen=True)
class WireOrder:
    """An order-creating request as a fake venue read it off the wire (venue-neutral, for fault predicates)."""

    side: Side
    type: OrderType
    quantity: Decimal  # in base units
    market: str  # the venue's own market name (BTC-USD, BTC, ETH-PERP)
    client_order_id: str
    reduce_only: bool = False


OrderMatcher = Callable[[WireOrder], bool]


class OrderFaultPlan:
    """Order faults a fake venue plays on its next matching creates, in the order they were planned; thread-safe.

    `unsupported` names the faults the venue cannot play, each with the reason (planning one raises ValueError).
    """

    def __init__(self, unsupported: Mapping[OrderFault, str] | None = None) -> None:
        self._lock = threading.Lock()
        self._planned: list[list[Any]] = []  # [fault, matcher, remaining]
        self.unsupported: dict[OrderFault, str] = dict(unsupported or {})

    def next(self, count: int, fault: OrderFault, *, match: OrderMatcher | None = None) -> None:
        """Play `fault` on the next `count` created orders that `match` accepts (every order when None)."""
        if fault in self.unsupported:
            raise ValueError(f"{fault.value}: {self.unsupported[fault]}")
        with self._lock:
            self._planned.append([fault, match or (lambda order: True), count])

    def take(self, order: WireOrder) -> OrderFault | None:
        """Return the fault planned for this order, if any, and count it as played."""
        with self._lock:
            for planned in self._planned:
                fault, match, remaining = planned
                if remaining > 0 and match(order):
                    planned[2] = remaining - 1
                    return fault  # type: ignore[no-any-return]
        return None

    def remaining(self) -> int:
        """How many planned faults are still to be played."""
        with self._lock:
            return sum(int(p[2]) for p in self._planned)

    def clear(self) -> None:
        with self._lock:
            self._planned.clear()


class FakeHTTPServer(ThreadingHTTPServer):
    """A loopback HTTP server; subclasses implement `route`."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.plan = FaultPlan()
        self.order_faults = OrderFaultPlan()  # played by the venue's create path (subclasses)
        self.journal: list[Request] = []
        self.journal_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def route(self, request: Request) -> Reply:
        raise NotImplementedError

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (a held reply past its timeout) and hung up is part of the plan, not an error of the
        fake: stay quiet about it. Anything else is a bug in the fake and is printed."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)

    def start(self) -> FakeHTTPServer:
        self._thread = threading.Thread(target=self.serve_forever, name=type(self).__name__, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def requests(self, predicate: Matcher | None = None) -> list[Request]:
        """The journal, optionally filtered."""
        with self.journal_lock:
            return [r for r in self.journal if predicate is None or predicate(r)]

    def __enter__(self) -> FakeHTTPServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    server: FakeHTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        return

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        request = Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body,
                          time.monotonic())
        with self.server.journal_lock:
            self.server.journal.append(request)
        plan = self.server.plan
        if plan.latency:
            time.sleep(plan.latency)
        fault = plan.take(request)
        if fault is not None:
            if fault.fault is Fault.DROP:
                self._drop()
                return
            if fault.fault is Fault.RATE_LIMIT:
                headers = {} if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}
                self._send(Reply(429, {"error": "rate limited", "message": "Too many requests"}, headers))
                return
            if fault.fault is Fault.SERVER_ERROR:
                self._send(Reply(fault.status, {"error": "unavailable", "message": "Service Unavailable"}))
                return
            if fault.fault is Fault.TIMEOUT:
                time.sleep(fault.hold)
        reply = self.server.route(request)
        if (fault is not None and fault.fault is Fault.ACCEPT_THEN_DROP) or reply.drop:
            self._drop()
            return
        self._send(reply)

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _send(self, reply: Reply) -> None:
        payload = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.headers.get("Content-Type", "application/json"))
        self.send_header("Content-Length", str(len(payload)))
        for key, value in reply.headers.items():
            if key != "Content-Type":
                self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_DELETE = do_PUT = _serve
