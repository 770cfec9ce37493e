"""Configuration and control services: accounts, strategies, kill switch, snapshots. Each is atomic and audited."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from trading import dispatch, pnl
from trading.audit import audit
from trading.fields import INT32_MAX, column_error, parse_id
from trading.intake import signal_create
from trading.models import EquitySnapshot, KillSwitch, Position, PriceFeed, Strategy, VenueAccount

log = logging.getLogger("trading.services")

Errors = dict[str, list[str]]
ParamValidator = Callable[[Mapping[str, Any]], Errors]

# Strategy kinds register their parameter validators here (the strategies app does, at start-up), so the
# trading core validates params without importing the strategies package.
_KINDS: dict[str, ParamValidator] = {}
_CANDLE_KINDS: set[str] = set()  # kinds evaluated on candles: their venue must serve the strategy's timeframe
_USD_LIKE = {"USD", "USDT", "USDC"}
TIMEFRAMES = ("1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "12h", "1d")


def strategy_kind_register(name: str, validator: ParamValidator, *, reads_candles: bool = False) -> None:
    """Register a strategy kind and the function that validates its params (`reads_candles`: evaluated on candles)."""
    _KINDS[name] = validator
    if reads_candles:
        _CANDLE_KINDS.add(name)


def _no_params(params: Mapping[str, Any]) -> Errors:
    return {"params": ["this kind takes no parameters"]} if params else {}


strategy_kind_register("webhook", _no_params)
strategy_kind_register("manual", _no_params)


def strategy_kinds() -> list[str]:
    """Names of the strategy kinds that can be configured."""
    return sorted(_KINDS)


# --------------------------------------------------------------------------------------------- validation


def _decimal(errors: Errors, field: str, value: Any, *, required: bool = True, positive: bool = True,
             maximum: Decimal | None = None, allow_zero: bool = False) -> Decimal | None:
    if value is None or value == "":
        if required:
            errors.setdefault(field, []).append("this field is required")
        return None
    if isinstance(value, float):
        value = repr(value)
    try:
        number = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        errors.setdefault(field, []).append(f"{value!r} is not a number")
        return None
    if not number.is_finite():
        errors.setdefault(field, []).append("must be a finite number")
        return None
    unfit = column_error(number)
    if unfit:
        errors.setdefault(field, []).append(unfit)
        return None
    if positive and (number < 0 or (number == 0 and not allow_zero)):
        errors.setdefault(field, []).append("must be greater than 0" if not allow_zero else "must not be negative")
        return None
    if maximum is not None and number > maximum:
        errors.setdefault(field, []).append(f"must be at most {maximum}")
        return None
    return number


def account_validate(data: Mapping[str, Any], *, instance: VenueAccount | None = None) -> tuple[dict[str, Any], Errors]:
    """Check account settings; return cleaned values and errors per field."""
    errors: Errors = {}
    clean: dict[str, Any] = {}
    current = (lambda f: getattr(instance, f)) if instance else (lambda f: None)
    get = lambda f, default=None: data[f] if f in data else (current(f) if instance else default)  # noqa: E731

    name = str(get("name", "") or "").strip()
    if not name:
        errors["name"] = ["this field is required"]
    elif len(name) > 64:
        errors["name"] = ["at most 64 characters"]
    elif VenueAccount.objects.filter(name=name).exclude(pk=getattr(instance, "pk", None)).exists():  # type: ignore[misc]  # None: a new row
        errors["name"] = ["an account with this name exists"]
    clean["name"] = name
    venue, network = get("venue", "paper"), get("network", "paper")
    if venue not in VenueAccount.Venue.values:
        errors["venue"] = [f"must be one of {', '.join(VenueAccount.Venue.values)}"]
    if network not in VenueAccount.Network.values:
        errors["network"] = [f"must be one of {', '.join(VenueAccount.Network.values)}"]
    elif (venue == "paper") != (network == "paper"):
        errors["network"] = ["a paper account uses the paper network, and only a paper account does"]
    clean["venue"], clean["network"] = venue, network
    env = str(get("credentials_env", "") or "")
    if env and not re.fullmatch(r"[A-Z][A-Z0-9_]{0,63}", env):
        errors["credentials_env"] = ["an environment variable prefix such as COINBASE_MAIN (A-Z, 0-9, _)"]
    if venue not in ("paper", None) and not env:
        errors["credentials_env"] = ["a live account needs the prefix of its credential variables"]
    clean["credentials_env"] = env
    feed = get("price_feed", PriceFeed.DEMO) or PriceFeed.DEMO
    if feed not in PriceFeed.values:
        errors["price_feed"] = [f"must be one of {', '.join(PriceFeed.values)}"]
    elif venue != "paper" and feed != PriceFeed.DEMO:
        errors["price_feed"] = ["only a paper account chooses its price feed (a live account's is its venue's)"]
    clean["price_feed"] = feed
    clean["quote_asset"] = str(get("quote_asset", "USD") or "USD").upper()
    if not re.fullmatch(r"[A-Z0-9]{1,16}", clean["quote_asset"]):  # "ß".upper() is "SS": checked after upper()
        errors["quote_asset"] = ["an asset code of 1 to 16 letters A-Z or digits, such as USD or USDC"]

    clean["max_leverage"] = _decimal(errors, "max_leverage", get("max_leverage", "1"), maximum=Decimal(100))
    caps = get("market_leverage_caps", {}) or {}
    if not isinstance(caps, Mapping):
        errors["market_leverage_caps"] = ["must be an object of symbol: leverage"]
    else:
        sub: Errors = {}
        clean["market_leverage_caps"] = {
            str(k): str(_decimal(sub, "market_leverage_caps", v, maximum=Decimal(100))) for k, v in caps.items()
        }
        if sub:
            errors["market_leverage_caps"] = [f"{m} (each cap)" for m in sub["market_leverage_caps"]]
        bad_keys = [str(k)[:40] for k in caps if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9/:._-]{0,31}", str(k))]
        if bad_keys:
            errors.setdefault("market_leverage_caps", []).append(
                f"each key is a market symbol such as BTC/USD or BTC-PERP (up to 32 characters), not {bad_keys[0]!r}")
    mop = get("max_open_positions")
    if mop not in (None, ""):
        try:
            clean["max_open_positions"] = int(str(mop))
            if not 1 <= clean["max_open_positions"] <= INT32_MAX:
                raise ValueError
        except ValueError:
            errors["max_open_positions"] = [f"must be a whole number from 1 to {INT32_MAX}"]
    else:
        clean["max_open_positions"] = None
    for field in ("max_symbol_exposure", "max_account_exposure", "daily_loss_limit"):
        clean[field] = _decimal(errors, field, get(field), required=False)
    clean["paper_initial_cash"] = _decimal(errors, "paper_initial_cash", get("paper_initial_cash", "10000"))
    clean["paper_slippage_bps"] = _decimal(errors, "paper_slippage_bps", get("paper_slippage_bps", "0"),
                                           allow_zero=True, maximum=Decimal(1000))
    clean["paper_max_volume_share"] = _decimal(errors, "paper_max_volume_share", get("paper_max_volume_share"),
                                               required=False, maximum=Decimal(1))
    latency = get("paper_latency_ms", 0) or 0
    try:
        clean["paper_latency_ms"] = int(str(latency))
        if not 0 <= clean["paper_latency_ms"] <= 60000:
            raise ValueError
    except ValueError:
        errors["paper_latency_ms"] = ["must be a whole number of milliseconds between 0 and 60000"]
    return clean, errors


def strategy_validate(data: Mapping[str, Any], *, instance: Strategy | None = None) -> tuple[dict[str, Any], Errors]:
    """Check strategy settings and params; return cleaned values and errors per field."""
    errors: Errors = {}
    clean: dict[str, Any] = {}
    get = lambda f, default=None: data[f] if f in data else (getattr(instance, f) if instance else default)  # noqa: E731

    for field, limit in (("name", 100), ("slug", 64)):
        value = str(get(field, "") or "").strip()
        if not value:
            errors[field] = ["this field is required"]
        elif len(value) > limit:
            errors[field] = [f"at most {limit} characters"]
        clean[field] = value
    if clean["slug"] and not re.fullmatch(r"[a-z0-9][a-z0-9-]*", clean["slug"]):
        errors["slug"] = ["lower-case letters, digits and hyphens only"]
    elif clean["slug"] and Strategy.objects.filter(slug=clean["slug"]).exclude(
            pk=getattr(instance, "pk", None)).exists():  # type: ignore[misc]  # None: a new row
        errors["slug"] = ["a strategy with this slug exists"]

    account = get("account")
    if isinstance(account, (int, str)):
        account_id = parse_id(account)
        account = VenueAccount.objects.filter(pk=account_id).first() if account_id is not None else None
    if not isinstance(account, VenueAccount):
        errors["account"] = ["an existing venue account is required"]
        account = None
    clean["account"] = account

    kind = get("kind", "webhook")
    params = get("params", {}) or {}
    if kind not in _KINDS:
        errors["kind"] = [f"unknown kind {kind!r}; one of {', '.join(strategy_kinds())}"]
    elif not isinstance(params, Mapping):
        errors["params"] = ["must be an object"]
    else:
        for field, messages in _KINDS[kind](params).items():
            errors.setdefault(field if field == "params" else f"params.{field}", []).extend(messages)
    clean["kind"], clean["params"] = kind, dict(params) if isinstance(params, Mapping) else params

    symbol = str(get("symbol", "") or "").strip()
    if not symbol:
        errors["symbol"] = ["this field is required"]
    elif account is not None:
        from exchanges.errors import VenueError
        from trading.connectors import connector_for

        try:
            market = connector_for(account).market(symbol)
        except VenueError as exc:
            errors["symbol"] = [str(exc)]
        else:
            # P&L is booked in the account's currency: a market must settle in it (USD stablecoins count as USD).
            if market.quote != account.quote_asset and not {market.quote, account.quote_asset} <= _USD_LIKE:
                errors["symbol"] = [f"{symbol} settles in {market.quote}, the account in {account.quote_asset}"]
    clean["symbol"] = symbol
    timeframe = get("timeframe", "1m")
    if timeframe not in TIMEFRAMES:
        errors["timeframe"] = [f"must be one of {', '.join(TIMEFRAMES)}"]
    elif account is not None and kind in _CANDLE_KINDS and "symbol" not in errors:
        for field, messages in _candle_errors(account, kind, timeframe).items():
            errors.setdefault(field, []).extend(messages)
    clean["timeframe"] = timeframe
    mode = get("mode", "paper")
    if mode not in Strategy.Mode.values:
        errors["mode"] = ["must be paper or live"]
    elif account is not None and (mode == "paper") != (account.venue == "paper"):
        errors["mode"] = ["paper strategies trade on paper accounts, live strategies on live accounts"]
    clean["mode"] = mode

    sizing_mode = get("sizing_mode", "notional")
    if sizing_mode not in Strategy.SizingMode.values:
        errors["sizing_mode"] = [f"must be one of {', '.join(Strategy.SizingMode.values)}"]
    clean["sizing_mode"] = sizing_mode
    clean["sizing_value"] = _decimal(errors, "sizing_value", get("sizing_value", "100"),
                                     maximum=Decimal(100) if sizing_mode == "risk" else None)
    for prefix in ("stop_loss", "take_profit"):
        exit_mode = get(f"{prefix}_mode", "none")
        if exit_mode not in Strategy.ExitMode.values:
            errors[f"{prefix}_mode"] = [f"must be one of {', '.join(Strategy.ExitMode.values)}"]
        clean[f"{prefix}_mode"] = exit_mode
        clean[f"{prefix}_value"] = _decimal(
            errors, f"{prefix}_value", get(f"{prefix}_value"), required=exit_mode not in ("none", None),
            maximum=Decimal(100) if exit_mode == "percent" and prefix == "stop_loss" else None,
        ) if exit_mode != "none" else None
    if sizing_mode == "risk" and clean["stop_loss_mode"] == "none":
        errors.setdefault("stop_loss_mode", []).append("risk sizing needs a stop-loss")
    protection = get("protective_orders", Strategy.Protection.AUTO) or Strategy.Protection.AUTO
    if protection not in Strategy.Protection.values:
        errors["protective_orders"] = [f"must be one of {', '.join(Strategy.Protection.values)}"]
    clean["protective_orders"] = protection
    trail = get("trailing_stop_percent")
    clean["trailing_stop_percent"] = None if trail in (None, "") else _decimal(
        errors, "trailing_stop_percent", trail, maximum=Decimal(100))
    if clean["trailing_stop_percent"] is not None and clean["trailing_stop_percent"] >= 100:
        errors.setdefault("trailing_stop_percent", []).append("must be below 100 (a percentage of the price)")
    activation = get("trailing_activation_percent")
    clean["trailing_activation_percent"] = None if activation in (None, "") else _decimal(
        errors, "trailing_activation_percent", activation, allow_zero=True, maximum=Decimal(1000))
    if clean["trailing_activation_percent"] is not None and clean["trailing_stop_percent"] is None \
            and "trailing_stop_percent" not in errors:
        errors["trailing_activation_percent"] = ["needs a trailing_stop_percent (the trail distance)"]
    clean["leverage"] = _decimal(errors, "leverage", get("leverage", "1"), maximum=Decimal(100))
    if account is not None and clean["leverage"] is not None and clean["leverage"] > account.max_leverage:
        errors.setdefault("leverage", []).append(f"must be at most the account's max leverage {account.max_leverage}")
    return clean, errors


def _candle_errors(account: VenueAccount, kind: str, timeframe: str) -> Errors:
    """Why a strategy evaluated on candles cannot get them from where its account's candles come from: a timeframe
    that venue does not serve, or a venue that serves none (webhook and manual strategies read no candles)."""
    source, offered = _candle_source(account)
    if offered is None:
        return {}  # the demo feed builds the timeframes it is started with: any
    usable = [t for t in TIMEFRAMES if t in offered]
    if not usable:
        return {"kind": [f"{kind} is evaluated on candles and {source} serves none: use a webhook or manual "
                         "strategy on this account"]}
    if timeframe not in usable:
        return {"timeframe": [f"{source} serves candles in {', '.join(usable)}; not {timeframe}"]}
    return {}


def _candle_source(account: VenueAccount) -> tuple[str, tuple[str, ...] | None]:
    """Where an account's strategies get candles (a live account's venue, a paper account's price feed) and the
    timeframes it serves (None: any)."""
    from exchanges import registry
    from exchanges.errors import VenueError
    from trading.connectors import connector_for
    from trading.prices import price_feed_of

    if account.venue != VenueAccount.Venue.PAPER:
        return account.venue, connector_for(account).capabilities.timeframes  # built by the symbol check already
    feed = price_feed_of(account)
    if feed == PriceFeed.DEMO:
        return feed, None
    venue, _, testnet = feed.partition("-")
    try:  # the feed's venue as public market data: built from settings alone, no request
        public = registry.build_public(venue=venue, network="testnet" if testnet else "mainnet")
    except VenueError:
        return feed, ()  # a feed without public candles
    return feed, public.capabilities.timeframes


def _raise(errors: Errors) -> None:
    if errors:
        raise ValidationError({field: messages for field, messages in errors.items()})


# --------------------------------------------------------------------------------------------- accounts


def account_create(*, data: Mapping[str, Any], by: str, now: datetime | None = None) -> VenueAccount:
    """Create a venue account after validating every field; a paper account starts with its initial cash."""
    now = now or timezone.now()
    clean, errors = account_validate(data)
    _raise(errors)
    with transaction.atomic():
        account = VenueAccount(**clean)
        if account.venue == VenueAccount.Venue.PAPER:
            account.cash = account.paper_cash = account.paper_initial_cash
        account.save()
        audit(actor=by, action="account.created", entity="account", entity_id=account.pk, now=now,
              name=account.name, venue=account.venue, network=account.network)
    return account


def account_update(*, account: VenueAccount, data: Mapping[str, Any], by: str,
                   now: datetime | None = None) -> VenueAccount:
    """Change an account's settings (venue and network are fixed once created)."""
    now = now or timezone.now()
    if any(f in data and data[f] != getattr(account, f) for f in ("venue", "network")):
        raise ValidationError({"venue": ["the venue and network of an account cannot change"]})
    clean, errors = account_validate(data, instance=account)
    _raise(errors)
    return _changes_save(VenueAccount, account.pk, clean, entity="account", by=by, now=now)


