"""The bootstrap entry point, run as a container runs it: a minimal environment, a fresh database, each role."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import ROOT, scratch_database, wait_for
from tradesite.bootstrap import problems

pytestmark = pytest.mark.integration
GOOD_TOKEN = "t" * 32


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def fresh_db() -> Iterator[str]:
    """An empty Postgres database of its own (the bootstrap migrates it)."""
    with scratch_database("tradesite_boot") as url:
        yield url


@pytest.fixture(scope="module")
def var_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bootvar")


def clean_env(database_url: str, var_dir: Path, **extra: str) -> dict[str, str]:
    """What a container gets: nothing of this shell, only the deployment's variables (production: DEBUG off)."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(var_dir), "DATABASE_URL": database_url,
           "REDIS_URL": os.environ["REDIS_URL"], "REDIS_KEY_PREFIX": os.environ["REDIS_KEY_PREFIX"] + "boot:",
           "TRADESITE_VAR_DIR": str(var_dir), "SECRET_KEY": "generate", "ALLOWED_HOSTS": "127.0.0.1,localhost",
           "ADMIN_USERNAME": "operator", "ADMIN_PASSWORD": "operator-password-123", "GUNICORN_WORKERS": "1",
           "CELERY_CONCURRENCY": "1"}
    env.update(extra)
    return {k: v for k, v in env.items() if v != ""}


def bootstrap(role: str, env: dict[str, str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tradesite.bootstrap", role], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180, **kwargs)  # type: ignore[call-overload]


# --------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(("change", "needle"), [
    ({"SECRET_KEY": ""}, "SECRET_KEY is not set"),
    ({"SECRET_KEY": "change-me-to-50-random-characters"}, "SECRET_KEY is weak"),
    ({"SECRET_KEY": "short-but-random-Zq81"}, "SECRET_KEY is weak"),
    ({"ALLOWED_HOSTS": ""}, "ALLOWED_HOSTS is not set"),
    ({"ALLOWED_HOSTS": "*"}, "ALLOWED_HOSTS contains '*'"),
    ({"TRADINGVIEW_WEBHOOK_SECRET": "x" * 31}, "TRADINGVIEW_WEBHOOK_SECRET is shorter than 32 bytes"),
    ({"METRICS_TOKEN": "abc"}, "METRICS_TOKEN is shorter than 32 bytes"),
    ({"ADMIN_PASSWORD": "short"}, "ADMIN_PASSWORD is shorter than 12 characters"),
])
def test_production_refuses_to_start_with_a_clear_message(tmp_path: Path, change: dict[str, str],
                                                          needle: str) -> None:
    env = clean_env("postgres://postgres@127.0.0.1:5432/never_used", tmp_path, **change)
    result = bootstrap("web", env)
    assert result.returncode == 2
    assert f"bootstrap: refusing to start: {needle}" in result.stderr
    assert not (tmp_path / "secret_key").exists()  # refused before touching anything


def test_debug_mode_needs_no_key_or_hosts() -> None:
    assert problems({"DEBUG": "1"}) == []
    assert problems({"DEBUG": "0", "SECRET_KEY": "generate", "ALLOWED_HOSTS": "a.example",
                     "TRADINGVIEW_WEBHOOK_SECRET": GOOD_TOKEN, "METRICS_TOKEN": GOOD_TOKEN}) == []


def test_an_unknown_role_is_refused(tmp_path: Path) -> None:
    result = bootstrap("shell", clean_env("postgres://x/y", tmp_path))
    assert result.returncode == 2 and "usage: python -m tradesite.bootstrap" in result.stderr


