"""Webhook intake throughput and latency on gunicorn (sync workers) against PostgreSQL and Redis.

    python benchmarks/webhook_load.py [--seconds 20] [--rate-seconds 60] [--rate 500] [--gunicorn-workers 3]

Creates a throwaway database (`tradesite_bench_webhook`), migrates it, uses Redis db /13 (flushed before and after),
creates one paper strategy with a webhook secret and starts gunicorn with `benchmarks.webhook_site` (the project's
settings plus `POST /bench/bare/`, which only parses JSON). No Celery worker runs: the intake figure is the web tier
alone (queued tasks pile up in the benchmark's Redis db and are flushed at the end).

1. Throughput, closed loop, `wrk -t2 -c16` (if installed; else a threaded urllib client): the bare endpoint, then
   the webhook with a unique explicit `id` per request (every request is a new, accepted alert).
2. Latency at a fixed rate (`--rate`/s for `--rate-seconds`), open loop: an asyncio client schedules each request
   and times it from its scheduled send time (no coordinated omission); at most 512 in flight.

Every non-2xx answer counts as an error. The last stdout line is JSON. Results: docs/benchmarks.md (webhook_load).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.webhooks.server import gunicorn  # noqa: E402

WRK_SCRIPT = """
local counter = 0
local prefix = tostring(math.random(1, 1e9))
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  counter = counter + 1
  local body = string.format(BODY, prefix .. "-" .. counter)
  return wrk.format(nil, nil, nil, body)
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
        "from trading import services\nfrom trading.venues import price_set\n"
        "a = services.account_create(data={'name': 'bench', 'venue': 'paper', 'network': 'paper',"
        " 'paper_initial_cash': '1000000', 'max_leverage': '5'}, by='bench')\n"
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


def _body_template(slug: str, secret: str) -> str:
    """A JSON alert with one %s for the explicit id (lua string.format / Python %)."""
    return json.dumps({"passphrase": secret, "strategy": slug, "action": "buy", "ticker": "BTCUSD",
                       "contracts": "0.001", "order_id": "Long", "id": "@ID@"}).replace("@ID@", "%s")


def _wrk(port: int, path: str, body_template: str, seconds: int, tmp: Path) -> dict[str, Any]:
    script = tmp / "post.lua"
    script.write_text(f"BODY = {json.dumps(body_template)}\n" + WRK_SCRIPT)
    out = subprocess.run(["wrk", "-t2", "-c16", f"-d{seconds}s", "--latency", "-s", str(script),
                          f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True,
                         timeout=seconds + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)

    def lat(q: str) -> float | None:
        m = re.search(rf"\s{q}%\s+([\d.]+)(us|ms|s)\b", out)
        if not m:
            return None
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, socket_errors.groups())) if socket_errors else 0)
    return {"req_s": round(rps, 1), "requests": total, "errors": errors, "p50_ms": lat("50"), "p99_ms": lat("99")}