def _changes_save(model: Any, pk: int, clean: dict[str, Any], *, entity: str, by: str, now: datetime) -> Any:
    """Save validated changes to a locked row and audit which fields changed."""
    with transaction.atomic():
        locked = model.objects.select_for_update(no_key=True).get(pk=pk)
        changed = {k: v for k, v in clean.items() if getattr(locked, k) != v}
        for k, v in changed.items():
            setattr(locked, k, v)
        locked.save()
        audit(actor=by, action=f"{entity}.updated", entity=entity, entity_id=pk, now=now, changed=sorted(changed))
    return locked


# --------------------------------------------------------------------------------------------- strategies


def strategy_create(*, data: Mapping[str, Any], by: str, now: datetime | None = None) -> Strategy:
    """Create a strategy (stopped) after validating every field and its params."""
    now = now or timezone.now()
    clean, errors = strategy_validate(data)
    _raise(errors)
    with transaction.atomic():
        strategy = Strategy.objects.create(**clean, status=Strategy.Status.STOPPED)
        audit(actor=by, action="strategy.created", entity="strategy", entity_id=strategy.pk, now=now,
              slug=strategy.slug, kind=strategy.kind)
    return strategy


def strategy_update(*, strategy: Strategy, data: Mapping[str, Any], by: str,
                    now: datetime | None = None) -> Strategy:
    """Change a strategy's settings; nothing is saved when any field is invalid."""
    now = now or timezone.now()
    clean, errors = strategy_validate(data, instance=strategy)
    _raise(errors)
    return _changes_save(Strategy, strategy.pk, clean, entity="strategy", by=by, now=now)


