"""TradingView alert bodies to typed alerts: decoding, field validation, ticker matching, idempotency keys (pure)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, UTC
from decimal import Context, Decimal, InvalidOperation
from typing import Any

from exchanges.base import EPOCH

MAX_BODY_BYTES = 8 * 1024
# Bounds that every Decimal(38, 18) column can hold exactly.
_MAX_ABS = Decimal("1e15")
_MIN_EXPONENT = -18
_MAX_TEXT = 128

ACTIONS: dict[str, str] = {
    "buy": "open_long", "long": "open_long",
    "sell": "open_short", "short": "open_short",
    "close": "close", "exit": "close", "flat": "close",
    "reverse": "reverse",
}
ORDER_TYPES = ("market", "limit")
_KNOWN = {"passphrase", "strategy", "action", "ticker", "contracts", "position_size", "price", "order_type", "sl",
          "tp", "leverage", "order_id", "time", "id", "atr"}


@dataclass(frozen=True)
class Rejection:
    """A refused request: HTTP status, error code, a sentence, and the offending fields."""

    status: int
    error: str
    detail: str
    fields: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "detail": self.detail, "fields": self.fields}


@dataclass(frozen=True)
class Alert:
    """A validated alert; `action` is the engine's (open_long, open_short, close, reverse, target)."""

    strategy: str
    action: str
    raw_action: str
    ticker: str
    quantity: Decimal | None
    target: Decimal | None
    price: Decimal | None
    order_type: str
    stop_loss: Decimal | None
    take_profit: Decimal | None
    leverage: Decimal | None
    atr: Decimal | None
    order_id: str
    time: datetime | None
    explicit_id: str


class _DuplicateKey(ValueError):
    pass


class _BadConstant(ValueError):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _constant(name: str) -> Any:
    raise _BadConstant(name)


TOO_LARGE = Rejection(413, "too_large", f"the body is over {MAX_BODY_BYTES} bytes")
METHOD_NOT_ALLOWED = Rejection(405, "method_not_allowed", "use POST")


def declared_too_large(content_length: str | None) -> bool:
    """Whether a request's Content-Length header announces a body over MAX_BODY_BYTES (refused before reading)."""
    try:
        return int(content_length or 0) > MAX_BODY_BYTES
    except ValueError:
        return False


def body_decode(body: bytes, content_type: str | None) -> dict[str, Any] | Rejection:
    """Decode a JSON-object body sent as application/json or text/plain (TradingView's two content types)."""
    if len(body) > MAX_BODY_BYTES:
        return TOO_LARGE
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media not in ("application/json", "text/plain"):
        return Rejection(415, "unsupported_media_type", "send application/json or text/plain")
    try:
        text = body.decode("utf-8-sig")
        data = json.loads(text, object_pairs_hook=_pairs, parse_float=Decimal, parse_int=Decimal,
                          parse_constant=_constant)
    except _DuplicateKey as exc:
        return Rejection(400, "invalid_json", f"duplicate key {str(exc)[:40]!r}")
    except _BadConstant:
        return Rejection(400, "invalid_json", "NaN and Infinity are not allowed")
    except (UnicodeDecodeError, ValueError, RecursionError):  # JSONDecodeError is a ValueError; so are huge ints
        return Rejection(400, "invalid_json", "the body is not valid JSON")
    if not isinstance(data, dict):
        return Rejection(400, "invalid_json", "the body must be a JSON object")
    return data


def credentials(data: dict[str, Any]) -> tuple[str, str] | None:
    """Return (strategy slug, passphrase) when both are non-empty strings."""
    slug, passphrase = data.get("strategy"), data.get("passphrase")
    if isinstance(slug, str) and isinstance(passphrase, str) and slug and passphrase and len(slug) <= _MAX_TEXT:
        return slug, passphrase
    return None