def test_a_failing_venue_check_refuses_the_start(fresh_db: str, var_dir: Path) -> None:
    """A live account whose credentials are set: check_venues runs first (when this build has it)."""
    bootstrap("migrate", clean_env(fresh_db, var_dir), check=True)
    with psycopg.connect(fresh_db.replace("postgres://", "postgresql://"), autocommit=True) as conn:
        conn.execute("INSERT INTO trading_venueaccount (name, venue, network, credentials_env, quote_asset, cash, "
                     "max_leverage, market_leverage_caps, paper_initial_cash, paper_slippage_bps, paper_cash, "
                     "paper_sequence, paper_latency_ms, last_reconcile_report, created_at, updated_at) VALUES "
                     "('cb-boot', 'coinbase', 'testnet', 'CBBOOT', 'USD', 0, 1, '{}', 0, 0, 0, 0, 0, '{}', now(), "
                     "now())")
    try:
        env = clean_env(fresh_db, var_dir, CBBOOT_API_KEY="not-a-real-key", CBBOOT_API_SECRET="not-a-real-secret",
                        CBBOOT_ENDPOINT="http://127.0.0.1:9/")  # nothing listens on port 9
        result = bootstrap("migrate", env)
        has_command = (ROOT / "trading" / "management" / "commands" / "check_venues.py").exists()
        if has_command:
            assert result.returncode == 2, result.stderr[-2000:]
            assert "refusing to start: check_venues failed for cb-boot" in result.stderr
        else:
            assert result.returncode == 0
            assert "no check_venues command" in result.stderr
        skipped = bootstrap("migrate", {**env, "BOOTSTRAP_SKIP_VENUE_CHECK": "1"})
        assert skipped.returncode == 0, skipped.stderr[-2000:]
        if has_command:  # good credentials on a venue that answers: the check passes and the start goes on
            from tests.fakes.coinbase_venue import harness

            with harness() as venue:
                good = bootstrap("migrate", clean_env(fresh_db, var_dir, **venue.env("CBBOOT")))
            assert good.returncode == 0, good.stderr[-2000:]
            assert "venues checked: cb-boot" in good.stderr
    finally:
        with psycopg.connect(fresh_db.replace("postgres://", "postgresql://"), autocommit=True) as conn:
            conn.execute("DELETE FROM trading_venueaccount WHERE name = 'cb-boot'")


# --------------------------------------------------------------------------------------------- roles