async def _one(port: int, body: bytes, path: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
    await writer.drain()
    line = await reader.readline()
    await reader.read()
    writer.close()
    return int(line.split()[1])


async def _fixed_rate(port: int, path: str, template: str, rate: float, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    in_flight = asyncio.Semaphore(512)
    start = time.perf_counter() + 0.2
    total = int(rate * seconds)
    tag = str(int(time.time()))

    async def fire(i: int) -> None:
        nonlocal errors
        scheduled = start + i / rate
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        async with in_flight:
            try:
                status = await asyncio.wait_for(_one(port, (template % f"r{tag}-{i}").encode(), path), 10)
            except (OSError, asyncio.TimeoutError):
                status = 0
        latencies.append((time.perf_counter() - scheduled) * 1000)
        if not 200 <= status < 300:
            errors += 1

    await asyncio.gather(*(fire(i) for i in range(total)))
    latencies.sort()

    def pct(q: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 2)

    return {"rate": rate, "seconds": seconds, "requests": total, "errors": errors, "p50_ms": pct(0.5),
            "p99_ms": pct(0.99), "max_ms": round(latencies[-1], 2)}


def _threaded(port: int, path: str, template: str, seconds: int) -> dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor

    from tests.webhooks.server import request

    deadline = time.monotonic() + seconds
    counts = {"ok": 0, "err": 0}
    lat: list[float] = []

    def loop(n: int) -> None:
        i = 0
        while time.monotonic() < deadline:
            i += 1
            t0 = time.perf_counter()
            status, _ = request(port, "POST", path, (template % f"t{n}-{i}-{time.time()}").encode())
            lat.append((time.perf_counter() - t0) * 1000)
            counts["ok" if 200 <= status < 300 else "err"] += 1

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(loop, range(16)))
    lat.sort()
    return {"req_s": round(counts["ok"] / seconds, 1), "requests": counts["ok"] + counts["err"],
            "errors": counts["err"], "p50_ms": round(lat[len(lat) // 2], 2),
            "p99_ms": round(lat[int(len(lat) * 0.99)], 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=20, help="duration of each closed-loop throughput run")
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--rate-seconds", type=float, default=60)
    parser.add_argument("--gunicorn-workers", type=int, default=3)
    parser.add_argument("--pg-url", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--db-name", default="tradesite_bench_webhook")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="webhook-bench-"))
    env = dict(os.environ)
    env.update(DJANGO_SETTINGS_MODULE="benchmarks.webhook_site", DATABASE_URL=f"{args.pg_url}/{args.db_name}",
               REDIS_URL=args.redis_url, TRADESITE_VAR_DIR=str(tmp), LOG_LEVEL="WARNING",
               TRADESITE_COMPONENT="web", WEBHOOK_RATE_LIMIT_PER_IP="1000000000",
               WEBHOOK_RATE_LIMIT_PER_STRATEGY="1000000000", PYTHONPATH=str(ROOT))
    env.pop("CELERY_BROKER_URL", None)
    _admin_sql(args.pg_url, f'DROP DATABASE IF EXISTS "{args.db_name}" WITH (FORCE)',
               f'CREATE DATABASE "{args.db_name}"')
    _redis_flush(args.redis_url)
    result: dict[str, Any] = {"gunicorn_workers": args.gunicorn_workers, "cpus": os.cpu_count()}
    try:
        slug, secret = _setup(env)
        template = _body_template(slug, secret)
        bare_template = json.dumps({"strategy": slug, "action": "buy", "id": "@ID@"}).replace("@ID@", "%s")
        tool = "wrk" if shutil.which("wrk") else "threads"
        result["load_generator"] = tool
        with gunicorn(env, workers=args.gunicorn_workers, log_path=tmp / "gunicorn.log") as port:
            for name, path, body in (("bare", "/bench/bare/", bare_template),
                                     ("webhook", "/api/webhooks/tradingview/", template)):
                result[name] = (_wrk(port, path, body, args.seconds, tmp) if tool == "wrk"
                                else _threaded(port, path, body, args.seconds))
                print(name, result[name], flush=True)
            result["webhook_vs_bare"] = round(result["webhook"]["req_s"] / result["bare"]["req_s"], 3)
            if args.rate_seconds > 0:
                result["fixed_rate"] = asyncio.run(_fixed_rate(port, "/api/webhooks/tradingview/", template,
                                                               args.rate, args.rate_seconds))
                print("fixed_rate", result["fixed_rate"], flush=True)
        import psycopg

        with psycopg.connect(f"{args.pg_url}/{args.db_name}", connect_timeout=10) as conn:
            result["signals_stored"] = conn.execute("SELECT count(*) FROM trading_signal").fetchone()[0]  # type: ignore[index]
    finally:
        _redis_flush(args.redis_url)
        _admin_sql(args.pg_url, f'DROP DATABASE IF EXISTS "{args.db_name}" WITH (FORCE)')
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
