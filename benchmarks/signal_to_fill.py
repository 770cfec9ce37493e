"""Signal-to-fill latency through the real stack: PostgreSQL, Redis, one Celery worker and the paper venue.

    python benchmarks/signal_to_fill.py [--rate 100] [--seconds 60] [--warmup 5] [--find-knee]

Creates a throwaway database (`tradesite_bench`) and migrates it, flushes a dedicated Redis db (/14), starts ONE
`celery worker -Q execution -c 2 -P prefork`, and sets up one paper account with 4 webhook strategies. Then it
creates signals open-loop at a fixed rate from this process with `signal_create(..., enqueue=True)`
(store the row, enqueue the task on commit: what webhook intake does), alternating open_long / close per
strategy so positions stay small. Sender threads (4) share one schedule: each signal has a scheduled send time,
a late sender never delays the schedule, and its lag is reported (no coordinated omission).

Latencies come from the Signal row's stage stamps (`timezone.now()` in each process, one machine clock):
received (before the INSERT) -> accepted (the task starts deciding) -> submitted (the order is marked
SUBMITTING) -> acknowledged -> filled (both stamped when the venue's reply starts being recorded).
The engine stamps `filled_at` before the fill transaction runs, so the script also installs, in its own
database only, a deferred constraint trigger that records `clock_timestamp()` when a signal reaches a final
status, i.e. at the commit of the fill transaction: "received -> committed" is the latency a reader of the
database sees.

--find-knee runs short runs (10 s at 100, 150, 200, 300 signals/s, upwards until one does not keep up; then
halving below the lowest while even that one fails, and bisecting the bracket) and reports the rate at which the
backlog starts to grow, p99 explodes or intake cannot keep the schedule. Everything is bounded in time and cleaned
up (worker stopped, database dropped, Redis db flushed) on success, failure, Ctrl-C or SIGTERM. The last stdout
line is JSON. Results and what they showed: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import itertools
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SYMBOL = "BTC/USD"
PRICE = Decimal("50000")
STRATEGIES = 4
PRICE_EVERY_S = 5.0
SAMPLE_EVERY_S = 0.25
TARGET_P50_MS, TARGET_P99_MS = 10.0, 25.0
KNEE_RATES = (100, 150, 200, 300)
KNEE_SECONDS = 10.0
KNEE_EXTRA_RUNS = 5  # halvings below the lowest rate when even that one saturates, then bisections
KNEE_P99_MS = 500.0  # a p99 counts as exploded above this and 5x the lowest p99 of the series (seconds when saturated)
FINAL = ("executed", "rejected", "ignored", "failed")


class Timeout(Exception):
    """The whole benchmark ran past --timeout."""


# --------------------------------------------------------------------------------------------- environment


def bench_env(args: argparse.Namespace, var_dir: Path) -> dict[str, str]:
    """The environment shared by this process and the worker."""
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="tradesite.settings",
        DATABASE_URL=f"{args.pg_url.rstrip('/')}/{args.db_name}",
        REDIS_URL=args.redis_url,
        TRADESITE_VAR_DIR=str(var_dir),
        LOG_LEVEL="WARNING",
        TRADESITE_COMPONENT="bench",
    )
    env.pop("CELERY_BROKER_URL", None)
    return env


def _admin_sql(args: argparse.Namespace, *statements: str) -> None:
    import psycopg

    with psycopg.connect(f"{args.pg_url.rstrip('/')}/postgres", autocommit=True, connect_timeout=10) as conn:
        for statement in statements:
            conn.execute(statement)  # type: ignore[arg-type]


def db_create(args: argparse.Namespace) -> None:
    """Create the benchmark's own database, dropping a leftover of an earlier run."""
    _admin_sql(args, f'DROP DATABASE IF EXISTS "{args.db_name}" WITH (FORCE)', f'CREATE DATABASE "{args.db_name}"')


def db_drop(args: argparse.Namespace) -> None:
    """Drop the benchmark's database, closing whatever is still connected to it."""
    _admin_sql(args, f'DROP DATABASE IF EXISTS "{args.db_name}" WITH (FORCE)')


def migrate(env: dict[str, str]) -> None:
    """Run `manage.py migrate` against the benchmark database."""
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0", "--no-input"], cwd=ROOT, env=env, check=True,
                   timeout=300)


# Fires at COMMIT (deferred), so clock_timestamp() is the moment the fill transaction commits (before its WAL flush).
COMMIT_PROBE_SQL = """
CREATE TABLE bench_settled (signal_id bigint PRIMARY KEY, settled_at timestamptz NOT NULL);
CREATE FUNCTION bench_settled_record() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench_settled VALUES (NEW.id, clock_timestamp()) ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER bench_settled AFTER UPDATE OF status ON trading_signal
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (NEW.status IN ('executed', 'rejected', 'ignored', 'failed'))
    EXECUTE FUNCTION bench_settled_record();
"""


