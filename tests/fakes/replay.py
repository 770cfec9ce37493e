"""A loopback server that answers each request with a real recorded venue reply (tests/fixtures/venues).

Rules are tried in order; the first whose `match` accepts the request answers with its reply (a recorded body, sent
byte for byte, or a function of the request for the few venue behaviours a recording cannot hold: a time filter,
the end of a paged list). A request no rule matches is journalled in `unmatched` and answered 404, so a test can
assert that every request its connector sent was answered from a recording.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fakes.faults import FakeHTTPServer, Reply, Request

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "venues"

Answer = Reply | Callable[[Request], Reply]


def recorded(name: str) -> bytes:
    """The bytes of a recorded reply under tests/fixtures/venues (e.g. "hyperliquid/meta.json")."""
    return (FIXTURES / name).read_bytes()


def recorded_json(name: str) -> Any:
    """A recorded reply, parsed."""
    return json.loads(recorded(name))


def body(name: str) -> Reply:
    """A 200 whose body is the recorded file, unchanged."""
    return Reply(200, recorded(name))


def info_type(kind: str) -> Callable[[Request], bool]:
    """Matches a Hyperliquid POST /info of this request type."""
    def match(request: Request) -> bool:
        if request.method != "POST" or request.path != "/info":
            return False
        payload = request.json()
        return isinstance(payload, dict) and payload.get("type") == kind
    return match


def get(path: str, **query: str) -> Callable[[Request], bool]:
    """Matches a GET of this path whose query carries these values."""
    def match(request: Request) -> bool:
        parts = urlsplit(request.path)
        found = parse_qs(parts.query)
        return (request.method == "GET" and parts.path == path
                and all(value in found.get(key, []) for key, value in query.items()))
    return match


def query(request: Request) -> dict[str, list[str]]:
    """The query string of a request, parsed."""
    return parse_qs(urlsplit(request.path).query)


class ReplayVenue(FakeHTTPServer):
    """Serves recorded replies by rule; journals what it could not answer."""

    def __init__(self, rules: list[tuple[Callable[[Request], bool], Answer]]) -> None:
        super().__init__()
        self.rules = list(rules)
        self.unmatched: list[Request] = []

    def serve_forever(self, poll_interval: float = 0.05) -> None:
        super().serve_forever(poll_interval)

    def route(self, request: Request) -> Reply:
        for match, answer in self.rules:
            if match(request):
                return answer(request) if callable(answer) else answer
        with self.journal_lock:
            self.unmatched.append(request)
        return Reply(404, {"error": "NOT_RECORDED", "message": f"no recording for {request.method} {request.path}"})
