"""Settings, read from the environment only here. With nothing set: SQLite (WAL) and a filesystem broker."""

from __future__ import annotations

import os
import secrets
from datetime import timedelta
from pathlib import Path

import dj_database_url
from whitenoise.compress import Compressor
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
if os.environ.get("TRADESITE_NETWORK_GUARD") == "loopback":  # set by the test suite: reach loopback only
    from tradesite.netguard import install as _network_guard_install

    _network_guard_install()
VAR_DIR = Path(os.environ.get("TRADESITE_VAR_DIR", BASE_DIR / "var"))
VAR_DIR.mkdir(parents=True, exist_ok=True)


def env_bool(name: str, default: bool) -> bool:
    """Read a boolean environment variable (1/true/yes/on)."""
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    """Read a comma-separated environment variable."""
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def _secret_key() -> str:
    """SECRET_KEY from the environment, else one generated once and kept under var/."""
    if os.environ.get("SECRET_KEY"):
        return os.environ["SECRET_KEY"]
    path = VAR_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver")

# --- Production hardening (`manage.py check --deploy` is clean with TRADESITE_HTTPS on; see README "Operations") ---
# TRADESITE_HTTPS: the site is served over HTTPS (usually by a TLS proxy in front of gunicorn). Off by default so that
# `make run` and the tests work over plain HTTP on 127.0.0.1; each flag below can also be set on its own.
HTTPS = env_bool("TRADESITE_HTTPS", False)
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", HTTPS)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", HTTPS)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", HTTPS)
SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", "31536000" if HTTPS else "0"))
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", HTTPS)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", HTTPS)
# The health probes answer over plain HTTP (the container HEALTHCHECK and load balancers call them directly), and so
# does /metrics for a scraper on the internal network (its token or address check still applies).
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
# Trust the proxy's scheme header only when told (and only set it behind our own proxy), e.g. X-Forwarded-Proto.
if os.environ.get("SECURE_PROXY_SSL_HEADER"):
    SECURE_PROXY_SSL_HEADER = ("HTTP_" + os.environ["SECURE_PROXY_SSL_HEADER"].strip().upper().replace("-", "_"),
                               "https")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
# The admin lives at a path of the operator's choosing (e.g. "ops-7f3a/"), not at the well-known /admin/.
ADMIN_URL = os.environ.get("ADMIN_URL", "admin/").strip("/") + "/"
# Error reports (technical 500 page, mail_admins) hide settings and variables whose values hold secrets.
DEFAULT_EXCEPTION_REPORTER_FILTER = "tradesite.errors.SafeExceptionReporterFilter"
DEFAULT_EXCEPTION_REPORTER = "tradesite.errors.ExceptionReporter"
# /metrics: a bearer token, else only these client addresses (the scraper on an internal network).
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "")
METRICS_ALLOWED_IPS = env_list("METRICS_ALLOWED_IPS", "127.0.0.1,::1")
# The windowed trading metrics (stage latencies, signal/order/reject counts) cover this many recent seconds.
METRICS_WINDOW_SECONDS = int(os.environ.get("METRICS_WINDOW_SECONDS", "300"))

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    # whitenoise serves /static/ under runserver too (with DEBUG on, runserver's own static view would otherwise).
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "knox",  # API tokens: only a digest of each key is stored (trading/auth.py)
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "axes",
    "django_prometheus",
    "trading.apps.TradingConfig",
    "strategies.apps.StrategiesConfig",
    "webhooks.apps.WebhooksConfig",
]

# whitenoise serves /static/ (see STATIC_ROOT below) unless TRADESITE_SERVE_STATIC=0 leaves it to the proxy.
SERVE_STATIC = env_bool("TRADESITE_SERVE_STATIC", True)
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Static files, right after the HTTPS redirect and the security headers.
    *(["whitenoise.middleware.WhiteNoiseMiddleware"] if SERVE_STATIC else []),
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it answers a locked-out login attempt.
    "axes.middleware.AxesMiddleware",
]
# Request counts and latencies per view (django-prometheus); its middlewares wrap everything else.
MIDDLEWARE = ["django_prometheus.middleware.PrometheusBeforeMiddleware", *MIDDLEWARE,
              "django_prometheus.middleware.PrometheusAfterMiddleware"]

