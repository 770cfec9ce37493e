"""Loaded with -p before Django starts: point the suite at the real Postgres and Redis on 127.0.0.1."""

import os
import tempfile

# One database per test run (pytest-django prefixes test_), so runs side by side never drop each other's.
os.environ.setdefault("DATABASE_URL", f"postgres://postgres@127.0.0.1:5432/tradesite_{os.getpid()}")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/15")
os.environ.setdefault("REDIS_KEY_PREFIX", f"tradesite-test-{os.getpid()}:")
os.environ.setdefault("TRADESITE_VAR_DIR", tempfile.mkdtemp(prefix="tradesite-test-"))
os.environ.setdefault("TRADESITE_COMPONENT", "tests")
