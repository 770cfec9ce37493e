"""The group commit itself (infra/groupcommit.py): batching, hand-over of the lead, errors, with real threads."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from infra.groupcommit import GroupCommit


class RecordingFlush:
    """A flush that records its batches and can hold the first one until released."""

    def __init__(self, *, hold_first: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        if not hold_first:
            self.release.set()

    def __call__(self, items: list[int]) -> list[int | BaseException]:
        self.batches.append(list(items))
        self.entered.set()
        self.release.wait(10)
        return [ValueError(f"bad {i}") if i < 0 else i * 10 for i in items]


def _behind_a_held_write(pool: ThreadPoolExecutor, group: GroupCommit, flush: RecordingFlush,
                         items: list[int]) -> tuple[Future, list[Future]]:
    """Submit 1 (its write held by the flush), then `items`, which queue behind it; release the write."""
    first = pool.submit(group.submit, 1)
    assert flush.entered.wait(5)
    others = [pool.submit(group.submit, i) for i in items]
    while len(group._waiting) < len(items):  # noqa: SLF001 - all are queued behind the held write
        threading.Event().wait(0.005)
    flush.release.set()
    return first, others


def test_one_request_at_a_time_is_written_alone_at_once() -> None:
    flush = RecordingFlush()
    group = GroupCommit(flush)
    assert [group.submit(i) for i in range(3)] == [0, 10, 20]
    assert flush.batches == [[0], [1], [2]]


def test_rows_arriving_during_a_write_share_the_next_one() -> None:
    flush = RecordingFlush(hold_first=True)
    group = GroupCommit(flush)
    with ThreadPoolExecutor(9) as pool:
        first, others = _behind_a_held_write(pool, group, flush, list(range(2, 10)))
        assert first.result(5) == 10
        assert sorted(f.result(5) for f in others) == [i * 10 for i in range(2, 10)]
    assert flush.batches[0] == [1]
    assert sorted(flush.batches[1]) == list(range(2, 10)) and len(flush.batches) == 2  # one write for all eight
    assert group.largest == 8 and group.rows == 9 and group.batches == 2


def test_a_result_that_is_an_exception_fails_only_its_own_request() -> None:
    flush = RecordingFlush(hold_first=True)
    group = GroupCommit(flush)
    with ThreadPoolExecutor(4) as pool:
        first, (good, bad, good2) = _behind_a_held_write(pool, group, flush, [2, -3, 4])
        assert (first.result(5), good.result(5), good2.result(5)) == (10, 20, 40)
        with pytest.raises(ValueError, match="bad -3"):
            bad.result(5)


def test_a_failed_write_fails_every_request_of_its_batch_and_the_next_batch_works() -> None:
    calls: list[list[int]] = []
    gate = threading.Event()

    def flush(items: list[int]) -> list[int]:
        calls.append(list(items))
        if len(calls) == 1:
            gate.wait(10)
        if len(calls) == 2:
            raise ConnectionError("database went away")
        return items

    group = GroupCommit(flush)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(group.submit, 1)
        while not calls:
            threading.Event().wait(0.005)
        failing = [pool.submit(group.submit, i) for i in (2, 3)]
        while len(group._waiting) < 2:  # noqa: SLF001
            threading.Event().wait(0.005)
        gate.set()
        assert first.result(5) == 1
        errors = []
        for future in failing:
            with pytest.raises(ConnectionError, match="went away") as caught:
                future.result(5)
            errors.append(caught.value)
        assert errors[0] is not errors[1]  # each thread raises its own copy (no shared traceback)
    assert group.submit(7) == 7  # the lead was handed back: nobody is left waiting
    assert calls[-1] == [7]


def test_under_contention_every_row_is_written_once_and_answered_to_its_own_thread() -> None:
    seen: list[int] = []
    lock = threading.Lock()

    def flush(items: list[int]) -> list[int]:
        with lock:
            seen.extend(items)
        threading.Event().wait(0.0005)  # a write takes a while (I/O, the GIL released): rows pile up meanwhile
        return [i * 2 for i in items]

    group = GroupCommit(flush, max_batch=16)

    def worker(start: int) -> list[tuple[int, int]]:
        return [(i, group.submit(i)) for i in range(start, start + 300)]

    with ThreadPoolExecutor(24) as pool:
        answered = [pair for f in [pool.submit(worker, t * 1000) for t in range(24)] for pair in f.result(60)]
    assert all(result == i * 2 for i, result in answered)
    assert sorted(seen) == sorted(i for i, _ in answered) and len(seen) == 24 * 300  # each row written exactly once
    assert group.largest <= 16
    assert group.batches < group.rows  # some writes held several rows
