from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate


class TradingConfig(AppConfig):
    name = "trading"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        post_migrate.connect(_after_migrate, sender=self)


def _after_migrate(sender: object, **kwargs: Any) -> None:
    from trading.schedules import schedules_ensure

    schedules_ensure(**kwargs)  # post_migrate's `using` among them