def _strategy_set_status(strategy: Strategy, status: str, by: str, now: datetime | None) -> Strategy:
    now = now or timezone.now()
    with transaction.atomic():
        locked = Strategy.objects.select_for_update(no_key=True).get(pk=strategy.pk)
        if locked.status != status:
            previous, locked.status = locked.status, status
            if status == Strategy.Status.ACTIVE:
                locked.last_error = ""
            locked.save(update_fields=["status", "last_error", "updated_at"])
            audit(actor=by, action=f"strategy.{status}", entity="strategy", entity_id=locked.pk, now=now,
                  previous=previous)
    return locked


def strategy_start(*, strategy: Strategy, by: str, now: datetime | None = None) -> Strategy:
    """Make a strategy active: its signals are traded."""
    return _strategy_set_status(strategy, Strategy.Status.ACTIVE, by, now)


def strategy_pause(*, strategy: Strategy, by: str, now: datetime | None = None) -> Strategy:
    """Pause a strategy: new signals are refused, open positions stay managed (stops still fire)."""
    return _strategy_set_status(strategy, Strategy.Status.PAUSED, by, now)


def strategy_stop(*, strategy: Strategy, by: str, now: datetime | None = None) -> Strategy:
    """Stop a strategy: new signals are refused."""
    return _strategy_set_status(strategy, Strategy.Status.STOPPED, by, now)


