"""Reads of the webhook app: a dry run of an alert body through intake and risk, storing nothing."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from trading import selectors as trading_selectors
from trading.domain import Action, OrderType, SignalIntent
from trading.models import KillSwitch, Signal, Strategy
from trading.prices import price_feed_of
from webhooks import parsers, services
from webhooks.config import setting
from webhooks.parsers import Alert, Rejection
from webhooks.targets import secret_matches


@dataclass(frozen=True)
class Step:
    """One check of the dry run: its name, whether it passed, and what it found."""

    name: str
    ok: bool
    detail: str
    fields: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Preview:
    """What intake and risk would do with an alert body; `outcome` is the HTTP answer intake would give."""

    steps: list[Step]
    outcome: str
    alert: Alert | None = None
    strategy: Strategy | None = None
    decision: Any = None  # trading.domain.Decision when risk was asked


def alert_preview(*, body: bytes, content_type: str, now: datetime, check_passphrase: bool,
                  check_time: bool = True) -> Preview:
    """Parse and check an alert like the webhook does, then ask risk what it would decide; store nothing.

    The per-IP and per-strategy rate limits are not counted (a dry run must not use up an allowance). With
    `check_passphrase` False (non-staff users), the passphrase is not checked: the page is no secret oracle.
    """
    steps: list[Step] = []
    data = parsers.body_decode(body, content_type)
    if isinstance(data, Rejection):
        steps.append(Step("decode", False, data.detail))
        return Preview(steps, f"{data.status} {data.error}")
    extra = parsers.extra_fields(data)
    steps.append(Step("decode", True, "a JSON object" + (f"; ignored fields: {', '.join(extra)}" if extra else "")))

    slug = data.get("strategy") if isinstance(data.get("strategy"), str) else ""
    strategy = Strategy.objects.select_related("account").filter(slug=slug).first() if slug else None
    if strategy is None:
        steps.append(Step("strategy", False, f"no strategy with slug {slug!r}" if slug else "no strategy field"))
        return Preview(steps, "401 unauthorized")
    steps.append(Step("strategy", True, f"{strategy.slug} ({strategy.name}) on {strategy.account}, "
                                        f"{strategy.symbol}, status {strategy.status}"))
    if check_passphrase:
        creds = parsers.credentials(data)
        matches = creds is not None and secret_matches(strategy.webhook_secret_hash, creds[1])
        steps.append(Step("passphrase", matches, "matches the strategy's webhook secret" if matches else
                          "missing or wrong (or no secret issued yet)"))
        if not matches:
            return Preview(steps, "401 unauthorized", strategy=strategy)
    else:
        steps.append(Step("passphrase", True, "not checked (staff only)"))

    alert = parsers.alert_validate(data, now=now, max_age_seconds=int(setting(
        "WEBHOOK_MAX_ALERT_AGE_SECONDS")) if check_time else 10**12,
        max_future_seconds=int(setting("WEBHOOK_MAX_FUTURE_SECONDS")) if check_time else 10**12,
        require_time=check_time)
    if isinstance(alert, Rejection):
        steps.append(Step("fields", False, alert.detail, alert.fields))
        return Preview(steps, f"{alert.status} {alert.error}", strategy=strategy)
    steps.append(Step("fields", True, f"action {alert.raw_action} -> {alert.action}"
                      + (f", contracts {alert.quantity}" if alert.quantity is not None else "")
                      + (f", target {alert.target}" if alert.target is not None else "")
                      + (f", price {alert.price}" if alert.price is not None else "")))
    if not parsers.ticker_matches(alert.ticker, strategy.symbol):
        steps.append(Step("ticker", False, f"ticker {alert.ticker} is not {strategy.symbol}"))
        return Preview(steps, "400 ticker_mismatch", alert, strategy)
    steps.append(Step("ticker", True, f"{alert.ticker} names {strategy.symbol}"))
    guard = services.price_guard(alert, strategy.symbol, price_feed_of(strategy.account))  # the intake's own check
    if guard is not None:
        steps.append(Step("price", False, guard.detail))
        return Preview(steps, f"{guard.status} {guard.error}", alert, strategy)
    key = parsers.idempotency_key(alert)
    if Signal.objects.filter(idempotency_key=key).exists():
        steps.append(Step("duplicate", False, "this alert was received before: intake answers 200 duplicate"))
        return Preview(steps, "200 duplicate", alert, strategy)
    if strategy.status != Strategy.Status.ACTIVE:
        steps.append(Step("status", False, f"strategy {strategy.slug} is {strategy.status}"))
        return Preview(steps, "409 strategy_inactive (stored as rejected)", alert, strategy)
    if KillSwitch.objects.filter(pk=1, engaged=True).exists():
        steps.append(Step("kill switch", False, "the kill switch is engaged"))
        return Preview(steps, "409 kill_switch (stored as rejected)", alert, strategy)
    steps.append(Step("intake", True, "would be stored and queued (202)"))

    from exchanges.errors import VenueError

    intent = SignalIntent(action=Action(alert.action), symbol=strategy.symbol, quantity=alert.quantity,
                          target=alert.target, order_type=OrderType(alert.order_type), price=alert.price,
                          stop_loss=alert.stop_loss, take_profit=alert.take_profit, leverage=alert.leverage)
    try:
        decision = trading_selectors.signal_decision_preview(strategy=strategy, intent=intent, atr=alert.atr, now=now)
    except VenueError as exc:
        steps.append(Step("risk", False, f"venue unavailable: {exc}"))
        return Preview(steps, "202 accepted; the engine would retry the venue", alert, strategy)
    if decision.accepted:
        orders = "; ".join(f"{o.side.value} {o.quantity} {o.order_type.value} ({o.purpose})"
                           f"{' reduce-only' if o.reduce_only else ''}"
                           for o in decision.orders)
        steps.append(Step("risk", True, f"accepted ({decision.rule}): {orders}"))
    else:
        steps.append(Step("risk", False, f"{decision.rule}: {decision.detail}"))
    return Preview(steps, "202 accepted", alert, strategy, decision)
