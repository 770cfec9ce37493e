"""Redis on the signal hot path (webhook intake, signal_create): pre-packed commands on a dedicated connection,
and a Celery task published with one LPUSH of a pre-built protocol-2 message (what `.delay()` sends, without
kombu's per-call work).

redis-py's client costs ~150 us of CPU per command on a 2-core VM (retry wrapper, pool, callbacks, parser); the
same command written to a socket and its small reply read here costs ~15 us. The connection settings (host, port,
db, password, timeouts) are the redis-py client's; TLS and unix sockets go through redis-py's own connection.

The message format is Celery's protocol 2 (https://docs.celeryq.dev/en/stable/internals/protocol.html) in kombu's
Redis transport envelope (`kombu/transport/redis.py`, `Channel._put`: one LPUSH of the JSON envelope onto the queue
key, `global_keyprefix` + queue name at priority 0). tests/webhooks/test_broker.py compares it field by field with
what `.delay()` puts in Redis and has a real worker run it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import threading
import time
import uuid
from collections import deque
from typing import Any

import redis
from django.test.signals import setting_changed

def command(*args: bytes | str | int) -> bytes:
    """One command in RESP (an array of bulk strings), for `RedisLink.call`."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _reply(buf: bytearray) -> tuple[Any, int]:
    """One RESP2 reply from the head of buf: (value, bytes used), or (None, 0) when it is not all there yet.

    Integers, simple strings, errors (returned as redis.ResponseError) and bulk strings: what INCR, EXPIRE, LPUSH,
    AUTH, SELECT and GET answer.
    """
    end = buf.find(b"\r\n")
    if end < 0:
        return None, 0
    kind, line = buf[:1], bytes(buf[1:end])
    if kind == b":":
        return int(line), end + 2
    if kind == b"+":
        return line, end + 2
    if kind == b"-":
        return redis.ResponseError(line.decode(errors="replace")), end + 2
    if kind == b"$":
        size = int(line)
        if size < 0:
            return None, end + 2
        if len(buf) < end + 2 + size + 2:
            return None, 0
        return bytes(buf[end + 2:end + 2 + size]), end + 2 + size + 2
    raise redis.ConnectionError(f"unexpected reply type {kind!r}")


def _checked(results: list[Any]) -> list[Any]:
    """The replies, or the first error reply raised."""
    for result in results:
        if isinstance(result, redis.ResponseError):
            raise result
    return results