ROOT_URLCONF = "tradesite.urls"
WSGI_APPLICATION = "tradesite.wsgi.application"
# URL names that tradesite/wsgi.py serves through a lean lane: the same view and middleware minus sessions, CSRF,
# auth, messages and axes, and no URL resolution (the webhook's hot path). Empty: everything takes the full stack.
LEAN_URL_NAMES = env_list("LEAN_URL_NAMES", "webhook-tradingview")
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

# --- Database: DATABASE_URL (Postgres) or the embedded SQLite default ---
DATABASE_URL = os.environ.get("DATABASE_URL", "")
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=600, conn_health_checks=True)}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("SQLITE_PATH", str(VAR_DIR / "tradesite.sqlite3")),
            "OPTIONS": {
                # WAL lets web, workers and beat write side by side; IMMEDIATE takes the write lock at BEGIN,
                # which is SQLite's equivalent of our row locks (select_for_update is a no-op there).
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=30000;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
            },
            "TEST": {"NAME": str(VAR_DIR / "test-tradesite.sqlite3")},
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Celery: Redis when configured, else kombu's filesystem transport (no server needed) ---
REDIS_URL = os.environ.get("REDIS_URL", "")
# The embedded broker's URL names a host only so that kombu does not warn of a missing one on every connection.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", REDIS_URL) or "filesystem://localhost/"
BROKER_DIR = VAR_DIR / "broker"
if CELERY_BROKER_URL.startswith("filesystem://"):
    for sub in ("queue", "processed"):
        (BROKER_DIR / sub).mkdir(parents=True, exist_ok=True)
    # kombu's filesystem transport with each message written whole before a consumer can see it (infra/fsbroker.py:
    # kombu's own let the worker read a half-written message and die).
    CELERY_BROKER_TRANSPORT = "infra.fsbroker:Transport"
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "store_processed": False,
        "polling_interval": 0.1,  # kombu's default is 1 s: a signal or a crossed stop would wait up to a second
    }
else:
    # Longer than any task may take, so a message of a killed worker is redelivered, never lost.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
    if os.environ.get("REDIS_KEY_PREFIX"):  # lets several installations (or test runs) share one Redis
        CELERY_BROKER_TRANSPORT_OPTIONS["global_keyprefix"] = os.environ["REDIS_KEY_PREFIX"]
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = 60
CELERY_TASK_SOFT_TIME_LIMIT = 45
CELERY_TASK_DEFAULT_QUEUE = "execution"
CELERY_TASK_ROUTES = {
    "trading.tasks.signal_process": {"queue": "execution"},
    "trading.tasks.orders_sweep": {"queue": "execution"},
    "trading.tasks.exits_drive": {"queue": "execution"},
    "trading.tasks.kill_switch_enforce": {"queue": "execution"},
    "trading.tasks.order_reply_record": {"queue": "execution"},
    "trading.tasks.positions_monitor": {"queue": "monitoring"},
    "trading.tasks.account_monitor": {"queue": "monitoring"},
    "trading.tasks.accounts_reconcile": {"queue": "monitoring"},
    "trading.tasks.equity_snapshot": {"queue": "monitoring"},
    "trading.tasks.account_equity_snapshot": {"queue": "monitoring"},
    "strategies.tasks.*": {"queue": "strategies"},
}
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_WORKER_SEND_TASK_EVENTS = False
# django-celery-beat's database scheduler, which also writes beat's heartbeat (tradesite/beat.py).
CELERY_BEAT_SCHEDULER = "tradesite.beat:Scheduler"
CELERY_TIMEZONE = "UTC"
# Celery's Django fixup closes the DB connection around every task unless told otherwise: reuse it.
CELERY_DB_REUSE_MAX = 1000

