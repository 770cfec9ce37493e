"""Shared fixtures: accounts, strategies, prices, and real Celery worker processes on the test database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

ROOT = Path(__file__).resolve().parent.parent
PG_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextmanager
def scratch_database(prefix: str) -> Iterator[str]:
    """An empty PostgreSQL database of its own (a random name after `prefix`), dropped afterwards; its URL."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_SERVER, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgres://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_SERVER, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(autouse=True)
def _venue_guards_reset() -> Iterator[None]:
    """Every test starts with closed circuit breakers and full rate buckets (they are per process)."""
    from exchanges import registry
    from exchanges.paper import PAPER_FAULTS

    registry.guards_reset()
    PAPER_FAULTS.clear()
    yield
    PAPER_FAULTS.clear()
    from trading.sidedb import side_connections_close

    side_connections_close()  # the venue journal's own connections, before the test database is dropped


@pytest.fixture
def make_account(db: Any) -> Callable[..., Any]:
    """Create a paper account through the service (validated, audited)."""
    from trading import services

    def make(**overrides: Any) -> Any:
        data = {"name": f"paper-{uuid.uuid4().hex[:8]}", "venue": "paper", "network": "paper",
                "paper_initial_cash": "10000", "max_leverage": "5"}
        data.update(overrides)
        return services.account_create(data=data, by="test")

    return make


@pytest.fixture
def make_strategy(db: Any) -> Callable[..., Any]:
    """Create and start a webhook strategy through the service."""
    from trading import services

    def make(account: Any, *, start: bool = True, **overrides: Any) -> Any:
        data = {"name": "test", "slug": f"s-{uuid.uuid4().hex[:10]}", "kind": "webhook", "symbol": "BTC/USD",
                "account": account, "mode": "paper", "sizing_mode": "quantity", "sizing_value": "0.1"}
        data.update(overrides)
        strategy = services.strategy_create(data=data, by="test")
        return services.strategy_start(strategy=strategy, by="test") if start else strategy

    return make


@pytest.fixture
def feed_markets(db: Any) -> Callable[..., None]:
    """Store the market list of a price feed's venue (what trading/feedmarkets.py keeps after loading it), so that
    paper accounts on that feed trade these markets without asking any venue: by default the bundled paper markets
    (BTC/USD, ETH/BTC, ...), for tests about prices, candles and staleness rather than about a venue's markets."""
    from exchanges.paper import DEFAULT_MARKETS
    from trading.feedmarkets import feed_markets_store

    def store(*feeds: str, markets: Any = DEFAULT_MARKETS) -> None:
        for feed in feeds:
            feed_markets_store(feed, markets, now=timezone.now())

    return store


@pytest.fixture
def set_price(db: Any) -> Callable[..., None]:
    """Publish a market price (now, unless a time is given) to the paper venue's feed."""
    from trading.prices import price_set

    def set_(symbol: str, price: str, *, volume: str | None = None, at: Any = None, feed: str = "demo") -> None:
        price_set(symbol, Decimal(price), volume=None if volume is None else Decimal(volume),
                  time=at or timezone.now(), feed=feed)

    return set_


# --------------------------------------------------------------------------------------------- real workers


@dataclass
class WorkerGroup:
    """Real `celery worker` processes on the test database and the test Redis, killable and restartable."""

    env: dict[str, str]
    log_dir: Path
    queues: str = "execution,monitoring,strategies"
    concurrency: int = 2
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    started: int = 0

    def start(self) -> subprocess.Popen[bytes]:
        """Start one worker and wait until it consumes."""
        self.started += 1
        name = f"w{self.started}-{uuid.uuid4().hex[:6]}@localhost"
        log_path = self.log_dir / f"worker-{self.started}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tradesite", "worker", "-Q", self.queues, "-c",
             str(self.concurrency), "-P", "prefork", "-n", name, "--without-gossip", "--without-mingle",
             "--without-heartbeat", "--loglevel", "INFO"],
            cwd=ROOT, env=self.env, stdout=log_path.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.procs.append(proc)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited: {log_path.read_text()[-3000:]}")
            if "ready" in log_path.read_text(errors="replace"):
                return proc
            time.sleep(0.1)
        raise RuntimeError(f"worker not ready in 60 s: {log_path.read_text()[-3000:]}")

    def kill(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        """Kill a worker's whole process group (the main process and its pool children)."""
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                self.kill(proc, signal.SIGTERM)
        self.procs.clear()

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("worker-*.log")))


def worker_env(**extra: str) -> dict[str, str]:
    """The environment a worker needs to share this test's database and broker."""
    settings = connection.settings_dict
    env = dict(os.environ)
    if connection.vendor == "postgresql":
        env["DATABASE_URL"] = (
            f"postgres://{settings['USER']}@{settings['HOST'] or '127.0.0.1'}:{settings['PORT'] or 5432}/"
            f"{settings['NAME']}"
        )
    env["TRADESITE_COMPONENT"] = "worker"
    env.update(extra)
    return env


def flush_broker() -> None:
    """Delete this run's broker keys so no message of an earlier test is delivered."""
    import redis

    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    prefix = os.environ.get("REDIS_KEY_PREFIX", "")
    for key in client.scan_iter(match=f"{prefix}*" if prefix else "*", count=1000):
        client.delete(key)


@pytest.fixture
def workers(transactional_db: Any, tmp_path: Path) -> Iterator[WorkerGroup]:
    """A group of real Celery workers; one is started by the test when it needs it."""
    flush_broker()
    group = WorkerGroup(env=worker_env(), log_dir=tmp_path)
    try:
        yield group
    finally:
        group.stop_all()
        flush_broker()


def wait_for(predicate: Callable[[], Any], *, timeout: float = 30, every: float = 0.05, what: str = "") -> Any:
    """Poll until predicate() is truthy; fail the test with `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


def run_threads(target: Callable[[], None], count: int) -> list[BaseException]:
    """Run target in `count` threads at once (each closes its own DB connection); return what they raised."""
    import threading

    errors: list[BaseException] = []

    def guarded() -> None:
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=guarded) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors
