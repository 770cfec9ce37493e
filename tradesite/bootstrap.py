"""Start one role of tradesite the way a container does: `python -m tradesite.bootstrap web|worker|beat|...`.

1. Reads the environment (and the secrets given as files, NAME_FILE: see SECRET_FILE_NAMES) and refuses to start on
   what must not be missing or weak (production = DEBUG off):
   SECRET_KEY (a real key, or `generate`), ALLOWED_HOSTS, webhook/metrics tokens of at least 32 bytes, an admin
   password of at least 12 characters. Each refusal is one line naming the variable, and the exit status is 2.
2. Generates what may be generated: the secret key on first start, kept in TRADESITE_VAR_DIR (the volume).
3. Under a Postgres advisory lock (so replicas starting together take turns): migrates, creates the admin user from
   ADMIN_USERNAME / ADMIN_PASSWORD / ADMIN_EMAIL if it does not exist, and runs `check_venues` when a live
   account's credentials are in the environment (a failed check refuses the start).
4. Replaces itself (exec) with the role's process: gunicorn, a Celery worker, or Celery beat (workers and beat write
   heartbeats that /readyz and the container probe read: tradesite/heartbeat.py).

Roles: web, worker-execution, worker-monitoring, worker (every queue), beat, migrate (set up, then exit).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

ROLES = ("web", "intake", "worker-execution", "worker-monitoring", "worker", "beat", "marketdata", "migrate")
# Each worker role: its node name (before @host) and the queues it consumes (the health probe checks these).
WORKER_ROLES = {
    "worker-execution": ("execution", ("execution",)),
    "worker-monitoring": ("monitoring", ("strategies", "monitoring")),
    "worker": ("all", ("execution", "strategies", "monitoring")),
}
MIN_TOKEN_BYTES = 32
MIN_SECRET_KEY_CHARS = 50
MIN_ADMIN_PASSWORD_CHARS = 12
_PLACEHOLDER = re.compile(r"change.?me|changeme|example|secret.?key|insecure|xxx", re.I)
_TOKEN_NAME = re.compile(r"WEBHOOK.*(SECRET|PASSPHRASE|TOKEN)|METRICS_TOKEN")
_LOCK_ID = 74110007  # advisory lock of the bootstrap's set-up step
# The secrets that may be given as files (NAME_FILE=/path, Docker secrets style): these names, and a venue account's
# credentials, <PREFIX>_<SUFFIX> with one of SECRET_FILE_SUFFIXES (the prefix is the account's credentials_env).
# Any other *_FILE variable belongs to someone else (SSL_CERT_FILE names the system's CA bundle) and is left alone.
SECRET_FILE_NAMES = ("SECRET_KEY", "DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "ADMIN_PASSWORD", "METRICS_TOKEN")
SECRET_FILE_SUFFIXES = ("_API_KEY", "_API_SECRET", "_SECRET_KEY", "_PRIVATE_KEY")
# A secret is one short value (a PEM key is a few KB); an environment string longer than 128 KiB fails execve.
MAX_SECRET_FILE_BYTES = 64 * 1024
ROOT = Path(__file__).resolve().parent.parent


class Refused(Exception):
    """The environment is not safe to start with; the message names what to fix."""


def _bool(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    value = env.get(name)
    return default if value is None else value.strip().lower() in {"1", "true", "yes", "on"}


def is_production(env: Mapping[str, str]) -> bool:
    """DEBUG off is production."""
    return not _bool(env, "DEBUG")


def problems(env: Mapping[str, str]) -> list[str]:
    """Every reason not to start with this environment (empty: fine)."""
    found: list[str] = []
    production = is_production(env)
    key = env.get("SECRET_KEY", "")
    if production:
        if not key:
            found.append("SECRET_KEY is not set: in production set a random key of at least 50 characters, "
                         "or SECRET_KEY=generate to create one on first start and keep it in TRADESITE_VAR_DIR")
        elif key != "generate" and (len(key) < MIN_SECRET_KEY_CHARS or _PLACEHOLDER.search(key)
                                    or key.startswith("django-insecure")):
            found.append(f"SECRET_KEY is weak (a placeholder or shorter than {MIN_SECRET_KEY_CHARS} characters): "
                         "set a random one, e.g. python -c 'import secrets; print(secrets.token_urlsafe(50))'")
        hosts = [h.strip() for h in env.get("ALLOWED_HOSTS", "").split(",") if h.strip()]
        if not hosts:
            found.append("ALLOWED_HOSTS is not set: in production list the host names the site answers to")
        elif "*" in hosts:
            found.append("ALLOWED_HOSTS contains '*': list the host names the site answers to")
    for name, value in sorted(env.items()):
        if _TOKEN_NAME.search(name) and value and len(value.encode()) < MIN_TOKEN_BYTES:
            found.append(f"{name} is shorter than {MIN_TOKEN_BYTES} bytes: use a random value, e.g. "
                         "python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    password = env.get("ADMIN_PASSWORD", "")
    if password and len(password) < MIN_ADMIN_PASSWORD_CHARS:
        found.append(f"ADMIN_PASSWORD is shorter than {MIN_ADMIN_PASSWORD_CHARS} characters")
    if password and not env.get("ADMIN_USERNAME"):
        found.append("ADMIN_PASSWORD is set without ADMIN_USERNAME")
    return found


def is_secret_file_target(name: str) -> bool:
    """Whether NAME may be read from the file named by NAME_FILE (a documented secret)."""
    if name in SECRET_FILE_NAMES:
        return True
    return any(name.endswith(suffix) and re.fullmatch(r"[A-Z][A-Z0-9_]*", name[: -len(suffix)])
               for suffix in SECRET_FILE_SUFFIXES)


def env_files_load(env: dict[str, str]) -> list[str]:
    """Fill each documented secret NAME from the file named by NAME_FILE (Docker secrets, the mounted config volume);
    return the names.

    A value set directly wins over a file. Trailing newlines are dropped. Other *_FILE variables are not ours.
    """
    loaded = []
    for name, path in sorted(env.items()):
        target = name[: -len("_FILE")]
        if not name.endswith("_FILE") or not path or not is_secret_file_target(target) or env.get(target):
            continue
        try:
            size = Path(path).stat().st_size
            if size > MAX_SECRET_FILE_BYTES:
                raise Refused(f"{name} points at {path}, which holds {size} bytes: a secret file holds one value "
                              f"(at most {MAX_SECRET_FILE_BYTES} bytes)")
            env[target] = Path(path).read_text().rstrip("\r\n")
        except OSError as exc:
            raise Refused(f"{name} points at {path}, which cannot be read ({exc.strerror})") from None
        loaded.append(target)
    return loaded


def var_dir(env: Mapping[str, str]) -> Path:
    return Path(env.get("TRADESITE_VAR_DIR") or ROOT / "var")


def secret_key_prepare(env: dict[str, str]) -> bool:
    """Generate the secret key file on first start when asked (or in DEBUG); True when one was created."""
    if env.get("SECRET_KEY") not in (None, "", "generate"):
        return False
    path = var_dir(env) / "secret_key"
    env.pop("SECRET_KEY", None)  # settings then read the file
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_urlsafe(50))
    return True


def role_command(role: str, env: Mapping[str, str]) -> list[str]:
    """The process the role runs (argv)."""
    python = sys.executable
    celery = [python, "-m", "celery", "-A", "tradesite"]
    worker = ["--without-gossip", "--without-mingle", "--without-heartbeat", "-l", env.get("LOG_LEVEL", "INFO"),
              "-c", env.get("CELERY_CONCURRENCY", "2"), "--max-tasks-per-child", "10000"]
    if role == "web":
        # Threaded workers: fewer processes than sync workers would need, so that more alerts share a commit.
        workers = env.get("GUNICORN_WORKERS") or str(min(4, (os.cpu_count() or 1) + 1))
        return [python, "-m", "gunicorn", "tradesite.wsgi:application", "-c", str(ROOT / "tradesite" /
                "gunicorn_conf.py"), "--bind", env.get("WEB_BIND", "0.0.0.0:8000"), "--workers", workers,
                # Threads: the webhook's group commit stores the alerts in flight in a process with one INSERT and
                # one COMMIT (infra/groupcommit.py); each thread holds its own database connection.
                "--worker-class", "gthread", "--threads", env.get("GUNICORN_THREADS", "12"),
                # A webhook must be answered well inside TradingView's 3 s; a stuck request is cut at 30 s.
                "--timeout", env.get("GUNICORN_TIMEOUT", "30"), "--graceful-timeout", "30",
                "--keep-alive", "5", "--max-requests", "5000", "--max-requests-jitter", "500",
                # No gunicorn access log: it would print query strings past the redaction filter (requests are
                # counted by django-prometheus and errors logged by Django, both through it).
                "--forwarded-allow-ips", env.get("FORWARDED_ALLOW_IPS", "127.0.0.1"),
                # Worker heartbeats on tmpfs: a container's overlay filesystem can stall them.
                *(["--worker-tmp-dir", "/dev/shm"] if os.path.isdir("/dev/shm") else [])]
    if role == "intake":
        # The TradingView webhook alone, on an asyncio server (webhooks/intake_asgi.py): point the proxy's
        # /api/webhooks/tradingview/ here. Client addresses come from WEBHOOK_TRUSTED_PROXY_HEADER only, as on the
        # web role, so uvicorn's own proxy-header handling is off.
        host, _, port = env.get("INTAKE_BIND", "0.0.0.0:8001").rpartition(":")
        return [python, "-m", "uvicorn", "tradesite.intake:application", "--host", host or "0.0.0.0", "--port", port,
                # One event loop per process takes a core; its alerts share one connection and one COMMIT, so
                # fewer processes batch more: half the cores (1 on 2 cores, the rest for PostgreSQL and Redis).
                "--workers", env.get("INTAKE_WORKERS") or str(max(1, (os.cpu_count() or 1) // 2)),
                "--loop", "uvloop", "--http", "httptools", "--lifespan", "on", "--no-access-log",
                "--no-proxy-headers", "--no-server-header", "--backlog", "2048", "--timeout-keep-alive", "5",
                # Past this many open connections a process answers 503 (TradingView retries a 5xx) rather than
                # queue without bound.
                "--limit-concurrency", "4096",
                "--timeout-graceful-shutdown", "30", "--log-level", env.get("LOG_LEVEL", "info").lower()]
    if role in WORKER_ROLES:
        name, queues = WORKER_ROLES[role]
        return celery + ["worker", "-Q", ",".join(queues), "-n", f"{name}@%h", *worker]
    if role == "beat":
        # One beat only (duplicate beats duplicate ticks); its schedule lives in the database (django-celery-beat's
        # scheduler, which also writes beat's heartbeat).
        return celery + ["beat", "-l", env.get("LOG_LEVEL", "INFO"), "-S", "tradesite.beat:Scheduler", "--pidfile="]
    if role == "marketdata":
        # One market-data role: it streams the venues' prices and candles in use (strategies/feeds.py).
        return [python, str(ROOT / "manage.py"), "marketdata"]
    raise Refused(f"unknown role {role!r}: use one of {', '.join(ROLES)}")


def _say(message: str) -> None:
    print(f"bootstrap: {message}", file=sys.stderr, flush=True)


def _setup(role: str, env: Mapping[str, str]) -> None:
    """Migrate, create the admin user, check the venues (Django is set up here)."""
    import django

    django.setup()
    from django.core.management import call_command, get_commands
    from django.db import connection

    locked = connection.vendor == "postgresql"
    if locked:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", [_LOCK_ID])
    try:
        call_command("migrate", interactive=False, verbosity=0)
        _say("database migrated")
        _admin_ensure(env)
        if role != "beat":
            _venues_check(get_commands())
        if role == "web" and is_production(env):
            _deploy_check()
    finally:
        if locked:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [_LOCK_ID])
        connection.close()


def _deploy_check() -> None:
    """Say what `manage.py check --deploy` finds (HTTP-only set-ups may be deliberate, so it does not refuse)."""
    from django.core import checks

    found = [m for m in checks.run_checks(include_deployment_checks=True) if m.level >= checks.WARNING]
    for message in found:
        _say(f"deploy check: {message.id}: {message.msg}")
    if not found:
        _say("deploy checks clean")


def _admin_ensure(env: Mapping[str, str]) -> None:
    from django.contrib.auth import get_user_model

    username, password = env.get("ADMIN_USERNAME", ""), env.get("ADMIN_PASSWORD", "")
    if not username or not password:
        return
    users = get_user_model()
    if users.objects.filter(username=username).exists():
        _say(f"admin user {username} exists (left as it is)")
        return
    users.objects.create_superuser(username, env.get("ADMIN_EMAIL", ""), password)
    _say(f"admin user {username} created")


def _venues_check(commands: Mapping[str, str]) -> None:
    from django.core.management import call_command

    from trading.models import VenueAccount

    live = [a for a in VenueAccount.objects.exclude(venue=VenueAccount.Venue.PAPER).exclude(credentials_env="")
            if any(k.startswith(a.credentials_env + "_") for k in os.environ)]
    if not live:
        return
    if "check_venues" not in commands:
        _say("venue credentials are set but this build has no check_venues command: venues not checked")
        return
    if _bool(os.environ, "BOOTSTRAP_SKIP_VENUE_CHECK"):
        _say("BOOTSTRAP_SKIP_VENUE_CHECK is set: venues not checked")
        return
    for account in live:  # only the accounts whose credentials this deployment sets
        try:
            call_command("check_venues", account=account.name)
        except BaseException as exc:  # CommandError or SystemExit(non-zero): the venue is not usable
            if isinstance(exc, SystemExit) and not exc.code:
                continue
            raise Refused(f"check_venues failed for {account.name}: {exc} (fix the credentials, or set "
                          "BOOTSTRAP_SKIP_VENUE_CHECK=1 to start anyway)") from exc
    _say(f"venues checked: {', '.join(a.name for a in live)}")


def main(argv: list[str]) -> int:
    """Check, prepare and exec the role named by argv[0]; return a status only when not exec'ing."""
    if len(argv) != 1 or argv[0] not in ROLES:
        _say(f"usage: python -m tradesite.bootstrap {{{'|'.join(ROLES)}}}")
        return 2
    role, env = argv[0], dict(os.environ)
    try:
        loaded = env_files_load(env)
    except Refused as exc:
        _say(f"refusing to start: {exc}")
        return 2
    if loaded:
        _say(f"read {', '.join(loaded)} from files")
    found = problems(env)
    if found:
        for line in found:
            _say(f"refusing to start: {line}")
        return 2
    if secret_key_prepare(env):
        _say(f"generated a secret key in {var_dir(env) / 'secret_key'} (kept across restarts on that volume)")
    env.setdefault("TRADESITE_COMPONENT", role)
    env.setdefault("LOG_FORMAT", "json")  # a container's output goes to a log collector
    if role == "web":
        # prometheus_client's multiprocess mode: the gunicorn workers share request metrics through these files.
        metrics_dir = var_dir(env) / "prometheus-web"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    os.environ.clear()
    os.environ.update(env)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tradesite.settings")
    sys.path.insert(0, str(ROOT))
    try:
        _setup(role, env)
        if role == "migrate":
            return 0
        command = role_command(role, env)
    except Refused as exc:
        _say(f"refusing to start: {exc}")
        return 2
    _say(f"starting {role}: {' '.join(command)}")
    sys.stdout.flush()
    os.chdir(ROOT)
    os.execve(command[0], command, os.environ.copy())
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