# --- Worker and beat heartbeats (tradesite/heartbeat.py), read by /readyz and the container health checks ---
# Each worker writes one per queue every HEARTBEAT_SECONDS, beat after its ticks; older than HEARTBEAT_STALE_SECONDS
# means that queue has no live worker (or beat is not ticking). Redis with a Redis broker, else files under VAR_DIR.
HEARTBEAT_SECONDS = float(os.environ.get("TRADESITE_HEARTBEAT_SECONDS", "5"))
HEARTBEAT_STALE_SECONDS = float(os.environ.get("TRADESITE_HEARTBEAT_STALE_SECONDS", "20"))
HEARTBEAT_REDIS_PREFIX = os.environ.get("REDIS_KEY_PREFIX", "")

# --- Cache (rate limits and dedup need one shared store across processes) ---
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL,
                          "KEY_PREFIX": os.environ.get("REDIS_KEY_PREFIX", "")}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
                          "LOCATION": str(VAR_DIR / "cache")}}

# --- Auth and API ---
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = f"/{ADMIN_URL}login/"
# Admin login attempts are limited (django-axes): 5 failures per username and address, then a cool-off.
AUTHENTICATION_BACKENDS = ["tradesite.auth.AxesBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = int(os.environ.get("AXES_FAILURE_LIMIT", "5"))
AXES_COOLOFF_TIME = float(os.environ.get("AXES_COOLOFF_HOURS", "1"))  # hours
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
# The real client address behind our proxy (the same trusted-proxy rule as the webhook).
AXES_CLIENT_IP_CALLABLE = "tradesite.auth.client_ip"
# API tokens (django-rest-knox): `Authorization: Token <key>`; only a SHA-512 digest of the key is stored. A new
# token expires after API_TOKEN_TTL_DAYS (90; "none" or 0: never), unless its creator says otherwise.
_token_days = os.environ.get("API_TOKEN_TTL_DAYS", "90").strip().lower()
if _token_days in ("", "none", "never", "0"):
    API_TOKEN_TTL: timedelta | None = None
elif _token_days.isdigit():
    API_TOKEN_TTL = timedelta(days=int(_token_days))
else:
    raise ImproperlyConfigured(f"API_TOKEN_TTL_DAYS must be a whole number of days or 'none', not {_token_days!r}")
REST_KNOX = {"TOKEN_TTL": API_TOKEN_TTL, "AUTH_HEADER_PREFIX": "Token", "AUTO_REFRESH": False}
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "trading.auth.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # DRF's parsers, with JSON nested past the recursion limit answered 400 rather than 500.
    "DEFAULT_PARSER_CLASSES": ["tradesite.apiparsers.JsonParser", "rest_framework.parsers.FormParser",
                               "rest_framework.parsers.MultiPartParser"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # Services raise django's ValidationError(dict): answered as 400 with errors per field.
    "EXCEPTION_HANDLER": "trading.apis.common.exception_handler",
}

# OpenAPI schema at /api/schema/, Swagger UI at /api/docs/ served from local static files (works offline).
SPECTACULAR_SETTINGS = {
    "TITLE": "tradesite control API",
    "DESCRIPTION": "Strategies, accounts, orders, positions, signals, P&L, kill switch and backtests.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "StrategyStatusEnum": "trading.models.Strategy.Status",
        "SignalStatusEnum": "trading.models.Signal.Status",
        "OrderStatusEnum": "trading.models.Order.Status",
        "BacktestStatusEnum": "strategies.models.BacktestRun.Status",
        "ExitModeEnum": "trading.models.Strategy.ExitMode",
    },
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]  # the dashboard's CSS/JS and vendored htmx + uPlot (no CDN)
# collectstatic's output: each file under a content-hashed name with gzip and brotli copies, and the manifest that
# maps names to hashed names (the image collects into /app/staticfiles at build). whitenoise serves it, hashed names
# cached for a year (immutable), unless TRADESITE_SERVE_STATIC=0 leaves STATIC_ROOT to the proxy. Without a manifest
# there (`manage.py run`, the test suite) pages link each file's own name and whitenoise finds it in the source
# folders, cached for a minute, so an edited file shows at the next reload.
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT") or VAR_DIR / "static")
if not STATIC_ROOT.is_dir():
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # an empty one: whitenoise warns of a missing folder
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "tradesite.staticfiles.StaticStorage"},
}
WHITENOISE_USE_FINDERS = not (STATIC_ROOT / "staticfiles.json").is_file()
# Pages link hashed names only, so collectstatic keeps (and compresses) only those; source maps, fetched by a
# browser's developer tools alone, are not compressed (brotli at its best ratio took most of a minute on them).
WHITENOISE_KEEP_ONLY_HASHED_FILES = True
WHITENOISE_SKIP_COMPRESS_EXTENSIONS = (*Compressor.SKIP_COMPRESS_EXTENSIONS, "map")
DATA_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024

