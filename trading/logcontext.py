"""Ids attached to every log line written inside a block (signal_id, order_id, ...). Pure."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

_context: contextvars.ContextVar[dict[str, object]] = contextvars.ContextVar("log_context", default={})  # noqa: B039 - never mutated: log_context sets a new dict


@contextmanager
def log_context(**values: object) -> Iterator[None]:
    """Attach ids to every log line written inside the block."""
    token = _context.set({**_context.get(), **values})
    try:
        yield
    finally:
        _context.reset(token)


def current() -> dict[str, object]:
    """Return the ids attached to the current block."""
    return _context.get()
