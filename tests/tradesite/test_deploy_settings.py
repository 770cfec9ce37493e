"""Production settings: check --deploy is clean, admin path and login throttling, error reports hide URL passwords."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.test import Client, RequestFactory

from tests.conftest import ROOT


def production_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A clean production environment (DEBUG off), as a deployment would set it."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
        "TRADESITE_VAR_DIR": str(tmp_path / "var"), "DEBUG": "0",
        "SECRET_KEY": secrets.token_urlsafe(50), "ALLOWED_HOSTS": "trade.example.com",
        "TRADESITE_HTTPS": "1", "SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto",
        "CSRF_TRUSTED_ORIGINS": "https://trade.example.com", "ADMIN_URL": "ops-7f3a/",
    }
    env.update(extra)
    return env


def _check_deploy(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)


def test_check_deploy_passes_without_any_warning_in_production(tmp_path: Path) -> None:
    result = _check_deploy(production_env(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "System check identified no issues (0 silenced)." in result.stdout


def test_check_deploy_fails_when_served_without_https(tmp_path: Path) -> None:
    result = _check_deploy(production_env(tmp_path, TRADESITE_HTTPS="0"))
    assert result.returncode != 0
    for warning in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert warning in result.stderr, warning


def test_admin_path_comes_from_the_environment(tmp_path: Path) -> None:
    code = "from django.urls import reverse; from django.conf import settings; print(reverse('admin:index'), " \
           "settings.LOGIN_URL, settings.SECURE_PROXY_SSL_HEADER, settings.SESSION_COOKIE_SECURE)"
    out = subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT,
                         env=production_env(tmp_path), capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split("\n")[-2] == "/ops-7f3a/ /ops-7f3a/login/ ('HTTP_X_FORWARDED_PROTO', 'https') True"


def test_admin_logins_are_locked_out_after_five_failures(db) -> None:
    User.objects.create_superuser("boss", "boss@example.com", "right-password-123")
    client = Client(REMOTE_ADDR="203.0.113.9")
    for _ in range(4):
        response = client.post("/admin/login/", {"username": "boss", "password": "wrong"})
        assert response.status_code == 200  # the login form again, with an error
    # The fifth failure locks the username on this address: refused from then on, even with the right password.
    assert client.post("/admin/login/", {"username": "boss", "password": "wrong"}).status_code == 429
    response = client.post("/admin/login/", {"username": "boss", "password": "right-password-123"})
    assert response.status_code == 429
    assert "_auth_user_id" not in client.session
    # Another address is not locked out, and a good login still works there.
    other = Client(REMOTE_ADDR="198.51.100.7")
    response = other.post("/admin/login/?next=/admin/", {"username": "boss", "password": "right-password-123"})
    assert response.status_code == 302 and other.session.get("_auth_user_id")


def test_logins_without_a_request_still_work(db) -> None:
    """The test client's login() and shell authenticate() pass no request: axes must not refuse them."""
    User.objects.create_user("alice", password="alice-password-123")
    assert Client().login(username="alice", password="alice-password-123")


