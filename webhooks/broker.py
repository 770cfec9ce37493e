"""Redis on the intake's hot path: pre-packed commands on a dedicated connection, and a Celery task published
with one LPUSH of a pre-built protocol-2 message (what `.delay()` sends, without kombu's per-call work).

redis-py's client costs ~150 us of CPU per command on a 2-core VM (retry wrapper, pool, callbacks); the same
command sent on the connection it manages costs ~40 us. The connection still comes from redis-py, so AUTH, db
selection, TLS and reconnects are its own.

The message format is Celery's protocol 2 (https://docs.celeryq.dev/en/stable/internals/protocol.html) in kombu's
Redis transport envelope (`kombu/transport/redis.py`, `Channel._put`: one LPUSH of the JSON envelope onto the queue
key, `global_keyprefix` + queue name at priority 0). tests/webhooks/test_broker.py compares it field by field with
what `.delay()` puts in Redis and has a real worker run it.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
import time
import uuid
from typing import Any

import redis

def command(*args: bytes | str | int) -> bytes:
    """One command in RESP (an array of bulk strings), for `RedisLink.call`."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class RedisLink:
    """A dedicated connection of a redis-py client's pool, for pre-packed commands (one write, N replies)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._local = threading.local()

    def _connection(self) -> Any:
        held = getattr(self._local, "held", None)
        if held is None or held[0] != os.getpid():  # a forked child never shares its parent's socket
            held = (os.getpid(), self.client.connection_pool.make_connection())
            self._local.held = held
        return held[1]

    def call(self, packed: bytes, replies: int) -> list[Any]:
        """Send packed commands in one write and read their replies; raise the first error reply.

        A connection that turns out dead (Redis restarted) is reopened and the commands sent once more, as
        redis-py's client does; a timeout is not retried (the server may have run them).
        """
        for attempt in (1, 2):
            connection = self._connection()
            results: list[Any] = []
            try:
                connection.send_packed_command([packed], check_health=False)
                for _ in range(replies):
                    try:
                        results.append(connection.read_response())
                    except redis.ResponseError as exc:  # an error reply: keep reading, the stream stays in step
                        results.append(exc)
            except redis.ConnectionError:
                connection.disconnect()
                if attempt == 2:
                    raise
                continue
            except BaseException:
                connection.disconnect()  # a reply may be half read: never reuse this stream
                raise
            for result in results:
                if isinstance(result, redis.ResponseError):
                    raise result
            return results
        raise AssertionError("unreachable")

    def close(self) -> None:
        held = getattr(self._local, "held", None)
        if held is not None:
            held[1].disconnect()
            self._local.held = None


class TaskPublisher:
    """Publish one task by name with a single LPUSH of a Celery protocol-2 message onto its queue's Redis list."""

    def __init__(self, *, app: Any, task_name: str, client: Any) -> None:
        task = app.tasks[task_name]
        conf = app.conf
        route = app.amqp.router.route({}, task_name)
        queue = route["queue"]
        prefix = str((conf.broker_transport_options or {}).get("global_keyprefix", ""))
        self.key = (prefix + queue.name).encode()
        self.link = RedisLink(client)
        headers = {
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
        self.link.call(command(b"LPUSH", self.key, self.message(*args)), 1)
