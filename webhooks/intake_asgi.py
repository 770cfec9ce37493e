"""The intake server: the TradingView webhook on an asyncio server (uvicorn), one event loop per process.

The web role (gunicorn, gthread workers) serves the webhook too, with the same answers. This server exists for
throughput: in a threaded WSGI worker every alert blocks a thread twice (Redis, then PostgreSQL), and on two cores
the thread switches and GIL hand-overs cost more CPU than the intake itself (docs/benchmarks.md, webhook_load). Here
an alert from a strategy whose passphrase matches this process's copy (`targets.strategy_known`) never leaves the
event loop:

1. both rate limits in one Redis round trip (`limits.rate_pair_command`), pipelined with every other request's
   on one connection (while that Redis fails, counted in this process instead: `limits.rate_pair_local`);
2. the checks and the row of `alert_intake`'s own path for such an alert (`services.alert_fast_row`);
3. the guarded INSERT (built by trading/intake.py, as every signal INSERT is), shared by every alert waiting at
   that moment: one statement and one COMMIT (durable, synchronous_commit), at most two such writes at once (each
   on its own PostgreSQL connection, so that an alert arriving during a COMMIT need not wait for it), then one
   LPUSH of their Celery messages;
4. 202 only after that COMMIT (the LPUSH is sent then too; nobody waits for its reply: a failed enqueue leaves the
   row RECEIVED for the sweeper, as on the web role).

Everything else (an unknown or changed strategy, a wrong passphrase, a refusal, a repeat delivery, a price to
check, a lost connection) is decided by the very code the web role runs (`services.body_intake` or
`services.alert_intake`), in a thread, so both servers answer alike. So is every alert when the fast path cannot
run here: the database is not PostgreSQL, the cache's or the broker's Redis is not on plain TCP, or raw enqueue or
the group commit is switched off.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import psycopg
import redis
from django.conf import settings
from django.core.cache import caches
from django.db import close_old_connections, connections
from django.http.request import split_domain_port, validate_host
from django.urls import reverse
from django.utils import timezone

from infra.broker import AsyncRedisLink, TaskPublisher, command, publisher_for
from trading.intake import SignalRow, signal_row_statement, signal_rows_ids, signal_rows_statement
from webhooks import limits, parsers, services
from webhooks.config import flag
from webhooks.parsers import Rejection
from webhooks.sources import client_ip, source_allowed
from webhooks.targets import strategy_forget, strategy_known

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class ConnectionLost(Exception):
    """The database connection failed while a batch was written: each of its alerts may or may not be stored."""


class _Batcher:
    """The alerts waiting at one moment written by one call of `write`, by at most `writers` writes at once (each
    on its own connection); the alerts that arrive while they all run wait for the first to end. No timer: an alert
    alone is written at once. Each awaits its own result (an id, None, or its own exception)."""

    def __init__(self, write: Callable[[list[SignalRow]], Awaitable[list[Any]]], *, writers: int = 2,
                 max_batch: int = 64) -> None:
        self.write = write
        self.writers = writers
        self.max_batch = max_batch
        self.waiting: list[tuple[SignalRow, asyncio.Future[Any]]] = []
        self.running = 0
        self.batches = self.rows = 0

    def submit(self, row: SignalRow) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.waiting.append((row, future))
        if self.running < self.writers:
            self.running += 1
            loop.create_task(self._drain())
        return future

    async def _drain(self) -> None:
        try:
            while self.waiting:
                batch, self.waiting = self.waiting[:self.max_batch], self.waiting[self.max_batch:]
                try:
                    results = await self.write([row for row, _ in batch])
                except BaseException as exc:  # noqa: BLE001 - handed to every alert of the batch
                    results = [exc] * len(batch)
                self.batches += 1
                self.rows += len(batch)
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self.running -= 1


class IntakeApp:
    """The ASGI application: POST /api/webhooks/tradingview/, GET /healthz; 404 for anything else."""

    def __init__(self) -> None:
        self.path = reverse("webhook-tradingview")
        self.threads = ThreadPoolExecutor(max_workers=int(os.environ.get("INTAKE_THREADS", "8")),
                                          thread_name_prefix="intake")
        self.fast = False
        self.cache: AsyncRedisLink | None = None
        self.cache_backend: Any = None  # the default cache object, kept: it names the rate-limit keys
        self.broker: AsyncRedisLink | None = None
        self.publisher: TaskPublisher | None = None
        self.batcher = _Batcher(self._write)
        self._enqueues: set[asyncio.Task[None]] = set()  # LPUSHes in flight (kept referenced until done)
        self._idle: list[psycopg.AsyncConnection[Any]] = []  # the writers' connections not in use
        self.write_timeout = int(os.environ.get("INTAKE_WRITE_TIMEOUT_SECONDS", "10"))  # whole seconds
        self.headers = _security_headers()
        self.counts = {"fast": 0, "slow": 0}  # alerts stored by the event loop / decided by the web role's code
        self.answers: dict[int, int] = {}  # the webhook's answers by status

    # ------------------------------------------------------------------ lifecycle

    def _start(self) -> None:
        """Decide whether the fast path can run (read once per process, like the other webhook settings)."""
        from trading.tasks import signal_process_task

        cache_link = limits.cache_redis_link()
        publisher = publisher_for(signal_process_task) if flag("WEBHOOK_RAW_ENQUEUE") else None
        self.fast = (connections["default"].vendor == "postgresql" and flag("WEBHOOK_GROUP_COMMIT")
                     and cache_link is not None and cache_link.plain
                     and publisher is not None and publisher.link.plain)
        if self.fast:
            self.cache_backend = caches["default"]
            self.cache = AsyncRedisLink(cache_link)  # type: ignore[arg-type]
            self.publisher = publisher
            self.broker = (self.cache if publisher.link.kwargs == cache_link.kwargs  # type: ignore[union-attr]
                           else AsyncRedisLink(publisher.link))  # type: ignore[union-attr]
        log.info("intake server ready: %s", "fast path on" if self.fast else
                 "every alert through the web role's code (needs PostgreSQL and plain-TCP Redis for the fast path)")

    async def _stop(self) -> None:
        if self._enqueues:  # committed rows' messages still on their way
            await asyncio.wait(list(self._enqueues), timeout=5)
        for link in {id(x): x for x in (self.cache, self.broker) if x is not None}.values():
            link.close()
        for conn in self._idle:
            await conn.close()
        self.threads.shutdown(wait=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await asyncio.get_running_loop().run_in_executor(self.threads, self._start)
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self._stop()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope["path"] == self.path:
            await self._webhook(scope, receive, send)
        elif scope["path"] == "/healthz":
            await self._send(send, 200, {"status": "ok", "fast_path": self.fast, "alerts": self.counts,
                                         "batches": self.batcher.batches, "rows": self.batcher.rows,
                                         "rate_limits": "local" if limits.rate_limits_down() else "redis"},
                             counted=False)
        else:
            await self._send(send, 404, {"error": "not_found", "detail": "this server takes TradingView alerts only "
                                         f"(POST {self.path})", "fields": {}}, counted=False)

    # ------------------------------------------------------------------ HTTP

    async def _send(self, send: Send, status: int, body: dict[str, Any], extra: Sequence[tuple[bytes, bytes]] = (),
                    secure: bool = False, counted: bool = True) -> None:
        if counted:
            self.answers[status] = self.answers.get(status, 0) + 1
        raw = services.dumps(body)
        headers = [*self.headers["always"], *(self.headers["secure"] if secure else ()), *extra,
                   (b"content-length", str(len(raw)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": raw})

    async def _webhook(self, scope: Scope, receive: Receive, send: Send) -> None:
        meta = request_meta(scope)
        secure = _is_secure(scope, meta)
        domain, _ = split_domain_port(meta.get("HTTP_HOST", ""))
        if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
            await self._send(send, 400, Rejection(400, "bad_host", "the Host header is not one this site serves",
                                                  {"host": "not allowed"}).body())
            return
        if settings.SECURE_SSL_REDIRECT and not secure:
            location = f"https://{settings.SECURE_SSL_HOST or meta['HTTP_HOST']}{scope.get('raw_path', b'').decode()}"
            await self._send(send, 301, {"error": "https_required", "detail": "use https", "fields": {}},
                             [(b"location", location.encode())])
            return
        if scope["method"] != "POST":
            await self._send(send, 405, parsers.METHOD_NOT_ALLOWED.body(), [(b"allow", b"POST")], secure)
            return
        if parsers.declared_too_large(meta.get("CONTENT_LENGTH")):
            await self._send(send, 413, parsers.TOO_LARGE.body(), secure=secure)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > parsers.MAX_BODY_BYTES:
                await self._send(send, 413, parsers.TOO_LARGE.body(), secure=secure)
                return
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        result = await self._intake(b"".join(chunks), meta)
        await self._send(send, result.status, result.body(), secure=secure)

    # ------------------------------------------------------------------ intake

    async def _slow(self, call: Callable[..., services.Accepted | Rejection], **kwargs: Any
                    ) -> services.Accepted | Rejection:
        """The web role's own code for this alert, in a thread (it may read and write the database)."""
        self.counts["slow"] += 1
        return await asyncio.get_running_loop().run_in_executor(self.threads, partial(_in_thread, call, kwargs))

    async def _intake(self, body: bytes, meta: dict[str, Any]) -> services.Accepted | Rejection:
        content_type = meta.get("CONTENT_TYPE")
        if not self.fast:
            return await self._slow(services.body_intake, body=body, content_type=content_type, meta=meta)
        ip = client_ip(meta)
        data = parsers.body_decode(body, content_type) if source_allowed(ip) else None
        known = strategy_known(data) if isinstance(data, dict) else None
        if known is None:  # refused, or not this process's copy: body_intake decides, as the web role does
            return await self._slow(services.body_intake, body=body, content_type=content_type, meta=meta)
        if limits.rate_limits_local():  # the cache's Redis is failing: this process counts
            limited = limits.rate_pair_local(ip, known.pk)
        else:
            try:
                command_ = limits.rate_pair_command(ip, known.pk, backend=self.cache_backend)
                (count,) = await self.cache.call(command_, 1)  # type: ignore[union-attr]
                limited = limits.rate_pair_verdict(count)
            except redis.RedisError as exc:
                limits.rate_limits_failed(exc)
                limited = limits.rate_pair_local(ip, known.pk)
            else:
                limits.rate_limits_answered()
        if limited is not None:
            return limited
        now = timezone.now()
        row = services.alert_fast_row(data=data, known=known, now=now)  # type: ignore[arg-type]
        if row is None:
            return await self._slow(services.alert_intake, data=data, source_ip=ip, now=now, counted=True,
                                    checked=True, known=known)
        if isinstance(row, Rejection):
            return row
        try:
            signal_id = await self.batcher.submit(row)
        except ConnectionLost:  # it may be stored: the fresh path finds it (and queues it again if still waiting)
            strategy_forget(known.slug)
            return await self._slow(services.alert_intake, data=data, source_ip=ip, now=now, fresh=True,
                                    counted=True, unsure=True)
        except psycopg.Error:
            log.exception("webhook intake: database refused the alert")
            return services.STORAGE_UNAVAILABLE
        if signal_id is None:  # a repeat delivery, or the strategy changed since this process read it
            strategy_forget(known.slug)
            return await self._slow(services.alert_intake, data=data, source_ip=ip, now=now, fresh=True,
                                    counted=True)
        self.counts["fast"] += 1
        return services.Accepted(signal_id=signal_id, duplicate=False)

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        """An idle writer connection, or a new one (the batcher runs at most `writers` writes at once)."""
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
        params = dict(connections["default"].get_connection_params())
        params.pop("cursor_factory", None)
        return await psycopg.AsyncConnection.connect(**params, autocommit=True)

    async def _write(self, rows: list[SignalRow]) -> list[Any]:
        """Write rows with one INSERT (one COMMIT), then queue the new ones with one LPUSH: one id (or None: not
        stored) or exception per row. A row the database refuses fails alone (the others are written again, row by
        row); a lost connection fails them all with ConnectionLost."""
        conn = None
        try:
            conn = await self._connection()
            try:
                async with asyncio.timeout(self.write_timeout):
                    if len(rows) == 1:
                        values, checks = rows[0].values, rows[0].checks
                        cursor = await conn.execute(*signal_row_statement(values, checks), prepare=True)
                        found = await cursor.fetchone()
                        stored = {} if found is None else {rows[0].key: int(found[0])}
                    else:
                        cursor = await conn.execute(*signal_rows_statement(rows), prepare=True)
                        stored = {key: int(pk) for pk, key in await cursor.fetchall()}
            except TimeoutError as exc:  # a database that does not answer (a lock, a partition): psycopg cancels
                # the statement on the server when its task is cancelled, so it cannot commit later (the test checks
                # that no INSERT is left waiting), and the alerts are decided again (the "unsure" path)
                raise psycopg.OperationalError(f"no answer in {self.write_timeout} s") from exc
        except (psycopg.OperationalError, psycopg.InterfaceError, OSError) as exc:
            # A lost connection is most often a database restart: the idle ones are dropped too, and the next write
            # opens a new one.
            for dead in [conn, *self._idle]:
                if dead is not None:
                    await dead.close()
            self._idle.clear()
            raise ConnectionLost(str(exc)) from exc
        except psycopg.Error:
            self._idle.append(conn)  # type: ignore[arg-type]  # a refused statement leaves the connection usable
            if len(rows) == 1:
                raise
            results: list[Any] = []
            for row in rows:
                try:
                    results.extend(await self._write([row]))
                except Exception as exc:  # noqa: BLE001 - that row's own failure, answered in its own request
                    results.append(exc)
            return results
        self._idle.append(conn)
        ids = signal_rows_ids(rows, stored)
        queue = [pk for pk in ids if pk is not None]
        if queue:  # sent now; the answers and the next batch's INSERT do not wait for Redis's reply
            publisher = self.publisher
            packed = command(b"LPUSH", publisher.key, *(publisher.message(pk) for pk in queue))  # type: ignore[union-attr]
            task = asyncio.get_running_loop().create_task(self._enqueue(packed, queue))
            self._enqueues.add(task)
            task.add_done_callback(self._enqueues.discard)
        return ids

    async def _enqueue(self, packed: bytes, queue: list[int]) -> None:
        """One LPUSH of committed signals' messages. A failure is logged, never raised: the rows are committed and
        stay RECEIVED, and the sweeper re-drives them (as on the web role, where a failed enqueue still answers 202)."""
        try:
            await self.broker.call(packed, 1)  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001
            log.exception("enqueue of signals %s failed; the sweeper will pick them up", queue)


