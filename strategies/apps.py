from django.apps import AppConfig


class StrategiesConfig(AppConfig):
    name = "strategies"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Register every rule kind with the trading core, so admin and API validate params the same way."""
        from strategies.library import RULES
        from trading.services import strategy_kind_register

        for name, rule in RULES.items():
            strategy_kind_register(name, rule.validate, reads_candles=True)

        from strategies import schedules

        schedules.connect()  # the StrategyManager's beat tick, created after migrate
        _atr_provider_connect()  # ATR-multiple exits read ATR(14) from the candle store


_connected = False


def _atr_provider_connect() -> None:
    """Let the engine take ATR-multiple exits' ATR from the candle store (once per process)."""
    global _connected
    if _connected:
        return
    from strategies.selectors import atr_from_store
    from trading.decision import atr_provider_register

    atr_provider_register(atr_from_store)
    _connected = True
