"""`manage.py migrate` on a database that still has DRF's plain-text token table: the keys become digests, the
table is dropped, and a script's old key still authenticates."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator

import psycopg
import pytest

from tests.conftest import ROOT, scratch_database

pytestmark = pytest.mark.integration

KEY = "0a1b2c3d4e5f60718293a4b5c6d7e8f901234567"


@pytest.fixture
def fresh_db() -> Iterator[str]:
    with scratch_database("tradesite_tok") as url:
        yield url


def _manage(url: str, *args: str) -> str:
    env = {**os.environ, "DATABASE_URL": url, "API_TOKEN_TTL_DAYS": "none"}
    result = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_migrate_hashes_drf_tokens_and_drops_their_table(fresh_db: str) -> None:
    _manage(fresh_db, "migrate", "-v0", "auth")
    _manage(fresh_db, "migrate", "-v0", "trading", "0010")
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('knox_authtoken')").fetchone() == (None,)
        user_id = conn.execute("INSERT INTO auth_user (password, is_superuser, username, first_name, last_name, "
                               "email, is_staff, is_active, date_joined) VALUES ('!', false, 'script', '', '', '', "
                               "false, true, now()) RETURNING id").fetchone()[0]  # type: ignore[index]
        conn.execute("CREATE TABLE authtoken_token (key varchar(40) NOT NULL PRIMARY KEY, created timestamp with "
                     "time zone NOT NULL, user_id integer NOT NULL UNIQUE REFERENCES auth_user (id))")
        conn.execute("INSERT INTO authtoken_token VALUES (%s, now(), %s)", (KEY, user_id))
    _manage(fresh_db, "migrate", "-v0")
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('authtoken_token')").fetchone() == (None,)
        rows = conn.execute("SELECT digest, token_key, user_id, expiry FROM knox_authtoken").fetchall()
    assert rows == [(hashlib.sha512(KEY.encode()).hexdigest(), KEY[:15], user_id, None)]
    check = ("from django.test.utils import setup_test_environment; setup_test_environment(); "
             "from rest_framework.test import APIClient; c = APIClient(); "
             f"c.credentials(HTTP_AUTHORIZATION='Token {KEY}'); print(c.get('/api/orders/').status_code)")
    assert _manage(fresh_db, "shell", "-c", check).strip().splitlines()[-1] == "200"