def _in_thread(call: Callable[..., services.Accepted | Rejection], kwargs: dict[str, Any]
               ) -> services.Accepted | Rejection:
    close_old_connections()  # as Django does around each request (CONN_MAX_AGE, a broken connection)
    try:
        return services.intake_guarded(lambda: call(**kwargs))
    finally:
        close_old_connections()


def request_meta(scope: Scope) -> dict[str, Any]:
    """The request's WSGI-style META: what the intake functions read (client address, headers, content type)."""
    meta: dict[str, Any] = {"REMOTE_ADDR": (scope.get("client") or ("", 0))[0]}
    for name, value in scope.get("headers", ()):
        key = name.decode("latin-1").upper().replace("-", "_")
        text = value.decode("latin-1")
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            meta[key] = text
        else:
            key = "HTTP_" + key
            meta[key] = f"{meta[key]},{text}" if key in meta else text
    return meta


def _is_secure(scope: Scope, meta: dict[str, Any]) -> bool:
    """HTTPS as Django's request.is_secure() decides it (SECURE_PROXY_SSL_HEADER, else the scheme)."""
    header = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if header:
        name, expected = header
        value = meta.get(name)
        if value is not None:
            return str(value).split(",", 1)[0].strip() == expected
    return scope.get("scheme") == "https"


