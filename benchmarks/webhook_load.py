"""Webhook intake throughput and latency on the web role (gunicorn, gthread workers) and on the intake role (uvicorn,
webhooks/intake_asgi.py), against PostgreSQL and Redis, in one run.

    python benchmarks/webhook_load.py [--seconds 15] [--rate 500] [--rate-seconds 60] [--gunicorn-workers 3]
                                      [--threads 12] [--intake-workers 1] [--servers web,intake]
                                      [--connections 16] [--with-workers-seconds 15] [--json out.json]

Creates a throwaway database (`tradesite_bench_webhook`), migrates it, uses Redis db /13 (flushed before and after),
creates one active paper strategy with a webhook secret and starts gunicorn with `benchmarks.webhook_site` (the
project's settings plus two bare endpoints that only parse JSON: `/bench/bare/` through Django's full middleware
stack, `/bench/bare-lane/` through the same lean lane as the webhook, tradesite/wsgi.py). Everything, the load
generator included, runs on this machine over 127.0.0.1.

1. Throughput, closed loop, `wrk -t2 -c16` (a threaded urllib client when wrk is missing): bare (full stack), bare
   (lane). A wrk Lua script sends realistic alert bodies (passphrase, strategy, action, ticker, contracts, order_id,
   time, and a unique explicit `id` per request, so every request is a new alert) and counts answers by status: only
   202 counts as accepted, anything else is an error.
2. For each server in --servers (the web role's gunicorn, then the intake role's uvicorn as the bootstrap starts it,
   serving also a bare endpoint of its own, benchmarks/intake_bare.py, measured first: the same-server floor):
   the webhook closed loop with no Celery worker running (accepted alerts pile up in the queue); then latency at a
   fixed rate (`--rate`/s for `--rate-seconds`), open loop: an asyncio client (uvloop) opens a connection per
   request, schedules each and times it from its scheduled send time (no coordinated omission), at most 512 in
   flight; then the webhook again with a Celery worker (`-Q execution -c 2`, as deployed) draining the queue.

At the end every accepted alert must be a row: the number of 202 answers equals the rows in trading_signal. CPU
per request of each process group (the server under test, PostgreSQL backends, PostgreSQL background, Redis, the
load generator, the Celery worker) is read from /proc, to show where the time goes. The last stdout line is JSON.
Results: docs/benchmarks.md (webhook_load).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.webhooks.server import gunicorn, intake  # noqa: E402

WEBHOOK = "/api/webhooks/tradingview/"
# Each thread numbers its requests; RUN (set per wrk run) and the thread number make every id unique.
WRK_SCRIPT = """
local threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end
local counter, tag = 0, ""
by_status = {}  -- globals: done() reads each thread's with thread:get
accepted = {}  -- the signal_id of every 202
function init(args)
  tag = RUN .. "-" .. tid
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
function request()
  counter = counter + 1
  return wrk.format(nil, nil, nil, string.format(BODY, tag .. "-" .. counter, os.date("!%Y-%m-%dT%H:%M:%SZ")))
end
function response(status, headers, body)
  by_status[status] = (by_status[status] or 0) + 1
  if status == 202 then
    local id = string.match(body, '"signal_id":%s*(%d+)')
    if id then accepted[#accepted + 1] = id end
  end
end
function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("by_status") or {}) do total[status] = (total[status] or 0) + n end
  end
  local parts = {}
  for status, n in pairs(total) do table.insert(parts, string.format('"%d": %d', status, n)) end
  io.write("STATUS {" .. table.concat(parts, ", ") .. "}\\n")
  local out = io.open(OUT, "w")
  for _, thread in ipairs(threads) do
    for _, id in ipairs(thread:get("accepted") or {}) do out:write(id, "\\n") end
  end
  out:close()
