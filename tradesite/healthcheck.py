"""Container health probe (`python -m tradesite.healthcheck`): web and intake answer /healthz; workers and beat
reach Redis.

Stdlib and redis-py only, no Django start-up: it runs every few seconds in every container.
"""

from __future__ import annotations

import os
import sys
import urllib.request


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
        url = os.environ.get("CELERY_BROKER_URL") or os.environ.get("REDIS_URL", "")
        if not url.startswith(("redis://", "rediss://")):
            return 0  # the embedded filesystem broker: nothing to reach
        import redis

        return 0 if redis.Redis.from_url(url, socket_timeout=4, socket_connect_timeout=4).ping() else 1
    except Exception as exc:  # noqa: BLE001 - any failure is unhealthy
        print(f"unhealthy ({role}): {type(exc).__name__}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