def _security_headers() -> dict[str, list[tuple[bytes, bytes]]]:
    """The headers Django's SecurityMiddleware and XFrameOptionsMiddleware add to the webhook's answers, and the
    webhook's own (tests/webhooks/test_intake_server.py compares them with the web role's)."""
    always = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
    if settings.SECURE_CONTENT_TYPE_NOSNIFF:
        always.append((b"x-content-type-options", b"nosniff"))
    if settings.SECURE_REFERRER_POLICY:
        policy = settings.SECURE_REFERRER_POLICY
        text = ",".join([v.strip() for v in policy.split(",")] if isinstance(policy, str) else policy)
        always.append((b"referrer-policy", text.encode()))
    if settings.SECURE_CROSS_ORIGIN_OPENER_POLICY:
        always.append((b"cross-origin-opener-policy", settings.SECURE_CROSS_ORIGIN_OPENER_POLICY.encode()))
    always.append((b"x-frame-options", str(getattr(settings, "X_FRAME_OPTIONS", "DENY")).upper().encode()))
    secure = []
    if settings.SECURE_HSTS_SECONDS:
        value = f"max-age={settings.SECURE_HSTS_SECONDS}"
        if settings.SECURE_HSTS_INCLUDE_SUBDOMAINS:
            value += "; includeSubDomains"
        if settings.SECURE_HSTS_PRELOAD:
            value += "; preload"
        secure.append((b"strict-transport-security", value.encode()))
    return {"always": always, "secure": secure}

