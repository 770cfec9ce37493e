"""The beat schedule, stored in django-celery-beat's tables so it can be edited in the admin."""

from __future__ import annotations

from typing import Any

from django.conf import settings

# name -> (task, seconds setting, queue)
SCHEDULE = {
    "orders sweep": ("trading.tasks.orders_sweep", "SWEEP_EVERY_SECONDS", "execution"),
    "positions monitor": ("trading.tasks.positions_monitor", "MONITOR_EVERY_SECONDS", "monitoring"),
    "accounts reconcile": ("trading.tasks.accounts_reconcile", "RECONCILE_EVERY_SECONDS", "monitoring"),
    "equity snapshot": ("trading.tasks.equity_snapshot", "SNAPSHOT_EVERY_SECONDS", "monitoring"),
    "kill switch enforce": ("trading.tasks.kill_switch_enforce", "SWEEP_EVERY_SECONDS", "execution"),
}


def schedules_ensure(**kwargs: Any) -> int:
    """Create the periodic tasks that are missing (existing ones keep what an admin changed); return how many."""
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    created = 0
    for name, (task, setting, queue) in SCHEDULE.items():
        if PeriodicTask.objects.filter(name=name).exists():
            continue
        every, _ = IntervalSchedule.objects.get_or_create(
            every=int(settings.TRADING[setting]), period=IntervalSchedule.SECONDS
        )
        # Expire a tick that waited longer than its interval: the next one does the same work.
        PeriodicTask.objects.create(name=name, task=task, interval=every, queue=queue,
                                    expire_seconds=int(settings.TRADING[setting]))
        created += 1
    return created