def commit_probe_install(args: argparse.Namespace) -> None:
    """Record each signal's settle commit time in bench_settled (benchmark database only)."""
    import psycopg

    with psycopg.connect(f"{args.pg_url.rstrip('/')}/{args.db_name}", autocommit=True, connect_timeout=10) as conn:
        conn.execute(COMMIT_PROBE_SQL)  # type: ignore[arg-type]


def redis_flush(url: str) -> None:
    """Empty the benchmark's Redis database (broker queues and cache)."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=10)
    try:
        client.flushdb()
    finally:
        client.close()


def _pdeathsig() -> None:
    """Have the kernel SIGTERM the worker if this process dies without cleaning up (Linux only)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Worker:
    """One real `celery worker` process group on the execution queue."""

    env: dict[str, str]
    log_path: Path
    concurrency: int = 2
    pool: str = "prefork"
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the worker (readiness is checked by the caller with a probe signal)."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tradesite", "worker", "-Q", "execution", "-c",
             str(self.concurrency), "-P", self.pool, "-n", f"bench-{os.getpid()}@localhost", "--without-gossip",
             "--without-mingle", "--without-heartbeat", "--loglevel", "WARNING"],
            cwd=ROOT, env={**self.env, "TRADESITE_COMPONENT": "worker"}, stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_pdeathsig,
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """Warm shutdown of the whole process group, SIGKILL after 20 s."""
        if self.proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # pool children left behind by a dead parent

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def errors_logged(self) -> int:
        if not self.log_path.exists():
            return 0
        return sum(1 for line in self.log_path.read_text(errors="replace").splitlines()
                   if '"level": "ERROR"' in line or "Traceback" in line or line.startswith("[ERROR"))


# --------------------------------------------------------------------------------------------- CPU accounting


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_of(pid: int) -> tuple[int, float] | None:
    """(process group, CPU seconds) of a process, or None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[2]), (int(fields[11]) + int(fields[12])) / _TICK


def _machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return (total - idle) / _TICK, total / _TICK


@dataclass
class CpuSnapshot:
    at: float
    worker: dict[int, float]
    postgres: dict[int, float]
    bench: float
    machine_busy: float
    machine_total: float


def cpu_snapshot(worker_pgid: int, db_name: str) -> CpuSnapshot:
    """CPU seconds so far of the worker's processes, the benchmark database's backends, this process and the machine."""
    worker: dict[int, float] = {}
    postgres: dict[int, float] = {}
    marker = f" {db_name} ".encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        got = _cpu_of(pid)
        if got is None:
            continue
        if got[0] == worker_pgid:
            worker[pid] = got[1]
            continue
        with contextlib.suppress(OSError):
            if marker in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ") + b" ":
                postgres[pid] = got[1]
    busy, total = _machine_cpu()
    return CpuSnapshot(time.monotonic(), worker, postgres, time.process_time(), busy, total)


def cpu_delta(before: CpuSnapshot, after: CpuSnapshot, *, fills: int, sent: int) -> dict[str, float]:
    """CPU by component over the window between two snapshots: cores used, and ms per fill (worker, PostgreSQL)
    or per sent signal (this process); and how busy the whole machine was."""
    def spent(a: dict[int, float], b: dict[int, float]) -> float:
        return sum(v - a.get(pid, 0.0) for pid, v in b.items())

    worker, pg = spent(before.worker, after.worker), spent(before.postgres, after.postgres)
    bench = after.bench - before.bench
    wall = max(after.at - before.at, 1e-9)
    total = after.machine_total - before.machine_total
    busy = after.machine_busy - before.machine_busy
    return {
        "worker_cores": round(worker / wall, 2),
        "postgres_cores": round(pg / wall, 2),
        "bench_cores": round(bench / wall, 2),
        "worker_ms_per_fill": round(1000 * worker / fills, 1) if fills else None,
        "postgres_ms_per_fill": round(1000 * pg / fills, 1) if fills else None,
        "bench_ms_per_sent": round(1000 * bench / sent, 1) if sent else None,
        "machine_busy_pct": round(100 * busy / total, 1) if total else 0.0,
        "other_processes_pct": round(100 * max(busy - worker - pg - bench, 0.0) / total, 1) if total else 0.0,
        "window_s": round(wall, 2),
        "ncpu": os.cpu_count() or 1,
    }


# --------------------------------------------------------------------------------------------- the run


def fixtures_create() -> list[Any]:
    """One paper account with 4 started webhook strategies, sized so no limit binds, and a fresh price."""
    from django.utils import timezone

    from trading import services
    from trading.prices import price_set

    account = services.account_create(data={
        "name": "bench-paper", "venue": "paper", "network": "paper", "paper_initial_cash": "1000000000",
        "max_leverage": "5",
    }, by="benchmark")
    strategies = []
    for i in range(STRATEGIES):
        strategy = services.strategy_create(data={
            "name": f"bench {i}", "slug": f"bench-{i}", "kind": "webhook", "symbol": SYMBOL, "account": account,
            "mode": "paper", "sizing_mode": "quantity", "sizing_value": "0.001",
        }, by="benchmark")
        strategies.append(services.strategy_start(strategy=strategy, by="benchmark"))
    price_set(SYMBOL, PRICE, time=timezone.now())
    return strategies


class Monitor(threading.Thread):
    """Refresh the price every few seconds (entries refuse stale prices) and sample the backlog (RECEIVED signals)."""

    def __init__(self) -> None:
        super().__init__(name="bench-monitor", daemon=True)
        self.stop_event = threading.Event()
        self.samples: list[tuple[float, int]] = []  # (perf_counter, signals still RECEIVED)
        self.error: BaseException | None = None

    def run(self) -> None:
        from django.db import connection
        from django.utils import timezone

        from trading.models import Signal
        from trading.prices import price_set

        last_price = 0.0
        try:
            while not self.stop_event.is_set():
                now = time.perf_counter()
                if now - last_price >= PRICE_EVERY_S:
                    price_set(SYMBOL, PRICE, time=timezone.now())
                    last_price = now
                self.samples.append((now, Signal.objects.filter(status=Signal.Status.RECEIVED).count()))
                self.stop_event.wait(SAMPLE_EVERY_S)
        except BaseException as exc:  # noqa: BLE001 - surfaced by the main thread
            self.error = exc
        finally:
            connection.close()

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=10)


def signal_send(strategy: Any, key: str, index: int) -> None:
    """Store one signal and enqueue it on commit, as webhook intake does."""
    from trading.intake import signal_create

    action = "open_long" if (index // STRATEGIES) % 2 == 0 else "close"
    signal_create(strategy=strategy, source="manual", idempotency_key=key, action=action, enqueue=True)


def wait_until(predicate: Callable[[], bool], *, timeout: float, worker: Worker | None = None, what: str) -> bool:
    """Poll until predicate() holds; False after timeout; raise if the worker died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if worker is not None and not worker.alive():
            raise RuntimeError(f"worker exited while waiting for {what}:\n{worker.log_tail()}")
        time.sleep(0.1)
    return False