def test_migrate_role_generates_the_key_once_and_creates_the_admin_once(fresh_db: str, var_dir: Path) -> None:
    first = bootstrap("migrate", clean_env(fresh_db, var_dir))
    assert first.returncode == 0, first.stderr[-3000:]
    key_file = var_dir / "secret_key"
    key = key_file.read_text()
    assert len(key) >= 50 and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    second = bootstrap("migrate", clean_env(fresh_db, var_dir))
    assert second.returncode == 0, second.stderr[-3000:]
    assert key_file.read_text() == key  # kept on the volume
    assert "admin user operator exists" in second.stderr
    with psycopg.connect(fresh_db.replace("postgres://", "postgresql://")) as conn:
        rows = conn.execute("SELECT is_superuser FROM auth_user WHERE username = 'operator'").fetchall()
    assert rows == [(True,)]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def _start(role: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "tradesite.bootstrap", role], cwd=ROOT, env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def test_web_role_serves_healthz_behind_gunicorn(fresh_db: str, var_dir: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Production-like: HTTPS on (the probes are exempt from the redirect) and a public host name only."""
    from tradesite import healthcheck

    port = _free_port()
    env = clean_env(fresh_db, var_dir, WEB_BIND=f"127.0.0.1:{port}", ALLOWED_HOSTS="trade.example.com",
                    TRADESITE_HTTPS="1", SECURE_PROXY_SSL_HEADER="X-Forwarded-Proto")
    proc = _start("web", env, tmp_path / "web.log")
    for name in ("WEB_BIND", "ALLOWED_HOSTS"):
        monkeypatch.setenv(name, env[name])
    monkeypatch.setenv("TRADESITE_COMPONENT", "web")
    try:
        def up() -> bool:
            assert proc.poll() is None, (tmp_path / "web.log").read_text()[-3000:]
            return healthcheck.main() == 0  # the container HEALTHCHECK's own probe

        wait_for(up, timeout=90, every=0.3, what="gunicorn answering /healthz")
        # Ready needs a worker per queue and beat as well: this web role alone names what is missing.
        request = urllib.request.Request(f"http://127.0.0.1:{port}/readyz", headers={"Host": "trade.example.com"})
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(request, timeout=5)
        assert answer.value.code == 503
        checks = json.loads(answer.value.read())["checks"]
        assert checks["database"] == checks["broker"] == "ok" and checks["worker:execution"] == checks["beat"] == \
            "failing"
        # /metrics from loopback (no token set): gunicorn's workers share request metrics (multiprocess mode).
        request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Host": "trade.example.com",
                                                                                     "X-Forwarded-Proto": "https"})
        with urllib.request.urlopen(request, timeout=10) as r:
            text = r.read().decode()
        assert "django_http_requests_total_by_method_total" in text and "tradesite_queue_depth" in text
        assert any(p.name.endswith(".db") for p in (var_dir / "prometheus-web").iterdir())
        # Everything else is redirected to HTTPS.
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/orders/", headers={"Host": "trade.example.com"})
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            opener.open(request, timeout=5)
            raise AssertionError("no redirect")
        except urllib.error.HTTPError as exc:
            assert exc.code == 301 and exc.headers["Location"] == "https://trade.example.com/api/orders/"
    finally:
        _stop(proc)
    log = (tmp_path / "web.log").read_text()
    assert "starting web:" in log and "gunicorn" in log
    assert "bootstrap: deploy checks clean" in log


def test_intake_role_serves_the_webhook_on_uvicorn(fresh_db: str, var_dir: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Production-like, as the web role above: the webhook over HTTPS only (the proxy says so), HSTS on its answers."""
    from tradesite import healthcheck

    port = _free_port()
    env = clean_env(fresh_db, var_dir, INTAKE_BIND=f"127.0.0.1:{port}", INTAKE_WORKERS="1",
                    ALLOWED_HOSTS="trade.example.com", TRADESITE_HTTPS="1", SECURE_PROXY_SSL_HEADER="X-Forwarded-Proto")
    proc = _start("intake", env, tmp_path / "intake.log")
    url = f"http://127.0.0.1:{port}/api/webhooks/tradingview/"
    try:
        def up() -> bool:
            assert proc.poll() is None, (tmp_path / "intake.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    return bool(json.loads(r.read())["fast_path"])
            except OSError:
                return False

        wait_for(up, timeout=90, every=0.3, what="uvicorn answering /healthz with the fast path on")
        monkeypatch.setenv("TRADESITE_COMPONENT", "intake")
        monkeypatch.setenv("INTAKE_BIND", env["INTAKE_BIND"])
        assert healthcheck.main() == 0  # the container HEALTHCHECK's own probe
        body = json.dumps({"strategy": "none", "passphrase": "x" * 43, "action": "buy", "ticker": "BTCUSD"}).encode()
        def refused(headers: dict[str, str]) -> urllib.error.HTTPError:
            request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **headers})
            try:
                urllib.request.build_opener(_NoRedirect).open(request, timeout=5)
            except urllib.error.HTTPError as exc:
                return exc
            raise AssertionError(f"answered 2xx with {headers}")

        plain = refused({"Host": "trade.example.com"})
        assert plain.code == 301 and plain.headers["Location"] == "https://trade.example.com/api/webhooks/tradingview/"
        secure = refused({"Host": "trade.example.com", "X-Forwarded-Proto": "https"})  # a wrong passphrase
        assert secure.code == 401 and secure.headers["Strict-Transport-Security"].startswith("max-age=")
        assert json.loads(secure.read())["error"] == "unauthorized"
        assert refused({"Host": "evil.example.com"}).code == 400
    finally:
        _stop(proc)
    log = (tmp_path / "intake.log").read_text()
    assert "starting intake:" in log and "uvicorn" in log