def _number(errors: dict[str, str], data: dict[str, Any], name: str, *, positive: bool = True) -> Decimal | None:
    raw = data.get(name)
    if raw is None or raw == "":
        return None
    if isinstance(raw, bool) or not isinstance(raw, (Decimal, str)):
        errors[name] = "must be a number"
        return None
    try:
        value = Decimal(raw.strip()) if isinstance(raw, str) else raw
    except (InvalidOperation, ValueError):
        errors[name] = "must be a number" + (" (unfilled placeholder?)" if "{{" in str(raw) else "")
        return None
    if not value.is_finite():
        errors[name] = "must be finite"
        return None
    if abs(value) >= _MAX_ABS or (value != 0 and value.as_tuple().exponent < _MIN_EXPONENT  # type: ignore[operator]
                                  and value != value.quantize(Decimal(1).scaleb(_MIN_EXPONENT))):
        errors[name] = "out of range"
        return None
    if positive and value <= 0:
        errors[name] = "must be positive"
        return None
    return value.normalize(_WIDE) if value != 0 else Decimal(0)


_WIDE = Context(prec=60)  # normalize() at the default 28 digits would round an 11-digit value with 18 decimals


def _text(errors: dict[str, str], data: dict[str, Any], name: str, *, required: bool = False) -> str:
    raw = data.get(name)
    if raw is None or raw == "":
        if required:
            errors[name] = "is required"
        return ""
    if isinstance(raw, Decimal) and name in ("order_id", "id"):
        raw = str(raw)
    if not isinstance(raw, str):
        errors[name] = "must be a string"
        return ""
    if len(raw) > _MAX_TEXT:
        errors[name] = f"at most {_MAX_TEXT} characters"
        return ""
    if not raw.strip() and required:  # blanks only: as good as missing
        errors[name] = "is required"
    return raw.strip()


def time_parse(raw: Any) -> datetime | None:
    """An aware UTC time from ISO 8601 ({{timenow}}) or epoch seconds/milliseconds; None when unreadable."""
    if isinstance(raw, bool):
        return None
    try:
        if isinstance(raw, Decimal) or (isinstance(raw, str) and re.fullmatch(r"\d{9,13}(\.\d+)?", raw.strip())):
            seconds = Decimal(str(raw).strip())
            if not seconds.is_finite():
                return None
            if seconds > Decimal("1e11"):
                seconds /= 1000
            return EPOCH + timedelta(microseconds=int(seconds * 1_000_000))
        if isinstance(raw, str) and len(raw) <= 40:
            value = datetime.fromisoformat(raw.strip().replace("Z", "+00:00").replace("z", "+00:00"))
            if value.tzinfo is None:
                value = value.replace(tzinfo=UTC)
            return value.astimezone(UTC)
    except (ValueError, OverflowError, OSError, InvalidOperation):
        return None
    return None


def alert_validate(data: dict[str, Any], *, now: datetime, max_age_seconds: float = 120,
                   max_future_seconds: float = 60, require_time: bool = True) -> Alert | Rejection:
    """Validate a decoded alert: every bad field is named; stale or future alerts are refused."""
    errors: dict[str, str] = {}
    slug = _text(errors, data, "strategy", required=True)
    raw_action = _text(errors, data, "action", required=True).lower()
    if raw_action and raw_action not in ACTIONS:
        errors["action"] = f"unknown action; use one of {', '.join(ACTIONS)}"
    ticker = _text(errors, data, "ticker", required=True)
    quantity = _number(errors, data, "contracts")
    target = _number(errors, data, "position_size", positive=False)
    price = _number(errors, data, "price")
    stop_loss = _number(errors, data, "sl")
    take_profit = _number(errors, data, "tp")
    leverage = _number(errors, data, "leverage")
    atr = _number(errors, data, "atr")
    order_type = (_text(errors, data, "order_type") or "market").lower()
    if order_type not in ORDER_TYPES:
        errors["order_type"] = "must be market or limit"
    elif order_type == "limit" and price is None and "price" not in errors:
        errors["price"] = "is required for a limit order"
    order_id = _text(errors, data, "order_id")
    explicit_id = _text(errors, data, "id")
    when: datetime | None = None
    raw_time = data.get("time")
    if raw_time is None or raw_time == "":
        if require_time and not explicit_id:
            errors["time"] = "is required (use {{timenow}}) unless an explicit id is sent"
    else:
        when = time_parse(raw_time)
        if when is None:
            errors["time"] = "must be an ISO 8601 time or epoch seconds/milliseconds"
    if errors:
        return Rejection(400, "invalid_fields", "some fields are missing or invalid", errors)
    if when is not None:
        age = (now - when).total_seconds()
        if age > max_age_seconds:
            return Rejection(400, "stale_alert", f"the alert is {int(age)} s old (limit {int(max_age_seconds)} s)",
                             {"time": "too old"})
        if -age > max_future_seconds:
            return Rejection(400, "future_alert", "the alert time is in the future", {"time": "in the future"})
    action = ACTIONS[raw_action]
    if target is not None and action in ("open_long", "open_short"):
        # position_size is TradingView's signed size after the order: trade the difference (0 = close).
        action = "target"
    return Alert(strategy=slug, action=action, raw_action=raw_action, ticker=ticker, quantity=quantity,
                 target=target if action == "target" else None, price=price, order_type=order_type,
                 stop_loss=stop_loss, take_profit=take_profit, leverage=leverage, atr=atr, order_id=order_id,
                 time=when, explicit_id=explicit_id)


