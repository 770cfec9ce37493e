"""API tokens: only a digest is stored, the key is shown once, tokens expire and can be revoked, and the keys of
DRF's old plain-text table keep working once migrated."""

from __future__ import annotations

import hashlib
import importlib
import io
import re
from datetime import timedelta
from typing import Any

from django.apps import apps as django_apps
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from trading import services
from trading.models import AuditEvent

URL = "/api/strategies/"


def _client(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


def _table_text() -> str:
    """Every value of every row of the token table, as text."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM knox_authtoken")
        return " ".join(str(v) for row in cursor.fetchall() for v in row)


def _command(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_only_a_digest_of_the_key_is_stored(user: Any) -> None:
    token, key = services.api_token_create(user=user, by="test")
    assert len(key) == 64 and _client(key).get(URL).status_code == 200
    stored = _table_text()
    assert key not in stored and key[:20] not in stored  # a lookup prefix (15 characters) at most
    assert token.digest == hashlib.sha512(key.encode()).hexdigest() and token.digest in stored
    assert "authtoken_token" not in connection.introspection.table_names()  # DRF's plain-text table is gone


def test_a_token_expires_after_the_configured_days(user: Any, settings: Any) -> None:
    settings.API_TOKEN_TTL = timedelta(days=30)
    token, key = services.api_token_create(user=user, by="test")
    assert token.expiry is not None and abs(token.expiry - (timezone.now() + timedelta(days=30))) < timedelta(minutes=1)
    client = _client(key)
    assert client.get(URL).status_code == 200
    type(token).objects.filter(pk=token.pk).update(expiry=timezone.now() - timedelta(seconds=1))
    response = client.get(URL)
    assert response.status_code == 401 and response["WWW-Authenticate"] == "Token"
    assert type(token).objects.filter(pk=token.pk).exists()  # refused, not deleted: still listed, as expired
    settings.API_TOKEN_TTL = None  # API_TOKEN_TTL_DAYS=none
    forever, _ = services.api_token_create(user=user, by="test")
    assert forever.expiry is None


def test_revoked_tokens_are_refused_at_once(user: Any, staff: Any) -> None:
    _, key = services.api_token_create(user=user, by="test")
    token, key2 = services.api_token_create(user=user, by="test")
    client = _client(key)
    assert client.get(URL).status_code == 200
    prefix = _client(key).get("/api/tokens/").json()["results"][-1]["prefix"]
    assert key.startswith(prefix)
    assert client.post(f"/api/tokens/{prefix}/revoke/").status_code == 200  # its own key
    assert client.get(URL).status_code == 401
    assert AuditEvent.objects.filter(action="api_token.revoked", entity_id=prefix, actor="api:viewer").exists()
    # The command, by prefix; a user cannot revoke another's token, staff can.
    other, other_key = services.api_token_create(user=staff, by="test")
    assert _client(key2).post(f"/api/tokens/{other_key[:8]}/revoke/").status_code == 404
    _command("api_token", "revoke", key2[:8])
    assert _client(key2).get(URL).status_code == 401
    _, third = services.api_token_create(user=user, by="test")
    assert _client(other_key).post(f"/api/tokens/{third[:8]}/revoke/").status_code == 200
    assert _client(third).get(URL).status_code == 401


def test_the_command_shows_the_key_once(user: Any) -> None:
    out, err = _command("api_token", "create", "viewer", "--days", "7")
    key = out.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", key), out  # alone on stdout: TOKEN=$(manage.py api_token create alice)
    assert "expires" in err and key not in err
    assert _client(key).get(URL).status_code == 200
    listed, _ = _command("api_token", "list")
    assert key[:8] in listed and key not in listed and "viewer" in listed
    assert key not in _client(key).get("/api/tokens/").content.decode()
    # DRF's command name and output still work for existing provisioning scripts (awk '{print $3}').
    out, _ = _command("drf_create_token", "viewer")
    words = out.split()
    assert out.startswith("Generated token ") and words[3:] == ["for", "user", "viewer"]
    assert _client(words[2]).get(URL).status_code == 200
    out, _ = _command("drf_create_token", "-r", "viewer")  # -r: every older key of the user stops working
    assert _client(words[2]).get(URL).status_code == 401 and _client(key).get(URL).status_code == 401
    assert _client(out.split()[2]).get(URL).status_code == 200


def test_the_admin_shows_a_new_key_once_and_revokes(admin_client: Client, user: Any) -> None:
    response = admin_client.post("/admin/knox/authtoken/add/", {"user": user.pk, "days": "2"})
    assert response.status_code == 200 and response["Cache-Control"].startswith("no-store"), response.status_code
    html = response.content.decode()
    key = re.search(r'id="api-token-key">([0-9a-f]{64})<', html).group(1)  # type: ignore[union-attr]
    assert _client(key).get(URL).status_code == 200
    listing = admin_client.get("/admin/knox/authtoken/").content.decode()
    assert key[:8] in listing and key not in listing
    assert key not in admin_client.get("/admin/").content.decode()
    from knox.models import AuthToken

    token = AuthToken.objects.get()
    assert token.expiry is not None and token.expiry - timezone.now() > timedelta(days=1, hours=23)
    response = admin_client.post("/admin/knox/authtoken/", {"action": "revoke_tokens", "_selected_action": [token.pk]})
    assert response.status_code == 302
    assert _client(key).get(URL).status_code == 401
    assert AuditEvent.objects.filter(action="api_token.revoked", actor__startswith="admin:").exists()


LEGACY_KEY = "9944b09199c62bcf9418ad846dd0e4bbdfc6ee4b"  # the shape of DRF's keys: 40 hex characters


def _legacy_table(user_id: int) -> None:
    """DRF's authtoken_token as its migrations made it, with one plain-text key."""
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE authtoken_token (key varchar(40) NOT NULL PRIMARY KEY, created timestamp with "
                       "time zone NOT NULL, user_id integer NOT NULL UNIQUE REFERENCES auth_user (id) DEFERRABLE "
                       "INITIALLY DEFERRED)")
        cursor.execute("INSERT INTO authtoken_token (key, created, user_id) VALUES (%s, %s, %s)",
                       [LEGACY_KEY, timezone.now() - timedelta(days=400), user_id])
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # as if committed long ago: no check pending at the DROP


def test_an_old_key_still_authenticates_once_migrated(user: Any, settings: Any) -> None:
    settings.API_TOKEN_TTL = timedelta(days=90)
    _legacy_table(user.pk)
    migration = importlib.import_module("trading.migrations.0011_api_tokens_hashed")
    with connection.schema_editor() as editor:
        migration.hash_legacy_tokens(django_apps, editor)
    assert "authtoken_token" not in connection.introspection.table_names()
    assert LEGACY_KEY not in _table_text()
    response = _client(LEGACY_KEY).get(URL)
    assert response.status_code == 200
    from knox.models import AuthToken

    token = AuthToken.objects.get(user=user)
    assert token.created < timezone.now() - timedelta(days=399)  # when DRF issued it
    assert token.expiry is not None and token.expiry > timezone.now() + timedelta(days=89)
    with connection.schema_editor() as editor:  # run again (no legacy table): nothing to do
        migration.hash_legacy_tokens(django_apps, editor)
    assert AuthToken.objects.count() == 1


def test_malformed_and_unknown_keys_are_401(user: Any) -> None:
    _, key = services.api_token_create(user=user, by="test")
    for header in (f"Bearer {key}", "Token", f"Token {key} extra", f"token{key}", "Token " + "0" * 64,
                   f"Token {key[:15]}", f"Token {key[:-1]}", "Token ü" + key):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=header)
        assert client.get(URL).status_code == 401, header
