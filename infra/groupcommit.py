"""Group commit: the rows that concurrent request threads of one process store, written by one statement.

The first thread to arrive while no write is running leads: it takes every row waiting at that moment (its own
first), writes them with one call of `flush` (one INSERT, one COMMIT) and hands each waiting thread its own
result. Rows that arrive during that write wait; when it ends, the first of them is promoted and leads the next
write. Nobody waits for a timer: one request at a time is written alone, at once, as before; under load a batch
holds the requests in flight. Each thread still answers only after the commit that stored its row.

Pure threading (no Django): the flush function is the caller's.
"""

from __future__ import annotations

import copy
import os
import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class _Slot(Generic[T, R]):
    __slots__ = ("item", "result", "error", "lead", "wake")

    def __init__(self, item: T) -> None:
        self.item = item
        self.result: R | None = None
        self.error: BaseException | None = None
        self.lead = False
        self.wake = threading.Event()


class GroupCommit(Generic[T, R]):
    """Write items from many threads in batches: `submit(item)` returns that item's result of `flush`.

    `flush(items)` returns one result per item, in order; a result that is an exception is raised in its item's
    thread (so one bad row fails only its own request), and so is an exception raised by `flush` itself (in every
    thread of that batch).
    """

    def __init__(self, flush: Callable[[list[T]], Sequence[R | BaseException]], *, max_batch: int = 64) -> None:
        self._flush = flush
        self.max_batch = max_batch
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._waiting: list[_Slot[T, R]] = []
        self._busy = False
        self.batches = 0  # writes made, and the rows they held: for tests and benchmarks
        self.rows = 0
        self.largest = 0

    def submit(self, item: T) -> R:
        """Store `item` with whatever else is waiting; return its result once the write is done."""
        if self._pid != os.getpid():  # a forked child: never inherit the parent's lock or waiters
            self._reset()
        slot: _Slot[T, R] = _Slot(item)
        with self._lock:
            self._waiting.append(slot)
            lead = not self._busy
            self._busy = True
        if not lead:
            slot.wake.wait()
        if lead or slot.lead:
            self._write()
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]

    def _write(self) -> None:
        with self._lock:
            batch = self._waiting[:self.max_batch]
            del self._waiting[:self.max_batch]
        try:
            try:
                results = list(self._flush([slot.item for slot in batch]))
                if len(results) != len(batch):
                    raise RuntimeError(f"flush returned {len(results)} results for {len(batch)} items")
            except BaseException as exc:  # noqa: BLE001 - handed to every thread of the batch
                results = [exc if i == 0 else _copy(exc) for i in range(len(batch))]
            for slot, result in zip(batch, results, strict=True):
                if isinstance(result, BaseException):
                    slot.error = result
                else:
                    slot.result = result
            self.batches += 1
            self.rows += len(batch)
            self.largest = max(self.largest, len(batch))
        finally:
            with self._lock:
                following = self._waiting[0] if self._waiting else None
                if following is None:
                    self._busy = False
                else:
                    following.lead = True
            if following is not None:
                following.wake.set()
            for slot in batch[1:]:  # batch[0] is this thread's own
                slot.wake.set()


def _copy(exc: BaseException) -> BaseException:
    """A copy of the exception, so that threads raising it do not share (and extend) one traceback."""
    try:
        clone = copy.copy(exc)
    except Exception:  # noqa: BLE001 - an exception class that cannot be copied: share the instance
        return exc
    clone.__traceback__ = None
    clone.__cause__, clone.__context__ = exc.__cause__, exc.__context__
    return clone