class RedisLink:
    """One connection per process and thread to the Redis a redis-py client points at, for pre-packed commands
    (one write, N replies).

    A plain TCP connection is opened here (AUTH and SELECT as the client's settings say) and replies are read by
    `_reply`; other transports (TLS, unix socket) use a connection made by the client's pool, through redis-py.
    """

    def __init__(self, client: Any, *, timeout: float = 5.0) -> None:
        pool = client.connection_pool
        self.client = client
        self.kwargs = dict(pool.connection_kwargs)
        self.plain = pool.connection_class is redis.connection.Connection
        self.timeout = self.kwargs.get("socket_timeout") or timeout
        self._local = threading.local()

    def _held(self) -> Any:
        held = getattr(self._local, "held", None)
        if held is not None and held[0] == os.getpid():  # a forked child never shares its parent's socket
            return held[1]
        if self.plain:
            conn: Any = self._open()
        else:
            conn = self.client.connection_pool.make_connection()
        self._local.held = (os.getpid(), conn)
        self._local.buffer = bytearray()
        return conn

    def _open(self) -> socket.socket:
        kw = self.kwargs
        try:
            sock = socket.create_connection((kw.get("host") or "localhost", int(kw.get("port") or 6379)),
                                            timeout=kw.get("socket_connect_timeout") or self.timeout)
        except OSError as exc:
            raise redis.ConnectionError(f"connecting to Redis: {exc}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self.timeout)
        hello = []
        if kw.get("password"):
            hello.append(command("AUTH", *([kw["username"]] if kw.get("username") else []), kw["password"]))
        if int(kw.get("db") or 0):
            hello.append(command("SELECT", int(kw["db"])))
        self._local.held, self._local.buffer = (os.getpid(), sock), bytearray()
        if hello:
            try:
                for reply in self._exchange(sock, b"".join(hello), len(hello)):
                    if isinstance(reply, redis.ResponseError):
                        raise reply
            except BaseException:
                self.close()
                raise
        return sock

    def _exchange(self, sock: socket.socket, packed: bytes, replies: int) -> list[Any]:
        buf: bytearray = self._local.buffer
        try:
            sock.sendall(packed)
            results: list[Any] = []
            while len(results) < replies:
                value, used = _reply(buf)
                if used:
                    del buf[:used]
                    results.append(value)
                    continue
                chunk = sock.recv(65536)
                if not chunk:
                    raise redis.ConnectionError("Redis closed the connection")
                buf += chunk
        except TimeoutError as exc:  # socket.timeout
            raise redis.TimeoutError(f"Redis did not answer in {self.timeout} s") from exc
        except OSError as exc:
            raise redis.ConnectionError(f"talking to Redis: {exc}") from exc
        return results

    def _once(self, packed: bytes, replies: int) -> list[Any]:
        conn = self._held()
        if self.plain:
            return self._exchange(conn, packed, replies)
        conn.send_packed_command([packed], check_health=False)
        results: list[Any] = []
        for _ in range(replies):
            try:
                results.append(conn.read_response())
            except redis.ResponseError as exc:  # an error reply: keep reading, the stream stays in step
                results.append(exc)
        return results

    def call(self, packed: bytes, replies: int) -> list[Any]:
        """Send packed commands in one write and read their replies; raise the first error reply.

        A connection that turns out dead (Redis restarted) is reopened and the commands sent once more, as
        redis-py's client does; a timeout is not retried (the server may have run them).
        """
        for attempt in (1, 2):
            try:
                results = self._once(packed, replies)
            except redis.ConnectionError:
                self.close()
                if attempt == 2:
                    raise
                continue
            except BaseException:
                self.close()  # a reply may be half read: never reuse this stream
                raise
            return _checked(results)
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Drop this thread's connection (the next call opens a new one)."""
        held = getattr(self._local, "held", None)
        self._local.held = None
        if held is None or held[0] != os.getpid():
            return
        try:
            if self.plain:
                held[1].close()
            else:
                held[1].disconnect()
        except OSError:
            pass


class AsyncRedisLink:
    """The Redis a RedisLink points at, from an asyncio event loop (a plain TCP connection only: `link.plain`).

    One connection per link, pipelined: each call writes its packed commands at once and awaits its replies in
    order, so the requests of one event loop share the connection without waiting for each other's round trips.
    A connection that fails (or a reply that times out) fails every call waiting on it and is dropped; the next
    call opens a new one. A call that met a dropped connection is sent once more on a new one, as `RedisLink.call`
    does; a timeout is not retried (the server may have run the commands).
    """

    def __init__(self, link: RedisLink) -> None:
        self.kwargs = link.kwargs
        self.timeout = link.timeout
        self._writer: asyncio.StreamWriter | None = None
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._opening: asyncio.Lock | None = None

    async def _open(self) -> asyncio.StreamWriter:
        kw = self.kwargs
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            kw.get("host") or "localhost", int(kw.get("port") or 6379)),
            kw.get("socket_connect_timeout") or self.timeout)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        hello = []
        if kw.get("password"):
            hello.append(command("AUTH", *([kw["username"]] if kw.get("username") else []), kw["password"]))
        if int(kw.get("db") or 0):
            hello.append(command("SELECT", int(kw["db"])))
        buf = bytearray()
        try:
            if hello:
                writer.write(b"".join(hello))
                for _ in hello:
                    while True:
                        value, used = _reply(buf)
                        if used:
                            break
                        chunk = await asyncio.wait_for(reader.read(65536), self.timeout)
                        if not chunk:
                            raise redis.ConnectionError("Redis closed the connection")
                        buf += chunk
                    del buf[:used]
                    if isinstance(value, redis.ResponseError):
                        raise value
        except BaseException:
            writer.close()
            raise
        asyncio.get_running_loop().create_task(self._read(reader, writer, buf))
        return writer

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, buf: bytearray) -> None:
        try:
            while True:
                while self._waiting:
                    value, used = _reply(buf)
                    if not used:
                        break
                    del buf[:used]
                    waiter = self._waiting.popleft()
                    if not waiter.done():
                        waiter.set_result(value)
                chunk = await reader.read(65536)
                if not chunk:
                    raise redis.ConnectionError("Redis closed the connection")
                buf += chunk
        except Exception as exc:  # noqa: BLE001 - handed to every waiting call
            if writer is self._writer:
                self._fail(exc if isinstance(exc, redis.RedisError) else redis.ConnectionError(str(exc)))

    def _fail(self, exc: BaseException) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        waiting, self._waiting = self._waiting, deque()
        for waiter in waiting:
            if not waiter.done():
                waiter.set_exception(exc)

    async def _once(self, packed: bytes, replies: int) -> list[Any]:
        if self._writer is None or self._writer.is_closing():
            self._opening = self._opening or asyncio.Lock()
            async with self._opening:
                if self._writer is None or self._writer.is_closing():
                    try:
                        self._writer = await self._open()
                    except (TimeoutError, OSError) as exc:
                        raise redis.ConnectionError(f"connecting to Redis: {exc}") from exc
        loop = asyncio.get_running_loop()
        waiters = [loop.create_future() for _ in range(replies)]
        self._waiting.extend(waiters)
        self._writer.write(packed)
        try:
            return list(await asyncio.wait_for(asyncio.gather(*waiters), self.timeout))
        except TimeoutError as exc:
            self._fail(redis.TimeoutError("a Redis reply timed out"))
            raise redis.TimeoutError(f"Redis did not answer in {self.timeout} s") from exc

    async def call(self, packed: bytes, replies: int) -> list[Any]:
        """Send packed commands in one write and await their replies; raise the first error reply."""
        for attempt in (1, 2):
            try:
                results = await self._once(packed, replies)
            except redis.ConnectionError:
                if attempt == 2:
                    raise
                continue
            return _checked(results)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._fail(redis.ConnectionError("closed"))


