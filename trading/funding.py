"""Funding on perp positions, booked once per (account, market, funding time): a `Funding` row (unique on the three)
in the same transaction, under the account lock, as the positions' realized P&L and the account's cash it moves.
Amounts are exact Decimal, signed as the cash moved (> 0 received, < 0 paid). `funding_settle` (the beat task
`funding_settle`, every TRADING_FUNDING_EVERY_SECONDS) does both kinds; a retry, a second worker or a run after
downtime books nothing twice and catches up what it missed, up to TRADING_FUNDING_CATCHUP_HOURS back.

**Paper.** A paper account on a venue's price feed, where that venue pays funding (`Capabilities.funding_interval`:
Hyperliquid, every hour on the hour), pays and receives it at the venue's rate on its schedule. For each funding time
the venue published (Hyperliquid `fundingHistory`, through the feed's public connector; an hour missing from it is
an hour the venue paid nothing) while the account held the market, the paper venue charges position x price x rate
on its own ledger (`PaperVenue.apply_funding`: paper_cash, rounded half-up to its fee quantum) and our book takes the
same amount, shared between the strategies by their positions then:
- the position then is each strategy's position now less its fills since (our book holds every paper fill);
- the price then is the open of the venue's candle starting at the funding time (the first trade price after it),
  else the close of the last one before. Hyperliquid values funding at its oracle price, which it publishes for the
  present only (`activeAssetCtx`, `metaAndAssetCtxs`): a payment caught up after downtime could not be valued at it,
  and the candle gives an on-time run and a late one the same amount.
A funding time before one already booked is not looked at again (the venue skipped it); one whose price cannot be
read yet stops that market's run there, and the next run starts from it.

**Live.** A live account on a venue that reports our funding (Hyperliquid `userFunding`) books each payment from the
venue's record, at the venue's amount: the strategies holding the market then take their share of it (amount x their
position / the venue's position size) into realized P&L, and the account's cash moves by what they took (a payment
on a position that is not ours is left to reconciliation, which reports the unknown position).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Max
from django.utils import timezone

from exchanges.base import EPOCH, Connector, FundingRate, Market, Side, VenueCandle, VenueFunding
from exchanges.errors import VenueError
from exchanges.fills import FEE_QUANTUM, round_half_up
from trading.audit import audit
from trading.connectors import connector_for, paper_markets, public_connector
from trading.fields import tidy
from trading.models import Fill, Funding, Position, PriceFeed, VenueAccount

log = logging.getLogger("trading.funding")

ZERO = Decimal(0)
# The candle whose open values a payment, by funding interval (the venue's own candles: trades, not the oracle).
CANDLE_TIMEFRAMES = {timedelta(hours=1): "1h", timedelta(hours=8): "8h"}


@dataclass(frozen=True)
class Holding:
    """An account's strategies in one market: their signed quantities now and their fills since `since`."""

    since: datetime  # funding times from here on are due
    quantities: Mapping[int, Decimal]  # strategy id -> signed base qty now
    fills: Sequence[tuple[datetime, int, Decimal]]  # (time, strategy id, signed base qty), fills after `since`

    def at(self, when: datetime) -> dict[int, Decimal]:
        """Each strategy's signed quantity at `when` (a fill at `when` itself counts as before it); flat ones left
        out."""
        held = dict(self.quantities)
        for time, strategy_id, signed in self.fills:
            if time > when:
                held[strategy_id] = held.get(strategy_id, ZERO) - signed
        return {s: q for s, q in held.items() if q != 0}

    def ever_held(self) -> bool:
        """Whether any position was open at some moment since `since`."""
        return any(self.quantities.values()) or bool(self.fills)


def funding_split(amount: Decimal, shares: Mapping[int, Decimal], size: Decimal,
                  quantum: Decimal = FEE_QUANTUM) -> dict[int, Decimal]:
    """Each strategy's part of a funding `amount` paid on a position of `size` (signed base qty): amount x its signed
    qty / size, rounded half-up to `quantum`. When the strategies hold the whole position the rounding rest goes to
    the largest holder, so the parts add up to the amount exactly. Pure."""
    if size == 0 or not shares:
        return {}
    parts = {s: round_half_up(amount * q / size, quantum) for s, q in shares.items()}
    if sum(shares.values(), ZERO) == size:
        largest = max(shares, key=lambda s: (abs(shares[s]), -s))
        parts[largest] += amount - sum(parts.values(), ZERO)
    return parts


