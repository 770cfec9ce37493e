"""The markets of a price feed's venue (tick, lot, minimums, leverage, fees), loaded from its public market data and
kept in the database (`FeedMarkets`, one row per feed) for every process: what a paper account on that feed trades.

Loaded on first use, then again once the stored list is MAX_AGE old; a reload that fails keeps the stored list (and
says so in the log). With nothing stored and the venue unreachable, a paper account on the feed cannot trade yet:
`feed_markets` raises a TemporaryError naming the feed and the venue's error.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.utils import timezone

from exchanges.base import Market
from exchanges.errors import TemporaryError, VenueError
from trading.models import FeedMarkets

log = logging.getLogger("trading.feedmarkets")

MAX_AGE = timedelta(days=1)
_FIELDS = {f.name: f.type for f in dataclasses.fields(Market)}


def feed_markets(feed: str, *, load: Callable[[], Sequence[Market]], now: datetime | None = None) -> tuple[Market, ...]:
    """A feed's markets: the stored list while younger than MAX_AGE, else a fresh one from `load` (the feed venue's
    public `markets()`), stored for every process. Raise TemporaryError when nothing is stored and `load` fails."""
    now = now or timezone.now()
    stored = FeedMarkets.objects.filter(feed=feed).values_list("markets", "loaded_at").first()
    if stored is not None and now - stored[1] < MAX_AGE:
        return markets_from_json(stored[0])
    try:
        markets = tuple(load())
        if not markets:
            raise TemporaryError(f"{feed} listed no markets", venue=feed)
    except VenueError as exc:
        if stored is not None:
            log.warning("the %s price feed's markets could not be reloaded (%s: %s); the list of %s is kept",
                        feed, type(exc).__name__, exc, stored[1].isoformat())
            return markets_from_json(stored[0])
        raise TemporaryError(f"the markets of the {feed} price feed cannot be loaded from its venue and none are "
                             f"stored yet ({type(exc).__name__}: {exc}): paper accounts on {feed} trade once it "
                             "answers", venue=feed) from exc
    feed_markets_store(feed, markets, now=now)
    log.info("the %s price feed's markets loaded: %d", feed, len(markets))
    return markets


def feed_markets_store(feed: str, markets: Sequence[Market], *, now: datetime) -> None:
    """Store a feed's markets (one upsert: two processes loading at once leave one row, the later list)."""
    FeedMarkets.objects.bulk_create([FeedMarkets(feed=feed, markets=markets_to_json(markets), loaded_at=now)],
                                    update_conflicts=True, unique_fields=["feed"],
                                    update_fields=["markets", "loaded_at"])


def markets_to_json(markets: Sequence[Market]) -> list[dict[str, Any]]:
    """Markets as JSON rows: every field, numbers as exact text."""
    return [{name: _text(getattr(m, name)) for name in _FIELDS} for m in markets]


def markets_from_json(rows: Sequence[Mapping[str, Any]]) -> tuple[Market, ...]:
    """Markets back from `markets_to_json` rows (a field the row lacks keeps its default)."""
    return tuple(Market(**{name: _value(_FIELDS[name], row[name]) for name in _FIELDS if name in row})
                 for row in rows)


def _text(value: object) -> Any:
    return str(value) if isinstance(value, Decimal) else value


def _value(kind: object, value: Any) -> Any:
    if value is None:
        return None
    if kind == "Decimal":
        return Decimal(str(value))
    if kind == "int | None":
        return int(value)
    return value