def test_worker_and_beat_roles_start_and_their_probes_follow_their_heartbeats(
        fresh_db: str, var_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each container's HEALTHCHECK (tradesite.healthcheck) is healthy while its worker or beat writes heartbeats,
    and unhealthy once the process is killed, though Redis still answers."""
    from tradesite import healthcheck

    expected = {"worker-execution": "ready.", "worker-monitoring": "ready.", "beat": "beat: Starting..."}
    env = clean_env(fresh_db, var_dir, TRADESITE_HEARTBEAT_SECONDS="0.5", TRADESITE_HEARTBEAT_STALE_SECONDS="3")
    procs = {role: _start(role, env, tmp_path / f"{role}.log") for role in expected}
    for name in ("REDIS_URL", "REDIS_KEY_PREFIX", "TRADESITE_HEARTBEAT_STALE_SECONDS"):
        monkeypatch.setenv(name, env[name])

    def probe(role: str) -> int:
        monkeypatch.setenv("TRADESITE_COMPONENT", role)
        return healthcheck.main()

    try:
        for role, marker in expected.items():
            def started(role: str = role, marker: str = marker) -> bool:
                text = (tmp_path / f"{role}.log").read_text(errors="replace")
                assert procs[role].poll() is None, text[-3000:]
                return marker in text

            wait_for(started, timeout=90, every=0.3, what=f"{role} started")
            wait_for(lambda role=role: probe(role) == 0, timeout=30, every=0.3, what=f"{role} probe healthy")
        for role in ("worker-execution", "beat"):
            os.killpg(procs[role].pid, signal.SIGKILL)
            procs[role].wait(timeout=10)
            wait_for(lambda role=role: probe(role) == 1, timeout=15, every=0.3, what=f"killed {role} unhealthy")
        assert probe("worker-monitoring") == 0
    finally:
        for proc in procs.values():
            _stop(proc)
    assert "-Q execution " in (tmp_path / "worker-execution.log").read_text()
    assert "-Q strategies,monitoring " in (tmp_path / "worker-monitoring.log").read_text()
    assert "-S tradesite.beat:Scheduler" in (tmp_path / "beat.log").read_text()


# --------------------------------------------------------------------------------------------- secret files


def test_only_the_documented_secrets_are_read_from_files(tmp_path: Path) -> None:
    """NAME_FILE is read for the project's secrets only: SSL_CERT_FILE (the CA bundle) and the like are left alone."""
    from tradesite.bootstrap import env_files_load

    def secret(name: str, value: str) -> str:
        (tmp_path / name).write_text(value + "\n")
        return str(tmp_path / name)

    bundle = tmp_path / "ca-bundle.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n" + "A" * 219_000 + "\n")
    env = {
        "SECRET_KEY_FILE": secret("secret_key", "k" * 60),
        "DATABASE_URL_FILE": secret("database_url", "postgres://app:pw@db:5432/app"),
        "ADMIN_PASSWORD_FILE": secret("admin_password", "a-long-admin-password"),
        "COINBASE_MAIN_API_KEY_FILE": secret("cb_key", "organizations/o/apiKeys/k"),
        "COINBASE_MAIN_API_SECRET_FILE": secret("cb_secret", "-----BEGIN EC PRIVATE KEY-----"),
        "HL_MAIN_SECRET_KEY_FILE": secret("hl_key", "0x" + "1" * 64),
        "SNX_MAIN_PRIVATE_KEY_FILE": secret("snx_key", "0x" + "2" * 64),
        # Not ours: a variable of the system or of another tool, whatever its file holds or whether it exists.
        "SSL_CERT_FILE": str(bundle),
        "PIP_CONFIG_FILE": str(tmp_path / "does-not-exist"),
        "COINBASE_MAIN_ENDPOINT_FILE": str(tmp_path / "does-not-exist"),
    }
    loaded = env_files_load(env)
    assert loaded == ["ADMIN_PASSWORD", "COINBASE_MAIN_API_KEY", "COINBASE_MAIN_API_SECRET", "DATABASE_URL",
                      "HL_MAIN_SECRET_KEY", "SECRET_KEY", "SNX_MAIN_PRIVATE_KEY"]
    assert env["SECRET_KEY"] == "k" * 60 and env["SNX_MAIN_PRIVATE_KEY"] == "0x" + "2" * 64
    assert "SSL_CERT" not in env and "PIP_CONFIG" not in env and "COINBASE_MAIN_ENDPOINT" not in env


def test_a_secret_file_that_is_missing_or_too_large_refuses_the_start(tmp_path: Path) -> None:
    from tradesite.bootstrap import Refused, env_files_load

    with pytest.raises(Refused, match="METRICS_TOKEN_FILE points at .*, which cannot be read"):
        env_files_load({"METRICS_TOKEN_FILE": str(tmp_path / "nope")})
    big = tmp_path / "ca-bundle.pem"
    big.write_text("A" * 219_000)
    with pytest.raises(Refused, match="COINBASE_MAIN_API_SECRET_FILE points at .* 219000 bytes"):
        env_files_load({"COINBASE_MAIN_API_SECRET_FILE": str(big)})


@pytest.mark.parametrize("unrelated", [
    {"SSL_CERT_FILE": "ca-bundle"},  # the system CA bundle (~220 KB): too large for one environment variable
    {"SOME_TOOL_CONFIG_FILE": "/nonexistent/tool.conf"},
], ids=["ca-bundle", "missing"])
def test_an_unrelated_file_variable_does_not_stop_a_role(fresh_db: str, var_dir: Path, tmp_path: Path,
                                                         unrelated: dict[str, str]) -> None:
    import certifi

    extra = {k: (certifi.where() if v == "ca-bundle" else v) for k, v in unrelated.items()}
    log = tmp_path / "beat.log"
    proc = _start("beat", clean_env(fresh_db, var_dir, **extra), log)
    try:
        def started() -> bool:
            text = log.read_text(errors="replace")
            assert proc.poll() is None, text[-3000:]
            return "beat: Starting..." in text

        wait_for(started, timeout=90, every=0.3, what="beat started")
    finally:
        _stop(proc)