# --------------------------------------------------------------------------------------------- kill switch


def kill_switch_engage(*, by: str, reason: str = "", now: datetime | None = None) -> KillSwitch:
    """Engage the global kill switch: entries halt now; orders are canceled and positions closed after commit."""
    now = now or timezone.now()
    with transaction.atomic():
        switch, _ = KillSwitch.objects.select_for_update().get_or_create(pk=1)
        if not switch.engaged:
            switch.engaged, switch.reason, switch.changed_at, switch.changed_by = True, reason, now, by
            switch.flat_at, switch.still_open = None, []
            switch.save()
            audit(actor=by, action="kill_switch.engaged", entity="kill_switch", entity_id=1, now=now, reason=reason)
        # Wait for every in-flight risk decision: each holds its account lock, and none can pass once we commit.
        list(VenueAccount.objects.select_for_update(no_key=True).values_list("pk", flat=True))
        transaction.on_commit(dispatch.task(dispatch.KILL_SWITCH_ENFORCE).delay)
    return switch


def kill_switch_release(*, by: str, now: datetime | None = None) -> KillSwitch:
    """Release the kill switch by hand: entries are allowed again."""
    now = now or timezone.now()
    with transaction.atomic():
        switch, _ = KillSwitch.objects.select_for_update().get_or_create(pk=1)
        if switch.engaged:
            switch.engaged, switch.changed_at, switch.changed_by = False, now, by
            switch.save()
            audit(actor=by, action="kill_switch.released", entity="kill_switch", entity_id=1, now=now)
    return switch


