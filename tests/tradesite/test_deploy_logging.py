"""Log streams: one JSON-lines file per stream, shared by processes, rotated by size, redacted on every handler."""

from __future__ import annotations

import importlib
import json
import logging
import multiprocessing
from pathlib import Path

import pytest
from django.conf import settings

from trading.logcontext import log_context
from tradesite.logging import (JsonFormatter, RedactSecretsFilter, SharedRotatingFileHandler, StreamFilter,
                               register_secret, stream_of)

STREAMS = ("web", "engine", "venues", "webhooks")


def _handlers(log_dir: Path, max_bytes: int = 0, backups: int = 0) -> list[logging.Handler]:
    """The four stream handlers, built the way settings.LOGGING builds them."""
    out: list[logging.Handler] = []
    for stream in STREAMS:
        handler = SharedRotatingFileHandler(str(log_dir / f"{stream}.log"), maxBytes=max_bytes, backupCount=backups)
        handler.setFormatter(JsonFormatter())
        handler.addFilter(StreamFilter(stream))
        handler.addFilter(RedactSecretsFilter())
        out.append(handler)
    return out


def _emit(handlers: list[logging.Handler], name: str, message: str, *args: object) -> None:
    record = logging.LogRecord(name, logging.INFO, __file__, 1, message, args, None)
    for handler in handlers:
        handler.handle(record)


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize(("logger", "stream"), [
    ("webhooks.services", "webhooks"), ("exchanges.coinbase", "venues"), ("venues", "venues"),
    ("venues.synthetix", "venues"), ("trading.reconcile", "venues"), ("ccxt.base.exchange", "venues"),
    ("trading.engine", "engine"), ("strategies.tasks", "engine"), ("celery.worker", "engine"),
    ("django.request", "web"), ("axes", "web"), ("tradesite.metrics", "web"), ("tradingx", "web"),
])
def test_each_logger_has_its_stream(logger: str, stream: str) -> None:
    assert stream_of(logger) == stream


@pytest.mark.parametrize("module", ["exchanges.coinbase", "exchanges.registry", "exchanges.resilience",
                                    "exchanges.synthetix", "trading.ratelimits", "trading.reconcile"])
def test_the_venue_side_modules_log_to_the_venues_stream(module: str) -> None:
    assert stream_of(importlib.import_module(module).log.name) == "venues"


