"""Log lines with signal and order ids, JSON for machines or readable for a person (LOG_FORMAT), and a value-based
redaction filter for secrets."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
from collections.abc import Collection, Mapping
from datetime import datetime, UTC
from logging.handlers import RotatingFileHandler
from urllib.parse import unquote, urlsplit
from typing import Any

from trading.logcontext import current

_SECRET_NAME = re.compile(r"SECRET|PASSW|TOKEN|PRIVATE|API_KEY|_KEY$|PASSPHRASE|CREDENTIAL", re.I)
_URL_NAMES = ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")
_extra_secrets: set[str] = set()
_registered = 0  # how many times the registered values changed
# The last secret set and what it was computed from: (registered count, a copy of the environment, the set).
_known: tuple[int, dict[object, object], frozenset[str]] | None = None


def register_secret(value: str) -> None:
    """Redact this value from every log line from now on."""
    global _registered
    if value and len(value) >= 6 and value not in _extra_secrets:
        _extra_secrets.add(value)
        _registered += 1


def _environment() -> Mapping[Any, object]:
    # CPython's os.environ keeps its raw mapping in _data: comparing two of those is one C-level dict comparison,
    # with no key decoded, so checking for a change costs far less than walking the names again.
    data = getattr(os.environ, "_data", None)
    return data if isinstance(data, dict) else dict(os.environ)


def secret_values() -> frozenset[str]:
    """Every secret value known to this process: secret-named env vars, URL passwords, registered ones.

    Computed once, and again only after the environment or the registered values changed (not on every record)."""
    global _known
    registered, environment = _registered, _environment()
    known = _known
    if known is not None and known[0] == registered and known[1] == environment:
        return known[2]
    snapshot = dict(environment)  # copied before reading: a change made meanwhile is seen on the next call
    values = _secret_values_read()
    _known = (registered, snapshot, values)
    return values


def _secret_values_read() -> frozenset[str]:
    values = set(_extra_secrets)
    for name, value in os.environ.items():
        if not value:
            continue
        if name in _URL_NAMES:
            password = urlsplit(value).password
            if password and len(password) >= 4:
                values.add(password)  # as written in the URL (percent-encoded)
                values.add(unquote(password))  # as the client library sends it
        elif _SECRET_NAME.search(name) and len(value) >= 6:
            values.add(value)
    return frozenset(values)


# Secrets this process cannot know by value (API tokens, webhook passphrases: they live in the database), caught
# by their shape: a query-string parameter with a sensitive name (a request line in an access log), and a
# credential after "Token" or "Bearer" (an Authorization header quoted in a message).
_SECRET_PARAM = re.compile(r"([?&;][^=&\s\"'#]*(?:token|secret|pass|key|signature|credential|auth|session|csrf)"
                           r"[^=&\s\"'#]*=)[^&\s\"'#]+", re.I)
_SECRET_SCHEME = re.compile(r"\b(Token|Bearer)\s+[A-Za-z0-9._~+/=-]{16,}")


def redact(text: str, secrets: Collection[str] | None = None) -> str:
    """Replace each secret value in text, and each value of a sensitive query parameter or credential, by a marker."""
    for value in secrets if secrets is not None else secret_values():
        if value in text:
            text = text.replace(value, "[REDACTED]")
    if "=" in text:
        text = _SECRET_PARAM.sub(r"\1[REDACTED]", text)
    if "Token" in text or "Bearer" in text:
        text = _SECRET_SCHEME.sub(r"\1 [REDACTED]", text)
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


LOG_FORMATS = ("console", "json")
_RECORD_IDS = ("signal_id", "order_id", "strategy_id", "account_id", "venue")


def _ids(record: logging.LogRecord) -> dict[str, object]:
    """The context ids of a record: the log context's, then those passed as `extra`."""
    ids: dict[str, object] = dict(current())
    for key in _RECORD_IDS:
        if hasattr(record, key):
            ids[key] = getattr(record, key)
    return ids


def _traceback(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    """The record's traceback, redacted (the filter has usually done so already), or ""."""
    if record.exc_text:
        return record.exc_text
    return redact(formatter.formatException(record.exc_info)) if record.exc_info else ""


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, component, logger, message, context ids."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "component": os.environ.get("TRADESITE_COMPONENT", "web"),
            "stream": stream_of(record.name),
            "logger": record.name,
            "message": record.getMessage(),
            **_ids(record),
        }
        exc = _traceback(self, record)
        if exc:
            payload["exc"] = exc
        return json.dumps(payload, default=str)