# --------------------------------------------------------------------------------------------- P&L snapshots


def equity_snapshot_take(*, now: datetime | None = None) -> int:
    """Record equity and P&L of every account and its strategies at the current marks; return rows written.

    Each account is valued on its own (account_equity_snapshot_take): one that cannot be never costs another its
    snapshot.
    """
    now = now or timezone.now()
    return sum(account_equity_snapshot_take(account_id=pk, now=now)
               for pk in VenueAccount.objects.order_by("id").values_list("pk", flat=True))


def account_equity_snapshot_take(*, account_id: int, now: datetime) -> int:
    """Record equity and P&L of one account and its strategies at `now`, at the current marks; return rows written.

    An account that cannot be valued (no credentials, its venue down, no price for a market it holds) gets no row
    (a gap in its curve, never a guessed equity) and is reported: a warning in the log and a failure counted in its
    venue health (the overview, GET /api/venues/, /metrics). Idempotent: a second call for the same `now` writes
    nothing.
    """
    from trading.venuecheck import account_error_text
    from trading.venuehealth import venue_health_snapshot_record

    account = VenueAccount.objects.filter(pk=account_id).first()
    if account is None or EquitySnapshot.objects.filter(account=account, strategy=None, time=now).exists():
        return 0
    try:
        rows = _account_snapshot(account, list(Position.objects.filter(account=account)), now=now)
        with transaction.atomic():  # a savepoint when the caller holds a transaction: a failure stays here
            EquitySnapshot.objects.bulk_create(rows)
    except Exception as exc:  # noqa: BLE001 - reported, never raised: the other accounts' snapshots go on
        error = account_error_text(account, exc)
        log.warning("equity snapshot of account %s (id %s, %s) failed, no row written: %s", account.name,
                    account.pk, account.venue, error)
        venue_health_snapshot_record(account_id=account.pk, error=error, now=now)
        return 0
    venue_health_snapshot_record(account_id=account.pk, error=None, now=now)
    return len(rows)