def unsettled(prefix: str) -> int:
    from trading.models import Signal

    return Signal.objects.filter(idempotency_key__startswith=prefix).exclude(status__in=FINAL).count()


def settle_wait(prefix: str, *, timeout: float, worker: Worker, stall: float = 20) -> bool:
    """Wait until every signal of a run is final; give up after `timeout`, or once nothing moved for `stall` s."""
    deadline_at = time.monotonic() + timeout
    last, moved_at = -1, time.monotonic()
    while time.monotonic() < deadline_at:
        left = unsettled(prefix)
        if left == 0:
            return True
        if left != last:
            last, moved_at = left, time.monotonic()
        elif time.monotonic() - moved_at > stall:
            return False  # e.g. a task that died on a database error: only the sweeper (not running) re-drives it
        if not worker.alive():
            raise RuntimeError(f"worker exited while waiting for signals to settle:\n{worker.log_tail()}")
        time.sleep(0.1)
    return False


def deadlocks(db_name: str) -> int:
    """Deadlocks PostgreSQL has detected in the benchmark database so far."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT deadlocks FROM pg_stat_database WHERE datname = %s", [db_name])
        return int(cursor.fetchone()[0])


def worker_wait_ready(strategies: Sequence[Any], worker: Worker) -> None:
    """Push an open and a close through the worker, which proves it consumes and warms its connections."""
    from django.db import DatabaseError

    for i in range(2):
        for attempt in range(3):
            try:
                signal_send(strategies[0], f"probe:{i}:{attempt}", i * STRATEGIES)
                break
            except DatabaseError as exc:  # the intake deadlock this benchmark reports can hit the probe too
                print(f"probe signal failed ({str(exc).splitlines()[0]}), retrying", file=sys.stderr)
        if not wait_until(lambda: unsettled("probe:") == 0, timeout=90, worker=worker, what="the probe signal"):
            raise RuntimeError(f"the worker did not process a probe signal in 90 s:\n{worker.log_tail()}")


@dataclass
class RunResult:
    figures: dict[str, Any]
    rejected: list[tuple[str, str, str]] = field(default_factory=list)


def _pct(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) by linear interpolation, None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _summary(values: Sequence[float]) -> dict[str, float | None]:
    def r(v: float | None) -> float | None:
        return None if v is None else round(v, 2)

    return {"p50": r(_pct(values, 50)), "p99": r(_pct(values, 99)), "max": r(max(values) if values else None),
            "n": len(values)}


def _slope(points: Sequence[tuple[float, int]]) -> float:
    """Least-squares slope (per second) of (time, value) points."""
    if len(points) < 3:
        return 0.0
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    den = sum((p[0] - mx) ** 2 for p in points)
    return sum((p[0] - mx) * (p[1] - my) for p in points) / den if den else 0.0


def run(*, strategies: Sequence[Any], worker: Worker, monitor: Monitor, args: argparse.Namespace, rate: float,
        seconds: float, warmup: float, tag: str) -> RunResult:
    """Send signals open-loop at `rate` for warmup + seconds, wait until they settle, and measure."""
    from django.db import DatabaseError, connection

    from trading.models import Signal

    n_warm, n_meas = round(rate * warmup), round(rate * seconds)
    n = n_warm + n_meas
    senders = args.senders
    next_index = itertools.count()  # shared: whichever sender is free takes the next scheduled signal
    # A sender that cannot keep up never stretches the schedule; past this point the rest is counted as unsent.
    cutoff = max(5.0, 0.25 * (warmup + seconds))
    scheduled: dict[int, float] = {}  # index -> scheduled send time, epoch seconds
    intake_ms: dict[int, float] = {}  # index -> duration of the signal_create call (INSERT, COMMIT, enqueue)
    intake_errors: dict[int, str] = {}  # index -> what signal_create raised
    stop = threading.Event()
    errors: list[BaseException] = []
    deadlocks0 = deadlocks(args.db_name)
    # Signals a dead task left RECEIVED in an earlier run stay so (no sweeper runs): count only this run's.
    backlog0 = Signal.objects.filter(status=Signal.Status.RECEIVED).count()
    perf0, wall0 = time.perf_counter(), time.time()
    base = perf0 + 0.2

    def sender() -> None:
        try:
            for i in next_index:
                due = base + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                if i >= n or stop.is_set() or time.perf_counter() > base + n / rate + cutoff:
                    return
                scheduled[i] = wall0 + (due - perf0)
                started = time.perf_counter()
                try:
                    signal_send(strategies[i % STRATEGIES], f"{tag}:{i}", i)
                except DatabaseError as exc:  # what webhook intake would answer with a 5xx: count it, go on
                    intake_errors[i] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
                intake_ms[i] = (time.perf_counter() - started) * 1000
        except BaseException as exc:  # noqa: BLE001 - surfaced by the main thread
            errors.append(exc)
            stop.set()
        finally:
            connection.close()

    threads = [threading.Thread(target=sender, name=f"bench-sender-{t}", daemon=True) for t in range(senders)]
    for t in threads:
        t.start()
    try:
        window_start = base + n_warm / rate
        time.sleep(max(window_start - time.perf_counter(), 0))
        cpu0 = cpu_snapshot(worker.proc.pid if worker.proc else -1, args.db_name)
        for t in threads:
            t.join(timeout=max(base + n / rate - time.perf_counter(), 0) + cutoff + 60)
            if t.is_alive():
                raise RuntimeError(f"{t.name} is stuck")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
    window_end = time.perf_counter()
    cpu1 = cpu_snapshot(worker.proc.pid if worker.proc else -1, args.db_name)
    if errors:
        raise RuntimeError(f"a sender failed: {errors[0]!r}") from errors[0]
    backlog_end = Signal.objects.filter(status=Signal.Status.RECEIVED).count() - backlog0
    samples = [(t, b - backlog0) for t, b in monitor.samples if window_start <= t <= window_end]

    settled_ok = settle_wait(f"{tag}:", timeout=args.settle_timeout, worker=worker)
    drained_at = time.perf_counter()

    rows = list(Signal.objects.filter(idempotency_key__startswith=f"{tag}:").values_list(
        "id", "idempotency_key", "status", "decision_rule", "decision_detail", "received_at", "accepted_at",
        "submitted_at", "acknowledged_at", "filled_at"))
    with connection.cursor() as cursor:
        cursor.execute("SELECT s.id, b.settled_at FROM bench_settled b JOIN trading_signal s ON s.id = b.signal_id "
                       "WHERE s.idempotency_key LIKE %s", [f"{tag}:%"])
        settled_at = dict(cursor.fetchall())

    def ms(a: datetime | None, b: datetime | None) -> float | None:
        return None if a is None or b is None else (b - a).total_seconds() * 1000

    measured = [r for r in rows if int(r[1].rsplit(":", 1)[1]) >= n_warm]
    by_status: dict[str, int] = {}
    for r in measured:
        by_status[r[2]] = by_status.get(r[2], 0) + 1
    filled = [r for r in measured if r[9] is not None]
    stages: dict[str, list[float]] = {k: [] for k in (
        "received_filled", "received_committed", "received_accepted", "accepted_submitted", "submitted_acknowledged",
        "acknowledged_filled", "filled_committed", "sender_lag", "scheduled_committed")}
    for r in measured:
        index = int(r[1].rsplit(":", 1)[1])
        due = datetime.fromtimestamp(scheduled[index], tz=r[5].tzinfo) if index in scheduled else None
        commit = settled_at.get(r[0])
        pairs = {
            "received_accepted": (r[5], r[6]), "accepted_submitted": (r[6], r[7]),
            "submitted_acknowledged": (r[7], r[8]), "acknowledged_filled": (r[8], r[9]), "sender_lag": (due, r[5]),
        }
        if r[9] is not None:
            pairs |= {"received_filled": (r[5], r[9]), "received_committed": (r[5], commit),
                      "filled_committed": (r[9], commit), "scheduled_committed": (due, commit)}
        for name, (a, b) in pairs.items():
            value = ms(a, b)
            if value is not None:
                stages[name].append(value)

    received = sorted(r[5].timestamp() for r in measured)
    achieved = (len(received) - 1) / (received[-1] - received[0]) if len(received) > 1 else 0.0
    # Fills per second inside the sending window (warm-up leftovers count: the worker was doing them then).
    win0, win1 = wall0 + (window_start - perf0), wall0 + (window_end - perf0)
    in_window = sum(1 for r in rows if r[9] is not None and win0 <= r[9].timestamp() <= win1)
    last_fill = max((r[9].timestamp() for r in filled), default=win1)
    figures: dict[str, Any] = {
        "rate_target": rate,
        "seconds": seconds,
        "warmup": warmup,
        "senders": senders,
        "achieved_rate": round(achieved, 2),
        "scheduled": n_meas,
        "sent": sum(1 for i in intake_ms if i >= n_warm),
        "unsent": n_meas - sum(1 for i in intake_ms if i >= n_warm),
        "count": len(measured),
        "filled": len(filled),
        "statuses": by_status,
        "rejected": by_status.get("rejected", 0),
        "ignored": by_status.get("ignored", 0),
        "unsettled": sum(1 for r in measured if r[2] not in FINAL),
        "unsettled_warmup": sum(1 for r in rows if r[2] not in FINAL) - sum(1 for r in measured if r[2] not in FINAL),
        "settled_in_time": settled_ok,
        "throughput_fills_per_s": round(in_window / (win1 - win0), 2) if win1 > win0 else None,
        "drain_rate_fills_per_s": (round(len(filled) / (last_fill - received[0]), 2)
                                   if filled and last_fill > received[0] else None),
        "backlog_at_end": backlog_end,
        "backlog_growth_per_s": round(_slope(samples), 2),
        "backlog_max": max((b for _, b in samples), default=backlog_end),
        "drain_s_after_sending": round(drained_at - window_end, 2),
        "latency_ms": {name: _summary(values) for name, values in stages.items()},
        "intake_call_ms": _summary([v for i, v in intake_ms.items() if i >= n_warm]),
        "intake_errors": sum(1 for i in intake_errors if i >= n_warm),
        "intake_error_kinds": sorted({v for i, v in intake_errors.items() if i >= n_warm}),
        "deadlocks": deadlocks(args.db_name) - deadlocks0,
        "cpu": cpu_delta(cpu0, cpu1, fills=in_window, sent=sum(1 for i in intake_ms if i >= n_warm)),
    }
    rejected = [(r[1], r[3], r[4][:120]) for r in measured if r[2] == "rejected"]
    return RunResult(figures, rejected)


# --------------------------------------------------------------------------------------------- output


STAGE_ROWS = (
    ("received -> filled", "received_filled", "the issue's figure: both stamped by the app"),
    ("  received -> accepted", "received_accepted", "INSERT+commit, enqueue, Redis, task start"),
    ("  accepted -> submitted", "accepted_submitted", "locks, risk, order INSERT, commit, mark SUBMITTING"),
    ("  submitted -> acknowledged", "submitted_acknowledged", "commit, paper venue create_order (own txn)"),
    ("  acknowledged -> filled", "acknowledged_filled", "same timestamp in the engine"),
    ("received -> committed", "received_committed", "fill transaction committed (trigger)"),
    ("  filled -> committed", "filled_committed", "locks, fill, position, order, settle, COMMIT"),
    ("scheduled -> committed", "scheduled_committed", "from the scheduled send time"),
    ("sender lag", "sender_lag", "received_at - scheduled send time"),
)


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def report_run(result: RunResult) -> None:
    """Print one run as a compact table."""
    f = result.figures
    lat = f["latency_ms"]
    cpu = f["cpu"]
    print(f"rate {f['rate_target']:g}/s x {f['seconds']:g} s (+{f['warmup']:g} s warm-up), {f['senders']} sender "
          f"thread(s): scheduled {f['scheduled']}, sent {f['sent']} (unsent {f['unsent']}), stored {f['count']} at "
          f"{f['achieved_rate']:.2f}/s")
    print(f"filled {f['filled']}  rejected {f['rejected']}  ignored {f['ignored']}  unsettled {f['unsettled']}  "
          f"statuses {f['statuses']}")
    print(f"throughput {f['throughput_fills_per_s']} fills/s in the window (drain {f['drain_rate_fills_per_s']}/s); "
          f"backlog at end of sending {f['backlog_at_end']} (max {f['backlog_max']}, growth "
          f"{f['backlog_growth_per_s']:+.2f}/s); drained {f['drain_s_after_sending']} s after sending")
    print(f"{'stage (ms)':<30}{'p50':>8}{'p99':>8}{'max':>8}  what")
    for label, key, what in STAGE_ROWS:
        s = lat[key]
        print(f"{label:<30}{_f(s['p50']):>8}{_f(s['p99']):>8}{_f(s['max']):>8}  {what}")
    print(f"CPU in the window: worker {cpu['worker_cores']} cores ({cpu['worker_ms_per_fill']} ms/fill), postgres "
          f"backends {cpu['postgres_cores']} ({cpu['postgres_ms_per_fill']} ms/fill), this process "
          f"{cpu['bench_cores']} ({cpu['bench_ms_per_sent']} ms/sent); machine {cpu['machine_busy_pct']}% busy of "
          f"{cpu['ncpu']} CPUs, other processes {cpu['other_processes_pct']}%")
    intake = f["intake_call_ms"]
    print(f"intake signal_create call (INSERT, COMMIT, enqueue) ms: p50 {_f(intake['p50'])} p99 {_f(intake['p99'])} "
          f"max {_f(intake['max'])}; intake errors {f['intake_errors']} {f['intake_error_kinds'][:3]}; "
          f"deadlocks detected by PostgreSQL {f['deadlocks']}")
    if f["unsettled"]:
        print(f"NOTE: {f['unsettled']} signal(s) never settled; percentiles cover the {f['filled']} filled ones only")
    for key, rule, detail in result.rejected[:10]:
        print(f"  rejected {key}: {rule}: {detail}")
    p50, p99 = lat["received_filled"]["p50"], lat["received_filled"]["p99"]
    met = p50 is not None and p99 is not None and p50 <= TARGET_P50_MS and p99 <= TARGET_P99_MS
    print(f"target received->filled p50 <= {TARGET_P50_MS:g} ms, p99 <= {TARGET_P99_MS:g} ms: "
          f"{'MET' if met else 'MISSED'}")
    f["target_met"] = met


def knee_verdict(result: RunResult, base_p99: float) -> dict[str, Any]:
    """Whether one run kept up: the backlog did not grow, p99 did not explode, and intake kept the schedule."""
    f = result.figures
    rate = f["rate_target"]
    p99 = f["latency_ms"]["received_committed"]["p99"]
    grows = (f["backlog_growth_per_s"] > max(1.0, 0.02 * rate) and f["backlog_at_end"] > max(5.0, 0.1 * rate)) \
        or not f["settled_in_time"]
    explodes = p99 is None or (p99 > KNEE_P99_MS and p99 > 5 * base_p99)
    behind = f["achieved_rate"] < 0.95 * rate or f["unsent"] > 0
    return {"rate": rate, "achieved": f["achieved_rate"], "throughput": f["throughput_fills_per_s"],
            "p50": f["latency_ms"]["received_committed"]["p50"], "p99": p99, "backlog_end": f["backlog_at_end"],
            "growth_per_s": f["backlog_growth_per_s"], "intake_errors": f["intake_errors"],
            "queue_grows": grows, "p99_explodes": explodes, "sender_behind": behind,
            "kept_up": not (grows or explodes or behind)}


def _base_p99(results: Sequence[RunResult]) -> float:
    """The lowest received -> committed p99 of the series: what "exploded" is measured against."""
    return min((r.figures["latency_ms"]["received_committed"]["p99"] or 0.0 for r in results), default=0.0)


def knee_assess(results: Sequence[RunResult]) -> dict[str, Any]:
    """The lowest rate that did not keep up, the highest that did, and the best fill rate seen (capacity)."""
    rows = sorted((knee_verdict(r, _base_p99(results)) for r in results), key=lambda row: row["rate"])
    knee = min((row["rate"] for row in rows if not row["kept_up"]), default=None)
    sustained = max((row["rate"] for row in rows if row["kept_up"] and (knee is None or row["rate"] < knee)),
                    default=None)
    capacity = max((row["throughput"] or 0.0 for row in rows if not row["kept_up"]), default=None)
    return {"knee_rate": knee, "max_sustained_rate": sustained, "saturated_throughput": capacity, "runs": rows}


def knee_next(results: Sequence[RunResult], planned: list[float], extra_left: int) -> tuple[float | None, bool]:
    """The next rate to try, and whether it is an extra run: up the planned list until one rate saturates, then
    down by halves until one keeps up, then bisect the bracket while it is wider than 30%."""
    verdicts = [knee_verdict(r, _base_p99(results)) for r in results]
    saturated = [v["rate"] for v in verdicts if not v["kept_up"]]
    kept = [v["rate"] for v in verdicts if v["kept_up"]]
    if not saturated:
        return (planned.pop(0) if planned else None), False
    bad = min(saturated)
    good = max((k for k in kept if k < bad), default=None)
    if extra_left <= 0:
        return None, False
    if good is None:
        return (bad / 2 if bad / 2 >= 2 else None), True
    return (round((good + bad) / 2, 1) if bad / good > 1.3 else None), True


def report_knee(assessed: dict[str, Any]) -> None:
    print(f"\n{'rate':>6}{'sent/s':>8}{'fills/s':>9}{'p50':>8}{'p99':>8}{'backlog':>9}{'growth/s':>10}  verdict")
    for row in assessed["runs"]:
        verdict = ", ".join(v for v, on in (("queue grows", row["queue_grows"]), ("p99 explodes", row["p99_explodes"]),
                                             ("sender behind", row["sender_behind"])) if on) or "keeps up"
        print(f"{row['rate']:>6g}{row['achieved']:>8.1f}{row['throughput'] or 0:>9.1f}{_f(row['p50']):>8}"
              f"{_f(row['p99']):>8}{row['backlog_end']:>9}{row['growth_per_s']:>+10.2f}  {verdict}")
    print(f"(p50/p99: received -> committed, ms) does not keep up from: {assessed['knee_rate'] or 'none of these'}/s; "
          f"highest rate kept up: {assessed['max_sustained_rate']}/s; fills/s when saturated: "
          f"{assessed['saturated_throughput']}")


def machine_info() -> dict[str, Any]:
    """What the figures depend on: CPUs, versions, load."""
    import celery
    import django
    import kombu
    import psycopg
    import redis

    def version(cmd: list[str]) -> str:
        with contextlib.suppress(Exception):
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        return "?"

    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        pg = cursor.fetchone()[0]
    return {
        "nproc": os.cpu_count(), "python": platform.python_version(), "django": django.get_version(),
        "celery": celery.__version__, "kombu": kombu.__version__, "psycopg": psycopg.__version__,
        "redis_py": redis.__version__, "postgresql": pg,
        "redis_server": version(["redis-server", "--version"]).split(" v=")[-1].split(" ")[0],
        "loadavg_start": os.getloadavg()[0],
    }


# --------------------------------------------------------------------------------------------- main


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=100, help="signals per second (default 100)")
    p.add_argument("--seconds", type=float, default=60, help="measured seconds (default 60)")
    p.add_argument("--warmup", type=float, default=5, help="seconds sent before measuring (default 5)")
    p.add_argument("--find-knee", action="store_true", help="short runs at --knee-rates instead of one run")
    p.add_argument("--knee-rates", default=",".join(str(r) for r in KNEE_RATES), help="comma-separated rates")
    p.add_argument("--knee-seconds", type=float, default=KNEE_SECONDS)
    p.add_argument("--senders", type=int, default=4,
                   help="sender threads sharing one schedule (default 4: intake blocks on the worker's locks)")
    p.add_argument("--settle-timeout", type=float, default=600,
                   help="most seconds to wait for signals to settle "
                        "(default 600; gives up after 20 s without progress)")
    p.add_argument("--timeout", type=float, default=0, help="abort after this many seconds (default: computed)")
    p.add_argument("--concurrency", type=int, default=2, help="worker processes/threads (default 2)")
    p.add_argument("--pool", default="prefork", choices=["prefork", "threads", "solo"], help="worker pool")
    p.add_argument("--pg-url", default="postgres://postgres@127.0.0.1:5432")
    p.add_argument("--db-name", default="tradesite_bench")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    args = p.parse_args(argv)
    if not re.fullmatch(r"[a-z_][a-z0-9_]*bench[a-z0-9_]*", args.db_name):
        p.error("--db-name must be a plain lower-case name containing 'bench' (it is dropped)")
    if re.search(r"/0?$", args.redis_url):
        p.error("--redis-url must name a dedicated db index such as /14 (it is flushed)")
    if args.rate <= 0 or args.seconds <= 0 or args.warmup < 0:
        p.error("--rate and --seconds must be positive, --warmup not negative")
    return args


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise Timeout in the main thread after `seconds`; SIGTERM and SIGHUP behave like Ctrl-C."""
    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise Timeout(f"benchmark exceeded {seconds:.0f} s")

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, h) for s, h in ((signal.SIGALRM, on_alarm), (signal.SIGTERM, on_term),
                                                     (signal.SIGHUP, on_term))}
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for s, h in previous.items():
            signal.signal(s, h)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    rates = [float(r) for r in args.knee_rates.split(",")] if args.find_knee else [args.rate]
    seconds = args.knee_seconds if args.find_knee else args.seconds
    runs = len(rates) + (KNEE_EXTRA_RUNS if args.find_knee else 0)
    budget = args.timeout or 420 + runs * (1.25 * (args.warmup + seconds) + 5 + args.settle_timeout + 10)
    results: list[RunResult] = []
    output: dict[str, Any] = {"benchmark": "signal_to_fill", "date": datetime.now().astimezone().isoformat(
        timespec="seconds")}
    status = 1
    # The deadline is left before the clean-up runs, so the alarm can never interrupt the clean-up.
    with contextlib.ExitStack() as stack:
        try:
            with deadline(budget):
                _main_body(args, stack, rates, seconds, results, output)
            status = 0
        except KeyboardInterrupt:
            print("interrupted: cleaning up", file=sys.stderr)
            status = 130
        except Timeout as exc:
            print(f"{exc}: cleaning up", file=sys.stderr)
            status = 124
    output["runs"] = [r.figures for r in results]
    if results and not args.find_knee:
        f = results[0].figures
        lat = f["latency_ms"]
        output["summary"] = {
            "rate": f["rate_target"], "achieved_rate": f["achieved_rate"], "count": f["count"], "filled": f["filled"],
            "rejected": f["rejected"], "intake_errors": f["intake_errors"], "deadlocks": f["deadlocks"],
            "p50_ms": lat["received_filled"]["p50"], "p99_ms": lat["received_filled"]["p99"],
            "max_ms": lat["received_filled"]["max"], "committed_p50_ms": lat["received_committed"]["p50"],
            "committed_p99_ms": lat["received_committed"]["p99"], "throughput_fills_per_s": f["throughput_fills_per_s"],
            "backlog_at_end": f["backlog_at_end"], "target_met": f.get("target_met", False),
        }
    output["status"] = status
    print(json.dumps(output, separators=(",", ":"), default=str))
    return status


