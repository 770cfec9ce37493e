"""Checks of the live accounts' venue set-up (credentials, signature, permissions, connectivity) for check_venues.

Nothing here writes, and no detail ever carries a credential: every message is scrubbed of the account's
credential values before it leaves this module.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from exchanges.base import CheckItem
from exchanges.errors import TemporaryError
from trading.connectors import connector_for
from trading.models import VenueAccount

REDACTED = "[redacted]"
_NOT_SECRET = {"ENDPOINT"}  # <PREFIX>_ENDPOINT points at another base URL; it is shown


@dataclass(frozen=True)
class AccountCheck:
    """Every check of one live account, in the order they ran."""

    account: str
    venue: str
    network: str
    items: tuple[CheckItem, ...]

    @property
    def ok(self) -> bool:
        return all(item.ok for item in self.items)


def live_account_list(*, network: str | None = None, name: str | None = None) -> list[VenueAccount]:
    """Return the live (non-paper) accounts, optionally of one network or by name."""
    accounts = VenueAccount.objects.exclude(venue=VenueAccount.Venue.PAPER).order_by("name")
    if network:
        accounts = accounts.filter(network=network)
    if name:
        accounts = accounts.filter(name=name)
    return list(accounts)


def _credential_vars(prefix: str, environ: Mapping[str, str]) -> dict[str, str]:
    """The account's variables by suffix (API_KEY, SECRET, ..., ENDPOINT)."""
    start = f"{prefix}_"
    return {k[len(start):]: v for k, v in environ.items() if k.startswith(start)}


def account_error_text(account: VenueAccount, error: BaseException, *,
                       environ: Mapping[str, str] | None = None) -> str:
    """An account's error for logs and the health page: secret-looking values, the account's credential values and
    its endpoint's path (an RPC URL's path often carries an API key) removed."""
    from exchanges.resilience import error_text

    environ = os.environ if environ is None else environ
    variables = _credential_vars(account.credentials_env, environ) if account.credentials_env else {}
    text = scrub(error_text(error), [v for k, v in variables.items() if k not in _NOT_SECRET])
    endpoint = variables.get("ENDPOINT", "").strip()
    if endpoint and _origin(endpoint) and endpoint.rstrip("/") != _origin(endpoint):
        text = text.replace(endpoint, _origin(endpoint))
    return text


def scrub(text: str, secrets: Sequence[str]) -> str:
    """Replace every secret in text, whatever its letter case or 0x prefix (and every long piece of a multi-line
    secret, such as a PEM body line); values shorter than 6 characters are settings, not secrets."""
    pieces: set[str] = set()
    for secret in secrets:
        secret = secret.strip()
        for piece in [secret, *secret.splitlines(), *(p for p in secret.split() if len(p) >= 12)]:
            piece = piece.strip()
            if len(piece) >= 6:
                pieces.add(piece)
                if piece[:2].lower() == "0x" and len(piece) >= 8:
                    pieces.add(piece[2:])
    for piece in sorted(pieces, key=len, reverse=True):
        text = re.sub(re.escape(piece), REDACTED, text, flags=re.IGNORECASE)
    return text


def _origin(url: str) -> str:
    """Scheme, host and port of a URL only: an RPC URL's path or query often carries an API key."""
    parts = urlsplit(url.strip())
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}" if parts.hostname else ""


def _failure(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def account_check(*, account: VenueAccount, environ: Mapping[str, str] | None = None) -> AccountCheck:
    """Check one live account: credentials present and well-formed, connectivity, then the venue's own checks."""
    environ = os.environ if environ is None else environ
    variables = _credential_vars(account.credentials_env, environ) if account.credentials_env else {}
    secrets = [v for k, v in variables.items() if k not in _NOT_SECRET]
    items: list[CheckItem] = []

    def add(name: str, ok: bool, detail: str = "") -> None:
        items.append(CheckItem(name, ok, scrub(detail, secrets)))

    names = sorted(f"{account.credentials_env}_{k}" for k in variables if k not in _NOT_SECRET)
    empty = sorted(f"{account.credentials_env}_{k}" for k, v in variables.items()
                   if k not in _NOT_SECRET and not v.strip())
    if not account.credentials_env:
        add("credentials present", False, "the account names no credentials_env prefix")
    elif not names:
        add("credentials present", False, f"no {account.credentials_env}_* variables are set")
    elif empty:
        add("credentials present", False, f"empty: {', '.join(empty)}")
    else:
        add("credentials present", True, f"{', '.join(names)} set")
    if not items[-1].ok:
        return AccountCheck(account.name, account.venue, account.network, tuple(items))

    # Each venue module validates its own credentials when it builds its connector (key format, address); some
    # venues' clients also read from the venue while being built, so a transport failure there is connectivity.
    endpoint = _origin(variables.get("ENDPOINT", "")) or "the venue's published URL"
    try:
        connector = connector_for(account)
    except TemporaryError as exc:
        add("connectivity", False, f"{endpoint}: {_failure(exc)}")
        return AccountCheck(account.name, account.venue, account.network, tuple(items))
    except Exception as exc:  # noqa: BLE001 - any refusal to build is this check's answer, not a crash
        add("credentials well-formed", False, _failure(exc))
        return AccountCheck(account.name, account.venue, account.network, tuple(items))
    add("credentials well-formed", True, f"{account.venue} connector built for {account.network}")

    # A price read always reaches the venue (market lists are cached by the connectors).
    started = time.monotonic()
    try:
        markets = connector.markets()
        quoted = connector.ticker(markets[0].symbol) if markets else None
    except Exception as exc:  # noqa: BLE001
        add("connectivity", False, f"{endpoint}: {_failure(exc)}")
    else:
        price = f", {quoted.symbol} at {quoted.price.normalize():f}" if quoted else ""
        add("connectivity", True, f"{len(markets)} markets{price} from {endpoint} in "
                                  f"{(time.monotonic() - started) * 1000:.0f} ms")

    # The venue's checks: signature accepted, permissions (e.g. a Coinbase key that can transfer is refused).
    try:
        for item in connector.verify():
            add(item.name, item.ok, item.detail)
    except Exception as exc:  # noqa: BLE001
        add("venue checks", False, _failure(exc))
    return AccountCheck(account.name, account.venue, account.network, tuple(items))


def venue_accounts_check(*, network: str | None = None, name: str | None = None,
                         environ: Mapping[str, str] | None = None) -> list[AccountCheck]:
    """Check every configured live account (of one network, or one by name)."""
    return [account_check(account=a, environ=environ) for a in live_account_list(network=network, name=name)]


def checks_table(results: Sequence[AccountCheck]) -> str:
    """Render check results as a plain-text table, one line per check."""
    header = ("ACCOUNT", "VENUE", "NETWORK", "CHECK", "RESULT", "DETAIL")
    rows = [
        (r.account, r.venue, r.network, item.name, "ok" if item.ok else "FAIL", item.detail.replace("\n", " "))
        for r in results for item in r.items
    ]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        cells = [str(cell).ljust(width) for cell, width in zip(row, widths)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)