def ticker_normalize(ticker: str) -> tuple[str, bool]:
    """(concatenated base+quote, is_perp) of a TradingView ticker: BINANCE:BTCUSDT.P → ("BTCUSDT", True)."""
    value = ticker.strip().upper()
    if ":" in value and "/" not in value.split(":", 1)[0]:
        value = value.split(":", 1)[1]  # an exchange prefix, e.g. COINBASE:BTCUSD
    value = re.sub(r"_DLY?$", "", value)  # delayed-data suffix
    perp = value.endswith(".P") or value.endswith("PERP")
    value = re.sub(r"(\.P|PERP)$", "", value)
    return re.sub(r"[/\-_ ]", "", value), perp


def symbol_normalize(symbol: str) -> tuple[str, bool]:
    """(concatenated base+quote, is_perp) of one of our symbols: BTC/USDT:USDT → ("BTCUSDT", True).

    A Synthetix market (ETH-PERP) is a USD-margined perpetual: ("ETHUSD", True), so ETHUSD.P names it.
    """
    pair, _, settle = symbol.upper().partition(":")
    if not settle and pair.endswith("-PERP"):
        return pair.removesuffix("-PERP") + "USD", True
    return re.sub(r"[/\-_ ]", "", pair), bool(settle)


def ticker_matches(ticker: str, symbol: str) -> bool:
    """Whether a TradingView ticker names the strategy's market (BTCUSD ~ BTC/USD, BTCUSDT.P ~ BTC/USDT:USDT,
    ETHUSD.P ~ ETH-PERP), or is the market's own symbol."""
    return ticker.strip().upper() == symbol.upper() or ticker_normalize(ticker) == symbol_normalize(symbol)


def idempotency_key(alert: Alert) -> str:
    """`tv:id:` + hash of (strategy, explicit id), else `tv:` + sha256 of the canonical alert tuple."""
    if alert.explicit_id:
        return "tv:id:" + hashlib.sha256(f"{alert.strategy}\0{alert.explicit_id}".encode()).hexdigest()
    size = alert.target if alert.target is not None else alert.quantity
    parts = (alert.strategy, alert.raw_action, ticker_normalize(alert.ticker)[0] + (".P" if ticker_normalize(
        alert.ticker)[1] else ""), alert.order_id, alert.time.isoformat() if alert.time else "",
        "" if size is None else str(size))
    return "tv:" + hashlib.sha256("\0".join(parts).encode()).hexdigest()


def payload_from(data: dict[str, Any]) -> dict[str, Any]:
    """A JSON-storable copy of the known fields (Decimals as strings); secrets are masked by the caller."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in _KNOWN:
            out[key] = str(value) if isinstance(value, Decimal) else value if isinstance(
                value, (str, int, bool, type(None))) else str(value)[:_MAX_TEXT]
    return out


def extra_fields(data: dict[str, Any]) -> list[str]:
    """Names of unknown fields (kept out of the stored payload; TradingView templates often carry extras)."""
    return [k for k in data if k not in _KNOWN]


__all__ = ["Alert", "Rejection", "body_decode", "credentials", "alert_validate", "ticker_matches",
           "ticker_normalize", "symbol_normalize", "idempotency_key", "payload_from", "time_parse"]
