"""`manage.py run` at start-up: the roles start, it waits until they are ready, and the demo login comes last."""

from __future__ import annotations

import io
import signal
import threading
from collections.abc import Collection, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from django.core.management import call_command

from trading.management.commands import run

pytestmark = pytest.mark.django_db


class FakeRole:
    """A role's process that runs until it is signalled (or told to exit)."""

    def __init__(self, cmd: list[str], **kwargs: Any) -> None:
        self.cmd, self.env = cmd, kwargs["env"]
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, sig: int) -> None:
        self.returncode = -sig

    def wait(self, timeout: float | None = None) -> int | None:
        return self.returncode

    def kill(self) -> None:
        self.returncode = -9


@pytest.fixture
def signals() -> Iterator[None]:
    """`run` installs its own signal handlers (and ignores signals while it stops): give the test process its own
    back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def _run(monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], list[list[str]]]:
    """Run `manage.py run` with fake roles; return what it printed and the roles running when it asked if ready."""
    started: list[FakeRole] = []
    asked: list[list[str]] = []

    def popen(cmd: list[str], **kwargs: Any) -> FakeRole:
        started.append(FakeRole(cmd, **kwargs))
        return started[-1]

    def ready(procs: Collection[FakeRole], url: str, timeout: float) -> bool:
        asked.append([p.cmd[2] if p.cmd[1] == "manage.py" else p.cmd[5] for p in procs if p.poll() is None])
        started[0].returncode = 0  # then the web role exits, so that run stops everything and returns
        return True

    monkeypatch.setattr(run.subprocess, "Popen", popen)
    monkeypatch.setattr(run, "roles_ready", ready)
    out = io.StringIO()
    call_command("run", "--port", "8765", stdout=out, stderr=io.StringIO())
    assert all(role.env["LOG_FORMAT"] in ("console", "json") for role in started)
    return out.getvalue().splitlines(), asked


def test_the_demo_login_is_the_last_thing_run_prints_once_every_role_is_up(monkeypatch: pytest.MonkeyPatch,
                                                                           signals: None) -> None:
    lines, asked = _run(monkeypatch)

    assert asked == [["runserver", "worker", "beat", "marketdata", "demo_feed"]]  # asked once all five were started
    assert lines[-3].startswith("tradesite is running: http://127.0.0.1:8765/")
    assert lines[-2] == "demo account and strategies ready"
    assert lines[-1].startswith("Demo login (shown once): user demo, password ")
    assert sum("Demo login" in line for line in lines) == 1

    again, _ = _run(monkeypatch)  # the login exists: no password, and still the last line
    assert again[-1].startswith("Demo login: user demo (its password was shown when it was created")
    assert not any("password " in line and "shown once" in line for line in again)


class _Ready(BaseHTTPRequestHandler):
    status = 503

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_roles_ready_waits_for_readyz_and_gives_up_on_an_exit_or_the_timeout() -> None:
    server = HTTPServer(("127.0.0.1", 0), _Ready)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/readyz"
    role = FakeRole(["python"], env={})
    try:
        assert run.roles_ready([role], url, timeout=0.3) is False  # 503 all along
        _Ready.status = 200
        assert run.roles_ready([role], url, timeout=5) is True
        role.returncode = 1
        assert run.roles_ready([role], url, timeout=5) is None
    finally:
        server.shutdown()
        server.server_close()