class ConsoleFormatter(logging.Formatter):
    """One readable line per record for a person at a terminal; a traceback follows on its own lines.

    `18:20:49.123 INFO    worker   trading.engine: order 22 filled  signal_id=11 order_id=22` (time of day in UTC;
    the component says which process of `manage.py run` wrote it)."""

    def format(self, record: logging.LogRecord) -> str:
        time = datetime.fromtimestamp(record.created, tz=UTC).strftime("%H:%M:%S.%f")[:-3]
        component = os.environ.get("TRADESITE_COMPONENT", "web")
        line = f"{time} {record.levelname:<7} {component:<8} {record.name}: {record.getMessage()}"
        ids = _ids(record)
        if ids:
            line += "  " + " ".join(f"{key}={value}" for key, value in ids.items())
        exc = _traceback(self, record)
        return f"{line}\n{exc}" if exc else line


# Which stream (log file) a logger writes to: the longest matching prefix wins; everything else is "web".
# "venues" is the logger of the connector resilience layer, the shared rate budgets and Synthetix
# (exchanges/resilience.py, trading/ratelimits.py, exchanges/synthetix.py: "venues.synthetix").
STREAMS: dict[str, tuple[str, ...]] = {
    "webhooks": ("webhooks",),
    "venues": ("exchanges", "venues", "trading.reconcile", "ccxt", "urllib3", "requests", "web3", "hyperliquid",
               "websocket"),
    "engine": ("trading", "strategies", "celery", "kombu"),
}
_PREFIXES = sorted(((p, stream) for stream, ps in STREAMS.items() for p in ps), key=lambda i: -len(i[0]))


def stream_of(logger_name: str) -> str:
    """The stream of a logger: webhooks, venues, engine or web."""
    for prefix, stream in _PREFIXES:
        if logger_name == prefix or logger_name.startswith(prefix + "."):
            return stream
    return "web"


class StreamFilter(logging.Filter):
    """Pass only the records of one stream (each stream has its own handler and file)."""

    def __init__(self, stream: str) -> None:
        super().__init__()
        self.stream = stream

    def filter(self, record: logging.LogRecord) -> bool:
        return stream_of(record.name) == self.stream


class RoutineTaskFilter(logging.Filter):
    """Drop Celery's INFO lines about each task ("received", "succeeded", beat's "Sending due task") from a person's
    console: under `make run` beat sends a task every second or two, and those lines buried the engine's own and the
    demo login. Their warnings and errors (a task that failed) pass; the stream files keep every line."""

    ROUTINE = ("celery.app.trace", "celery.worker.strategy", "celery.beat")

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.name.startswith(self.ROUTINE)


class SharedRotatingFileHandler(RotatingFileHandler):
    """A size-rotated file that several processes append to (gunicorn and Celery pool children, containers on one
    volume): each write holds an flock on `<file>.lock`, and a file rotated by another process is reopened."""

    def __init__(self, filename: str, maxBytes: int = 0, backupCount: int = 0, **kwargs: object) -> None:  # noqa: N803
        super().__init__(filename, maxBytes=maxBytes, backupCount=backupCount, delay=True, **kwargs)  # type: ignore[arg-type]
        self._lock_path = self.baseFilename + ".lock"
        self._lock_fd: int | None = None
        self._lock_pid = 0

    def _lock_file(self) -> int:
        # flock belongs to the open file: a forked child must open its own, or parent and child would share it.
        if self._lock_fd is None or self._lock_pid != os.getpid():
            self._lock_fd = os.open(self._lock_path, os.O_CREAT | os.O_RDWR, 0o640)
            self._lock_pid = os.getpid()
        return self._lock_fd

    def _reopen_if_rotated(self) -> None:
        if self.stream is None:
            return
        try:
            rotated = os.stat(self.baseFilename).st_ino != os.fstat(self.stream.fileno()).st_ino
        except FileNotFoundError:
            rotated = True
        if rotated:
            self.stream.close()
            self.stream = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fd = self._lock_file()
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                self._reopen_if_rotated()
                super().emit(record)
                if self.stream is not None:
                    self.stream.flush()
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except Exception:  # noqa: BLE001 - logging must never break the caller
            self.handleError(record)


def configure(config: dict[str, object]) -> None:
    """LOGGING_CONFIG: apply settings.LOGGING, then put the redaction filter on every handler any logger has
    (Django's own defaults, gunicorn's, a library's) so no output escapes it."""
    import logging.config

    logging.config.dictConfig(config)
    redact_every_handler()


def redact_every_handler() -> int:
    """Add the redaction filter to each handler of every logger that lacks it; return how many were added."""
    added = 0
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(f, RedactSecretsFilter) for f in handler.filters):
                handler.addFilter(RedactSecretsFilter())
                added += 1
    return added