# --- Market data (strategies/feeds.py, `manage.py marketdata`) ---
MARKETDATA_FLUSH_SECONDS = float(os.environ.get("MARKETDATA_FLUSH_SECONDS", "0.25"))  # coalesced price writes
MARKETDATA_REFRESH_SECONDS = float(os.environ.get("MARKETDATA_REFRESH_SECONDS", "15"))  # what is in use, re-read

# --- Trading ---
TRADING = {
    # Prices older than this are stale: entries are refused (seconds).
    "MAX_PRICE_AGE_SECONDS": int(os.environ.get("TRADING_MAX_PRICE_AGE_SECONDS", "120")),
    # An order in SUBMITTING or UNKNOWN longer than this is re-driven by the sweeper (seconds).
    "STUCK_AFTER_SECONDS": int(os.environ.get("TRADING_STUCK_AFTER_SECONDS", "10")),
    # A venue that has never seen an order after this long lets the sweeper resend it with the same id.
    "RESEND_AFTER_SECONDS": int(os.environ.get("TRADING_RESEND_AFTER_SECONDS", "5")),
    "MAX_SUBMIT_ATTEMPTS": int(os.environ.get("TRADING_MAX_SUBMIT_ATTEMPTS", "5")),
    "SWEEP_EVERY_SECONDS": int(os.environ.get("TRADING_SWEEP_EVERY_SECONDS", "10")),
    "MONITOR_EVERY_SECONDS": int(os.environ.get("TRADING_MONITOR_EVERY_SECONDS", "5")),
    # Exits pursued until flat: a step every EXITS_EVERY_SECONDS; after failed attempts the next waits 0, 1, 2, 4 ...
    # up to EXIT_RETRY_MAX_SECONDS; an exit order still working after EXIT_ORDER_TIMEOUT_SECONDS is canceled and
    # sent again; each retry widens a market order's price bound by EXIT_WIDEN_BPS more (up to five times).
    "EXITS_EVERY_SECONDS": int(os.environ.get("TRADING_EXITS_EVERY_SECONDS", "2")),
    "EXIT_RETRY_MAX_SECONDS": int(os.environ.get("TRADING_EXIT_RETRY_MAX_SECONDS", "30")),
    "EXIT_ORDER_TIMEOUT_SECONDS": int(os.environ.get("TRADING_EXIT_ORDER_TIMEOUT_SECONDS", "30")),
    "EXIT_WIDEN_BPS": int(os.environ.get("TRADING_EXIT_WIDEN_BPS", "100")),
    "RECONCILE_EVERY_SECONDS": int(os.environ.get("TRADING_RECONCILE_EVERY_SECONDS", "60")),
    "SNAPSHOT_EVERY_SECONDS": int(os.environ.get("TRADING_SNAPSHOT_EVERY_SECONDS", "60")),
    # Funding (trading/funding.py): booked every FUNDING_EVERY_SECONDS; after downtime, payments up to
    # FUNDING_CATCHUP_HOURS back are caught up.
    "FUNDING_EVERY_SECONDS": int(os.environ.get("TRADING_FUNDING_EVERY_SECONDS", "300")),
    "FUNDING_CATCHUP_HOURS": int(os.environ.get("TRADING_FUNDING_CATCHUP_HOURS", "168")),
}
# Public market data (candle downloads) from each venue's published URL, or from <VENUE>_PUBLIC_ENDPOINT (a mirror,
# a loopback fake): no credentials are involved.
PUBLIC_ENDPOINTS = {venue: os.environ.get(f"{venue.upper()}_PUBLIC_ENDPOINT", "").strip()
                    for venue in ("coinbase", "hyperliquid")}

