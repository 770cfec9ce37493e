"""Worker and beat health: /readyz reads the heartbeats that real workers and a real beat write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from django.test import Client

from tests.conftest import ROOT, WorkerGroup, flush_broker, wait_for
from tradesite.heartbeat import QUEUES, FileHeartbeats, RedisHeartbeats, verdicts

ALL_OK = {"database": "ok", "broker": "ok", "worker:execution": "ok", "worker:monitoring": "ok",
          "worker:strategies": "ok", "beat": "ok", "prices": "ok"}


def _readyz() -> tuple[int, dict[str, str], float]:
    started = time.perf_counter()
    response = Client().get("/readyz")
    return response.status_code, response.json()["checks"], time.perf_counter() - started


def _beat_start(env: dict[str, str], tmp_path: Path) -> subprocess.Popen[bytes]:
    """Celery beat as `manage.py run` starts it (the scheduler from the settings), on the test database."""
    log = tmp_path / "beat.log"
    return subprocess.Popen([sys.executable, "-m", "celery", "-A", "tradesite", "beat", "-l", "INFO",
                             "--schedule", str(tmp_path / "celerybeat-schedule")],
                            cwd=ROOT, env={**env, "TRADESITE_COMPONENT": "beat"}, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _kill(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def test_readyz_names_each_queue_without_a_worker_and_a_beat_that_does_not_tick(db: Any) -> None:
    flush_broker()  # no heartbeat left by an earlier test's processes
    status, checks, _ = _readyz()
    assert status == 503
    assert checks == {"database": "ok", "broker": "ok", "worker:execution": "failing",
                      "worker:monitoring": "failing", "worker:strategies": "failing", "beat": "failing", "prices": "ok"}


@pytest.mark.integration
def test_readyz_is_green_with_real_workers_and_beat_and_names_the_queue_whose_worker_died(
        workers: WorkerGroup, tmp_path: Path, settings: Any) -> None:
    settings.HEARTBEAT_STALE_SECONDS = 3
    workers.env["TRADESITE_HEARTBEAT_SECONDS"] = "0.5"
    workers.queues = "execution"
    execution = workers.start()
    workers.queues = "monitoring,strategies"
    workers.start()
    beat = _beat_start(workers.env, tmp_path)
    try:
        wait_for(lambda: _readyz()[0] == 200, timeout=60, every=0.2, what="readyz green")
        status, checks, elapsed = _readyz()
        assert (status, checks) == (200, ALL_OK)
        assert elapsed < 0.5  # one Redis round trip for the heartbeats, no broadcast to the workers

        workers.kill(execution)  # SIGKILL: no goodbye; its heartbeat goes stale
        wait_for(lambda: _readyz()[1]["worker:execution"] == "failing", timeout=15, every=0.2,
                 what="the dead execution worker reported")
        status, checks, _ = _readyz()
        assert status == 503 and checks == {**ALL_OK, "worker:execution": "failing"}

        _kill(beat)
        wait_for(lambda: _readyz()[1]["beat"] == "failing", timeout=15, every=0.2, what="the dead beat reported")
        status, checks, _ = _readyz()
        assert status == 503 and checks == {**ALL_OK, "worker:execution": "failing", "beat": "failing"}
    finally:
        _kill(beat)


@pytest.mark.integration
def test_a_worker_that_stops_cleanly_is_reported_at_once(workers: WorkerGroup, settings: Any) -> None:
    settings.HEARTBEAT_STALE_SECONDS = 600  # only the goodbye can turn it to failing within the test
    workers.queues = "execution"
    proc = workers.start()
    wait_for(lambda: _readyz()[1]["worker:execution"] == "ok", timeout=30, every=0.2, what="worker heartbeat")
    workers.kill(proc, signal.SIGTERM)  # a warm shutdown, waited for
    assert _readyz()[1]["worker:execution"] == "failing"


@pytest.fixture(params=["redis", "files"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "files":
        yield FileHeartbeats(tmp_path / "heartbeats")
        return
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    prefix = f"{os.environ['REDIS_KEY_PREFIX']}store-test:"
    yield RedisHeartbeats(client, prefix)
    for key in client.scan_iter(match=f"{prefix}*"):
        client.delete(key)


def test_heartbeat_stores_agree(store: Any) -> None:
    """Redis (compose) and files (the embedded default) answer alike."""
    assert store.seen(QUEUES).queues == {q: None for q in QUEUES} and store.seen(QUEUES).beat is None
    store.worker_beat("a@h", ["execution"], 100.0)
    store.worker_beat("b@h", ["execution", "monitoring"], 105.0)
    store.beat_tick(107.0)
    seen = store.seen(QUEUES)
    assert dict(seen.queues) == {"execution": 105.0, "monitoring": 105.0, "strategies": None} and seen.beat == 107.0
    assert dict(store.seen(QUEUES, node="a@h").queues) == {"execution": 100.0, "monitoring": None, "strategies": None}
    assert verdicts(seen, now=120.0, stale_after=14.0) == {
        "worker:execution": "failing", "worker:monitoring": "failing", "worker:strategies": "failing", "beat": "ok"}
    assert verdicts(seen, now=115.0, stale_after=14.0)["worker:execution"] == "ok"
    store.worker_gone("b@h", ["execution", "monitoring"])
    store.beat_gone()
    seen = store.seen(QUEUES)
    assert dict(seen.queues) == {"execution": 100.0, "monitoring": None, "strategies": None} and seen.beat is None
