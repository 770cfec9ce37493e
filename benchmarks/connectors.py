"""Latency of each real venue connector against its loopback fake, and of the engine through it.

    python benchmarks/connectors.py [--venues coinbase,hyperliquid,synthetix] [--orders 200] [--signals 40]
                                    [--gap SECONDS] [--no-engine]

1. Connector calls (this process, the bare connector: signing included, no retries, rate limiter or breaker):
   per venue, `--orders` rounds of create (a limit buy far below the market, so it rests), fetch (by venue id)
   and cancel; a venue without resting orders (Synthetix perps v3: market orders only, no cancel of a live
   commit) times a market create (buy, then sell reduce-only, so the position stays flat) and its fetch.
2. Engine signal -> acknowledgement (a throwaway database `tradesite_bench_connectors`, Redis db 13, ONE
   `celery worker -Q execution -c 2`): per venue one live account on the fake (credentials and endpoint from
   `<PREFIX>_*` variables, exactly as in production); `--signals` signals sent one at a time (open_long, close,
   ...), each through the worker, the engine's risk decision, the real connector and the fake. Latencies come
   from the Signal row's stamps: received -> acknowledged (the venue's reply is being recorded) and
   received -> filled.

The fakes run in this process on 127.0.0.1 (HTTP fakes in threads; Synthetix is anvil behind a JSON-RPC front),
so the figures are the client library + signing + our code + loopback HTTP, not a venue's real latency.
Everything is cleaned up on exit. The last stdout line is JSON. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

ALL_VENUES = ("coinbase", "hyperliquid", "synthetix")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def summary(samples: Sequence[float]) -> dict[str, float | int]:
    """n, p50, p99 and max of samples in milliseconds."""
    if not samples:
        return {"n": 0}
    return {"n": len(samples), "p50": round(percentile(samples, 50), 2), "p99": round(percentile(samples, 99), 2),
            "max": round(max(samples), 2)}


def _timed(samples: list[float], fn: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    result = fn()
    samples.append((time.perf_counter() - started) * 1000)
    return result


# --------------------------------------------------------------------------------------------- connector calls


def connector_calls(harness: Any, rounds: int) -> dict[str, Any]:
    """Time create, fetch and cancel through the bare connector against a running harness."""
    from exchanges.base import OrderRequest, OrderType, Side
    from exchanges.errors import InvalidOrderError
    from tests.fakes.live import bare_connector, small_quantity

    connector = bare_connector(harness)
    market = connector.market(harness.symbol)
    qty = small_quantity(market, harness.price)
    far = market.round_price(harness.price * Decimal("0.5"), Side.BUY)
    create: list[float] = []
    fetch: list[float] = []
    cancel: list[float] = []
    mode = "limit"
    for i in range(rounds):
        if mode == "limit":
            request = OrderRequest(client_order_id=uuid.uuid4().hex, symbol=harness.symbol, side=Side.BUY,
                                   type=OrderType.LIMIT, quantity=qty, price=far)
            try:
                order = _timed(create, lambda: connector.create_order(request))  # noqa: B023 - called within this iteration
            except InvalidOrderError:
                if i:
                    raise
                create.clear()
                mode = "market"
            else:
                _timed(fetch, lambda: connector.fetch_order(harness.symbol, order.venue_order_id))  # noqa: B023 - called within this iteration
                _timed(cancel, lambda: connector.cancel_order(harness.symbol, order.venue_order_id))  # noqa: B023 - called within this iteration
                continue
        side = Side.BUY if i % 2 == 0 else Side.SELL
        request = OrderRequest(client_order_id=uuid.uuid4().hex, symbol=harness.symbol, side=side,
                               type=OrderType.MARKET, quantity=qty, price=harness.price,
                               reduce_only=side is Side.SELL)
        order = _timed(create, lambda: connector.create_order(request))  # noqa: B023 - called within this iteration
        _timed(fetch, lambda: connector.fetch_order(harness.symbol, order.venue_order_id))  # noqa: B023 - called within this iteration
    return {"mode": mode, "create_ms": summary(create), "fetch_ms": summary(fetch), "cancel_ms": summary(cancel)}


# --------------------------------------------------------------------------------------------- engine


def engine_latency(harnesses: dict[str, Any], signals: int, args: argparse.Namespace, stack: contextlib.ExitStack,
                   ) -> dict[str, Any]:
    """Signal -> acknowledgement through one real worker, per venue, signals sent one at a time."""
    import signal_to_fill as stf

    var_dir = Path(tempfile.mkdtemp(prefix="tradesite-bench-conn-"))
    stack.callback(shutil.rmtree, var_dir, True)
    env = stf.bench_env(args, var_dir)
    prefixes = {venue: f"BENCH_{venue.upper()}" for venue in harnesses}
    for venue, harness in harnesses.items():
        env.update(harness.env(prefixes[venue]))
    os.environ.update(env)
    stf.db_create(args)
    stack.callback(stf.db_drop, args)
    stf.migrate(env)
    stf.redis_flush(args.redis_url)
    stack.callback(stf.redis_flush, args.redis_url)

    import django

    django.setup()
    from django.db import connections

    stack.callback(connections.close_all)
    from tests.fakes.live import bare_connector, small_quantity
    from trading import reconcile, services
    from trading.intake import signal_create
    from trading.models import Signal

    strategies = {}
    for venue, harness in harnesses.items():
        market = bare_connector(harness).market(harness.symbol)
        account = services.account_create(data={
            "name": f"bench-{venue}", "venue": venue, "network": harness.network, "credentials_env": prefixes[venue],
            "quote_asset": market.quote, "max_leverage": "5"}, by="bench")
        reconcile.account_reconcile(account=account)
        strategies[venue] = services.strategy_start(strategy=services.strategy_create(data={
            "name": f"bench {venue}", "slug": f"bench-{venue}", "kind": "webhook", "symbol": harness.symbol,
            "account": account, "mode": "live", "sizing_mode": "quantity",
            "sizing_value": str(small_quantity(market, harness.price))}, by="bench"), by="bench")
    worker = stf.Worker(env, var_dir / "worker.log")
    worker.start()
    stack.callback(worker.stop)

    def send(venue: str, key: str, action: str, timeout: float = 60) -> Signal:
        signal, _ = signal_create(strategy=strategies[venue], source="manual", idempotency_key=key,
                                         action=action)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = Signal.objects.get(pk=signal.pk)
            if row.status in ("executed", "rejected", "ignored", "failed"):
                return row
            time.sleep(0.002)
        raise RuntimeError(f"{venue} signal {key} not settled in {timeout}s:\n{worker.log_tail()}")

    results: dict[str, Any] = {}
    for venue in harnesses:
        for i in range(2):  # warm-up: the worker's connector, connections and the venue's market data
            send(venue, f"warm-{venue}-{i}", "open_long" if i % 2 == 0 else "close", timeout=120)
        ack: list[float] = []
        fill: list[float] = []
        bad = 0
        for i in range(signals):
            time.sleep(args.gap)
            row = send(venue, f"bench-{venue}-{i}", "open_long" if i % 2 == 0 else "close")
            if row.status != "executed" or row.acknowledged_at is None:
                bad += 1
                continue
            ack.append((row.acknowledged_at - row.received_at).total_seconds() * 1000)
            if row.filled_at is not None:
                fill.append((row.filled_at - row.received_at).total_seconds() * 1000)
        results[venue] = {"signal_to_ack_ms": summary(ack), "signal_to_fill_ms": summary(fill), "not_executed": bad}
    return results


# --------------------------------------------------------------------------------------------- main


def table(conn: dict[str, Any], eng: dict[str, Any]) -> str:
    """The figures as a plain-text table."""
    lines = [f"{'venue':<12} {'measure':<24} {'n':>5} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}"]
    for venue in sorted(set(conn) | set(eng)):
        rows = []
        if venue in conn:
            mode = conn[venue]["mode"]
            rows += [(f"create ({mode})", conn[venue]["create_ms"]), ("fetch", conn[venue]["fetch_ms"]),
                     ("cancel", conn[venue]["cancel_ms"])]
        if venue in eng:
            rows += [("signal -> ack (engine)", eng[venue]["signal_to_ack_ms"]),
                     ("signal -> fill (engine)", eng[venue]["signal_to_fill_ms"])]
        for name, s in rows:
            if s.get("n"):
                lines.append(f"{venue:<12} {name:<24} {s['n']:>5} {s['p50']:>9.2f} {s['p99']:>9.2f} {s['max']:>9.2f}")
            else:
                lines.append(f"{venue:<12} {name:<24} {0:>5} {'n/a':>9} {'n/a':>9} {'n/a':>9}")
    return "\n".join(lines)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--venues", default=",".join(ALL_VENUES), help="comma-separated (default: every venue)")
    p.add_argument("--orders", type=int, default=200, help="create/fetch/cancel rounds per venue (default 200)")
    p.add_argument("--signals", type=int, default=40, help="engine signals per venue (default 40)")
    p.add_argument("--gap", type=float, default=0.0,
                   help="seconds between engine signals (default 0: back to back; a gap lets the account's rate "
                        "budget refill, so the figure shows the path without throttling)")
    p.add_argument("--no-engine", action="store_true", help="connector calls only (no database or worker)")
    p.add_argument("--pg-url", default="postgres://postgres@127.0.0.1:5432")
    p.add_argument("--db-name", default="tradesite_bench_connectors")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tradesite.settings")
    from tests.fakes import venues as fake_venues

    available = set(fake_venues.available())
    venues = [v for v in args.venues.split(",") if v]
    missing = [v for v in venues if v not in available]
    venues = [v for v in venues if v in available]
    output: dict[str, Any] = {"benchmark": "connectors", "date": datetime.now().astimezone().isoformat(
        timespec="seconds"), "orders": args.orders, "signals": args.signals, "gap_s": args.gap,
        "missing_fakes": missing}
    status = 1
    with contextlib.ExitStack() as stack:
        try:
            harnesses = {v: stack.enter_context(fake_venues.harness(v)) for v in venues}
            conn: dict[str, Any] = {}
            for venue, harness in harnesses.items() if args.orders > 0 else ():
                print(f"connector calls: {venue} ({args.orders} rounds)...", file=sys.stderr, flush=True)
                conn[venue] = connector_calls(harness, args.orders)
            eng: dict[str, Any] = {}
            if not args.no_engine and harnesses:
                print(f"engine: {args.signals} signals per venue through one worker...", file=sys.stderr, flush=True)
                eng = engine_latency(harnesses, args.signals, args, stack)
            output["connector"], output["engine"] = conn, eng
            print(table(conn, eng), flush=True)
            status = 0
        except KeyboardInterrupt:
            print("interrupted: cleaning up", file=sys.stderr)
            status = 130
    output["status"] = status
    print(json.dumps(output, separators=(",", ":"), default=str))
    return status


if __name__ == "__main__":
    sys.exit(main())