def _main_body(args: argparse.Namespace, stack: contextlib.ExitStack, rates: Sequence[float], seconds: float,
               results: list[RunResult], output: dict[str, Any]) -> None:
    """Set up the stack (every step registers its clean-up on `stack`), run, and report."""
    var_dir = Path(tempfile.mkdtemp(prefix="tradesite-bench-"))
    stack.callback(shutil.rmtree, var_dir, True)
    env = bench_env(args, var_dir)
    os.environ.update(env)
    db_create(args)
    stack.callback(db_drop, args)
    migrate(env)
    commit_probe_install(args)
    redis_flush(args.redis_url)
    stack.callback(redis_flush, args.redis_url)

    import django

    django.setup()
    from django.db import connections

    stack.callback(connections.close_all)
    strategies = fixtures_create()
    worker = Worker(env, var_dir / "worker.log", concurrency=args.concurrency, pool=args.pool)
    worker.start()
    stack.callback(worker.stop)
    monitor = Monitor()
    monitor.start()
    stack.callback(monitor.stop)
    worker_wait_ready(strategies, worker)
    output["machine"] = machine_info()
    print(f"signal_to_fill: 1 worker (-c {args.concurrency} {args.pool}), {STRATEGIES} strategies on 1 paper account, "
          f"{SYMBOL}; "
          f"{output['machine']}", flush=True)
    planned = sorted(rates)
    extra_left = KNEE_EXTRA_RUNS if args.find_knee else 0
    rate: float | None = planned.pop(0)
    while rate is not None:
        if results:
            time.sleep(2)
        print(flush=True)
        result = run(strategies=strategies, worker=worker, monitor=monitor, args=args, rate=rate,
                     seconds=seconds, warmup=args.warmup, tag=f"r{len(results)}")
        report_run(result)
        results.append(result)
        if monitor.error is not None:
            raise RuntimeError(f"the price/backlog thread failed: {monitor.error!r}")
        if not result.figures["settled_in_time"]:
            print(f"stopped waiting: {result.figures['unsettled']} measured and {result.figures['unsettled_warmup']} "
                  "warm-up signal(s) never settled (a task that died is only re-driven by the sweeper, not running)",
                  flush=True)
        if not args.find_knee:
            break
        rate, extra = knee_next(results, planned, extra_left)
        extra_left -= extra
    output["worker_errors_logged"] = worker.errors_logged()
    if output["worker_errors_logged"]:
        print(f"worker logged {output['worker_errors_logged']} error line(s):\n{worker.log_tail()}")
    output["machine"]["loadavg_end"] = os.getloadavg()[0]
    if args.find_knee:
        output["knee"] = knee_assess(results)
        report_knee(output["knee"])


if __name__ == "__main__":
    sys.exit(main())
