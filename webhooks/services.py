"""Alert intake: an alert authenticated, validated and stored as one signal (trading/intake.py: `signal_store`),
then queued; the answer the webhook and the signal API give.

The checks around it live by job: the settings (`webhooks/config.py`), the source address (`sources.py`), the rate
limits (`limits.py`), the strategies and their passphrases (`targets.py`); decoding and validating a body is pure
(`parsers.py`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import DatabaseError, InterfaceError, OperationalError, connections, transaction
from django.utils import timezone

from trading.audit import audit
from trading.intake import SignalRow, payload_redact, signal_enqueue, signal_store
from trading.models import MarketPrice, Signal, Strategy
from webhooks import parsers
from webhooks.config import flag, setting
from webhooks.limits import IP_LIMITED, STRATEGY_LIMITED, rate_limited, rate_limited_pair
from webhooks.parsers import Alert, Rejection
from webhooks.sources import client_ip, source_allowed
from webhooks.targets import Target, guard_checks, secret_matches, strategy_known, target_read, targets

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Accepted:
    """A stored alert: 202 when new, 200 with duplicate=True when it repeats an earlier delivery."""

    signal_id: int
    duplicate: bool
    status: int = 202

    def body(self) -> dict[str, Any]:
        if self.duplicate:
            return {"signal_id": self.signal_id, "duplicate": True}
        return {"signal_id": self.signal_id, "status": "accepted"}


UNAUTHORIZED = Rejection(401, "unauthorized", "unknown strategy or wrong passphrase")


def price_guard(alert: Alert, symbol: str, feed: str) -> Rejection | None:
    """The 400 to answer when the alert's price is too far from the market's in the account's price feed (no local
    price: None)."""
    if alert.price is None:
        return None
    market = MarketPrice.objects.filter(feed=feed, symbol=symbol).values_list("price", flat=True).first()
    if market is None or market <= 0:
        return None  # no local price: the engine's own checks decide
    limit = Decimal(str(setting("WEBHOOK_MAX_PRICE_DEVIATION_PCT")))
    deviation = abs(alert.price - market) / market * 100
    if deviation > limit:
        return Rejection(400, "price_out_of_range", f"price {alert.price} is {deviation:.2f}% from the market "
                         f"price {market} (limit {limit}%)", {"price": "too far from the market price"})
    return None


def alert_intake(*, data: dict[str, Any], authenticated: bool = False, source_ip: str = "",
                 now: datetime | None = None, enqueue: bool = True, fresh: bool = False,
                 counted: bool = False, unsure: bool = False, checked: bool = False,
                 known: Target | None = None, actor: str = "") -> Accepted | Rejection:
    """Authenticate (unless `authenticated`), validate and store one decoded alert; queue it after commit.

    A webhook alert for a strategy this process has read before is checked against that copy, and stored by an
    INSERT that runs only if the strategy row still has the status, symbol, account and secret hash it was checked
    against and the kill switch is still released (one statement: no read before it). When that INSERT stores
    nothing (the strategy changed, or a repeat delivery), or the copy would refuse the alert, the alert is taken
    again from a fresh read (`fresh`; `counted`: its rate-limit hit is already counted). So is an alert whose
    guarded INSERT met a dropped connection (`unsure`: it may have been stored; if the fresh INSERT finds it, it
    is queued again while still waiting, which its idempotent task makes harmless). `checked`: the caller has
    already compared the passphrase with this process's copy, and `known` is the copy when it matched.
    `actor` (the signal API's user, "api:alice"): stored in the signal's payload as `submitted_by`, and a
    `signal.submitted` audit row is written in the signal row's transaction.
    """
    now = now or timezone.now()
    cached = False
    if authenticated:
        named = data.get("strategy")
        slug = named if isinstance(named, str) else ""
        strategy = target_read(slug) if slug else None
        if strategy is None:
            return Rejection(400, "invalid_fields", "unknown strategy", {"strategy": "no such strategy"})
    else:
        creds = parsers.credentials(data)
        if creds is None:
            secret_matches("", "")  # same work as a wrong passphrase
            return UNAUTHORIZED
        slug, passphrase = creds
        if not checked:
            known = None if fresh else targets.get(slug)
            known = known if secret_matches(known.webhook_secret_hash if known else "", passphrase) else None
        # Every path compares twice (the copy, then the fresh row or nothing), so a strategy's existence does not
        # show in the time taken.
        cached = known is not None
        strategy = known
        if not cached:
            strategy = target_read(slug)
            if not secret_matches(strategy.webhook_secret_hash if strategy else "", passphrase) or strategy is None:
                return UNAUTHORIZED
            targets[slug] = strategy
        else:
            secret_matches("", passphrase)
    assert strategy is not None  # every path without a strategy returned above

    def again(*, unsure: bool = False) -> Accepted | Rejection:  # the copy may be stale: decide on a fresh read
        targets.pop(slug, None)
        return alert_intake(data=data, source_ip=source_ip, now=now, enqueue=enqueue, fresh=True, counted=counted,
                            unsure=unsure)
    alert = parsers.alert_validate(
        data, now=now, max_age_seconds=int(setting("WEBHOOK_MAX_ALERT_AGE_SECONDS")),
        max_future_seconds=int(setting("WEBHOOK_MAX_FUTURE_SECONDS")))
    if isinstance(alert, Rejection):
        return alert
    if not parsers.ticker_matches(alert.ticker, strategy.symbol):
        if cached:
            return again()
        return Rejection(400, "ticker_mismatch", f"ticker {alert.ticker} is not {strategy.symbol}",
                         {"ticker": f"must name {strategy.symbol}"})
    if not counted:
        if rate_limited("strategy", str(strategy.pk), limit=int(setting("WEBHOOK_RATE_LIMIT_PER_STRATEGY"))):
            return STRATEGY_LIMITED
        counted = True
    guard = price_guard(alert, strategy.symbol, strategy.price_feed)
    if guard is not None:
        return again() if cached else guard

    refusal: tuple[str, str] | None = None
    if strategy.status != Strategy.Status.ACTIVE:
        refusal = ("strategy_inactive", f"strategy {strategy.slug} is {strategy.status}")
    elif strategy.kill_switch_engaged:
        refusal = ("kill_switch", "the kill switch is engaged")
    if refusal and cached:
        return again()
    signal = _signal_values(strategy, alert, data, now=now, authenticated=authenticated, refusal=refusal)
    key = signal["idempotency_key"]
    # The hot path (`direct`): one statement in autocommit, the INSERT and its COMMIT (durable, synchronous_commit)
    # in one round trip, shared with the alerts other threads store at that moment (`group`). A new signal is queued
    # once committed (inside a caller's transaction, after its commit).
    store: dict[str, Any] = {"enqueue": enqueue and not refusal, "raw": flag("WEBHOOK_RAW_ENQUEUE"), "direct": True,
                             "group": flag("WEBHOOK_GROUP_COMMIT")}
    try:
        if actor:  # a user's submission: the row and who sent it, in one transaction
            signal["payload"] = {**signal["payload"], "submitted_by": actor}
            with transaction.atomic():
                signal_id = signal_store(values=signal, **store)
                if signal_id is not None:
                    audit(actor=actor, action="signal.submitted", entity="signal", entity_id=signal_id,
                          now=now, strategy=strategy.slug, action_requested=alert.action,
                          refused=refusal[0] if refusal else "")
        else:
            signal_id = signal_store(values=signal, checks=guard_checks(strategy) if cached else (), **store)
    except (InterfaceError, OperationalError):
        if not cached:
            raise
        connections["default"].close()  # a dropped connection (a database restart): the fresh read reconnects
        return again(unsure=True)
    if signal_id is None and cached:
        return again()  # a repeat delivery, or the strategy changed since this process read it
    if signal_id is None:
        first = Signal.objects.filter(idempotency_key=key).values_list("id", "status").first()
        if first is not None and unsure and enqueue and first[1] == Signal.Status.RECEIVED and not refusal:
            transaction.on_commit(lambda: _enqueue(first[0]))
        return Accepted(signal_id=int(first[0]) if first else 0, duplicate=True, status=200)
    if refusal:
        return Rejection(409, refusal[0], refusal[1], {"signal_id": str(signal_id)})
    return Accepted(signal_id=signal_id, duplicate=False)


def _signal_values(strategy: Target, alert: Alert, data: dict[str, Any], *, now: datetime, authenticated: bool,
                   refusal: tuple[str, str] | None) -> dict[str, Any]:
    """The signal row of a validated alert, by attname (the payload stored with its secrets masked)."""
    return {
        "strategy_id": strategy.pk, "account_id": strategy.account_id,
        "source": Signal.Source.WEBHOOK.value if not authenticated else Signal.Source.MANUAL.value,
        "idempotency_key": parsers.idempotency_key(alert), "action": alert.action, "symbol": strategy.symbol,
        "quantity": alert.quantity, "target": alert.target, "order_type": alert.order_type, "price": alert.price,
        "stop_loss": alert.stop_loss, "take_profit": alert.take_profit, "leverage": alert.leverage, "atr": alert.atr,
        "payload": payload_redact(parsers.payload_from(data)), "received_at": now,
        "status": (Signal.Status.REJECTED if refusal else Signal.Status.RECEIVED).value,
        "decision_rule": refusal[0] if refusal else "", "decision_detail": refusal[1] if refusal else "",
    }


def alert_fast_row(*, data: dict[str, Any], known: Target, now: datetime) -> SignalRow | Rejection | None:
    """`alert_intake`'s path for an alert that matched this process's copy of its strategy (`known`, from
    `strategy_known`, its rate limits already counted), up to its INSERT, for a caller that writes the row itself
    (the intake server, webhooks/intake_asgi.py): the guarded row to write and queue, or the Rejection to answer,
    or None when `alert_intake(..., counted=True, checked=True, known=known)` must decide (the copy would refuse
    the alert or its ticker, or the alert has a price to check against the market). When the guarded INSERT
    stores nothing, the caller takes the alert again with `alert_intake(..., fresh=True, counted=True)`.

    It makes the same second constant-time comparison as `alert_intake` whenever it answers."""
    alert = parsers.alert_validate(
        data, now=now, max_age_seconds=int(setting("WEBHOOK_MAX_ALERT_AGE_SECONDS")),
        max_future_seconds=int(setting("WEBHOOK_MAX_FUTURE_SECONDS")))
    if not isinstance(alert, Rejection) and (
            alert.price is not None or known.status != Strategy.Status.ACTIVE or known.kill_switch_engaged
            or not parsers.ticker_matches(alert.ticker, known.symbol)):
        return None
    secret_matches("", str(data.get("passphrase") or ""))
    if isinstance(alert, Rejection):
        return alert
    values = _signal_values(known, alert, data, now=now, authenticated=False, refusal=None)
    return SignalRow(values, guard_checks(known), True)


def intake_guarded(call: Callable[[], Accepted | Rejection]) -> Accepted | Rejection:
    """The result of an intake call, or a 503 to answer when it failed on our side (logged): never a 500."""
    try:
        return call()
    except DatabaseError:
        log.exception("webhook intake: database unavailable")
        return STORAGE_UNAVAILABLE
    except Exception:  # noqa: BLE001 - never a 500 for what a client sends
        log.exception("webhook intake failed")
        return INTAKE_FAILED


INTAKE_FAILED = Rejection(503, "unavailable", "the alert could not be stored; retry")
STORAGE_UNAVAILABLE = Rejection(503, "unavailable", "storage is unavailable; retry")


def _enqueue(signal_id: int) -> None:
    """Queue signal_process for a committed signal; a failure is logged, never raised (the sweeper re-drives it)."""
    signal_enqueue(signal_id=signal_id, raw=flag("WEBHOOK_RAW_ENQUEUE"))


def body_intake(*, body: bytes, content_type: str | None, meta: dict[str, Any],
                 now: datetime | None = None) -> Accepted | Rejection:
    """The TradingView webhook: source allowlist, per-IP rate limit, decode, then `alert_intake`.

    An alert whose passphrase matches this process's copy of its strategy is counted against the source's budget
    and then (if admitted) its strategy's in one Redis round trip, so the strategy's counts authenticated requests,
    valid or not; any other request is counted against the source's budget first, and its strategy's only once
    valid.
    """
    ip = client_ip(meta)
    if not source_allowed(ip):
        return Rejection(403, "forbidden_source", "this source address is not allowed")
    data = parsers.body_decode(body, content_type)
    known = strategy_known(data)
    if known is None:
        if rate_limited("ip", ip, limit=int(setting("WEBHOOK_RATE_LIMIT_PER_IP"))):
            return IP_LIMITED
        if isinstance(data, Rejection):
            return data
        return alert_intake(data=data, source_ip=ip, now=now, checked=True)
    limited = rate_limited_pair(ip, known.pk)
    if limited is not None:
        return limited
    return alert_intake(data=data, source_ip=ip, now=now, counted=True, checked=True,  # type: ignore[arg-type]
                        known=known)


def dumps(body: dict[str, Any]) -> bytes:
    """Compact JSON for responses."""
    return json.dumps(body, separators=(",", ":")).encode()

