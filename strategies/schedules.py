"""The strategies app's beat schedule, in django-celery-beat's tables (editable in the admin), like trading's.

`connect()` hooks `schedules_ensure` to post_migrate; the app's `ready()` calls it.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

DEFAULT_EVERY_SECONDS = 10


def _schedule() -> dict[str, tuple[str, int, str]]:
    """name -> (task, seconds between ticks, queue); the interval is read at call time."""
    every = int(getattr(settings, "STRATEGIES_EVALUATE_EVERY_SECONDS", DEFAULT_EVERY_SECONDS))
    return {"strategies evaluate due": ("strategies.tasks.strategies_evaluate_due", every, "strategies")}


def schedules_ensure(using: str = "default", **kwargs: Any) -> int:
    """Create the periodic tasks that are missing (existing ones keep what an admin changed); return how many."""
    from trading.schedules import periodic_tasks_ensure

    return periodic_tasks_ensure(_schedule(), using)


def _after_migrate(sender: Any, **kwargs: Any) -> None:
    schedules_ensure(**kwargs)


def connect() -> None:
    """Create the schedule after every `migrate` (call from the app's ready())."""
    from django.apps import apps
    from django.db.models.signals import post_migrate

    post_migrate.connect(_after_migrate, sender=apps.get_app_config("strategies"),
                         dispatch_uid="strategies.schedules.ensure")
