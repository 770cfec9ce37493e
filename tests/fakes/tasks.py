"""`trading.dispatch.task`'s stand-in: the tasks a test's code queues by name, recorded instead of sent."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class QueuedTasks:
    """Monkeypatched over `trading.dispatch.task`: each `apply_async` / `delay` is recorded as (name, args, expires)."""

    sent: list[tuple[str, tuple[Any, ...], float | None]] = field(default_factory=list)

    def __call__(self, name: str) -> Any:
        recorder = self

        class Task:
            def apply_async(self, args: tuple[Any, ...], expires: float | None = None) -> None:
                recorder.sent.append((name, tuple(args), expires))

            def delay(self, *args: Any) -> None:
                recorder.sent.append((name, args, None))

        return Task()
