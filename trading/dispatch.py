"""Queue Celery tasks by name, so that nothing below `trading/tasks.py` imports it (the tasks import the services
and the engine's rooms; a room that queued a task by importing it would point the import upward).

The names are the tasks' registered names (`@shared_task(name=...)` in trading/tasks.py); a process that has not
imported the tasks modules yet (web, a command) imports them on first use, through the Celery app's autodiscovery,
as a worker does at start.
"""

from __future__ import annotations

from typing import Any

from celery import current_app

SIGNAL_PROCESS = "trading.tasks.signal_process"
KILL_SWITCH_ENFORCE = "trading.tasks.kill_switch_enforce"
ORDER_REPLY_RECORD = "trading.tasks.order_reply_record"


def task(name: str) -> Any:
    """The registered Celery task called `name` (celery's NotRegistered when no tasks module registers it)."""
    if name not in current_app.tasks:
        # A worker imports every app's tasks module at start; a web or command process has not yet: do as it does.
        current_app.loader.import_default_modules()
    return current_app.tasks[name]
