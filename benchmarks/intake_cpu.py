"""In-process cost per call of the webhook's hot path (`webhooks.services.body_intake`, the web role's code) and of
`trading.intake.signal_create`: CPU time of the calling thread and wall time (docs/benchmarks.md, webhook_load).

    .venv/bin/python benchmarks/intake_cpu.py     # its own database tradesite_bench_hot, Redis db 13 (flushed)
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PG, DB, REDIS = "postgres://postgres@127.0.0.1:5432", "tradesite_bench_hot", "redis://127.0.0.1:6379/13"
env = dict(os.environ, DJANGO_SETTINGS_MODULE="tradesite.settings", DATABASE_URL=f"{PG}/{DB}", REDIS_URL=REDIS,
           TRADESITE_VAR_DIR="/tmp/intake-cpu-var", LOG_LEVEL="WARNING", TRADESITE_COMPONENT="web",
           WEBHOOK_RATE_LIMIT_PER_IP="1000000000", WEBHOOK_RATE_LIMIT_PER_STRATEGY="1000000000", PYTHONPATH=str(ROOT))
for name in ("CELERY_BROKER_URL", "REDIS_KEY_PREFIX", "LEAN_URL_NAMES"):
    env.pop(name, None)
os.environ.clear()
os.environ.update(env)
import benchmarks.webhook_load as wl  # noqa: E402

wl._admin_sql(PG, f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)', f'CREATE DATABASE "{DB}"')
wl._redis_flush(REDIS)
try:
    slug, secret = wl._setup(env)
    import django
    django.setup()
    from django.utils import timezone
    from trading.intake import signal_create
    from trading.models import Strategy
    from webhooks import services

    meta = {"REMOTE_ADDR": "127.0.0.1", "CONTENT_TYPE": "application/json"}
    run = uuid.uuid4().hex[:8]

    def body(i: int) -> bytes:
        return json.dumps({"passphrase": secret, "strategy": slug, "action": "buy", "ticker": "BTCUSD",
                           "contracts": "0.001", "order_id": "Long", "id": f"{run}-{i}",
                           "time": timezone.now().isoformat()}).encode()

    strategy = Strategy.objects.get(slug=slug)
    out = {}
    n = 0
    for label, call in (("body_intake", lambda i: services.body_intake(body=body(i), content_type="application/json",
                                                                         meta=meta)),
                        ("signal_create", lambda i: signal_create(strategy=strategy, source="manual",
                                                                  idempotency_key=f"sc-{run}-{i}",
                                                                  action="open_long"))):
        for _ in range(300):  # warm-up
            call(n)
            n += 1
        cpu, wall = [], []
        for _ in range(7):
            c0, w0 = time.thread_time(), time.perf_counter()
            for _ in range(1000):
                r = call(n)
                n += 1
            cpu.append(time.thread_time() - c0)
            wall.append(time.perf_counter() - w0)
        if label == "body_intake":
            assert r.status == 202, r.body()
        out[label] = {"cpu_us_per_call_median": round(statistics.median(cpu) * 1000, 1),
                      "cpu_us_per_call_min": round(min(cpu) * 1000, 1),
                      "wall_us_per_call_median": round(statistics.median(wall) * 1000, 1)}
    print(json.dumps(out))
finally:
    from django.db import connections
    connections.close_all()
    wl._admin_sql(PG, f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
    wl._redis_flush(REDIS)
