"""The zero-configuration path a newcomer gets: SQLite (WAL) and the filesystem broker, with real processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, wait_for

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _embedded_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "DJANGO_SETTINGS_MODULE")}
    env["TRADESITE_VAR_DIR"] = str(tmp_path / "var")
    return env


def _shell(env: dict[str, str], code: str) -> str:
    out = subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True, timeout=60)
    return out.stdout.strip().splitlines()[-1]


def _get(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_run_command_trades_the_demo_on_sqlite_and_the_filesystem_broker(tmp_path: Path) -> None:
    env = _embedded_env(tmp_path)
    port = _free_port()
    log = (tmp_path / "run.log").open("wb")
    proc = subprocess.Popen([sys.executable, "manage.py", "run", "--port", str(port), "--feed-interval", "0.1"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: _get_ok(f"http://127.0.0.1:{port}/healthz"), timeout=90, every=0.5, what="web up")
        status, body = _get(f"http://127.0.0.1:{port}/readyz")
        assert status == 200, body
        assert body["checks"] == {"database": "ok", "broker": "ok"}
        query = ("from trading.models import Fill, Order; "
                 "print(Fill.objects.count(), Order.objects.filter(status='filled').count())")
        wait_for(lambda: int(_shell(env, query).split()[0]) >= 2, timeout=120, every=2,
                 what="demo strategies filled on the embedded stack")
        output = (tmp_path / "run.log").read_text(errors="replace")
        assert "Demo login (shown once): user demo, password" in output
        assert (tmp_path / "var" / "tradesite.sqlite3").exists()
        mode = _shell(env, "from django.db import connection; c = connection.cursor(); "
                           "c.execute('PRAGMA journal_mode'); print(c.fetchone()[0])")
        assert mode == "wal"
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    assert proc.returncode is not None


def _get_ok(url: str) -> bool:
    try:
        return _get(url)[0] == 200
    except OSError:
        return False