def floor_time(when: datetime, interval: timedelta) -> datetime:
    """The funding time `when` belongs to: the start of its interval on the UTC grid (a Hyperliquid rate stamped a
    few ms past the hour is that hour's)."""
    return when - (when - EPOCH) % interval


def funding_settle(*, now: datetime | None = None) -> dict[str, int]:
    """Book the funding due on every paper account on a venue's feed and every live account whose venue reports it;
    return how many payments were booked of each kind and how many markets or accounts failed (tried next run)."""
    now = now or timezone.now()
    counts = {"paper": 0, "venue": 0, "failed": 0}
    window = timedelta(hours=int(settings.TRADING["FUNDING_CATCHUP_HOURS"]))
    feeds = (VenueAccount.objects.filter(venue=VenueAccount.Venue.PAPER).exclude(price_feed=PriceFeed.DEMO)
             .values_list("price_feed", flat=True).distinct().order_by("price_feed"))
    for feed in feeds:
        booked, failed = _paper_feed_settle(feed, now=now, window=window)
        counts["paper"] += booked
        counts["failed"] += failed
    for account in VenueAccount.objects.exclude(venue=VenueAccount.Venue.PAPER).order_by("pk"):
        try:
            counts["venue"] += venue_funding_record(account=account, now=now, window=window)
        except VenueError as exc:
            counts["failed"] += 1
            log.warning("funding of account %s not read from its venue (%s: %s); the next run tries again",
                        account.pk, type(exc).__name__, exc)
    return counts


# --------------------------------------------------------------------------------------------- paper


def _paper_feed_settle(feed: str, *, now: datetime, window: timedelta) -> tuple[int, int]:
    """Book the funding due on one feed's paper accounts; return (payments booked, markets that failed)."""
    try:
        public = public_connector(feed)
    except VenueError:
        return 0, 0  # a feed whose venue has no public data has no rates either
    interval = public.capabilities.funding_interval
    if interval is None:
        return 0, 0
    try:
        perps = {m.symbol: m for m in paper_markets(feed) if m.kind == "perp"}
    except VenueError as exc:
        log.warning("funding on the %s feed waits for its markets: %s", feed, exc)
        return 0, 1
    due: dict[str, dict[int, Holding]] = {}
    start = floor_time(now - window, interval)
    for account_id in VenueAccount.objects.filter(venue=VenueAccount.Venue.PAPER, price_feed=feed).values_list(
            "pk", flat=True).order_by("pk"):
        for symbol, holding in _holdings(account_id, perps, start=start, interval=interval).items():
            due.setdefault(symbol, {})[account_id] = holding
    booked = failed = 0
    for symbol, holdings in sorted(due.items()):
        since = min(h.since for h in holdings.values())
        if since > now:
            continue  # its next funding time has not come: no request (a run every few minutes asks once an hour)
        try:
            rates = [r for r in public.funding_rates(symbol, since=since, until=now) if r.time <= now]
            prices = _candle_prices(public, symbol, CANDLE_TIMEFRAMES.get(interval, "1h"), since=since, now=now,
                                    count=len(rates))
        except VenueError as exc:
            failed += 1
            log.warning("funding of %s on the %s feed not read (%s: %s); the next run tries again", symbol, feed,
                        type(exc).__name__, exc)
            continue
        for account_id, holding in holdings.items():
            try:
                booked += _paper_market_settle(account_id, perps[symbol], holding, rates, prices, interval=interval,
                                               now=now)
            except VenueError as exc:  # the account's paper venue could not charge it: tried again next run
                failed += 1
                log.warning("funding of %s on account %s not booked (%s: %s)", symbol, account_id,
                            type(exc).__name__, exc)
    return booked, failed


