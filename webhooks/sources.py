"""Where an alert comes from: the client address (behind a trusted proxy) and the source allowlist."""

from __future__ import annotations

import ipaddress
from typing import Any

from webhooks.config import setting

TRADINGVIEW_IPS = ("52.89.214.238", "34.212.75.30", "54.218.53.128", "52.32.178.7")


def _as_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v).strip() for v in value or ()]


def _networks(value: Any) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    out: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for item in _as_list(value):
        if item.lower() == "tradingview":
            out.extend(ipaddress.ip_network(ip) for ip in TRADINGVIEW_IPS)
        else:
            out.append(ipaddress.ip_network(item, strict=False))
    return out


def _in(ip: str, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in net for net in networks)


def client_ip(meta: dict[str, Any]) -> str:
    """The client address: the peer, or the proxy header's last untrusted hop when the peer is a trusted proxy."""
    peer = str(meta.get("REMOTE_ADDR") or "")
    header = str(setting("WEBHOOK_TRUSTED_PROXY_HEADER") or "")
    if not header:
        return peer
    proxies = _networks(setting("WEBHOOK_TRUSTED_PROXIES"))
    if not _in(peer, proxies):
        return peer
    raw = str(meta.get("HTTP_" + header.upper().replace("-", "_")) or "")
    hops = [h.strip() for h in raw.split(",") if h.strip()]
    for hop in reversed(hops):  # the right-most address a trusted proxy did not add
        if not _in(hop, proxies):
            return hop
    return hops[0] if hops else peer


def source_allowed(ip: str) -> bool:
    """Whether the allowlist (if any) admits this address."""
    allowed = setting("WEBHOOK_ALLOWED_IPS")
    return not _as_list(allowed) or _in(ip, _networks(allowed))
