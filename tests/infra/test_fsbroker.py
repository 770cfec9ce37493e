"""The embedded broker: a consumer never sees a message before it is whole (infra/fsbroker.py)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from queue import Empty

import pytest
from kombu import Connection

TRANSPORT = "infra.fsbroker:Transport"


def _connection(folder: Path, transport: str) -> Connection:
    return Connection(transport=transport, transport_options={
        "data_folder_in": str(folder), "data_folder_out": str(folder), "store_processed": False})


@pytest.mark.parametrize("transport", [TRANSPORT])
def test_messages_written_while_the_consumer_polls_arrive_whole_and_in_order(tmp_path: Path, transport: str) -> None:
    """A writer puts 100 messages of 4 MB (long enough to be caught half written) while a consumer polls the folder
    without pause: every message arrives whole, in order. kombu's own filesystem transport fails this (its consumer
    moves a file the writer is still writing and reads cut JSON: the worker of `make run` died of it)."""
    count, body = 100, "x" * 4_000_000
    with _connection(tmp_path, transport) as reader_conn, _connection(tmp_path, transport) as writer_conn:
        reader, writer = reader_conn.default_channel, writer_conn.default_channel
        reader.queue_declare("q")
        done = threading.Event()
        errors: list[BaseException] = []

        def write() -> None:
            try:
                for n in range(count):
                    writer._put("q", {"n": n, "body": body})
            except BaseException as exc:  # noqa: BLE001 - reported to the test's thread
                errors.append(exc)
            finally:
                done.set()

        thread = threading.Thread(target=write)
        thread.start()
        seen: list[int] = []
        deadline = time.monotonic() + 120
        try:
            while len(seen) < count and time.monotonic() < deadline:
                try:
                    payload = reader._get("q")
                except Empty:
                    continue
                assert payload["body"] == body, f"message {len(seen)} read cut: {len(payload['body'])} characters"
                seen.append(payload["n"])
        finally:
            thread.join(timeout=120)
        assert not errors
        assert seen == list(range(count))
        assert not list(tmp_path.glob("*.part"))


def test_celery_uses_it_when_no_broker_is_configured(tmp_path: Path) -> None:
    """With neither REDIS_URL nor CELERY_BROKER_URL (make run's default) every process's Celery app (worker, beat,
    the demo feed, web) writes and reads messages through infra.fsbroker, without kombu warning of a missing host."""
    import os
    import subprocess
    import sys

    code = ("import django; django.setup()\n"
            "from tradesite.celery import app\n"
            "with app.connection_for_write() as c: print(type(c.default_channel).__module__)\n"
            "app.send_task('trading.tasks.orders_sweep')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "CELERY_BROKER_URL", "DATABASE_URL")}
    env.update(DJANGO_SETTINGS_MODULE="tradesite.settings", TRADESITE_VAR_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "infra.fsbroker"
    assert "No hostname was supplied" not in done.stderr  # kombu's warning on every connection of every process
