# syntax=docker/dockerfile:1
# One image for every role: `docker run IMAGE web|worker-execution|worker-monitoring|worker|beat|migrate`.
# The entry point is tradesite/bootstrap.py: it checks the environment, prepares the volume, migrates, then execs.

# ---- build: every dependency as a wheel (compilers stay in this stage) ----
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /build
COPY requirements.txt .
# TA-Lib's manylinux wheel bundles the TA-Lib C library (ta_lib.libs/): take the wheel, never a source build,
# which would need the C library's headers and fail late.
RUN pip wheel --wheel-dir /wheels --only-binary TA-Lib -r requirements.txt

# ---- runtime: slim Python, the wheels, the code; runs as an unprivileged user ----
FROM python:3.11-slim-bookworm AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TRADESITE_VAR_DIR=/var/lib/tradesite \
    LOG_DIR=/var/log/tradesite \
    WEB_BIND=0.0.0.0:8000 \
    STATIC_ROOT=/app/staticfiles
RUN groupadd --system --gid 10001 tradesite \
 && useradd --system --uid 10001 --gid tradesite --home-dir /var/lib/tradesite --shell /usr/sbin/nologin tradesite
COPY --from=build /wheels /wheels
COPY requirements.txt /tmp/requirements.txt
RUN pip install --no-index --find-links /wheels -r /tmp/requirements.txt \
 && rm -rf /wheels /tmp/requirements.txt \
 && python -c "import talib, numpy; talib.SMA(numpy.arange(20, dtype=float), 5)"
WORKDIR /app
# The code belongs to root and is read-only for the app user; only the volumes are writable.
COPY . .
# Static files, collected once into the image (not onto a volume, which would keep an older release's): content-hashed
# names with gzip and brotli copies, served by whitenoise. A throwaway key and var dir: nothing of this step (no
# secret key, no log file) is left in the image.
RUN SECRET_KEY=collectstatic-only TRADESITE_VAR_DIR=/tmp/build-var LOG_DIR=/tmp/build-var/logs \
    python manage.py collectstatic --noinput -v 0 \
 && rm -rf /tmp/build-var
RUN python -m compileall -q -x '(\.venv|tests)/' /app \
 && mkdir -p /var/lib/tradesite /var/log/tradesite /etc/tradesite \
 && chown tradesite:tradesite /var/lib/tradesite /var/log/tradesite
USER tradesite:tradesite
VOLUME ["/var/lib/tradesite", "/var/log/tradesite"]
EXPOSE 8000
# web: GET /healthz; a worker: its own fresh heartbeat for each of its queues; beat: it ticked lately
# (tradesite/healthcheck.py reads TRADESITE_COMPONENT).
HEALTHCHECK --interval=15s --timeout=6s --start-period=90s --retries=3 CMD ["python", "-m", "tradesite.healthcheck"]
ENTRYPOINT ["python", "-m", "tradesite.bootstrap"]
CMD ["web"]
