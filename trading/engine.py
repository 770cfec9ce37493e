"""The execution engine's public names in one place: signal -> risk decision -> orders -> venue -> fills -> P&L.

The engine lives in rooms, one job each, every import pointing down (docs/architecture.md has the layers and one
alert's path through them):

    trading/audit.py       the audit trail (every app records through it)
    trading/intake.py      store a signal once per idempotency key; queue it after commit
    trading/recording.py   what the venue said: fills, position, cash, P&L, status; a signal settled
    trading/orders.py      send, submit, recover, sync and cancel an order (the send lease held)
    trading/decision.py    the risk decision under the account lock, and its hot-path SQL
    trading/exits.py       a close pursued until its strategy is flat
    trading/protection.py  stop-loss and take-profit resting on the venue; trailing stops
    trading/execution.py   signal_process: decide, send, then follow an exit and the protective orders
    trading/reconcile.py   our orders and positions against the venue's
    trading/recovery.py    the sweeper and start-up recovery
    trading/monitor.py     per account: order changes recorded, trailing stops moved, stops fired
    trading/killswitch.py  the kill switch enforced until every venue is flat

Application code (tasks, services, views, other apps) imports the room it needs; this module re-exports the public
names for scripts, benchmarks and tests, and is imported by nothing in the engine.
"""

from __future__ import annotations

from trading.decision import AtrProvider, account_limits, atr_provider_register, strategy_risk
from trading.execution import signal_process
from trading.exits import exit_drive, exits_drive
from trading.intake import payload_redact, signal_create, signal_enqueue, signals_enqueue
from trading.killswitch import kill_switch_enforce, kill_switch_still_open
from trading.monitor import account_monitor, accounts_to_monitor, positions_monitor, stops_crossed
from trading.orders import (
    UNACKNOWLEDGED,
    UNACKNOWLEDGED_WATCH_HOURS,
    kill_switch_engaged,
    new_client_order_id,
    order_cancel,
    order_recover,
    order_sync,
)
from trading.protection import protection_enabled, protection_sync, protections_sync
from trading.recording import order_apply_venue_state, order_shortfall
from trading.recovery import orders_sweep, startup_recover

__all__ = [
    "UNACKNOWLEDGED",
    "UNACKNOWLEDGED_WATCH_HOURS",
    "AtrProvider",
    "account_limits",
    "account_monitor",
    "accounts_to_monitor",
    "atr_provider_register",
    "exit_drive",
    "exits_drive",
    "kill_switch_engaged",
    "kill_switch_enforce",
    "kill_switch_still_open",
    "new_client_order_id",
    "order_apply_venue_state",
    "order_cancel",
    "order_recover",
    "order_shortfall",
    "order_sync",
    "orders_sweep",
    "payload_redact",
    "positions_monitor",
    "protection_enabled",
    "protection_sync",
    "protections_sync",
    "signal_create",
    "signal_enqueue",
    "signal_process",
    "signals_enqueue",
    "startup_recover",
    "stops_crossed",
    "strategy_risk",
]
