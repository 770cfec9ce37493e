"""Writes of the strategies app: candle imports and the StrategyManager (evaluate each closed candle once).

A feed that stores a closed candle (the demo feed; the market-data role) calls `candles_closed`: each strategy that
reads that market and timeframe evaluates it at once, a task each. The beat's `strategies_evaluate_due` every few
seconds is the catch-up (a task lost, a worker that was down, a venue whose candles are fetched on the tick).

Evaluation of one (strategy, closed candle):

* the StrategyEvaluation row is inserted first, in the same transaction as everything else: a second
  evaluation of the same bar (another worker, a re-delivered task, a restarted beat) hits the unique
  constraint and returns, so a bar is evaluated once and yields at most one signal;
* the rule reads the stored candles up to that candle (at most `EVALUATION_WINDOW` of them: indicators here
  forget their start long before that), computes its per-bar signals and looks at the last bar only;
* the position it trades against is the strategy's Position plus its working orders (an entry still on its
  way counts as held, so a slow fill never doubles an entry);
* a signal is stored with the idempotency key `strategy:<id>:<candle open ms>`, processed after commit;
* any exception puts the strategy in ERROR with `last_error` (audited): the scheduler skips it from then on,
  so a broken rule never loops. `trading.services.strategy_start` re-activates it and clears the error.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from exchanges.base import Side, VenueCandle, datetime_to_ms
from strategies.base import Candles, last_bar_action
from strategies.candles import RowError, atr_value, timeframe_delta
from strategies.models import BacktestRun, Candle, StrategyEvaluation
from trading import dispatch
from trading.audit import audit
from trading.fields import column_error
from trading.intake import signal_create
from trading.models import Order, Position, Strategy, VenueAccount
from trading.services import TIMEFRAMES

log = logging.getLogger("strategies.services")

BACKTEST_RUN = "strategies.tasks.backtest_run"  # queued by name (trading/dispatch.py): tasks.py imports this module
STRATEGY_EVALUATE = "strategies.tasks.strategy_evaluate"
EVALUATION_WINDOW = 5000  # candles read per evaluation (or 10x the rule's warm-up, if larger)
MAX_EVALUATIONS_PER_TICK = 5  # per strategy: a strategy that fell behind catches up on the newest bars only
IMPORT_CHUNK = 5000
APPEND_BATCH = 100  # rows per INSERT: psycopg splits a longer statement in more than linear time
ACTOR = "strategy_manager"


# --------------------------------------------------------------------------------------------- candles


@dataclass(frozen=True)
class ImportResult:
    inserted: int
    unchanged: int  # already stored with the same values (a re-import)


class CandleImportError(Exception):
    """Candles that cannot be stored: each with its line number and problem. Nothing was stored."""

    def __init__(self, errors: Sequence[RowError]) -> None:
        super().__init__(f"{len(errors)} bad row(s); first: {errors[0] if errors else '-'}")
        self.errors = list(errors)


def candles_import(*, venue: str, symbol: str, timeframe: str, rows: Sequence[VenueCandle], by: str,
                   lines: Sequence[int] = (), progress: Callable[[int, int], None] | None = None,
                   now: datetime | None = None) -> ImportResult:
    """Store validated candles all or nothing: new ones inserted, identical ones skipped, differing ones refused.

    `lines`: each row's line in its file (`ParsedCsv.lines`), to name a disagreeing row (0 when not given).

    A stored candle is never overwritten: a re-import of the same file changes nothing, and a file that
    disagrees with the store raises CandleImportError with the disagreeing lines (data integrity over
    availability; delete the stored range first to replace it).
    """
    now = now or timezone.now()
    inserted = unchanged = 0
    conflicts: list[RowError] = []
    with transaction.atomic():
        for start in range(0, len(rows), IMPORT_CHUNK):
            chunk = rows[start:start + IMPORT_CHUNK]
            stored = {
                r[0]: r[1:] for r in Candle.objects.filter(
                    venue=venue, symbol=symbol, timeframe=timeframe,
                    open_time__gte=chunk[0].open_time, open_time__lte=chunk[-1].open_time,
                ).values_list("open_time", "open", "high", "low", "close", "volume")
            }
            fresh = []
            for offset, row in enumerate(chunk):
                values = (row.open, row.high, row.low, row.close, row.volume)
                existing = stored.get(row.open_time)
                if existing is None:
                    fresh.append(Candle(venue=venue, symbol=symbol, timeframe=timeframe, open_time=row.open_time,
                                        open=row.open, high=row.high, low=row.low, close=row.close,
                                        volume=row.volume))
                elif tuple(existing) == values:
                    unchanged += 1
                else:
                    line = lines[start + offset] if lines else 0
                    conflicts.append(RowError(line, "differs from the stored candle "
                                                    f"{'/'.join(str(v) for v in existing)}"))
            # ignore_conflicts: a concurrent import of the same candles is not an error.
            Candle.objects.bulk_create(fresh, ignore_conflicts=True)
            inserted += len(fresh)
            if progress is not None:
                progress(start + len(chunk), len(rows))
        if conflicts:
            raise CandleImportError(conflicts)  # rolls back every chunk
        audit(actor=by, action="candles.imported", entity="candles", entity_id=f"{venue}:{symbol}:{timeframe}",
              now=now, inserted=inserted, unchanged=unchanged,
              first=rows[0].open_time if rows else None, last=rows[-1].open_time if rows else None)
    return ImportResult(inserted, unchanged)


def candles_append(*, venue: str, symbol: str, timeframe: str, rows: Sequence[VenueCandle]) -> list[datetime]:
    """Store a feed's closed candles (oldest first), each once; return the open times of those new to the store.

    A candle stored already is kept as it is, never overwritten (a feed restarted over minutes it stored before, or
    two writers of one market: the first one wins). No audit row: market data, not money or configuration.
    """
    if not rows:
        return []
    with transaction.atomic():
        stored = set(Candle.objects.filter(venue=venue, symbol=symbol, timeframe=timeframe,
                                           open_time__gte=rows[0].open_time, open_time__lte=rows[-1].open_time)
                     .values_list("open_time", flat=True))
        fresh = [Candle(venue=venue, symbol=symbol, timeframe=timeframe, open_time=r.open_time, open=r.open,
                        high=r.high, low=r.low, close=r.close, volume=r.volume)
                 for r in rows if r.open_time not in stored]
        Candle.objects.bulk_create(fresh, batch_size=APPEND_BATCH, ignore_conflicts=True)
    return [c.open_time for c in fresh]


def candles_build(*, venue: str, symbol: str, timeframes: Sequence[str], since: datetime, until: datetime,
                  source: str = "1m") -> dict[str, list[datetime]]:
    """Build a market's candles of each of `timeframes` opening in [since, until) from its stored `source` candles
    (read once) and store the new ones (candles_append); return their open times per timeframe.

    Only buckets that have ended by `until` are built (no look-ahead: a bucket still filling is not a candle yet),
    each from the source candles it holds; a bucket with none is no candle.
    """
    from strategies.candles import candles_resample, grid_floor
    from strategies.selectors import candle_rows_read

    bounds = {t: (grid_floor(since, t), grid_floor(until, t)) for t in timeframes}
    bounds = {t: (start, end) for t, (start, end) in bounds.items() if start < end}
    if not bounds:
        return {}
    first, last = min(b[0] for b in bounds.values()), max(b[1] for b in bounds.values()) - timeframe_delta(source)
    rows = list(candle_rows_read(venue, symbol, source, since=first, until=last))
    built = {}
    for timeframe, (start, end) in bounds.items():
        held = candles_resample((r for r in rows if start <= r.open_time < end), timeframe)
        built[timeframe] = candles_append(venue=venue, symbol=symbol, timeframe=timeframe, rows=held)
    return built


def candles_closed(*, venue: str, symbol: str, timeframe: str, open_times: Sequence[datetime]) -> int:
    """Candles of a market closed (stored under `venue`, a price feed's name): queue, after commit, the evaluation of
    the newest of them by each active indicator strategy that reads them (a task each, queue strategies); return
    how many were queued.

    The older candles of one call are history (a backfill): a bar traded that late would be a stale trade, and the
    beat's catch-up skips them too once the newest is evaluated. A task not started within one bar is dropped
    (expires): the next bar's task, or the beat's catch-up every few seconds, evaluates instead. Whoever comes
    first evaluates the bar; the other finds its StrategyEvaluation row and does nothing.
    """
    from strategies.selectors import strategies_for_market

    if not open_times:
        return 0
    newest_ms = datetime_to_ms(max(open_times))
    expires = timeframe_delta(timeframe).total_seconds()
    strategy_ids = strategies_for_market(venue=venue, symbol=symbol, timeframe=timeframe)
    for strategy_id in strategy_ids:
        transaction.on_commit(functools.partial(_evaluation_queue, strategy_id, newest_ms, expires))
    return len(strategy_ids)


def _evaluation_queue(strategy_id: int, candle_open_ms: int, expires: float) -> None:
    dispatch.task(STRATEGY_EVALUATE).apply_async((strategy_id, candle_open_ms), expires=expires)


# --------------------------------------------------------------------------------------------- evaluation


class _CandleMissing(Exception):
    pass


def strategy_evaluate(*, strategy_id: int, candle_open_time: datetime, now: datetime | None = None,
                      enqueue: bool = True) -> StrategyEvaluation | None:
    """Evaluate an active strategy on one stored, closed candle, once; None when skipped or already done."""
    from strategies.library import RULES
    from strategies.selectors import candle_venue, candles_read

    now = now or timezone.now()
    strategy = Strategy.objects.select_related("account").get(pk=strategy_id)
    rule = RULES.get(strategy.kind)
    if rule is None or strategy.status != Strategy.Status.ACTIVE:
        return None
    try:
        with transaction.atomic():
            try:
                with transaction.atomic():
                    evaluation = StrategyEvaluation.objects.create(strategy=strategy,
                                                                   candle_open_time=candle_open_time, created_at=now)
            except IntegrityError:
                return None  # evaluated already (or right now, by another worker)
            params = rule.resolve(strategy.params)
            candles = candles_read(candle_venue(strategy.account), strategy.symbol, strategy.timeframe,
                                   until=candle_open_time,
                                   limit=max(EVALUATION_WINDOW, 10 * rule.warmup(params)))
            if not len(candles) or int(candles.time[-1]) != datetime_to_ms(candle_open_time):
                raise _CandleMissing
            signals = rule.signals(candles, params)
            action = last_bar_action(signals, position=_position_sign(strategy),
                                     allow_short=bool(params.get("allow_short", False)))
            if action is not None:
                open_ms = datetime_to_ms(candle_open_time)
                signal, _ = signal_create(
                    strategy=strategy, source="strategy", idempotency_key=f"strategy:{strategy.pk}:{open_ms}",
                    action=action, atr=_atr_if_needed(strategy, candles),
                    payload={"rule": strategy.kind, "candle": candle_open_time.isoformat(), "candle_ms": open_ms},
                    now=now, enqueue=enqueue,
                )
                evaluation.action, evaluation.signal = action, signal
                evaluation.save(update_fields=["action", "signal"])
            Strategy.objects.filter(pk=strategy.pk).update(last_evaluated_at=now)
        return evaluation
    except _CandleMissing:
        log.warning("strategy %s: candle %s is not stored; nothing evaluated", strategy_id, candle_open_time)
        return None
    except Exception as exc:  # noqa: BLE001 - a broken rule must stop its strategy, never the worker
        log.exception("strategy %s failed on candle %s", strategy_id, candle_open_time)
        strategy_fail(strategy_id=strategy_id, error=f"{type(exc).__name__}: {exc}", now=now)
        return None


def _position_sign(strategy: Strategy) -> int:
    """Sign of the strategy's position in its market, counting working orders as if filled."""
    held = Position.objects.filter(strategy=strategy, symbol=strategy.symbol).values_list("quantity", flat=True)
    quantity = sum(held, Decimal(0))
    for side, left in Order.objects.filter(strategy=strategy, symbol=strategy.symbol,
                                           status__in=Order.WORKING).values_list("side", F("quantity") -
                                                                                 F("filled_quantity")):
        quantity += Side(side).sign * left
    return (quantity > 0) - (quantity < 0)


def _atr_if_needed(strategy: Strategy, candles: Candles) -> Decimal | None:
    """ATR(14) at the evaluated bar, sent with the signal when the strategy has ATR-multiple exits."""
    if "atr" not in (strategy.stop_loss_mode, strategy.take_profit_mode):
        return None
    return atr_value(candles)


def strategy_fail(*, strategy_id: int, error: str, now: datetime | None = None) -> Strategy:
    """Put a strategy in ERROR with the error text (audited): it is not evaluated again until started."""
    now = now or timezone.now()
    with transaction.atomic():
        strategy = Strategy.objects.select_for_update(no_key=True).get(pk=strategy_id)
        previous = strategy.status
        strategy.status, strategy.last_error = Strategy.Status.ERROR, error[:2000]
        strategy.save(update_fields=["status", "last_error", "updated_at"])
        audit(actor=ACTOR, action="strategy.error", entity="strategy", entity_id=strategy.pk, now=now,
              previous=previous, error=strategy.last_error)
    return strategy


def strategies_evaluate_due(*, now: datetime | None = None) -> dict[str, int]:
    """Evaluate every active indicator strategy on its closed candles newer than its last evaluation.

    At most MAX_EVALUATIONS_PER_TICK bars per strategy and tick, the newest ones (a strategy that fell behind
    does not trade stale bars late); a strategy never evaluated before starts at the newest closed bar.
    """
    from strategies.library import RULES
    from strategies.selectors import candle_venue, candles_closed_after, strategy_last_evaluated_candle

    now = now or timezone.now()
    counts = {"strategies": 0, "evaluated": 0, "signals": 0, "candles_fetched": 0}
    refreshed: set[tuple[int, str, str]] = set()
    for strategy in Strategy.objects.filter(status=Strategy.Status.ACTIVE, kind__in=list(RULES)).select_related(
            "account").order_by("pk"):
        counts["strategies"] += 1
        market = (strategy.account_id, strategy.symbol, strategy.timeframe)
        if strategy.account.venue != "paper" and market not in refreshed:
            refreshed.add(market)
            counts["candles_fetched"] += candles_refresh(account=strategy.account, symbol=strategy.symbol,
                                                         timeframe=strategy.timeframe, now=now)
        last = strategy_last_evaluated_candle(strategy.pk)
        due = candles_closed_after(candle_venue(strategy.account), strategy.symbol, strategy.timeframe, after=last,
                                   now=now, limit=1 if last is None else MAX_EVALUATIONS_PER_TICK)
        for open_time in due:
            evaluation = strategy_evaluate(strategy_id=strategy.pk, candle_open_time=open_time, now=now)
            if evaluation is not None:
                counts["evaluated"] += 1
                counts["signals"] += evaluation.signal_id is not None
    return counts


def candles_refresh(*, account: VenueAccount, symbol: str, timeframe: str, now: datetime | None = None) -> int:
    """Fetch the venue's recent closed candles into the store (the live feed); return how many were new.

    Only closed candles are stored (the current one still changes); a venue error is logged and retried on the
    next tick, never fatal to the strategies that read the store.
    """
    from exchanges.errors import VenueError
    from strategies.selectors import candle_venue
    from trading.connectors import connector_for

    now = now or timezone.now()
    key = candle_venue(account)  # the venue's name, with -testnet on testnet: the two networks' candles differ
    latest = Candle.objects.filter(venue=key, symbol=symbol, timeframe=timeframe).order_by(
        "-open_time").values_list("open_time", flat=True).first()
    try:
        fetched = connector_for(account).candles(symbol, timeframe, since=latest, limit=300)
    except VenueError as exc:
        log.warning("candles of %s %s from %s unavailable: %s", symbol, timeframe, account.venue, exc)
        return 0
    span = timeframe_delta(timeframe)
    rows = []
    for c in fetched:
        if c.open_time + span > now or (latest is not None and c.open_time <= latest):
            continue  # still forming, or already stored
        prices = (c.open, c.high, c.low, c.close)
        if not all(p.is_finite() and p > 0 for p in prices) or not c.volume.is_finite() or c.volume < 0 or \
                c.high < max(c.open, c.close) or c.low > min(c.open, c.close):
            log.warning("venue %s sent an impossible %s candle at %s: skipped", account.venue, symbol, c.open_time)
            continue
        rows.append(c)
    if not rows:
        return 0
    return candles_import(venue=key, symbol=symbol, timeframe=timeframe, rows=rows, by="candles_refresh",
                          now=now).inserted


# --------------------------------------------------------------------------------------------- backtest runs


def backtest_run_create(*, kind: str, params: dict, symbol: str, timeframe: str, venue: str = "paper",
                        start: datetime | None = None, end: datetime | None = None,
                        config: dict | None = None, by: str, now: datetime | None = None) -> BacktestRun:
    """Store a backtest request (validated) and queue it for a worker after commit."""
    from django.core.exceptions import ValidationError

    from strategies.backtest import config_problems
    from strategies.library import RULES

    now = now or timezone.now()
    errors: dict[str, list[str]] = {}
    if kind not in RULES:
        errors["kind"] = [f"unknown strategy kind {kind!r}; one of {', '.join(sorted(RULES))}"]
    else:
        for field, problems in RULES[kind].validate(params or {}).items():
            errors[f"params.{field}"] = problems
    problems = (config_problems(config or {}, fits=column_error) if isinstance(config or {}, dict)
                else ["must be an object"])
    if problems:
        errors["config"] = problems
    if timeframe not in TIMEFRAMES:
        errors["timeframe"] = [f"must be one of {', '.join(TIMEFRAMES)}"]
    if start and end and start > end:
        errors["end"] = ["must not be before start"]
    elif not errors:
        # A run with nothing to replay would only fail in the worker: say so now (import candles first).
        stored = Candle.objects.filter(venue=venue, symbol=symbol, timeframe=timeframe)
        if start:
            stored = stored.filter(open_time__gte=start)
        if end:
            stored = stored.filter(open_time__lte=end)
        if not stored.exists():
            errors["symbol"] = [f"no stored {timeframe} candles of {symbol!r} on venue {venue!r}"
                                f"{' in that period' if start or end else ''}; the dashboard's backtest page lists "
                                "the markets with candles (manage.py import_candles adds more)"]
    if errors:
        raise ValidationError(errors)
    with transaction.atomic():
        run = BacktestRun.objects.create(kind=kind, params=params or {}, venue=venue, symbol=symbol,
                                         timeframe=timeframe, start=start, end=end, config=config or {},
                                         created_by=by, created_at=now)
        audit(actor=by, action="backtest.queued", entity="backtest", entity_id=run.pk, now=now, kind=kind,
              symbol=symbol)
        transaction.on_commit(lambda: dispatch.task(BACKTEST_RUN).delay(run.pk))
    return run


def backtest_run_execute(*, run_id: int, now: datetime | None = None) -> BacktestRun:
    """Run a queued backtest on stored candles, recording progress, metrics and trades (idempotent)."""
    from strategies.backtest import config_from_json, run as backtest
    from strategies.report import result_to_json
    from strategies.selectors import candles_read

    claimed = BacktestRun.objects.filter(pk=run_id, status=BacktestRun.Status.QUEUED).update(
        status=BacktestRun.Status.RUNNING, progress=0.0)
    record = BacktestRun.objects.get(pk=run_id)
    if not claimed:
        return record  # done, failed, or another worker has it

    last = [0.0]

    def progress(fraction: float) -> None:
        if fraction - last[0] >= 0.05 or fraction >= 1.0:
            last[0] = fraction
            BacktestRun.objects.filter(pk=run_id).update(progress=round(fraction, 4))

    try:
        candles = candles_read(record.venue, record.symbol, record.timeframe, since=record.start, until=record.end)
        if len(candles) < 2:
            raise ValueError(f"only {len(candles)} stored candle(s) of {record.symbol} {record.timeframe} in range")
        result = backtest(candles, config_from_json(record.kind, record.params, record.config, fits=column_error),
                          progress=progress)
        data = result_to_json(result)
    except Exception as exc:  # noqa: BLE001 - a failed run is recorded with its reason, never retried blindly
        BacktestRun.objects.filter(pk=run_id).update(status=BacktestRun.Status.FAILED, error=str(exc)[:2000],
                                                     finished_at=now or timezone.now())
        log.warning("backtest %s failed: %s", run_id, exc)
    else:
        BacktestRun.objects.filter(pk=run_id).update(
            status=BacktestRun.Status.DONE, progress=1.0, metrics=data["metrics"], trades=data["trades"],
            finished_at=now or timezone.now())
    return BacktestRun.objects.get(pk=run_id)
