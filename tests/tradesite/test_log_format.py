"""LOG_FORMAT: readable console lines for a person, JSON lines for machines; secrets redacted in both."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys

import pytest
from django.conf import settings

from tests.conftest import ROOT
from trading.logcontext import log_context
from tradesite import logging as tradesite_logging
from tradesite.logging import ConsoleFormatter, JsonFormatter, RedactSecretsFilter, register_secret, secret_values

CANARY = "log-format-canary-8c1f0e2d"


def _log(formatter: logging.Formatter, monkeypatch: pytest.MonkeyPatch) -> str:
    """Log a line and an error with the canary in both, through a handler built as settings.LOGGING builds it."""
    monkeypatch.setenv("TRADESITE_COMPONENT", "worker")
    monkeypatch.setenv("LOGFMT_API_SECRET", CANARY)  # a secret-named environment value
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    handler.addFilter(RedactSecretsFilter())
    name = "trading.engine.logformat"
    with log_context(signal_id=11, order_id=22):
        handler.handle(logging.LogRecord(name, logging.INFO, __file__, 1, "order %s filled with key %s",
                                         (22, CANARY), None))
    try:
        raise ValueError(f"in a traceback: {CANARY}")
    except ValueError:
        handler.handle(logging.LogRecord(name, logging.ERROR, __file__, 1, "failed", None, sys.exc_info()))
    return out.getvalue()


def test_console_lines_are_readable_and_redact_a_canary_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    text = _log(ConsoleFormatter(), monkeypatch)

    first, second, *traceback = text.splitlines()
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} INFO    worker   trading\.engine\.logformat: "
                        r"order 22 filled with key \[REDACTED\]  signal_id=11 order_id=22", first), first
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} ERROR   worker   trading\.engine\.logformat: failed", second)
    assert traceback[0] == "Traceback (most recent call last):"
    assert traceback[-1] == "ValueError: in a traceback: [REDACTED]"
    assert CANARY not in text


def test_json_lines_parse_and_redact_a_canary_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    text = _log(JsonFormatter(), monkeypatch)

    line, error = (json.loads(raw) for raw in text.splitlines())
    assert (line["level"], line["component"], line["stream"], line["logger"]) == (
        "INFO", "worker", "engine", "trading.engine.logformat")
    assert (line["message"], line["signal_id"], line["order_id"]) == ("order 22 filled with key [REDACTED]", 11, 22)
    assert error["message"] == "failed" and error["exc"].endswith("ValueError: in a traceback: [REDACTED]")
    assert CANARY not in text


def test_the_console_handler_uses_the_format_the_setting_names() -> None:
    assert settings.LOG_FORMAT in ("console", "json")
    assert settings.LOGGING["handlers"]["console"]["formatter"] == settings.LOG_FORMAT
    assert set(settings.LOGGING["formatters"]) == {"console", "json"}
    for name, handler in settings.LOGGING["handlers"].items():  # the stream files stay JSON lines
        if name.startswith("file_"):
            assert handler["formatter"] == "json", name


def _stderr_of(argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("LOG_FORMAT", "DJANGO_SETTINGS_MODULE")}
    return subprocess.run([sys.executable, *argv], cwd=ROOT, env={**clean, **env}, capture_output=True, text=True,
                          timeout=120)


LOG_A_LINE = "import logging; logging.getLogger('trading.engine').warning('hello from %s', 'the shell')"


@pytest.mark.parametrize(("env", "console"), [({}, True), ({"LOG_FORMAT": "json"}, False)])
def test_manage_py_prints_readable_lines_unless_told_json(env: dict[str, str], console: bool) -> None:
    """A person runs manage.py (and `make run`, whose roles inherit its format); LOG_FORMAT=json still wins."""
    done = _stderr_of(["manage.py", "shell", "-c", LOG_A_LINE], TRADESITE_COMPONENT="shell", **env)
    assert done.returncode == 0, done.stderr[-2000:]
    (line,) = [raw for raw in done.stderr.splitlines() if "hello from the shell" in raw]
    if console:
        assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} WARNING shell    trading\.engine: hello from the shell", line)
    else:
        assert json.loads(line)["message"] == "hello from the shell"


def test_a_server_process_prints_json_lines_by_default_and_refuses_an_unknown_format() -> None:
    """Gunicorn, Celery and the containers' bootstrap load the settings without manage.py: JSON lines."""
    code = f"import django; django.setup(); {LOG_A_LINE}"
    done = _stderr_of(["-c", code], DJANGO_SETTINGS_MODULE="tradesite.settings")
    assert done.returncode == 0, done.stderr[-2000:]
    (line,) = [raw for raw in done.stderr.splitlines() if "hello from the shell" in raw]
    assert json.loads(line)["level"] == "WARNING"

    refused = _stderr_of(["-c", code], DJANGO_SETTINGS_MODULE="tradesite.settings", LOG_FORMAT="xml")
    assert refused.returncode != 0 and "LOG_FORMAT must be console or json, not 'xml'" in refused.stderr


def test_the_secret_set_is_computed_once_and_again_only_after_a_change(monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[frozenset[str]] = []
    read = tradesite_logging._secret_values_read

    def counted() -> frozenset[str]:
        reads.append(read())
        return reads[-1]

    monkeypatch.setattr(tradesite_logging, "_secret_values_read", counted)
    first = secret_values()
    for _ in range(100):
        assert secret_values() is first
    assert len(reads) <= 1  # none when an earlier call had computed it for this environment

    monkeypatch.setenv("LOGFMT_PRIVATE_KEY", "fresh-env-canary-1234")
    assert "fresh-env-canary-1234" in secret_values()
    register_secret("fresh-registered-canary-5678")
    assert "fresh-registered-canary-5678" in secret_values()
    monkeypatch.delenv("LOGFMT_PRIVATE_KEY")
    assert "fresh-env-canary-1234" not in secret_values()
    assert secret_values() is secret_values()


ROUTINE = ("import logging\n"
           "for name in ('celery.app.trace', 'celery.worker.strategy', 'celery.beat', 'trading.engine'):\n"
           "    logging.getLogger(name).info('routine line of %s', name)\n")


@pytest.mark.parametrize(("env", "quiet"), [({}, True), ({"LOG_FORMAT": "json"}, False)])
def test_the_console_leaves_out_celerys_line_per_task_for_a_person(env: dict[str, str], quiet: bool) -> None:
    """Under `make run` beat sends a task every second or two, and Celery's "received" / "succeeded" lines for each
    buried the engine's own lines and the demo login; a person's console keeps the engine's INFO lines and drops
    those (Celery's warnings and errors, a failed task, still show). JSON for machines keeps them all."""
    done = _stderr_of(["manage.py", "shell", "-c", ROUTINE], TRADESITE_COMPONENT="shell", **env)
    assert done.returncode == 0, done.stderr[-2000:]
    shown = {name for name in ("celery.app.trace", "celery.worker.strategy", "celery.beat", "trading.engine")
             if f"routine line of {name}" in done.stderr}
    assert shown == ({"trading.engine"} if quiet else {"celery.app.trace", "celery.worker.strategy", "celery.beat",
                                                        "trading.engine"})