class BrokerSkipped(redis.ConnectionError):
    """Not sent: the broker failed moments ago (see TaskPublisher.RETRY_AFTER_SECONDS)."""


class TaskPublisher:
    """Publish one task by name with a single LPUSH of a Celery protocol-2 message onto its queue's Redis list."""

    # After a failed LPUSH the broker is not tried again for this long: each publish meanwhile raises BrokerSkipped
    # at once (the caller's row stays as it is for the sweeper), so a Redis that hangs costs one publish its timeout
    # every few seconds instead of every publish (the web role answers an alert only after its enqueue).
    RETRY_AFTER_SECONDS = 5.0

    def __init__(self, *, app: Any, task_name: str, client: Any) -> None:
        task = app.tasks[task_name]
        conf = app.conf
        route = app.amqp.router.route({}, task_name)
        queue = route["queue"]
        prefix = str((conf.broker_transport_options or {}).get("global_keyprefix", ""))
        self.key = (prefix + queue.name).encode()
        self.link = RedisLink(client)
        self._skip_until = 0.0  # time.monotonic() before which the broker is not tried (it just failed)
        headers: dict[str, Any] = {
            "lang": "py", "task": task_name, "id": "@ID@", "shadow": None, "eta": None, "expires": None,
            "group": None, "group_index": None, "retries": 0,
            "timelimit": [task.time_limit or conf.task_time_limit, task.soft_time_limit or conf.task_soft_time_limit],
            "root_id": "@ID@", "parent_id": None, "argsrepr": "@ARGSREPR@", "kwargsrepr": "{}",
            "origin": f"gen{os.getpid()}@{socket.gethostname()}",
            "ignore_result": bool(task.ignore_result if task.ignore_result is not None else conf.task_ignore_result),
            "replaced_task_nesting": 0, "stamped_headers": None, "stamps": {},
            "sent_at": "@SENT_AT@",  # tradesite/taskmetrics.py: publish -> start latency
        }
        envelope = {
            "body": "@BODY@", "content-encoding": "utf-8", "content-type": "application/json", "headers": headers,
            "properties": {
                "correlation_id": "@ID@", "reply_to": str(app.thread_oid), "delivery_mode": 2,
                # Exchange "" (the default exchange): kombu restores an unacked message to the queue named by
                # routing_key without needing the exchange's binding table.
                "delivery_info": {"exchange": "", "routing_key": queue.routing_key or queue.name},
                "priority": 0, "body_encoding": "base64", "delivery_tag": "@TAG@",
            },
        }
        text = json.dumps(envelope).replace("%", "%%")
        for name in ("ID", "ARGSREPR", "BODY", "TAG"):
            text = text.replace(f'"@{name}@"', f'"%({name.lower()})s"')
        self._template = text.replace('"@SENT_AT@"', "%(sent_at)r")

    def message(self, *args: int) -> bytes:
        """The envelope for a call with these positional int arguments (ids only, as every task takes)."""
        args = tuple(int(a) for a in args)
        task_id = str(uuid.uuid4())
        body = json.dumps([list(args), {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
        return (self._template % {
            "id": task_id, "argsrepr": repr(args), "body": base64.b64encode(body.encode()).decode(),
            "tag": str(uuid.uuid4()), "sent_at": time.time(),
        }).encode()

    def publish(self, *args: int) -> None:
        """LPUSH the message (raises redis errors: the caller decides what a failed enqueue means)."""
        self.publish_many([args])

    def publish_many(self, calls: list[tuple[int, ...]]) -> None:
        """LPUSH one message per call's arguments with a single command (the first is consumed first).

        Raises redis errors; within RETRY_AFTER_SECONDS of a failure, BrokerSkipped without trying."""
        if self._skip_until:
            now = time.monotonic()
            if now < self._skip_until:
                raise BrokerSkipped(f"the broker failed less than {self.RETRY_AFTER_SECONDS:g} s ago; not sent")
            self._skip_until = now + self.RETRY_AFTER_SECONDS  # this publish tries it; the others meanwhile do not
        try:
            self.link.call(command(b"LPUSH", self.key, *(self.message(*args) for args in calls)), 1)
        except redis.RedisError:
            self._skip_until = time.monotonic() + self.RETRY_AFTER_SECONDS
            raise
        self._skip_until = 0.0


_publishers: dict[str, TaskPublisher | None] = {}


def publisher_for(task: Any) -> TaskPublisher | None:
    """This process's raw publisher of a task, or None when the broker is not Redis or tasks run eagerly."""
    if task.name not in _publishers:
        from django.conf import settings

        app = task.app
        url = str(settings.CELERY_BROKER_URL or "")  # what app.conf.broker_url is read from
        usable = url.startswith(("redis://", "rediss://")) and not app.conf.task_always_eager
        _publishers[task.name] = TaskPublisher(
            app=app, task_name=task.name,
            client=redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)) if usable else None
    return _publishers[task.name]


def _settings_changed(**_: Any) -> None:
    _publishers.clear()


setting_changed.connect(_settings_changed)