def _holdings(account_id: int, perps: Mapping[str, Market], *, start: datetime,
              interval: timedelta) -> dict[str, Holding]:
    """The perp markets of an account with a position at some moment from their first funding time due on (the
    interval after the last booked, at most `start` back)."""
    last = dict(Funding.objects.filter(account_id=account_id, symbol__in=list(perps)).values("symbol").annotate(
        last=Max("time")).values_list("symbol", "last"))
    quantities: dict[str, dict[int, Decimal]] = {}
    for symbol, strategy_id, quantity in Position.objects.filter(account_id=account_id, symbol__in=list(perps)) \
            .values_list("symbol", "strategy_id", "quantity"):
        quantities.setdefault(symbol, {})[strategy_id] = quantity
    found = {}
    for symbol, held in quantities.items():
        since = max(start, last[symbol] + interval) if symbol in last else start
        fills = [(time, strategy_id, quantity if side == Side.BUY.value else -quantity)
                 for time, strategy_id, side, quantity in Fill.objects.filter(
                     account_id=account_id, symbol=symbol, time__gt=since).values_list(
                     "time", "strategy_id", "side", "quantity").order_by("time", "pk")]
        holding = Holding(since=since, quantities=held, fills=fills)
        if holding.ever_held():
            found[symbol] = holding
    return found