end
"""


def _admin_sql(pg_url: str, *statements: str) -> None:
    import psycopg

    with psycopg.connect(f"{pg_url.rstrip('/')}/postgres", autocommit=True, connect_timeout=10) as conn:
        for statement in statements:
            conn.execute(statement)  # type: ignore[arg-type]


def _redis_flush(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=10)
    try:
        client.flushdb()
    finally:
        client.close()


def _setup(env: dict[str, str]) -> tuple[str, str]:
    """Migrate and create one active paper strategy with a secret; return (slug, secret)."""
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0", "--no-input"], cwd=ROOT, env=env, check=True,
                   timeout=300)
    code = (
        "import django, json; django.setup()\n"
        "from decimal import Decimal\nfrom django.utils import timezone\n"
        "from trading import services\nfrom trading.prices import price_set\n"
        "a = services.account_create(data={'name': 'bench', 'venue': 'paper', 'network': 'paper',"
        " 'paper_initial_cash': '100000000', 'max_leverage': '5'}, by='bench')\n"
        "s = services.strategy_create(data={'name': 'bench', 'slug': 'bench-webhook', 'kind': 'webhook',"
        " 'symbol': 'BTC/USD', 'account': a, 'mode': 'paper', 'sizing_mode': 'quantity', 'sizing_value': '0.001'},"
        " by='bench')\n"
        "services.strategy_start(strategy=s, by='bench')\n"
        "price_set('BTC/USD', Decimal('50000'), time=timezone.now())\n"
        "print(json.dumps([s.slug, services.strategy_webhook_secret_rotate(strategy=s, by='bench')]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, capture_output=True,
                         text=True, timeout=120).stdout
    slug, secret = json.loads(out.strip().splitlines()[-1])
    return slug, secret


def _commits(args: argparse.Namespace) -> int:
    """Transactions committed in the benchmark's database so far (the statistics lag by up to half a second)."""
    import psycopg

    time.sleep(0.7)  # PostgreSQL 15 reports backends' counters at most every 0.5 s
    with psycopg.connect(f"{args.pg_url}/postgres", autocommit=True) as conn:
        row = conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = %s", [args.db_name]).fetchone()
    return int(row[0]) if row else 0


def _price_refresh(env: dict[str, str]) -> None:
    """A fresh market price, so that the worker's risk checks see a current one."""
    code = ("import django; django.setup()\nfrom decimal import Decimal\nfrom django.utils import timezone\n"
            "from trading.prices import price_set\nprice_set('BTC/USD', Decimal('50000'), time=timezone.now())\n")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=120)


def _templates(slug: str, secret: str) -> dict[str, str]:
    """Alert bodies with two %s, the explicit id then the time (for lua string.format and Python %)."""
    alert = {"passphrase": secret, "strategy": slug, "action": "buy", "ticker": "BTCUSD", "contracts": "0.001",
             "order_id": "Long", "id": "@ID@", "time": "@TIME@"}
    bare = {k: v for k, v in alert.items() if k != "passphrase"}
    return {name: json.dumps(body).replace("%", "%%").replace("@ID@", "%s").replace("@TIME@", "%s")
            for name, body in (("webhook", alert), ("bare", bare))}


# ------------------------------------------------------------------------------------------ CPU accounting


def _ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return ""


def _pids(predicate: Callable[[int, str], bool]) -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and predicate(int(p), _cmdline(int(p)))]