# --------------------------------------------------------------------------------------------- static files


def _collectstatic_as_the_image_build_does(static_root: Path, build_var: Path) -> None:
    """The Dockerfile's collectstatic step: a throwaway key and var dir, STATIC_ROOT inside the image."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "    STATIC_ROOT=/app/staticfiles\n" in dockerfile.split("AS runtime", 1)[1]
    assert ("RUN SECRET_KEY=collectstatic-only TRADESITE_VAR_DIR=/tmp/build-var LOG_DIR=/tmp/build-var/logs \\\n"
            "    python manage.py collectstatic --noinput -v 0") in dockerfile
    env = {"PATH": "/usr/bin:/bin", "HOME": str(build_var), "STATIC_ROOT": str(static_root),
           "SECRET_KEY": "collectstatic-only", "TRADESITE_VAR_DIR": str(build_var), "LOG_DIR": str(build_var / "logs")}
    subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"], cwd=ROOT, env=env,
                   check=True, timeout=300, capture_output=True)


def _fetch(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def test_web_role_serves_collected_static_files_hashed_compressed_and_cached_for_ever(
        fresh_db: str, var_dir: Path, tmp_path: Path) -> None:
    """Production (DEBUG off, gunicorn): pages link content-hashed names, served by whitenoise with a far-future
    immutable Cache-Control and their brotli or gzip copy, never by Django's development view."""
    import brotli
    import gzip
    import re

    static_root = tmp_path / "staticfiles"
    _collectstatic_as_the_image_build_does(static_root, tmp_path / "build-var")
    assert not (tmp_path / "build-var" / "secret_key").exists()  # no key baked into the image
    port = _free_port()
    env = clean_env(fresh_db, var_dir, WEB_BIND=f"127.0.0.1:{port}", STATIC_ROOT=str(static_root))
    proc = _start("web", env, tmp_path / "web.log")
    base = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            assert proc.poll() is None, (tmp_path / "web.log").read_text()[-3000:]
            try:
                return _fetch(f"{base}/healthz")[0] == 200
            except OSError:
                return False

        wait_for(up, timeout=90, every=0.3, what="gunicorn up")
        status, _, page = _fetch(f"{base}/login/")
        assert status == 200
        css = re.search(r'href="(/static/dashboard/dashboard\.([0-9a-f]{12})\.css)"', page.decode())
        assert css, page.decode()[:800]  # a content-hashed name
        source = (ROOT / "static" / "dashboard" / "dashboard.css").read_bytes()

        status, headers, body = _fetch(base + css.group(1), **{"Accept-Encoding": "br, gzip"})
        assert status == 200 and headers["content-encoding"] == "br" and brotli.decompress(body) == source
        assert headers["cache-control"] == "max-age=315360000, public, immutable"
        assert "Accept-Encoding" in headers["vary"] and headers["content-type"].startswith("text/css")
        status, headers, body = _fetch(base + css.group(1), **{"Accept-Encoding": "gzip"})
        assert status == 200 and headers["content-encoding"] == "gzip" and gzip.decompress(body) == source
        status, headers, body = _fetch(base + css.group(1))
        assert status == 200 and "content-encoding" not in headers and body == source
        # The API docs' Swagger UI files (drf-spectacular-sidecar) are collected and served the same way.
        swagger = next(static_root.glob("drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.*.js"))
        status, headers, _ = _fetch(f"{base}/static/{swagger.relative_to(static_root)}", **{"Accept-Encoding": "br"})
        assert status == 200 and headers["content-encoding"] == "br"
        assert headers["cache-control"] == "max-age=315360000, public, immutable"
        # Only hashed names are kept: a page of this release never links an older or an unhashed one.
        assert _fetch(f"{base}/static/dashboard/dashboard.css")[0] == 404
        assert not (static_root / "dashboard" / "dashboard.css").exists()
    finally:
        _stop(proc)