def _account_snapshot(account: VenueAccount, positions: list[Position], *, now: datetime) -> list[EquitySnapshot]:
    """The account's own snapshot row and one per strategy, marked at the venue's prices (raises when it cannot)."""
    from trading.connectors import connector_for

    # Built even for a flat account, so one that could not trade (no credentials) is reported before it must.
    connector = connector_for(account)
    marks = {symbol: connector.ticker(symbol).price for symbol in sorted({p.symbol for p in positions if p.quantity})}
    per_strategy: dict[int, list[Decimal]] = {}
    for p in positions:
        state = pnl.PositionState(p.quantity, p.cost_basis, p.realized_pnl, p.fees_paid)
        upnl = pnl.unrealized(state, marks[p.symbol]) if p.quantity != 0 else Decimal(0)
        acc = per_strategy.setdefault(p.strategy_id, [Decimal(0), Decimal(0)])
        acc[0] += state.realized - state.fees
        acc[1] += upnl
    unrealized = sum((v[1] for v in per_strategy.values()), Decimal(0))
    realized = sum((v[0] for v in per_strategy.values()), Decimal(0))
    rows = [EquitySnapshot(account=account, time=now, equity=account.cash + unrealized, cash=account.cash,
                           realized_pnl=realized, unrealized_pnl=unrealized)]
    rows.extend(
        EquitySnapshot(account=account, strategy_id=sid, time=now, equity=r + u, cash=account.cash,
                       realized_pnl=r, unrealized_pnl=u)
        for sid, (r, u) in per_strategy.items()
    )
    return rows


