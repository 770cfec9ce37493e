"""The replay feed: stored (or file) candles played on an accelerated clock; and the commands' progress bar.

One step per candle t, in order:

1. candle t becomes "closed": it is inserted into the store (when replaying from a file), and in the same
   transaction the NEXT candle's open is published as the market's current price (`trading.prices.price_set`,
   stamped now, with the next candle's volume), so a signal from bar t's close fills at bar t+1's open --
   exactly the backtester's rule;
2. the strategies of that market and timeframe evaluate candle t (inline through the service, or as Celery
   tasks when the command runs against workers: then a slow worker may see a later price, so exact timing needs
   inline evaluation, as `parity` does);
3. optionally the positions monitor runs (paper limit orders, stop-loss / take-profit at the new price).

The last candle has no next open: it is stored but not evaluated (nothing could fill it), like the backtester.
Gaps are kept as they are: evaluation happens per stored candle, never on a forward-filled grid.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from exchanges.base import VenueCandle, datetime_to_ms
from strategies import services
from strategies.models import Candle
from strategies.selectors import strategies_for_market
from strategies.tasks import strategy_evaluate_task
from trading.execution import signal_process
from trading.monitor import positions_monitor
from trading.prices import price_set
from trading.tasks import price_arrived


class Dispatch(str, enum.Enum):
    """How a replay step runs strategy evaluation and the signals it creates."""

    INLINE = "inline"  # evaluate here, process signals here (deterministic; no worker needed)
    WORKER_SIGNALS = "worker_signals"  # evaluate here, queue signals to the execution workers
    TASKS = "tasks"  # queue the evaluation itself to the strategies workers


@dataclass(frozen=True)
class StepResult:
    candle: VenueCandle
    evaluated: int  # evaluations recorded by this step (inline dispatch), or tasks queued
    signal_ids: tuple[int, ...] = ()  # signals created by this step (inline dispatches)


def replay_step(
    *,
    venue: str,
    symbol: str,
    timeframe: str,
    candle: VenueCandle,
    next_candle: VenueCandle | None,
    store: bool = False,
    dispatch: Dispatch = Dispatch.INLINE,
    strategy_ids: Sequence[int] | None = None,
    monitor: bool = False,
    now: datetime | None = None,
) -> StepResult:
    """Close candle t, publish candle t+1's open as the price, and have the market's strategies evaluate t."""
    now = now or timezone.now()
    with transaction.atomic():
        if store:
            Candle.objects.bulk_create([Candle(venue=venue, symbol=symbol, timeframe=timeframe,
                                               open_time=candle.open_time, open=candle.open, high=candle.high,
                                               low=candle.low, close=candle.close, volume=candle.volume)],
                                       ignore_conflicts=True)
        if next_candle is not None:
            price_set(symbol, next_candle.open, volume=next_candle.volume, time=now)
    if next_candle is None:
        return StepResult(candle, 0)
    if dispatch is Dispatch.TASKS:
        price_arrived(symbol, next_candle.open)  # a stop this price crosses leaves now, not at the next tick

    if strategy_ids is None:
        strategy_ids = strategies_for_market(venue=venue, symbol=symbol, timeframe=timeframe)
    evaluated, signal_ids = 0, []
    for strategy_id in strategy_ids:
        if dispatch is Dispatch.TASKS:
            strategy_evaluate_task.delay(strategy_id, datetime_to_ms(candle.open_time))
            evaluated += 1
            continue
        inline = dispatch is Dispatch.INLINE
        evaluation = services.strategy_evaluate(strategy_id=strategy_id, candle_open_time=candle.open_time, now=now,
                                                enqueue=not inline)
        if evaluation is None:
            continue
        evaluated += 1
        if evaluation.signal_id is not None:
            signal_ids.append(evaluation.signal_id)
            if inline:
                signal_process(signal_id=evaluation.signal_id, now=now)
    if monitor:
        positions_monitor(now=now)
    return StepResult(candle, evaluated, tuple(signal_ids))


def replay_pairs(candles: Iterable[VenueCandle]) -> Iterator[tuple[VenueCandle, VenueCandle | None]]:
    """Each candle with the one after it (None for the last)."""
    iterator = iter(candles)
    current = next(iterator, None)
    while current is not None:
        following = next(iterator, None)
        yield current, following
        current = following


# --------------------------------------------------------------------------------------------- progress


class ProgressBar:
    """A one-line progress bar on a text stream (stderr), redrawn at most every 1 %."""

    def __init__(self, stream: object, label: str, width: int = 30) -> None:
        self.stream, self.label, self.width = stream, label, width
        self._shown = -1

    def __call__(self, done: int, total: int) -> None:
        percent = 100 if total <= 0 else min(100, done * 100 // total)
        if percent == self._shown:
            return
        self._shown = percent
        filled = self.width * percent // 100
        bar = "#" * filled + "-" * (self.width - filled)
        end = "\n" if percent == 100 else ""
        text = f"\r{self.label:<10} [{bar}] {percent:3d}% {done}/{total}{end}"
        if hasattr(self.stream, "style_func"):  # Django's OutputWrapper ends every write with a newline unless told
            self.stream.write(text, ending="")  # type: ignore[attr-defined]
        else:
            self.stream.write(text)  # type: ignore[attr-defined]
        self.stream.flush()  # type: ignore[attr-defined]
