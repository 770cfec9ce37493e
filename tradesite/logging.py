"""JSON log lines with signal and order ids, and a value-based redaction filter for secrets."""

from __future__ import annotations

import json
import logging
import os
import re
from datetime import datetime, timezone
from urllib.parse import urlsplit

from trading.logcontext import current

_SECRET_NAME = re.compile(r"SECRET|PASSW|TOKEN|PRIVATE|API_KEY|_KEY$|PASSPHRASE|CREDENTIAL", re.I)
_URL_NAMES = ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")
_extra_secrets: set[str] = set()


def register_secret(value: str) -> None:
    """Redact this value from every log line from now on."""
    if value and len(value) >= 6:
        _extra_secrets.add(value)


def secret_values() -> set[str]:
    """Every secret value known to this process: secret-named env vars, URL passwords, registered ones."""
    values = set(_extra_secrets)
    for name, value in os.environ.items():
        if not value:
            continue
        if name in _URL_NAMES:
            password = urlsplit(value).password
            if password and len(password) >= 4:
                values.add(password)
        elif _SECRET_NAME.search(name) and len(value) >= 6:
            values.add(value)
    return values


def redact(text: str, secrets: set[str] | None = None) -> str:
    """Replace each secret value in text by a marker."""
    for value in secrets if secrets is not None else secret_values():
        if value in text:
            text = text.replace(value, "[REDACTED]")
    return text


class RedactSecretsFilter(logging.Filter):
    """Rewrite a record's message so that no known secret value leaves the process."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, component, logger, message, context ids."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "component": os.environ.get("TRADESITE_COMPONENT", "web"),
            "logger": record.name,
            "message": record.getMessage(),
            **current(),
        }
        for key in ("signal_id", "order_id", "strategy_id", "account_id", "venue"):
            if hasattr(record, key):
                payload[key] = getattr(record, key)
        if record.exc_text:
            payload["exc"] = record.exc_text
        elif record.exc_info:
            payload["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(payload, default=str)