# --------------------------------------------------------------------------------------------- manual close


def position_close(*, position: Position, by: str, now: datetime | None = None) -> Any:
    """Ask to close an open position: store a manual `close` signal (fresh idempotency key) and audit who asked."""
    import uuid

    now = now or timezone.now()
    if position.quantity == 0:
        raise ValidationError({"position": ["the position is already flat"]})
    with transaction.atomic():
        key = f"manual-close:{position.pk}:{uuid.uuid4().hex}"
        signal, _ = signal_create(strategy=position.strategy, source="manual", action="close", symbol=position.symbol,
                                  idempotency_key=key, payload={"requested_by": by, "position": position.pk}, now=now)
        audit(actor=by, action="position.close_requested", entity="position", entity_id=position.pk, now=now,
              signal=signal.pk)
    return signal


# --------------------------------------------------------------------------------------------- webhook secret


def strategy_webhook_secret_rotate(*, strategy: Strategy, by: str, now: datetime | None = None) -> str:
    """Issue a new webhook secret (32 random bytes, URL-safe); only its SHA-256 is stored. Return it once."""
    import hashlib
    import secrets

    now = now or timezone.now()
    secret = secrets.token_urlsafe(32)
    with transaction.atomic():
        locked = Strategy.objects.select_for_update(no_key=True).get(pk=strategy.pk)
        rotated = bool(locked.webhook_secret_hash)
        locked.webhook_secret_hash = hashlib.sha256(secret.encode()).hexdigest()
        locked.webhook_secret_set_at = now
        locked.save(update_fields=["webhook_secret_hash", "webhook_secret_set_at", "updated_at"])
        audit(actor=by, action="strategy.webhook_secret_rotated" if rotated else "strategy.webhook_secret_set",
              entity="strategy", entity_id=locked.pk, now=now)
    strategy.webhook_secret_hash, strategy.webhook_secret_set_at = locked.webhook_secret_hash, now
    return secret


# --------------------------------------------------------------------------------------------- API tokens

TOKEN_PREFIX_LENGTH = 8  # characters of a key shown to name its token (lists, audit rows, revocation)
_DEFAULT_TTL: Any = object()


def api_token_create(*, user: Any, by: str, ttl: timedelta | None = _DEFAULT_TTL,
                     now: datetime | None = None) -> tuple[Any, str]:
    """Issue an API token for `user`, expiring after `ttl` (default API_TOKEN_TTL; None: never). Only its SHA-512
    digest and a 15-character lookup prefix are stored; return the row and the key, which is shown this once."""
    from django.conf import settings
    from knox.models import AuthToken

    now = now or timezone.now()
    if ttl is _DEFAULT_TTL:
        ttl = settings.API_TOKEN_TTL
    if ttl is not None and ttl <= timedelta(0):
        raise ValidationError({"ttl": ["must be positive (or none: never expires)"]})
    with transaction.atomic():
        token, key = AuthToken.objects.create(user=user, expiry=ttl)
        audit(actor=by, action="api_token.created", entity="api_token", entity_id=key[:TOKEN_PREFIX_LENGTH], now=now,
              user=user.get_username(), expiry=token.expiry.isoformat() if token.expiry else None)
    return token, key


def api_token_revoke(*, token: Any, by: str, now: datetime | None = None) -> None:
    """Revoke an API token: its row is deleted, so its key is refused (401) from the next request on."""
    now = now or timezone.now()
    with transaction.atomic():
        deleted, _ = type(token).objects.filter(pk=token.pk).delete()
        if deleted:
            audit(actor=by, action="api_token.revoked", entity="api_token",
                  entity_id=token.token_key[:TOKEN_PREFIX_LENGTH], now=now, user=token.user.get_username())
