"""Signal intake: store a signal once per idempotency key, and queue it for the engine after commit.

The one door through which a signal is stored by the strategies, the API, the dashboard, the monitor and the kill
switch (the webhook has a batched INSERT of its own, issue 17). Queuing is best effort: a signal whose enqueue failed
stays RECEIVED, and the sweeper (trading/recovery.py) re-drives it.
"""

from __future__ import annotations

import logging
from datetime import datetime
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from infra import broker, rows
from trading.models import Signal, Strategy

log = logging.getLogger("trading.engine")  # one logger for every room of the engine (log routing keys on it)


def signal_create(
    *,
    strategy: Strategy,
    source: str,
    idempotency_key: str,
    action: str,
    symbol: str | None = None,
    quantity: Decimal | None = None,
    target: Decimal | None = None,
    order_type: str = "market",
    price: Decimal | None = None,
    stop_loss: Decimal | None = None,
    take_profit: Decimal | None = None,
    leverage: Decimal | None = None,
    atr: Decimal | None = None,
    payload: dict[str, object] | None = None,
    now: datetime | None = None,
    enqueue: bool = True,
) -> tuple[Signal, bool]:
    """Store a signal once per idempotency key; return (signal, created). Queues processing after commit.

    One statement (INSERT ... ON CONFLICT DO NOTHING), committed on its own unless the caller holds a transaction;
    the task is queued once the row is durable. A failed enqueue leaves the signal RECEIVED for the sweeper.
    """
    now = now or timezone.now()
    signal = Signal(
        strategy=strategy, account_id=strategy.account_id, source=source, idempotency_key=idempotency_key,
        action=action, symbol=symbol or strategy.symbol, quantity=quantity, target=target,
        order_type=order_type, price=price, stop_loss=stop_loss, take_profit=take_profit, leverage=leverage,
        atr=atr, payload=payload_redact(payload or {}), received_at=now,
    )
    if not rows.insert_new(signal, unique=("idempotency_key",)):
        existing = Signal.objects.filter(idempotency_key=idempotency_key).first()
        if existing is None:  # the other row was rolled back since: store this one after all
            return signal_create(strategy=strategy, source=source, idempotency_key=idempotency_key, action=action,
                                 symbol=symbol, quantity=quantity, target=target, order_type=order_type, price=price,
                                 stop_loss=stop_loss, take_profit=take_profit, leverage=leverage, atr=atr,
                                 payload=payload, now=now, enqueue=enqueue)
        return existing, False
    if enqueue:
        signal_id = signal.pk
        transaction.on_commit(lambda: signal_enqueue(signal_id=signal_id))
    return signal, True


def signal_enqueue(*, signal_id: int, raw: bool = True) -> None:
    """Queue a stored signal for processing; a broker failure is logged, and the sweeper re-drives it later.

    On a Redis broker the message goes out as one raw LPUSH of a pre-built Celery message (trading/broker.py);
    otherwise, or with `raw=False`, through `.delay()`.
    """
    from trading.tasks import signal_process_task

    try:
        publisher = broker.publisher_for(signal_process_task) if raw else None
        if publisher is not None:
            publisher.publish(signal_id)
        else:
            signal_process_task.delay(signal_id)
    except broker.BrokerSkipped as exc:  # the broker failed moments ago: already logged with its traceback
        log.warning("signal %s not queued (%s); the sweeper will pick it up", signal_id, exc)
    except Exception:  # noqa: BLE001 - the row is committed: RECEIVED signals are re-driven by the sweeper
        log.exception("enqueue of signal %s failed; the sweeper will pick it up", signal_id)


def signals_enqueue(*, signal_ids: list[int], raw: bool = True) -> bool:
    """Queue stored signals with one LPUSH of raw Celery messages: True when that is how they went (a failure is
    logged; the sweeper re-drives them). False, queuing nothing, when the broker takes no raw message: the caller
    then queues each with `signal_enqueue`."""
    from trading.tasks import signal_process_task

    publisher = broker.publisher_for(signal_process_task) if raw else None
    if publisher is None:
        return False
    try:
        publisher.publish_many([(pk,) for pk in signal_ids])
    except broker.BrokerSkipped as exc:  # the broker failed moments ago: already logged with its traceback
        log.warning("signals %s not queued (%s); the sweeper will pick them up", signal_ids, exc)
    except Exception:  # noqa: BLE001 - the rows are committed: RECEIVED signals are re-driven by the sweeper
        log.exception("enqueue of signals %s failed; the sweeper will pick them up", signal_ids)
    return True


_SECRET_KEYS = ("passphrase", "password", "secret", "token", "api_key", "apikey", "private_key")


def payload_redact(payload: dict[str, object]) -> dict[str, object]:
    """Copy a received payload with every secret-looking field masked (stored signals never hold secrets)."""
    return {
        k: "[REDACTED]" if any(word in k.lower() for word in _SECRET_KEYS)
        else payload_redact(v) if isinstance(v, dict) else v  # type: ignore[arg-type]
        for k, v in payload.items()
    }