def test_records_land_in_their_stream_file_as_json_with_ids(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADESITE_COMPONENT", "worker-execution")
    handlers = _handlers(tmp_path)
    with log_context(signal_id=11, order_id=22):
        _emit(handlers, "trading.engine", "order %s filled", 22)
    _emit(handlers, "webhooks.services", "alert refused")
    _emit(handlers, "exchanges.coinbase", "venue slow")
    _emit(handlers, "django.request", "Not Found: /x")
    (engine,) = _lines(tmp_path / "engine.log")
    assert engine["message"] == "order 22 filled" and engine["signal_id"] == 11 and engine["order_id"] == 22
    assert engine["component"] == "worker-execution" and engine["level"] == "INFO" and engine["stream"] == "engine"
    assert "T" in str(engine["time"]) and str(engine["time"]).endswith("+00:00")
    assert [r["message"] for r in _lines(tmp_path / "webhooks.log")] == ["alert refused"]
    assert [r["message"] for r in _lines(tmp_path / "venues.log")] == ["venue slow"]
    assert [r["message"] for r in _lines(tmp_path / "web.log")] == ["Not Found: /x"]


def _writer(log_dir: str, worker: int, count: int) -> None:
    handlers = _handlers(Path(log_dir), max_bytes=4000, backups=1000)
    for i in range(count):
        _emit(handlers, "trading.engine", "worker %s line %s %s", worker, i, "x" * 60)


def test_processes_share_a_file_rotated_by_size_without_losing_lines(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, 150)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    files = sorted(tmp_path.glob("engine.log*"))
    files = [f for f in files if not f.name.endswith(".lock")]
    assert len(files) > 10  # rotated many times
    assert all(f.stat().st_size <= 4000 for f in files)
    seen = [(r["message"]) for f in files for r in _lines(f)]
    assert len(seen) == 450 and len(set(seen)) == 450  # every line once, none torn or lost


def test_every_configured_handler_ends_with_the_redaction_filter() -> None:
    handlers = settings.LOGGING["handlers"]
    assert {"console", "file_web", "file_engine", "file_venues", "file_webhooks"} <= set(handlers)
    for name, handler in handlers.items():
        assert handler["filters"][-1] == "redact", name
    assert set(settings.LOGGING["root"]["handlers"]) == set(handlers)
    for name in ("file_web", "file_engine", "file_venues", "file_webhooks"):
        assert handlers[name]["class"] == "tradesite.logging.SharedRotatingFileHandler"
        assert handlers[name]["maxBytes"] > 0 and handlers[name]["backupCount"] > 0


def test_a_secret_logged_anywhere_is_redacted_in_every_stream(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://:pw%2Bcanary%2F77@redis:6379/0")
    register_secret("stream-canary-0123456789")
    handlers = _handlers(tmp_path)
    for logger in ("trading.engine", "webhooks.apis", "exchanges.hyperliquid", "django.request"):
        _emit(handlers, logger, "leak %s and %s", "stream-canary-0123456789", "pw+canary/77")
        try:
            raise ValueError("in a traceback: stream-canary-0123456789")
        except ValueError:
            import sys

            record = logging.LogRecord(logger, logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
            for handler in handlers:
                handler.handle(record)
    text = "".join(p.read_text() for p in tmp_path.glob("*.log"))
    assert text.count("[REDACTED]") == 16  # per logger: two in the message, the source line and the error
    assert "canary" not in text


def test_credentials_no_one_registered_are_redacted_by_their_shape(tmp_path: Path) -> None:
    """An API token or a webhook passphrase lives in the database, not in this process's list of secrets: a request
    line with one in its query string (runserver's access log, `make run`) or a quoted Authorization header is still
    redacted; other parameters stay readable."""
    token = "643421f399fcf199eaee682d2631e4d74384716c"
    handlers = _handlers(tmp_path)
    _emit(handlers, "django.server", '"%s" %s %s', f"GET /api/strategies/?limit=5&auth_token={token} HTTP/1.1", 401, 58)
    _emit(handlers, "django.server", '"%s" %s %s', "POST /api/webhooks/tradingview/?passphrase=hunter2-hunter2 "
          "HTTP/1.1", 401, 58)
    _emit(handlers, "django.request", "sent with Authorization: Token %s", token)
    text = "".join(p.read_text() for p in tmp_path.glob("*.log"))
    assert token not in text and "hunter2" not in text and text.count("[REDACTED]") == 3  # all three: web stream
    assert "limit=5" in text


def test_no_handler_of_any_logger_lacks_the_redaction_filter() -> None:
    """Django's default console/server handlers are replaced, and any other handler got the filter at start-up."""
    assert logging.getLogger("django").handlers == [] and logging.getLogger("django.server").handlers == []
    loggers = [logging.getLogger()] + [lg for name, lg in logging.Logger.manager.loggerDict.items()
                                       if isinstance(lg, logging.Logger) and name.split(".")[0] in
                                       ("django", "tradesite", "trading", "webhooks", "strategies", "axes")]
    for logger in loggers:
        for handler in logger.handlers:
            if type(handler).__module__.startswith("_pytest") or isinstance(handler, logging.NullHandler):
                continue  # pytest's capture handlers (added after start-up); a NullHandler writes nothing
            assert any(isinstance(f, RedactSecretsFilter) for f in handler.filters), (logger.name, handler)


def test_redact_every_handler_covers_a_library_handler_added_outside_our_config() -> None:
    from tradesite.logging import redact_every_handler

    library = logging.getLogger("some.library")
    handler = logging.StreamHandler()
    library.addHandler(handler)
    try:
        assert redact_every_handler() >= 1
        assert any(isinstance(f, RedactSecretsFilter) for f in handler.filters)
    finally:
        library.removeHandler(handler)