# --- Logging: JSON lines, one stream per component, secrets redacted by value as the last line of defence ---
LOG_DIR = Path(os.environ.get("LOG_DIR", VAR_DIR / "logs"))
LOG_DIR.mkdir(parents=True, exist_ok=True)
LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO")
# The console's (stderr's) lines: "json" (one object per line, for a log shipper: the default here, so for the
# servers, the Celery processes and the containers' bootstrap) or "console" (readable, for a person: manage.py's
# default, hence `make run`'s). The stream files are JSON lines either way.
LOG_FORMAT = os.environ.get("LOG_FORMAT", "json").strip().lower()
if LOG_FORMAT not in ("console", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT must be console or json, not {LOG_FORMAT!r}")
LOG_COMPONENT = os.environ.get("TRADESITE_COMPONENT", "web")
LOG_MAX_BYTES = int(os.environ.get("LOG_MAX_BYTES", str(20 * 1024 * 1024)))
LOG_BACKUPS = int(os.environ.get("LOG_BACKUPS", "5"))
# The redaction filter is the last filter of every handler: whatever reaches an output has passed it.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "redact": {"()": "tradesite.logging.RedactSecretsFilter"},
        "routine_tasks": {"()": "tradesite.logging.RoutineTaskFilter"},
        **{f"stream_{s}": {"()": "tradesite.logging.StreamFilter", "stream": s}
           for s in ("web", "engine", "venues", "webhooks")},
    },
    "formatters": {"json": {"()": "tradesite.logging.JsonFormatter"},
                   "console": {"()": "tradesite.logging.ConsoleFormatter"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT,
                    # A person's console leaves out Celery's line per task (the files keep them).
                    "filters": ["redact", *(["routine_tasks"] if LOG_FORMAT == "console" else [])]},
        # One file per stream (web, engine, venues, webhooks), shared by every process, rotated by size.
        **{f"file_{s}": {
            "class": "tradesite.logging.SharedRotatingFileHandler",
            "filename": str(LOG_DIR / f"{s}.log"),
            "maxBytes": LOG_MAX_BYTES,
            "backupCount": LOG_BACKUPS,
            "formatter": "json",
            "filters": [f"stream_{s}", "redact"],
        } for s in ("web", "engine", "venues", "webhooks")},
    },
    "root": {"handlers": ["console", "file_web", "file_engine", "file_venues", "file_webhooks"], "level": LOG_LEVEL},
    "loggers": {
        # ccxt and urllib3 log request headers (API keys) at DEBUG: never below INFO.
        "ccxt": {"level": "INFO"},
        "urllib3": {"level": "INFO"},
        "django.db.backends": {"level": "INFO"},
        # Django's default handlers print raw text (the console in DEBUG, runserver's request lines): ours instead.
        "django": {"handlers": [], "level": "INFO", "propagate": True},
        "django.server": {"handlers": [], "level": "INFO", "propagate": True},
    },
}
# Applies LOGGING, then adds the redaction filter to any handler that lacks it (library defaults included).
LOGGING_CONFIG = "tradesite.logging.configure"
