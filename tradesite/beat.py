"""Celery beat's scheduler: django-celery-beat's database scheduler, plus beat's heartbeat (tradesite/heartbeat.py)."""

from __future__ import annotations

import logging
import time
from typing import Any

from django.conf import settings
from django_celery_beat.schedulers import DatabaseScheduler

from tradesite.celery import heartbeat_store

log = logging.getLogger("tradesite.heartbeat")


class Scheduler(DatabaseScheduler):
    """The schedule lives in the database (editable in the admin); each tick also says beat is alive, at most every
    HEARTBEAT_SECONDS, and a clean stop removes that heartbeat."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._heartbeats = heartbeat_store()
        self._heartbeat_at = 0.0
        self._heartbeat_failing = False
        super().__init__(*args, **kwargs)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        delay = super().tick(*args, **kwargs)
        now = time.time()
        if now - self._heartbeat_at >= settings.HEARTBEAT_SECONDS:
            try:
                self._heartbeats.beat_tick(now)
            except Exception as exc:  # noqa: BLE001 - a missed heartbeat must never stop the schedule
                if not self._heartbeat_failing:
                    log.warning("beat heartbeat not written: %s: %s", type(exc).__name__, exc)
                self._heartbeat_failing = True
            else:
                self._heartbeat_at, self._heartbeat_failing = now, False
        # Sleep no longer than a heartbeat interval, so an idle schedule still says it is alive.
        return min(delay, settings.HEARTBEAT_SECONDS)

    def close(self) -> None:
        try:
            self._heartbeats.beat_gone()
        except Exception:  # noqa: BLE001 - the heartbeat then goes stale on its own
            pass
        super().close()
