"""The engine's own cost per signal, in-process: CPU time, round trips and statements, and (under callgrind)
instructions, which do not depend on what else the machine is doing.

    python benchmarks/engine_cost.py [--signals 2000]               # CPU ms per signal, round trips, statements
    python benchmarks/engine_cost.py --callgrind [--signals 400]    # + instructions per signal (valgrind)

Creates a throwaway database (`tradesite_bench_cost`, migrated, dropped after), one paper account with 4 webhook
strategies on BTC/USD, and runs `signal_create` + `signal_process` in this process (no Celery, no
worker), alternating open_long / close per strategy as benchmarks/signal_to_fill.py does. After warm-up signals it
records the round trips and statements of one open and one close (CaptureQueriesContext; a batch is one round
trip), then times `--signals` more. With `--callgrind` the measuring child runs under `valgrind --tool=callgrind
--instr-atstart=no` and this process switches instrumentation on and off around the timed loop only
(`callgrind_control`), so the count excludes start-up, migrations and warm-up. PostgreSQL's own work is not counted
(the statements are listed instead). Run it from each tree to compare two commits (e.g. `git worktree add`).
The last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

WARMUP = 60


def _admin(args: argparse.Namespace, statement: str) -> None:
    import psycopg

    with psycopg.connect(f"{args.pg_url.rstrip('/')}/postgres", autocommit=True, connect_timeout=10) as conn:
        conn.execute(statement)  # type: ignore[arg-type]


def child(args: argparse.Namespace) -> dict[str, Any]:
    """Set up, warm up, count one open and one close, then time the loop (between the handshake files)."""
    import django

    django.setup()
    from decimal import Decimal

    from django.db import connection, connections
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from trading import services
    from trading.execution import signal_process
    from trading.intake import signal_create
    from trading.prices import price_set

    try:
        account = services.account_create(data={"name": "cost", "venue": "paper", "network": "paper",
                                                "paper_initial_cash": "1000000000", "max_leverage": "5"}, by="bench")
        strategies = [services.strategy_start(strategy=services.strategy_create(data={
            "name": f"cost {i}", "slug": f"cost-{i}", "kind": "webhook", "symbol": "BTC/USD", "account": account,
            "mode": "paper", "sizing_mode": "quantity", "sizing_value": "0.001"}, by="bench"), by="bench")
            for i in range(4)]

        def one(i: int) -> str:
            action = "open_long" if (i // 4) % 2 == 0 else "close"
            if i % 100 == 0:
                price_set("BTC/USD", Decimal("50000"), time=timezone.now())  # entries refuse stale prices
            signal, _ = signal_create(strategy=strategies[i % 4], source="manual", idempotency_key=f"k{i}",
                                             action=action, enqueue=False)
            done = signal_process(signal_id=signal.pk)
            if done.status != "executed":
                raise RuntimeError(f"signal {i} {action}: {done.status} {done.decision_detail}")
            return action

        for i in range(WARMUP):
            one(i)
        counted: dict[str, dict[str, int]] = {}
        for i in (WARMUP, WARMUP + 4):
            with CaptureQueriesContext(connection) as captured:
                action = one(i)
            counted[action] = {"round_trips": len(captured.captured_queries),
                               "statements": sum(len(q["sql"].split(";\n")) for q in captured.captured_queries)}
        start = WARMUP + 8
        if args.handshake:
            Path(f"{args.handshake}.ready").touch()
            while not Path(f"{args.handshake}.go").exists():
                time.sleep(0.05)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for i in range(start, start + args.signals):
            one(i)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        if args.handshake:
            Path(f"{args.handshake}.done").touch()
            while not Path(f"{args.handshake}.end").exists():
                time.sleep(0.05)
        return {"signals": args.signals, "cpu_ms_per_signal": round(1000 * cpu / args.signals, 3),
                "wall_ms_per_signal": round(1000 * wall / args.signals, 3), "per_signal": counted}
    finally:
        connections.close_all()


def callgrind(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """Run the child under callgrind, instrumenting only its timed loop; add instructions per signal."""
    handshake = Path(tempfile.mkdtemp(prefix="tradesite-cost-")) / "step"
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={handshake}.callgrind",
         sys.executable, str(Path(__file__).resolve()), *argv, "--child", "--handshake", str(handshake)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def wait_for(name: str) -> None:
        while not Path(f"{handshake}.{name}").exists():
            if proc.poll() is not None:
                _, err = proc.communicate()
                raise RuntimeError(f"the callgrind child exited early:\n{err[-3000:]}")
            time.sleep(0.2)

    wait_for("ready")
    subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True, capture_output=True)
    Path(f"{handshake}.go").touch()
    wait_for("done")
    subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], check=True, capture_output=True)
    Path(f"{handshake}.end").touch()
    out, err = proc.communicate(timeout=600)
    found = re.search(r"I\s+refs:\s+([\d,]+)", err)
    if proc.returncode != 0 or found is None:
        raise RuntimeError(f"callgrind run failed ({proc.returncode}):\n{err[-3000:]}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    result["instructions_per_signal"] = int(found.group(1).replace(",", "")) // args.signals
    result["note"] = "CPU and wall times are under valgrind (slow); compare instructions"
    return result


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--signals", type=int, default=0, help="timed signals (default 2000; 400 with --callgrind)")
    p.add_argument("--callgrind", action="store_true", help="count instructions under valgrind's callgrind")
    p.add_argument("--pg-url", default="postgres://postgres@127.0.0.1:5432")
    p.add_argument("--db-name", default="tradesite_bench_cost")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/11")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--handshake", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not re.fullmatch(r"[a-z_][a-z0-9_]*bench[a-z0-9_]*", args.db_name):
        p.error("--db-name must be a plain lower-case name containing 'bench' (it is dropped)")
    args.signals = args.signals or (400 if args.callgrind else 2000)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    env = {"DJANGO_SETTINGS_MODULE": "tradesite.settings", "DATABASE_URL": f"{args.pg_url.rstrip('/')}/{args.db_name}",
           "REDIS_URL": args.redis_url, "LOG_LEVEL": "WARNING", "TRADESITE_COMPONENT": "bench"}
    os.environ.update(env)
    if args.child:
        os.environ.setdefault("TRADESITE_VAR_DIR", tempfile.mkdtemp(prefix="tradesite-cost-var-"))
        print(json.dumps(child(args)))
        return 0
    os.environ["TRADESITE_VAR_DIR"] = tempfile.mkdtemp(prefix="tradesite-cost-var-")
    _admin(args, f'DROP DATABASE IF EXISTS "{args.db_name}" WITH (FORCE)')
    _admin(args, f'CREATE DATABASE "{args.db_name}"')
    try:
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0", "--no-input"], cwd=ROOT, check=True,
                       timeout=300)
        result = callgrind(args, argv) if args.callgrind else child(args)
    finally:
        _admin(args, f'DROP DATABASE IF EXISTS "{args.db_name}" WITH (FORCE)')
    result |= {"benchmark": "engine_cost", "root": str(ROOT), "loadavg": os.getloadavg()[0]}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