def test_error_reports_hide_passwords_in_urls_and_known_secrets(settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from tradesite.errors import SafeExceptionReporterFilter

    settings.DATABASE_URL = "postgres://app:db-canary-pw-4471@db:5432/tradesite"
    settings.CELERY_BROKER_URL = "redis://:broker-canary-pw-9913@redis:6379/0"
    settings.CACHES = {"default": {"BACKEND": "x", "LOCATION": "redis://:cache-canary-pw-5521@redis:6379/0"}}
    settings.SOME_ENDPOINT = "https://user:url-canary-pw-7781@host.example/path"
    monkeypatch.setenv("COINBASE_MAIN_API_SECRET", "venue-canary-secret-0042")
    settings.VENUE_NOTE = "key is venue-canary-secret-0042"
    safe = SafeExceptionReporterFilter().get_safe_settings()
    text = repr(safe)
    for canary in ("db-canary-pw-4471", "broker-canary-pw-9913", "cache-canary-pw-5521", "url-canary-pw-7781",
                   "venue-canary-secret-0042"):
        assert canary not in text, canary
    assert safe["STATIC_URL"] == settings.STATIC_URL  # ordinary settings stay readable
    assert "host.example/path" in safe["SOME_ENDPOINT"]
    request = RequestFactory().get("/", HTTP_X_UPSTREAM="redis://:meta-canary-pw-1234@r:6379/0")
    meta = SafeExceptionReporterFilter().get_safe_request_meta(request)
    assert "meta-canary-pw-1234" not in repr(meta)


def test_default_django_filter_would_leak_url_passwords(settings) -> None:
    """Why the custom filter exists: Django's own masks by name only."""
    from django.views.debug import SafeExceptionReporterFilter as DjangoFilter

    settings.DATABASE_URL = "postgres://app:db-canary-pw-4471@db:5432/tradesite"
    assert "db-canary-pw-4471" in repr(DjangoFilter().get_safe_settings()["DATABASE_URL"])


def test_technical_500_page_masks_secrets_even_html_escaped(settings) -> None:
    import sys

    from tradesite.errors import ExceptionReporter
    from tradesite.logging import register_secret

    settings.DEBUG = True
    # Built at run time: the page quotes source lines around the raise, and a literal there is no leak of ours.
    secret = "amp&quote" + '"less<than>-' + "canary-5521"
    register_secret(secret)
    api_secret = "plain-canary-" + "secret-0099"
    password = "url-canary-" + "pw-3141"
    settings.SOME_BROKER = f"redis://:{password}@r:6379/0"
    try:
        raise RuntimeError(f"failed with {secret} and {api_secret}")
    except RuntimeError:
        request = RequestFactory().get("/boom")
        reporter = ExceptionReporter(request, *sys.exc_info())
    register_secret(api_secret)
    page, text = reporter.get_traceback_html(), reporter.get_traceback_text()
    import html

    for needle in (html.escape(secret), secret, api_secret, password):
        assert needle not in page and needle not in text, needle
    assert "Traceback" in page and "[REDACTED]" in page


_PROBE = """
from django.conf import settings
from django.test import Client, override_settings
host = {"HTTP_HOST": "trade.example.com"}
print("metrics", Client().get("/metrics", **host).status_code)
print("metrics-outsider", Client(REMOTE_ADDR="203.0.113.9").get("/metrics", **host).status_code)
print("metrics-forwarded", Client().get("/metrics", HTTP_X_FORWARDED_FOR="203.0.113.9", **host).status_code)
# Prometheus on the compose network names the container: its Host must be allowed like any other.
print("metrics-host-web", Client().get("/metrics", HTTP_HOST="web:8000").status_code)
with override_settings(ALLOWED_HOSTS=[*settings.ALLOWED_HOSTS, "web"]):
    print("metrics-host-web-allowed", Client().get("/metrics", HTTP_HOST="web:8000").status_code)
with override_settings(METRICS_TOKEN="t" * 40):
    outsider = Client(REMOTE_ADDR="203.0.113.9")
    print("metrics-token", outsider.get("/metrics", HTTP_AUTHORIZATION="Bearer " + "t" * 40, **host).status_code)
    print("metrics-token-wrong", outsider.get("/metrics", HTTP_AUTHORIZATION="Bearer " + "u" * 40,
                                             **host).status_code)
    print("metrics-token-none", Client().get("/metrics", **host).status_code)
print("healthz", Client().get("/healthz", **host).status_code)
print("readyz", Client().get("/readyz", **host).status_code)
print("page", Client().get(settings.LOGIN_URL, **host).status_code)
def login(origin):
    c = Client(enforce_csrf_checks=True)
    https = {**host, "HTTP_X_FORWARDED_PROTO": "https"}
    token = c.get(settings.LOGIN_URL, **https).cookies["csrftoken"].value
    return c.post(settings.LOGIN_URL, {"username": "nobody", "password": "wrong", "csrfmiddlewaretoken": token},
                  HTTP_ORIGIN=origin, HTTP_REFERER=origin + "/", **https).status_code
print("csrf-same", login("https://trade.example.com"))
print("csrf-trusted", login("https://ops.example.org"))
print("csrf-untrusted", login("https://evil.example.net"))
print("csrf-trusted-plain-http", login("http://ops.example.org"))
"""


def test_in_production_metrics_answer_plain_http_scrapers_and_csrf_trusts_only_the_listed_origins(
        tmp_path: Path) -> None:
    env = production_env(tmp_path, CSRF_TRUSTED_ORIGINS="https://ops.example.org")
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0", "--no-input"], cwd=ROOT, env=env, check=True,
                   timeout=300)
    out = subprocess.run([sys.executable, "manage.py", "shell", "-c", _PROBE], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    found = {}
    for line in out.splitlines():
        words = line.split()
        if len(words) == 2 and words[1].isdigit() and words[0] in _PROBE:
            found[words[0]] = int(words[1])
    # Prometheus on the internal network scrapes over plain HTTP (no X-Forwarded-Proto): no redirect to https...
    assert found["metrics"] == 200, found
    # ...and the access rules are those of HTTPS: another address, or anything a proxy forwarded, is refused;
    assert found["metrics-outsider"] == 404 and found["metrics-forwarded"] == 404, found
    # with a token, only the right bearer token reads, whatever the address.
    assert found["metrics-token"] == 200 and found["metrics-token-wrong"] == 401, found
    assert found["metrics-token-none"] == 401, found
    # The scraper's Host header (e.g. web:8000) must be in ALLOWED_HOSTS; the exemption does not bypass that.
    assert found["metrics-host-web"] == 400 and found["metrics-host-web-allowed"] == 200, found
    # The health probes stay exempt; every other page still goes to https.
    assert found["healthz"] == 200 and found["readyz"] != 301, found
    assert found["page"] == 301, found
    # A login form posted over HTTPS (the proxy's header) from the site itself or a listed origin passes the CSRF
    # origin check (200: the form again, wrong password); from an origin that is not listed it is refused, and so
    # is the listed host over another scheme.
    assert found["csrf-same"] == 200 and found["csrf-trusted"] == 200, found
    assert found["csrf-untrusted"] == 403 and found["csrf-trusted-plain-http"] == 403, found