def _candle_prices(public: Connector, symbol: str, timeframe: str, *, since: datetime, now: datetime,
                   count: int) -> list[VenueCandle]:
    """The venue's candles from the one open at `since` (or the last before it) to now, oldest first."""
    if not count:
        return []
    limit = min(5000, (now - since) // timedelta(hours=1) + 3)  # hourly candles or coarser: enough of them
    return list(public.candles(symbol, timeframe, since=since - timedelta(hours=1), limit=limit))


def _price_at(candles: Sequence[VenueCandle], when: datetime) -> Decimal | None:
    """The open of the candle that opens at `when`, else the close of the last one opened before it."""
    before = None
    for candle in candles:
        if candle.open_time == when:
            return candle.open
        if candle.open_time < when:
            before = candle.close
    return before


def _paper_market_settle(account_id: int, market: Market, holding: Holding, rates: Sequence[FundingRate],
                         candles: Sequence[VenueCandle], *, interval: timedelta, now: datetime) -> int:
    """Book one account's funding times due in one market, oldest first; return how many were booked."""
    booked = 0
    for rate in rates:
        when = floor_time(rate.time, interval)
        if when < holding.since or not holding.at(rate.time):
            continue
        price = _price_at(candles, when)
        if price is None:
            log.warning("funding of %s at %s on account %s waits for a price", market.symbol, when.isoformat(),
                        account_id)
            break
        booked += paper_funding_book(account_id=account_id, symbol=market.symbol, time=when, rate=rate.rate,
                                     price=price, charged_at=rate.time, now=now)
    return booked


def paper_funding_book(*, account_id: int, symbol: str, time: datetime, rate: Decimal, price: Decimal,
                       charged_at: datetime | None = None, now: datetime | None = None) -> int:
    """Charge one funding time on a paper account, once: the paper venue charges its position at `charged_at` (the
    venue's stamp; default `time`) x price x rate on its own ledger, and our book takes the same amount (the
    strategies' realized P&L, the account's cash) with the Funding row; return 1 when booked, 0 when it was already
    or nothing was held."""
    now = now or timezone.now()
    charged_at = charged_at or time
    try:
        with transaction.atomic():
            account = VenueAccount.objects.select_for_update(no_key=True).get(pk=account_id)
            if Funding.objects.filter(account_id=account_id, symbol=symbol, time=time).exists():
                return 0
            shares = _quantities_at(account_id, symbol, charged_at)
            if not shares:
                return 0
            venue = connector_for(account)
            apply_funding = getattr(venue, "apply_funding", None)
            if not callable(apply_funding):
                raise VenueError(f"account {account_id}'s venue charges no funding", venue=account.venue)
            size = sum(shares.values(), ZERO)
            amount = -apply_funding(symbol, rate, price=price, quantity=size)
            parts = funding_split(amount, shares, size) if size else {s: ZERO for s in shares}
            _book(account, symbol=symbol, time=time, source=Funding.Source.PAPER, rate=rate, price=price,
                  quantity=size, amount=amount, parts=parts, ref="", now=now)
    except IntegrityError:  # another worker booked it between our check and insert: its row stands
        return 0
    return 1


# --------------------------------------------------------------------------------------------- live


def venue_funding_record(*, account: VenueAccount, now: datetime | None = None,
                         window: timedelta | None = None) -> int:
    """Book the funding payments a live account's venue reports since the last one booked (at most `window` back),
    each once; return how many were booked. Venues that report none are skipped."""
    now = now or timezone.now()
    window = window or timedelta(hours=int(settings.TRADING["FUNDING_CATCHUP_HOURS"]))
    if not Position.objects.filter(account=account).exists():
        return 0  # nothing of ours can have paid funding there
    connector = connector_for(account)
    interval = connector.capabilities.funding_interval
    if interval is None:
        return 0
    last = Funding.objects.filter(account=account, source=Funding.Source.VENUE).aggregate(last=Max("time"))["last"]
    if last is not None and last + interval > now:
        return 0  # the next funding time has not come
    since = max(now - window, last) if last is not None else now - window  # the last time again: idempotent
    booked = 0
    for payment in connector.funding_payments(since=since, until=now):
        booked += venue_funding_book(account_id=account.pk, payment=payment,
                                     time=floor_time(payment.time, interval), now=now)
    return booked


def venue_funding_book(*, account_id: int, payment: VenueFunding, time: datetime,
                       now: datetime | None = None) -> int:
    """Book one funding payment a venue reported, once: the strategies holding the market at its time take their
    share; return 1 when booked, 0 when it was already or the position was not ours."""
    now = now or timezone.now()
    try:
        with transaction.atomic():
            account = VenueAccount.objects.select_for_update(no_key=True).get(pk=account_id)
            if Funding.objects.filter(account_id=account_id, symbol=payment.symbol, time=time).exists():
                return 0
            shares = _quantities_at(account_id, payment.symbol, payment.time)
            parts = funding_split(payment.amount, shares, payment.size)
            if not parts:
                return 0
            _book(account, symbol=payment.symbol, time=time, source=Funding.Source.VENUE, rate=payment.rate,
                  price=None, quantity=payment.size, amount=sum(parts.values(), ZERO), parts=parts, ref=payment.ref,
                  now=now)
    except IntegrityError:
        return 0
    return 1


# --------------------------------------------------------------------------------------------- the book


def _quantities_at(account_id: int, symbol: str, when: datetime) -> dict[int, Decimal]:
    """Each strategy's signed quantity in a market at `when`, from its position now and its fills since (read under
    the account lock: every fill is recorded under it)."""
    quantities = dict(Position.objects.filter(account_id=account_id, symbol=symbol).values_list(
        "strategy_id", "quantity"))
    fills = [(time, strategy_id, quantity if side == Side.BUY.value else -quantity)
             for time, strategy_id, side, quantity in Fill.objects.filter(
                 account_id=account_id, symbol=symbol, time__gt=when).values_list(
                 "time", "strategy_id", "side", "quantity")]
    return Holding(since=when, quantities=quantities, fills=fills).at(when)


def _book(account: VenueAccount, *, symbol: str, time: datetime, source: str, rate: Decimal, price: Decimal | None,
          quantity: Decimal, amount: Decimal, parts: Mapping[int, Decimal], ref: str, now: datetime) -> None:
    """Write one payment into our book: each strategy's part into its position's realized P&L, the sum into the
    account's cash, and the Funding row (the caller holds the account lock)."""
    for strategy_id, part in sorted(parts.items()):
        if part:
            Position.objects.filter(account_id=account.pk, strategy_id=strategy_id, symbol=symbol).update(
                realized_pnl=F("realized_pnl") + part, updated_at=now)
    moved = sum(parts.values(), ZERO)
    if moved:
        VenueAccount.objects.filter(pk=account.pk).update(cash=F("cash") + moved)
    Funding.objects.create(account=account, symbol=symbol, time=time, source=source, rate=rate, price=price,
                           quantity=quantity, amount=amount, venue_ref=ref[:128], recorded_at=now,
                           by_strategy={str(s): str(tidy(p)) for s, p in parts.items()})
    audit(actor="funding", action="funding.booked", entity="account", entity_id=account.pk, now=now, symbol=symbol,
          time=time, source=source, rate=rate, price=price, quantity=quantity, amount=amount)
