"""The test network guard: a process may reach only loopback addresses and unix sockets.

Installed by tests/envdefaults.py in the pytest process, and by tradesite/settings.py in every process a test
starts (Celery workers, servers, manage.py) when TRADESITE_NETWORK_GUARD=loopback is in the environment, which
tests/envdefaults.py sets and subprocesses inherit. A connector left pointing at a real venue then fails at once
with OutboundConnectionBlocked (an OSError, so clients map it like any refused connection) instead of reaching
the internet. Name lookups of anything but localhost are refused too (a DNS query is itself outbound traffic).
C libraries that open their own sockets (libpq) are outside its reach; they only ever get 127.0.0.1 in tests.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

ENV_VAR = "TRADESITE_NETWORK_GUARD"
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
_originals: dict[str, Any] = {}


class OutboundConnectionBlocked(ConnectionRefusedError):
    """A test process tried to reach something other than 127.0.0.1, ::1 or a unix socket."""


def _is_local_host(host: object) -> bool:
    if host is None or host == "":
        return True  # getaddrinfo(None, port) means the local host
    if isinstance(host, bytes):
        host = host.decode("idna", "replace")
    if not isinstance(host, str):
        return False
    name = host.strip("[]").split("%", 1)[0].lower()
    if name in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _blocked(what: str, target: object) -> OutboundConnectionBlocked:
    return OutboundConnectionBlocked(
        f"test network guard: {what} {target!r} blocked; tests may only reach 127.0.0.1, ::1 and unix sockets "
        f"(point the connector at a loopback fake: <PREFIX>_ENDPOINT or VenueConfig.endpoint)")


def _check_address(sock: socket.socket, address: Any) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        host = address[0] if isinstance(address, tuple) else address
        if not _is_local_host(host):
            raise _blocked("connection to", address)


def install() -> None:
    """Refuse every outbound connection and name lookup that is not loopback, in this process (idempotent)."""
    if _originals or getattr(socket, "_tradesite_netguard", False):
        return
    try:
        _LOCAL_NAMES.add(socket.gethostname().lower())  # looking up our own name is no outbound traffic
    except OSError:
        pass
    _originals.update(connect=socket.socket.connect, connect_ex=socket.socket.connect_ex,
                      sendto=socket.socket.sendto, getaddrinfo=socket.getaddrinfo,
                      gethostbyname=socket.gethostbyname, gethostbyname_ex=socket.gethostbyname_ex)

    def connect(self: socket.socket, address: Any) -> None:
        _check_address(self, address)
        return _originals["connect"](self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        _check_address(self, address)
        return _originals["connect_ex"](self, address)

    def sendto(self: socket.socket, data: Any, *args: Any) -> int:
        _check_address(self, args[-1])
        return _originals["sendto"](self, data, *args)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not _is_local_host(host):
            raise _blocked("name lookup of", host)
        return _originals["getaddrinfo"](host, *args, **kwargs)

    def gethostbyname(host: str) -> str:
        if not _is_local_host(host):
            raise _blocked("name lookup of", host)
        return _originals["gethostbyname"](host)

    def gethostbyname_ex(host: str) -> Any:
        if not _is_local_host(host):
            raise _blocked("name lookup of", host)
        return _originals["gethostbyname_ex"](host)

    socket.socket.connect = connect  # type: ignore[method-assign,assignment]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign,assignment]
    socket.socket.sendto = sendto  # type: ignore[method-assign,assignment]
    socket.getaddrinfo = getaddrinfo
    socket.gethostbyname = gethostbyname
    socket.gethostbyname_ex = gethostbyname_ex
    socket._tradesite_netguard = True  # type: ignore[attr-defined]


def installed() -> bool:
    """Whether the guard is active in this process."""
    return bool(getattr(socket, "_tradesite_netguard", False))