def _pgid(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return -1


class CpuMeter:
    """CPU seconds of process groups over a phase, from /proc (utime + stime), and the machine's busy share."""

    def __init__(self, groups: dict[str, Callable[[], list[int]]]) -> None:
        self.groups = groups
        self.hz = os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _machine() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return sum(values), values[3] + values[4]  # total, idle + iowait

    @contextmanager
    def measure(self, into: dict[str, Any], requests: Callable[[], int]) -> Iterator[None]:
        pids = {name: find() for name, find in self.groups.items()}
        before = {name: sum(_ticks(p) for p in ps) for name, ps in pids.items()}
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        own = resource.getrusage(resource.RUSAGE_SELF)
        machine = self._machine()
        load = os.getloadavg()[0]
        yield
        n = max(1, requests())
        after = {name: sum(_ticks(p) for p in ps) for name, ps in pids.items()}
        done = resource.getrusage(resource.RUSAGE_CHILDREN)
        own_done = resource.getrusage(resource.RUSAGE_SELF)
        total, idle = (a - b for a, b in zip(self._machine(), machine, strict=True))
        cpu = {name: round(1000 * (after[name] - before[name]) / self.hz / n, 3) for name in pids}
        # wrk (a child) or the asyncio client (this process).
        used = (done.ru_utime + done.ru_stime - children.ru_utime - children.ru_stime
                + own_done.ru_utime + own_done.ru_stime - own.ru_utime - own.ru_stime)
        cpu["load generator"] = round(1000 * used / n, 3)
        into["cpu_ms_per_request"] = cpu
        into["machine_busy_pct"] = round(100 * (total - idle) / max(1, total), 1)
        # What the measured processes do not explain: other work on the machine (another session's tests, ...).
        ours = sum(cpu.values()) * n / 1000  # CPU seconds
        seconds = total / self.hz / (os.cpu_count() or 1)
        into["other_processes_cpu_pct"] = round(max(0.0, 100 * ((total - idle) / self.hz - ours)
                                                    / max(1e-9, total / self.hz)), 1)
        into["elapsed_s"] = round(seconds, 1)
        into["load_average_before"] = round(load, 2)


# ------------------------------------------------------------------------------------------ load generators


def _wrk(port: int, path: str, template: str, seconds: int, tmp: Path, *, threads: int = 2,
         connections: int = 16) -> dict[str, Any]:
    script = tmp / f"post-{time.time_ns()}.lua"
    ids_path = script.with_suffix(".ids")
    script.write_text(f'RUN = "r{time.time_ns()}"\nBODY = {json.dumps(template)}\nOUT = {json.dumps(str(ids_path))}\n'
                      + WRK_SCRIPT)
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
                          "--latency", "-s", str(script), f"http://127.0.0.1:{port}{path}"],
                         capture_output=True, text=True, timeout=seconds + 60).stdout
    elapsed = re.search(r"requests in ([\d.]+)(ms|s|m),", out)
    duration = float(elapsed.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[elapsed.group(2)] \
        if elapsed else float(seconds)
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    statuses = {int(k): v for k, v in json.loads(re.search(r"STATUS (\{.*\})", out).group(1)).items()}  # type: ignore[union-attr]
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)

    def lat(q: str) -> float | None:
        m = re.search(rf"\s{q}%\s+([\d.]+)(us|ms|s)\b", out)
        return None if not m else round(float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)], 2)

    ids = [int(line) for line in ids_path.read_text().split()] if ids_path.exists() else []
    return {"requests": total, "seconds": round(duration, 2), "statuses": statuses,
            "socket_errors": sum(map(int, socket_errors.groups())) if socket_errors else 0,
            "p50_ms": lat("50"), "p99_ms": lat("99"), "signal_ids": ids}


