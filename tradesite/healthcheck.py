"""Container health probe (`python -m tradesite.healthcheck`): web and intake answer /healthz; a worker has a fresh
heartbeat of its own (this container's node) for each queue it consumes; beat ticked recently (tradesite/heartbeat.py).

Stdlib and redis-py only, no Django start-up: it runs every few seconds in every container.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import urllib.request

from tradesite.bootstrap import WORKER_ROLES, var_dir
from tradesite.heartbeat import store_open


def _marketdata_problem() -> str:
    """Why this container's market-data role is unhealthy ('' when its loop wrote its heartbeat file lately:
    strategies/feeds.py, every 5 s)."""
    stale_after = float(os.environ.get("TRADESITE_HEARTBEAT_STALE_SECONDS", "20"))
    path = var_dir(os.environ) / "heartbeats" / f"marketdata@{socket.gethostname()}"
    try:
        at = float(path.read_text())
    except (OSError, ValueError):
        return "no heartbeat yet"
    age = time.time() - at
    return "" if age <= stale_after else f"its loop has not run for {age:.0f} s"


def _heartbeat_problem(role: str) -> str:
    """Why this worker or beat is unhealthy ('' when its heartbeat is fresh)."""
    stale_after = float(os.environ.get("TRADESITE_HEARTBEAT_STALE_SECONDS", "20"))
    broker = os.environ.get("CELERY_BROKER_URL") or os.environ.get("REDIS_URL", "") or "filesystem://localhost/"
    store = store_open(broker_url=broker, redis_prefix=os.environ.get("REDIS_KEY_PREFIX", ""),
                       var_dir=var_dir(os.environ), timeout=4)
    now = time.time()
    if role == "beat":
        at = store.seen(()).beat
        return "" if at is not None and now - at <= stale_after else \
            f"beat has not ticked for {'ever' if at is None else f'{now - at:.0f} s'}"
    name, queues = WORKER_ROLES[role]
    node = f"{name}@{socket.gethostname()}"  # the worker's -n name@%h in this container
    seen = store.seen(queues, node=node)
    stale = [q for q, at in seen.queues.items() if at is None or now - at > stale_after]
    return f"no heartbeat from {node} for queue {', '.join(stale)} in {stale_after:.0f} s" if stale else ""


def main() -> int:
    """0 when healthy, 1 otherwise (one line on stderr says why)."""
    role = os.environ.get("TRADESITE_COMPONENT", "web")
    try:
        if role in ("web", "intake"):
            bind = os.environ.get("WEB_BIND", "0.0.0.0:8000") if role == "web" else \
                os.environ.get("INTAKE_BIND", "0.0.0.0:8001")
            port = bind.rsplit(":", 1)[1]
            # Django answers only the host names in ALLOWED_HOSTS (400 otherwise): ask as the first of them.
            hosts = [h.strip().lstrip(".") for h in os.environ.get("ALLOWED_HOSTS", "").split(",")
                     if h.strip() and h.strip() != "*"]
            request = urllib.request.Request(f"http://127.0.0.1:{port}/healthz",
                                             headers={"Host": hosts[0]} if hosts else {})
            with urllib.request.urlopen(request, timeout=4) as response:
                return 0 if response.status == 200 else 1
        if role == "marketdata":
            problem = _marketdata_problem()
            if problem:
                print(f"unhealthy ({role}): {problem}", file=sys.stderr)
                return 1
            return 0
        if role != "beat" and role not in WORKER_ROLES:
            print(f"unhealthy ({role}): not a role this probe knows", file=sys.stderr)
            return 1
        problem = _heartbeat_problem(role)
        if problem:
            print(f"unhealthy ({role}): {problem}", file=sys.stderr)
            return 1
        return 0
    except Exception as exc:  # noqa: BLE001 - any failure is unhealthy
        print(f"unhealthy ({role}): {type(exc).__name__}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
