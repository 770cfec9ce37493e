"""Heartbeats of the Celery workers (one per queue each consumes) and of beat, read by /readyz and the container probe.

A worker's main process writes its heartbeat every HEARTBEAT_SECONDS while it consumes and removes it when it stops
(a consumer step, tradesite/celery.py); beat writes its own after its ticks (tradesite/beat.py). With a Redis broker
they live in Redis, under the broker's key prefix: a sorted set per queue (member: the worker's node name, score: the
time of its last heartbeat) and one key for beat. Otherwise (the embedded filesystem broker) they are small files under
TRADESITE_VAR_DIR/heartbeats, which every process of `manage.py run` shares. Times are epoch seconds from each
process's clock (one host, or hosts kept in sync by NTP).

Stdlib and redis-py only: the container probe reads heartbeats without starting Django.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

QUEUES = ("execution", "monitoring", "strategies")
KEEP_SECONDS = 3600  # entries of workers that vanished without a word are pruned after an hour


@dataclass(frozen=True)
class Seen:
    """The newest heartbeat of each queue's workers and of beat (epoch seconds; None: none at all)."""

    queues: Mapping[str, float | None]
    beat: float | None


class HeartbeatStore(Protocol):
    """Where heartbeats are written and read: Redis or files."""

    def worker_beat(self, node: str, queues: Iterable[str], now: float) -> None: ...

    def worker_gone(self, node: str, queues: Iterable[str]) -> None: ...

    def beat_tick(self, now: float) -> None: ...

    def beat_gone(self) -> None: ...

    def seen(self, queues: Sequence[str], node: str | None = None) -> Seen:
        """Newest heartbeat per queue (of `node` only, when given) and beat's, in one read."""
        ...


def verdicts(seen: Seen, *, now: float, stale_after: float) -> dict[str, str]:
    """'ok' or 'failing' for `worker:<queue>` of each queue and for `beat`: a heartbeat younger than stale_after s."""
    def fresh(at: float | None) -> str:
        return "ok" if at is not None and now - at <= stale_after else "failing"

    return {**{f"worker:{queue}": fresh(at) for queue, at in seen.queues.items()}, "beat": fresh(seen.beat)}


class RedisHeartbeats:
    """Heartbeats in Redis: `<prefix>tradesite:heartbeat:queue:<queue>` sorted sets and
    `<prefix>tradesite:heartbeat:beat`."""

    def __init__(self, client: Any, prefix: str = "") -> None:
        self.client = client
        self.base = f"{prefix}tradesite:heartbeat:"

    def _queue_key(self, queue: str) -> str:
        return f"{self.base}queue:{queue}"

    def worker_beat(self, node: str, queues: Iterable[str], now: float) -> None:
        pipe = self.client.pipeline(transaction=False)
        for queue in queues:
            key = self._queue_key(queue)
            pipe.zadd(key, {node: now})
            pipe.zremrangebyscore(key, "-inf", now - KEEP_SECONDS)
            pipe.expire(key, KEEP_SECONDS)
        pipe.execute()

    def worker_gone(self, node: str, queues: Iterable[str]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for queue in queues:
            pipe.zrem(self._queue_key(queue), node)
        pipe.execute()

    def beat_tick(self, now: float) -> None:
        self.client.set(f"{self.base}beat", repr(now), ex=KEEP_SECONDS)

    def beat_gone(self) -> None:
        self.client.delete(f"{self.base}beat")

    def seen(self, queues: Sequence[str], node: str | None = None) -> Seen:
        pipe = self.client.pipeline(transaction=False)
        for queue in queues:
            if node is None:
                pipe.zrevrange(self._queue_key(queue), 0, 0, withscores=True)
            else:
                pipe.zscore(self._queue_key(queue), node)
        pipe.get(f"{self.base}beat")
        *answers, beat = pipe.execute()
        newest: dict[str, float | None] = {}
        for queue, answer in zip(queues, answers):
            if node is None:
                newest[queue] = float(answer[0][1]) if answer else None
            else:
                newest[queue] = None if answer is None else float(answer)
        return Seen(newest, None if beat is None else float(beat))


class FileHeartbeats:
    """Heartbeats as files: `<dir>/queue-<queue>/<node>` and `<dir>/beat`, each holding the time it was written."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _write(self, path: Path, now: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".hb-")
        with os.fdopen(fd, "w") as fh:
            fh.write(repr(now))
        os.replace(tmp, path)  # readers never see a half-written file

    @staticmethod
    def _read(path: Path) -> float | None:
        try:
            return float(path.read_text())
        except (OSError, ValueError):
            return None

    def _node_path(self, queue: str, node: str) -> Path:
        return self.directory / f"queue-{queue}" / node.replace(os.sep, "_")

    def worker_beat(self, node: str, queues: Iterable[str], now: float) -> None:
        for queue in queues:
            self._write(self._node_path(queue, node), now)

    def worker_gone(self, node: str, queues: Iterable[str]) -> None:
        for queue in queues:
            self._node_path(queue, node).unlink(missing_ok=True)

    def beat_tick(self, now: float) -> None:
        self._write(self.directory / "beat", now)

    def beat_gone(self) -> None:
        (self.directory / "beat").unlink(missing_ok=True)

    def seen(self, queues: Sequence[str], node: str | None = None) -> Seen:
        newest: dict[str, float | None] = {}
        for queue in queues:
            if node is not None:
                newest[queue] = self._read(self._node_path(queue, node))
                continue
            folder = self.directory / f"queue-{queue}"
            times = [t for p in (folder.iterdir() if folder.is_dir() else ()) if not p.name.startswith(".")
                     if (t := self._read(p)) is not None]
            newest[queue] = max(times, default=None)
        return Seen(newest, self._read(self.directory / "beat"))


def store_open(*, broker_url: str, redis_prefix: str, var_dir: Path, timeout: float = 2.0) -> HeartbeatStore:
    """Redis when the broker is Redis (at `redis_prefix`, the broker's own key prefix), else files under var_dir."""
    if broker_url.startswith(("redis://", "rediss://")):
        import redis

        client = redis.Redis.from_url(broker_url, socket_timeout=timeout, socket_connect_timeout=timeout)
        return RedisHeartbeats(client, redis_prefix)
    return FileHeartbeats(var_dir / "heartbeats")
