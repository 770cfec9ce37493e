"""Loaded with -p before Django starts: point the suite at the real Postgres and Redis on 127.0.0.1."""

import os
import tempfile

# One database per test run (pytest-django prefixes test_), so runs side by side never drop each other's.
os.environ.setdefault("DATABASE_URL", f"postgres://postgres@127.0.0.1:5432/tradesite_{os.getpid()}")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/15")
os.environ.setdefault("REDIS_KEY_PREFIX", f"tradesite-test-{os.getpid()}:")
os.environ.setdefault("TRADESITE_VAR_DIR", tempfile.mkdtemp(prefix="tradesite-test-"))
os.environ.setdefault("TRADESITE_COMPONENT", "tests")

# The network guard: this process, and every process a test starts (they inherit the variable and
# tradesite/settings.py installs it), may reach only 127.0.0.1, ::1 and unix sockets.
os.environ.setdefault("TRADESITE_NETWORK_GUARD", "loopback")
if os.environ["TRADESITE_NETWORK_GUARD"] == "loopback":
    import importlib.util
    import sys
    from pathlib import Path

    # Loaded by path, as tradesite.netguard, without importing the tradesite package (Celery app) this early.
    _spec = importlib.util.spec_from_file_location(
        "tradesite.netguard", Path(__file__).resolve().parent.parent / "tradesite" / "netguard.py")
    assert _spec is not None and _spec.loader is not None
    _netguard = importlib.util.module_from_spec(_spec)
    sys.modules["tradesite.netguard"] = _netguard
    _spec.loader.exec_module(_netguard)
    _netguard.install()
