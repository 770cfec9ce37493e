"""Server time of the dashboard's overview, strategy list and orders pages with 10,000 orders and 50 strategies.

Creates a throwaway PostgreSQL database (`tradesite_bench_pages`), migrates it, fills it (one paper account,
50 strategies, 10,000 signals each with an order and a fill, an open position per strategy, a day of one-minute
equity snapshots for the account and every strategy), then requests each page in-process through Django's full
stack (middleware, session auth, selectors, templates) with a logged-in staff user, and prints the median, p95 and
max of the server time and the number of SQL queries per page. Target: <= 150 ms each. Drops the database after.

    .venv/bin/python benchmarks/pages.py [--requests 50] [--orders 10000] [--strategies 50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TARGET_MS = 150.0


def _admin_sql(pg_url: str, *statements: str) -> None:
    import psycopg

    with psycopg.connect(f"{pg_url.rstrip('/')}/postgres", autocommit=True, connect_timeout=10) as conn:
        for statement in statements:
            conn.execute(statement)  # type: ignore[arg-type]


def populate(*, strategies: int, orders: int) -> None:
    """The book: one account, `strategies` strategies, `orders` filled orders spread over them, a day of snapshots."""
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from trading import services
    from trading.models import EquitySnapshot, Fill, MarketPrice, Order, Position, Signal, Strategy
    from trading.prices import price_set

    now = timezone.now()
    get_user_model().objects.create_user("bench", "bench@localhost", "bench-password-1", is_staff=True)
    account = services.account_create(data={"name": "bench", "venue": "paper", "network": "paper",
                                            "paper_initial_cash": "100000", "max_leverage": "5"}, by="bench")
    price_set("BTC/USD", Decimal("50000"), time=now)
    assert MarketPrice.objects.exists()
    rows = Strategy.objects.bulk_create([
        Strategy(name=f"bench {i}", slug=f"bench-{i}", symbol="BTC/USD", account=account, status="active",
                 sizing_mode="quantity", sizing_value=Decimal("0.01")) for i in range(strategies)])
    signals = Signal.objects.bulk_create([
        Signal(strategy=rows[i % strategies], account=account, source="webhook", idempotency_key=uuid.uuid4().hex,
               action="open_long" if i % 2 == 0 else "close", symbol="BTC/USD", status="executed", decision_rule="ok",
               received_at=now - timedelta(seconds=orders - i), accepted_at=now - timedelta(seconds=orders - i),
               submitted_at=now - timedelta(seconds=orders - i), acknowledged_at=now - timedelta(seconds=orders - i),
               filled_at=now - timedelta(seconds=orders - i)) for i in range(orders)], batch_size=2000)
    made = Order.objects.bulk_create([
        Order(client_order_id=uuid.uuid4().hex, account=account, strategy=s.strategy, signal=s, symbol="BTC/USD",
              side="buy" if i % 2 == 0 else "sell", purpose="entry" if i % 2 == 0 else "exit",
              quantity=Decimal("0.01"), status="filled", filled_quantity=Decimal("0.01"),
              average_fill_price=Decimal("50000") + i % 100, fees=Decimal("0.25"), created_at=s.received_at,
              updated_at=s.received_at) for i, s in enumerate(signals)], batch_size=2000)
    Fill.objects.bulk_create([
        Fill(order=o, account=account, strategy_id=o.strategy_id, symbol="BTC/USD", side=o.side, venue_fill_id="1",
             quantity=o.quantity, price=o.average_fill_price, fee=Decimal("0.25"),
             realized_pnl=Decimal("0") if o.side == "buy" else Decimal("1.5"), time=o.created_at,
             recorded_at=o.created_at) for o in made], batch_size=2000)
    Position.objects.bulk_create([
        Position(account=account, strategy=s, symbol="BTC/USD", quantity=Decimal("0.01"), cost_basis=Decimal("500"),
                 average_entry=Decimal("50000"), realized_pnl=Decimal("150"), fees_paid=Decimal("50"), opened_at=now,
                 updated_at=now) for s in rows])
    snapshots = []
    for minute in range(24 * 60):
        at = now - timedelta(minutes=minute)
        snapshots.append(EquitySnapshot(account=account, time=at, equity=Decimal("100000") + minute,
                                        cash=Decimal("100000"), realized_pnl=Decimal("0"), unrealized_pnl=minute))
        snapshots.extend(EquitySnapshot(account=account, strategy=s, time=at, equity=Decimal(minute),
                                        cash=Decimal("100000"), realized_pnl=Decimal("0"), unrealized_pnl=minute)
                         for s in rows)
    EquitySnapshot.objects.bulk_create(snapshots, batch_size=5000)
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def measure(client: Any, url: str, requests: int) -> dict[str, float]:
    """Server time (ms) of `requests` GETs after 3 warm-ups, and the queries of one."""
    from django.db import connection

    for _ in range(3):
        assert client.get(url).status_code == 200, url
    queries: list[str] = []

    def count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        queries.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(count):
        client.get(url)
    times = []
    for _ in range(requests):
        start = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200
    times.sort()
    return {"median": statistics.median(times), "p95": times[int(len(times) * 0.95) - 1], "max": times[-1],
            "queries": len(queries)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pg-url", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--db-name", default="tradesite_bench_pages")
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--orders", type=int, default=10_000)
    parser.add_argument("--strategies", type=int, default=50)
    parser.add_argument("--profile", default="", help="print a cProfile of 10 requests of this page name")
    parser.add_argument("--sort", default="cumulative", help="cProfile sort key (cumulative, tottime)")
    args = parser.parse_args()

    env = {"DJANGO_SETTINGS_MODULE": "tradesite.settings", "DATABASE_URL": f"{args.pg_url}/{args.db_name}",
           "TRADESITE_VAR_DIR": tempfile.mkdtemp(prefix="tradesite-bench-pages-"), "LOG_LEVEL": "WARNING",
           "TRADESITE_COMPONENT": "bench", "DEBUG": "0"}
    os.environ.update(env)
    os.environ.pop("REDIS_URL", None)
    os.environ.pop("CELERY_BROKER_URL", None)
    _admin_sql(args.pg_url, f'DROP DATABASE IF EXISTS "{args.db_name}" WITH (FORCE)',
               f'CREATE DATABASE "{args.db_name}"')
    try:
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0", "--no-input"], cwd=ROOT, env=os.environ,
                       check=True, timeout=300)
        import django

        django.setup()
        from django.contrib.auth import get_user_model
        from django.db import connections
        from django.test import Client

        started = time.perf_counter()
        populate(strategies=args.strategies, orders=args.orders)
        print(f"populated {args.strategies} strategies, {args.orders} orders/signals/fills and a day of snapshots "
              f"in {time.perf_counter() - started:.1f} s")
        client = Client()
        client.force_login(get_user_model().objects.get(username="bench"))
        pages = {"overview": "/", "overview (live fragment)": "/?partial=1", "strategy list": "/strategies/",
                 "orders": "/orders/", "orders (live fragment)": "/orders/?partial=1"}
        if args.profile:
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(10):
                client.get(pages[args.profile])
            profiler.disable()
            pstats.Stats(profiler).sort_stats(args.sort).print_stats(25)
            from django.db import connection

            timed: list[tuple[float, str]] = []

            def timer(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
                start = time.perf_counter()
                try:
                    return execute(sql, params, many, context)
                finally:
                    timed.append(((time.perf_counter() - start) * 1000, sql))

            with connection.execute_wrapper(timer):
                client.get(pages[args.profile])
            for ms, sql in sorted(timed, reverse=True)[:8]:
                print(f"{ms:7.2f} ms  {sql[:300]}")
        failed = False
        print(f"{'page':28} {'median ms':>10} {'p95 ms':>8} {'max ms':>8} {'queries':>8}  target <= {TARGET_MS:.0f} ms")
        for name, url in pages.items():
            figures = measure(client, url, args.requests)
            ok = figures["p95"] <= TARGET_MS
            failed |= not ok
            print(f"{name:28} {figures['median']:10.1f} {figures['p95']:8.1f} {figures['max']:8.1f} "
                  f"{figures['queries']:8d}  {'ok' if ok else 'MISSED'}")
        connections.close_all()
        return 1 if failed else 0
    finally:
        _admin_sql(args.pg_url, f'DROP DATABASE IF EXISTS "{args.db_name}" WITH (FORCE)')


if __name__ == "__main__":
    raise SystemExit(main())