def _threaded(port: int, path: str, template: str, seconds: int) -> dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor

    from tests.webhooks.server import request

    deadline = time.monotonic() + seconds
    statuses: dict[int, int] = {}
    lat: list[float] = []
    ids: list[int] = []
    run = f"t{time.time_ns()}"

    def loop(n: int) -> None:
        i = 0
        while time.monotonic() < deadline:
            i += 1
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            t0 = time.perf_counter()
            status, body = request(port, "POST", path, (template % (f"{run}-{n}-{i}", when)).encode())
            lat.append((time.perf_counter() - t0) * 1000)
            statuses[status] = statuses.get(status, 0) + 1
            if status == 202 and isinstance(body, dict) and "signal_id" in body:
                ids.append(int(body["signal_id"]))

    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(loop, range(16)))
    lat.sort()
    return {"requests": len(lat), "seconds": round(time.monotonic() - started, 2), "statuses": statuses,
            "socket_errors": 0, "p50_ms": round(lat[len(lat) // 2], 2), "p99_ms": round(lat[int(len(lat) * 0.99)], 2),
            "signal_ids": ids}


CONNECTIONS = 16  # closed-loop concurrency (--connections)


def _closed_loop(port: int, path: str, template: str, seconds: int, tmp: Path, *, expect: int) -> dict[str, Any]:
    result = _wrk(port, path, template, seconds, tmp, connections=CONNECTIONS) if shutil.which("wrk") else \
        _threaded(port, path, template, seconds)
    ok = result["statuses"].get(expect, 0)
    result["ok"] = ok
    result["ok_per_s"] = round(ok / result["seconds"], 1)
    result["errors"] = result["requests"] - ok + result["socket_errors"]
    return result


async def _one(port: int, body: bytes, path: str) -> tuple[int, int | None]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        await writer.drain()
        line = await reader.readline()
        rest = await reader.read()
        found = re.search(rb'"signal_id":\s*(\d+)', rest)
        return int(line.split()[1]), int(found.group(1)) if found else None
    finally:
        writer.close()


async def _fixed_rate(port: int, path: str, template: str, rate: float, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    ids: list[int] = []
    in_flight = asyncio.Semaphore(512)
    start = time.perf_counter() + 0.2
    total = int(rate * seconds)
    run = f"f{time.time_ns()}"

    async def fire(i: int) -> None:
        scheduled = start + i / rate
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        async with in_flight:
            body = (template % (f"{run}-{i}", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))).encode()
            try:
                status, signal_id = await asyncio.wait_for(_one(port, body, path), 10)
            except (TimeoutError, OSError, IndexError, ValueError):
                status, signal_id = 0, None
        if status == 202 and signal_id is not None:
            ids.append(signal_id)
        latencies.append((time.perf_counter() - scheduled) * 1000)
        statuses[status] = statuses.get(status, 0) + 1

    await asyncio.gather(*(fire(i) for i in range(total)))
    latencies.sort()

    def pct(q: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 2)

    ok = statuses.get(202, 0)
    return {"rate": rate, "seconds": seconds, "requests": total, "ok": ok, "statuses": statuses,
            "errors": total - ok, "p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": round(latencies[-1], 2),
            "signal_ids": ids}


def _run_fixed_rate(*args: Any) -> dict[str, Any]:
    try:
        import uvloop

        return uvloop.run(_fixed_rate(*args))  # type: ignore[no-any-return]
    except ImportError:
        return asyncio.run(_fixed_rate(*args))


# ------------------------------------------------------------------------------------------ the run


@contextmanager
def _celery_worker(env: dict[str, str], log_path: Path) -> Iterator[int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tradesite", "worker", "-Q", "execution", "-c", "2", "-P", "prefork",
         "-n", f"bench-{os.getpid()}@localhost", "--without-gossip", "--without-mingle", "--without-heartbeat",
         "--loglevel", "WARNING"],
        cwd=ROOT, env={**env, "TRADESITE_COMPONENT": "worker"}, stdout=log_path.open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        time.sleep(6)  # booted and consuming (the stored backlog starts draining at once)
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited: {log_path.read_text()[-2000:]}")
        yield proc.pid
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def _versions(pg_url: str, redis_url: str) -> dict[str, str]:
    import celery
    import django
    import gunicorn as gunicorn_pkg
    import kombu
    import psycopg
    import redis

    out = {"python": platform.python_version(), "django": django.get_version(), "gunicorn": gunicorn_pkg.__version__,
           "psycopg": psycopg.__version__, "redis-py": redis.__version__, "celery": celery.__version__,
           "kombu": kombu.__version__}
    with psycopg.connect(f"{pg_url.rstrip('/')}/postgres", connect_timeout=10) as conn:
        out["postgresql"] = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
    client = redis.Redis.from_url(redis_url)
    out["redis"] = str(client.info("server")["redis_version"])
    client.close()
    if shutil.which("wrk"):
        first = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.splitlines()
        out["wrk"] = first[0].split("[")[0].replace("wrk", "").strip() if first else "?"
    try:
        import gunicorn_h1c  # noqa: F401

        out["http_parser"] = "gunicorn_h1c"
    except ImportError:
        out["http_parser"] = "python"
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=15, help="duration of each closed-loop throughput run")
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--rate-seconds", type=float, default=60, help="0 skips the fixed-rate run")
    parser.add_argument("--with-workers-seconds", type=int, default=15, help="0 skips the run with a worker")
    parser.add_argument("--gunicorn-workers", type=int, default=3, help="3: the bootstrap's default on 2 cores")
    parser.add_argument("--threads", type=int, default=12,
                        help="threads per gunicorn worker (12: the bootstrap's default); 1 runs sync workers")
    parser.add_argument("--connections", type=int, default=16, help="closed-loop connections (wrk -c)")
    parser.add_argument("--servers", default="web,intake",
                        help="which servers take the webhook phases: web (gunicorn), intake (uvicorn), or both")
    parser.add_argument("--intake-workers", type=int, default=1, help="1: the bootstrap's default on 2 cores")
    parser.add_argument("--pg-url", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--db-name", default="tradesite_bench_webhook")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    global CONNECTIONS
    CONNECTIONS = args.connections
    if not re.fullmatch(r"[a-z0-9_]*bench[a-z0-9_]*", args.db_name):
        parser.error("--db-name must be a plain lower-case name containing 'bench' (it is dropped)")

    tmp = Path(tempfile.mkdtemp(prefix="webhook-bench-"))
    env = dict(os.environ)
    env.update(DJANGO_SETTINGS_MODULE="benchmarks.webhook_site", DATABASE_URL=f"{args.pg_url}/{args.db_name}",
               REDIS_URL=args.redis_url, TRADESITE_VAR_DIR=str(tmp), LOG_LEVEL="WARNING",
               TRADESITE_COMPONENT="web", WEBHOOK_RATE_LIMIT_PER_IP="1000000000",
               WEBHOOK_RATE_LIMIT_PER_STRATEGY="1000000000", PYTHONPATH=str(ROOT))
    for name in ("CELERY_BROKER_URL", "REDIS_KEY_PREFIX", "LEAN_URL_NAMES"):
        env.pop(name, None)
    _admin_sql(args.pg_url, f'DROP DATABASE IF EXISTS "{args.db_name}" WITH (FORCE)',
               f'CREATE DATABASE "{args.db_name}"')
    _redis_flush(args.redis_url)
    result: dict[str, Any] = {"gunicorn_workers": args.gunicorn_workers, "threads": args.threads,
                              "worker_class": "gthread" if args.threads > 1 else "sync",
                              "cpus": os.cpu_count(), "versions": _versions(args.pg_url, args.redis_url),
                              "load_generator": f"wrk -t2 -c{args.connections}" if shutil.which("wrk")
                              else "16 threads (urllib)"}
    accepted: list[int] = []  # the signal_id of every 202 the load generators saw
    try:
        slug, secret = _setup(env)
        templates = _templates(slug, secret)
        def pg_backends() -> list[int]:
            import psycopg

            with psycopg.connect(f"{args.pg_url}/{args.db_name}", autocommit=True) as conn:
                rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> "
                                    "pg_backend_pid()", [args.db_name]).fetchall()
            return [int(r[0]) for r in rows]

        def server_pids(word: str, port: int) -> Callable[[], list[int]]:
            def find() -> list[int]:
                group = _pgid(next(iter(_pids(lambda p, c: word in c and str(port) in c)), -1))
                return [p for p in _pids(lambda p, c: True) if _pgid(p) == group]
            return find

        groups: dict[str, Callable[[], list[int]]] = {
            "server": lambda: [],
            "postgres backends": pg_backends,
            "postgres background": lambda: _pids(lambda p, c: c.startswith("postgres: ") and any(
                w in c for w in ("walwriter", "checkpointer", "background writer", "autovacuum"))),
            "redis": lambda: _pids(lambda p, c: c.startswith("redis-server")),
        }
        meter = CpuMeter(groups)

        def webhook_phases(prefix: str, port: int) -> None:
            """The webhook closed loop, then (if asked) at a fixed rate and with a worker draining."""
            nonlocal accepted
            phase: dict[str, Any] = {}
            commits = _commits(args)
            with meter.measure(phase, lambda: phase["requests"]):
                phase.update(_closed_loop(port, WEBHOOK, templates["webhook"], args.seconds, tmp, expect=202))
            phase["alerts_per_commit"] = round(phase["ok"] / max(1, _commits(args) - commits), 2)
            result[prefix] = phase
            accepted += phase.pop("signal_ids")
            print(prefix, json.dumps(phase), flush=True)
            if args.rate_seconds > 0:
                phase = {}
                with meter.measure(phase, lambda: phase["requests"]):
                    phase.update(_run_fixed_rate(port, WEBHOOK, templates["webhook"], args.rate, args.rate_seconds))
                result[f"{prefix}_fixed_rate"] = phase
                accepted += phase.pop("signal_ids")
                print(f"{prefix}_fixed_rate", json.dumps(phase), flush=True)
            if args.with_workers_seconds > 0:
                _price_refresh(env)
                with _celery_worker(env, tmp / f"worker-{prefix}.log") as worker_pid:
                    groups["celery worker"] = lambda: [p for p in _pids(lambda p, c: "celery" in c)
                                                       if _pgid(p) == worker_pid]
                    processed_before = _processed(args)
                    phase = {}
                    with meter.measure(phase, lambda: phase["requests"]):
                        phase.update(_closed_loop(port, WEBHOOK, templates["webhook"], args.with_workers_seconds,
                                                  tmp, expect=202))
                    phase["signals_processed_meanwhile"] = _processed(args) - processed_before
                    phase["signals_processed_per_s"] = round(phase["signals_processed_meanwhile"] / phase["seconds"],
                                                             1)
                    result[f"{prefix}_with_worker"] = phase
                    accepted += phase.pop("signal_ids")
                    print(f"{prefix}_with_worker", json.dumps(phase), flush=True)
                groups.pop("celery worker")

        with gunicorn(env, workers=args.gunicorn_workers, threads=args.threads, log_path=tmp / "gunicorn.log") as port:
            groups["server"] = server_pids("gunicorn", port)
            # Warm up each endpoint (every worker connects to PostgreSQL and Redis, prepares its statements).
            for path, name in (("/bench/bare/", "bare"), ("/bench/bare-lane/", "bare"), (WEBHOOK, "webhook")):
                warm = _closed_loop(port, path, templates[name], 3, tmp, expect=202)
                accepted += warm.pop("signal_ids") if path == WEBHOOK else []
            for key, path in (("bare_full_stack", "/bench/bare/"), ("bare_lane", "/bench/bare-lane/")):
                phase = {}
                with meter.measure(phase, lambda: phase["requests"]):  # noqa: B023 - called within this iteration
                    phase.update(_closed_loop(port, path, templates["bare"], args.seconds, tmp, expect=202))
                phase.pop("signal_ids")
                result[key] = phase
                print(key, json.dumps(phase), flush=True)
            if "web" in args.servers:
                webhook_phases("webhook", port)
        if "intake" in args.servers:
            # The intake role's application with a bare endpoint beside it (benchmarks/intake_bare.py): the same
            # server and options, so its floor is measured on uvicorn too.
            with intake(env, workers=args.intake_workers, log_path=tmp / "intake.log",
                        app="benchmarks.intake_bare:application") as port:
                groups["server"] = server_pids("uvicorn", port)
                _closed_loop(port, "/bench/bare/", templates["bare"], 3, tmp, expect=202)
                warm = _closed_loop(port, WEBHOOK, templates["webhook"], 3, tmp, expect=202)
                accepted += warm.pop("signal_ids")
                phase = {}
                with meter.measure(phase, lambda: phase["requests"]):
                    phase.update(_closed_loop(port, "/bench/bare/", templates["bare"], args.seconds, tmp,
                                              expect=202))
                phase.pop("signal_ids")
                result["bare_intake_server"] = phase
                print("bare_intake_server", json.dumps(phase), flush=True)
                webhook_phases("intake", port)
        for prefix in ("webhook", "intake"):
            if prefix in result:
                result[f"{prefix}_vs_bare_full_stack"] = round(result[prefix]["ok_per_s"]
                                                               / result["bare_full_stack"]["ok_per_s"], 3)
                result[f"{prefix}_vs_bare_lane"] = round(result[prefix]["ok_per_s"]
                                                         / result["bare_lane"]["ok_per_s"], 3)
        if "intake" in result:
            result["intake_vs_bare_intake_server"] = round(result["intake"]["ok_per_s"]
                                                          / result["bare_intake_server"]["ok_per_s"], 3)
        import psycopg

        with psycopg.connect(f"{args.pg_url}/{args.db_name}", connect_timeout=10) as conn:
            stored = int(conn.execute("SELECT count(*) FROM trading_signal").fetchone()[0])  # type: ignore[index]
            found = int(conn.execute("SELECT count(*) FROM trading_signal WHERE id = ANY(%s)",
                                     [accepted]).fetchone()[0])  # type: ignore[index]
        # Every 202 names its own row, and every such row is there. Rows beyond them are requests that were in
        # flight when a wrk run stopped (answered after wrk stopped counting): at most 16 per run.
        result["verification"] = {
            "accepted": len(accepted), "distinct_signal_ids": len(set(accepted)), "found_in_database": found,
            "rows_in_database": stored, "rows_answered_after_wrk_stopped": stored - found}
        result["every_accepted_alert_stored"] = len(set(accepted)) == len(accepted) == found
    finally:
        _redis_flush(args.redis_url)
        _admin_sql(args.pg_url, f'DROP DATABASE IF EXISTS "{args.db_name}" WITH (FORCE)')
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0 if result["every_accepted_alert_stored"] else 1


def _processed(args: argparse.Namespace) -> int:
    import psycopg

    with psycopg.connect(f"{args.pg_url}/{args.db_name}", connect_timeout=10) as conn:
        return int(conn.execute("SELECT count(*) FROM trading_signal WHERE status <> 'received'"
                                ).fetchone()[0])  # type: ignore[index]


if __name__ == "__main__":
    sys.exit(main())
