"""The zero-configuration path a newcomer gets: SQLite (WAL) and the filesystem broker, with real processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
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
        # Ready once the worker and beat started by run write their heartbeats (files under var/heartbeats).
        # ... and with the demo feed's prices fresh for the demo strategies' market.
        wait_for(lambda: _get(f"http://127.0.0.1:{port}/readyz")[1].get("status") == "ok", timeout=60, every=0.5,
                 what="ready")
        status, body = _get(f"http://127.0.0.1:{port}/readyz")
        assert body["checks"] == {"database": "ok", "broker": "ok", "worker:execution": "ok",
                                  "worker:monitoring": "ok", "worker:strategies": "ok", "beat": "ok",
                                  "prices": "ok"}
        assert {p.name for p in (tmp_path / "var" / "heartbeats").iterdir()} >= {"beat", "queue-execution"}
        # Styled pages: the login page's stylesheet is served (from the source folder: nothing was collected).
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/login/", timeout=10) as response:
            page = response.read().decode()
        assert 'href="/static/dashboard/dashboard.css"' in page
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/static/dashboard/dashboard.css", timeout=10) as response:
            assert response.headers["Content-Type"].startswith("text/css")
            assert response.read() == (ROOT / "static" / "dashboard" / "dashboard.css").read_bytes()
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


def _descendants(pid: int) -> set[int]:
    """Every process below `pid`, read from /proc (children of each of its threads, then theirs)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                kids = {int(k) for k in (task / "children").read_text().split()}
            except OSError:
                continue
            todo.extend(kids - found)
            found |= kids
    return found


def _running(pid: int) -> bool:
    """Still a live process (a zombie waiting for its reaper counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; the parent-death signal is Linux's")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL], ids=lambda s: s.name)
def test_signalling_run_alone_stops_every_process_it_started(tmp_path: Path, sig: signal.Signals) -> None:
    """`kill <pid of manage.py run>` (a supervisor, a closed terminal, the OOM killer) reaches only that process,
    not its group: web, worker (with its pool) and beat must still stop, never run on orphaned."""
    env = _embedded_env(tmp_path)
    port = _free_port()
    log = (tmp_path / "run.log").open("wb")
    proc = subprocess.Popen([sys.executable, "manage.py", "run", "--port", str(port), "--no-demo"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    started: set[int] = set()
    try:
        wait_for(lambda: _get_ok(f"http://127.0.0.1:{port}/healthz"), timeout=90, every=0.5, what="web up")
        # web, worker (its main process and its 2 pool processes) and beat
        wait_for(lambda: len(_descendants(proc.pid)) >= 5, timeout=60, every=0.5, what="the worker's pool up")
        started = _descendants(proc.pid)
        os.kill(proc.pid, sig)
        proc.wait(timeout=40)
        wait_for(lambda: not any(_running(p) for p in started), timeout=40, every=0.5,
                 what=f"every process of run gone after {sig.name}")
        with pytest.raises(OSError):
            _get(f"http://127.0.0.1:{port}/healthz")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:  # the whole group is gone: what the test wants
            pass
        for pid in started:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
    if sig is not signal.SIGKILL:
        assert proc.returncode == 0
        assert f"{sig.name}: stopping web, worker, beat" in (tmp_path / "run.log").read_text(errors="replace")


def test_todays_realized_pnl_is_summed_exactly_on_sqlite(tmp_path: Path) -> None:
    """SQLite keeps money as text and does arithmetic on it as REAL: the overview's "realized today" must not be
    summed there (it showed 123456789012.423 for 123456789012.423456789012345677)."""
    env = _embedded_env(tmp_path)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True, timeout=180,
                   capture_output=True)
    code = (
        "from decimal import Decimal as D; from django.utils import timezone; from trading import selectors, services;"
        "from trading.models import Fill, Order;"
        "a = services.account_create(data={'name': 'p', 'paper_initial_cash': '1000'}, by='t');"
        "s = services.strategy_create(data={'name': 's', 'slug': 's', 'kind': 'webhook', 'symbol': 'BTC/USD',"
        " 'account': a, 'mode': 'paper', 'sizing_mode': 'quantity', 'sizing_value': '0.1'}, by='t');"
        "now = timezone.now();"
        "o = Order.objects.create(account=a, strategy=s, client_order_id='c1', symbol='BTC/USD', side='sell',"
        " type='market', quantity=D('1'), created_at=now, updated_at=now);"
        "[Fill.objects.create(order=o, account=a, strategy=s, symbol='BTC/USD', side='sell', venue_fill_id=str(i),"
        " quantity=D('1'), price=D('1'), fee=D(fee), realized_pnl=D(pnl), time=now, recorded_at=now)"
        " for i, (pnl, fee) in enumerate([('123456789012.423456789012345678', '0.000000000000000001'),"
        " ('0.1', '0.2')])];"
        "print([str(t.realized_today) for t in selectors.accounts_today(now=now)])"
    )
    assert _shell(env, code) == "['123456789012.323456789012345677']"


def test_the_embedded_broker_delivers_a_task_within_a_tenth_of_a_second(tmp_path: Path) -> None:
    """kombu's filesystem transport polls its folder (once a second by default): the embedded default polls every
    0.1 s, so a signal or a crossed stop waits for the broker a tenth of a second at most, not a second."""
    interval = _shell(_embedded_env(tmp_path), "from tradesite.celery import app; "
                      "print(app.conf.broker_transport_options.get('polling_interval'))")
    assert interval == "0.1"
