"""No test process may reach anything but loopback: the guard in the pytest process and in processes it starts."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.fakes.faults import FakeHTTPServer, Reply, Request
from tradesite import netguard

ROOT = Path(__file__).resolve().parents[2]
TEST_NET = "192.0.2.1"  # TEST-NET-1 (RFC 5737): unrouted, so without the guard a connect would hang


def test_the_guard_is_active_in_the_test_process() -> None:
    assert netguard.installed()


def test_an_outbound_connection_fails_at_once_with_a_clear_error() -> None:
    with pytest.raises(netguard.OutboundConnectionBlocked, match="test network guard.*192.0.2.1.*127.0.0.1"):
        socket.create_connection((TEST_NET, 443), timeout=3)  # a timeout would raise socket.timeout instead
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with pytest.raises(netguard.OutboundConnectionBlocked):
            sock.connect_ex((TEST_NET, 80))
    finally:
        sock.close()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with pytest.raises(netguard.OutboundConnectionBlocked):
            udp.sendto(b"x", ("8.8.8.8", 53))
    finally:
        udp.close()


def test_name_lookups_of_remote_hosts_are_refused() -> None:
    for host in ("api.coinbase.com", "api.hyperliquid.xyz", "sepolia.base.org"):
        with pytest.raises(netguard.OutboundConnectionBlocked, match="name lookup"):
            socket.getaddrinfo(host, 443)
    with pytest.raises(netguard.OutboundConnectionBlocked):
        socket.gethostbyname("example.com")


def test_an_http_client_pointed_at_a_real_venue_fails_instead_of_reaching_it() -> None:
    with pytest.raises(requests.ConnectionError) as caught:
        requests.post("https://api.hyperliquid.xyz/info", json={"type": "meta"}, timeout=3)
    chain, exc = [], caught.value
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__ or (exc.args[0] if exc.args and isinstance(exc.args[0], BaseException)
                                                    else None)
        if len(chain) > 10:
            break
    assert "test network guard" in str(caught.value) or any(
        isinstance(e, netguard.OutboundConnectionBlocked) for e in chain)


def test_loopback_and_unix_sockets_still_work(tmp_path: Path) -> None:
    class Hello(FakeHTTPServer):
        def route(self, request: Request) -> Reply:
            return Reply(200, {"hello": "loopback"})

    with Hello() as server:
        assert requests.get(server.url + "/x", timeout=5).json() == {"hello": "loopback"}
        port = server.url.rsplit(":", 1)[1].split("/")[0]
        assert requests.get(f"http://localhost:{port}/y", timeout=5).json() == {"hello": "loopback"}
    assert socket.getaddrinfo("localhost", 80)
    path = str(tmp_path / "s.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(path)
    client.close()
    listener.close()


def test_processes_started_by_tests_are_guarded_too() -> None:
    """A worker or server a test starts inherits TRADESITE_NETWORK_GUARD; settings install the guard there."""
    from tests.conftest import worker_env

    code = (
        "import django, json, socket; django.setup();"
        "from tradesite import netguard;"
        "out = {'installed': netguard.installed()};"
        "\ntry:\n    socket.create_connection(('192.0.2.1', 443), timeout=3)\n"
        "except Exception as exc:\n    out['error'] = type(exc).__name__; out['message'] = str(exc)\n"
        "print(json.dumps(out))"
    )
    env = worker_env()
    assert env["TRADESITE_NETWORK_GUARD"] == "loopback"
    env["DJANGO_SETTINGS_MODULE"] = "tradesite.settings"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["installed"] is True
    assert out["error"] == "OutboundConnectionBlocked" and "192.0.2.1" in out["message"]
