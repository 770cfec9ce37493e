"""The beat schedule, stored in django-celery-beat's tables so it can be edited in the admin."""

from __future__ import annotations

from typing import Any

from django.conf import settings

# name -> (task, seconds setting, queue)
SCHEDULE = {
    "orders sweep": ("trading.tasks.orders_sweep", "SWEEP_EVERY_SECONDS", "execution"),
    "exits drive": ("trading.tasks.exits_drive", "EXITS_EVERY_SECONDS", "execution"),
    "positions monitor": ("trading.tasks.positions_monitor", "MONITOR_EVERY_SECONDS", "monitoring"),
    "accounts reconcile": ("trading.tasks.accounts_reconcile", "RECONCILE_EVERY_SECONDS", "monitoring"),
    "equity snapshot": ("trading.tasks.equity_snapshot", "SNAPSHOT_EVERY_SECONDS", "monitoring"),
    "kill switch enforce": ("trading.tasks.kill_switch_enforce", "SWEEP_EVERY_SECONDS", "execution"),
    "funding settle": ("trading.tasks.funding_settle", "FUNDING_EVERY_SECONDS", "monitoring"),
}


def schedules_ensure(using: str = "default", **kwargs: Any) -> int:
    """Create the periodic tasks that are missing (existing ones keep what an admin changed); return how many."""
    return periodic_tasks_ensure({name: (task, int(settings.TRADING[setting]), queue)
                                  for name, (task, setting, queue) in SCHEDULE.items()}, using)


def periodic_tasks_ensure(schedule: dict[str, tuple[str, int, str]], using: str = "default") -> int:
    """Create each missing periodic task of {name: (task, seconds between ticks, queue)}; return how many.

    A tick that waited longer than its interval expires: the next one does the same work. Nothing happens until
    django-celery-beat's tables exist (a partial `migrate trading` runs this before they do).
    """
    from django.db import connections
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    if PeriodicTask._meta.db_table not in connections[using].introspection.table_names():
        return 0
    created = 0
    for name, (task, every, queue) in schedule.items():
        if PeriodicTask.objects.using(using).filter(name=name).exists():
            continue
        interval, _ = IntervalSchedule.objects.using(using).get_or_create(every=every,
                                                                          period=IntervalSchedule.SECONDS)
        PeriodicTask.objects.using(using).create(name=name, task=task, interval=interval, queue=queue,
                                                 expire_seconds=every)
        created += 1
    return created
