"""Dashboard pages of the trading app: overview, kill switch, strategies, orders, positions, signals.

Thin page views: selectors read, services write, templates shape. Every page needs a login; the kill switch and
webhook secrets are for staff only (403, and the controls are not shown to others).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Page, Paginator
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import reverse, reverse_lazy
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_http_methods, require_POST
from rest_framework import serializers

from trading import orders, selectors, services
from trading.apis.orders import OrderFilter
from trading.apis.signals import SignalFilter
from trading.domain import Rule
from trading.models import Order, Position, Signal, Strategy

PAGE_SIZE = 50
EQUITY_POINTS = 1000  # newest account snapshots drawn on the overview (about 16 h at one a minute)
View = Callable[..., HttpResponse]


def page(view: View) -> View:
    """A dashboard page: login required (a logged-out visitor is sent to the login page)."""
    return login_required(view, login_url=reverse_lazy("dashboard-login"))


def staff_page(view: View) -> View:
    """A page or action for staff only: logged-out visitors log in first, others get 403."""

    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_staff:
            raise PermissionDenied("staff only")
        return view(request, *args, **kwargs)

    wrapped.__name__ = view.__name__
    wrapped.__doc__ = view.__doc__
    return page(wrapped)


def actor(request: HttpRequest) -> str:
    """Who did it, for the audit trail."""
    return f"web:{request.user.get_username()}"


def errors_of(exc: ValidationError) -> dict[str, list[str]]:
    """A service's ValidationError as messages per field."""
    return exc.message_dict if hasattr(exc, "error_dict") else {"form": exc.messages}


def paginate(request: HttpRequest, queryset: QuerySet[Any]) -> Page:
    """One page of PAGE_SIZE rows (?page=N)."""
    return Paginator(queryset, PAGE_SIZE).get_page(request.GET.get("page"))


def is_partial(request: HttpRequest) -> bool:
    """Whether htmx asks for the live fragment only."""
    return request.headers.get("HX-Request") == "true" or request.GET.get("partial") == "1"


def query_without_page(request: HttpRequest) -> str:
    """The current filters as a query string, for pagination links."""
    params = request.GET.copy()
    params.pop("page", None)
    params.pop("partial", None)
    return params.urlencode()


def filters_read(serializer: type[serializers.Serializer], request: HttpRequest) -> tuple[dict[str, Any], dict]:
    """Validate list filters with the API's filter serializer: (filters, errors per parameter)."""
    raw = {k: v for k, v in request.GET.items() if k in serializer().fields and v != ""}
    form = serializer(data=raw)
    if not form.is_valid():
        return {}, {k: [str(m) for m in v] for k, v in form.errors.items()}
    return dict(form.validated_data), {}


# --------------------------------------------------------------------------------------------- overview


@page
def overview(request: HttpRequest) -> HttpResponse:
    """Equity curve, today's P&L, open positions, recent fills, the kill switch and venue health."""
    if is_partial(request):
        now = timezone.now()
        return render(request, "dashboard/_overview_live.html", {
            "accounts": selectors.accounts_today(now=now), "positions": selectors.positions_marked(),
            "fills": selectors.fills_latest(limit=10), "kill_switch": selectors.kill_switch_get(),
            "strategies_by_status": _status_counts(), "now": now, "prices": _prices(now)})
    return render(request, "dashboard/overview.html", _overview_context(request))


def _status_counts() -> dict[str, int]:
    from django.db.models import Count

    return dict(Strategy.objects.values("status").annotate(n=Count("id")).values_list("status", "n"))


def _series_by(points: list[tuple[Any, int, Any]], label: Callable[[int], str]) -> dict[str, Any]:
    """Snapshot rows (time, account id, equity) as chart data: one series per account (values as strings)."""
    stamps = [int(t.timestamp()) for t, _, _ in points]
    times = sorted(set(stamps))
    index = {t: i for i, t in enumerate(times)}
    series: dict[int, list[str | None]] = {}
    for stamp, (_, account_id, equity) in zip(stamps, points):
        series.setdefault(account_id, [None] * len(times))[index[stamp]] = str(equity)
    return {"x": times, "series": [{"label": label(k), "values": v} for k, v in series.items()]}


@staff_page
@require_POST
def kill_switch_engage(request: HttpRequest) -> HttpResponse:
    """Engage the kill switch (staff; needs the confirmation box and a reason)."""
    reason = request.POST.get("reason", "").strip()
    errors = {}
    if request.POST.get("confirm") != "yes":
        errors["confirm"] = ["tick the box to confirm: every entry halts and every position is closed"]
    if not reason:
        errors["reason"] = ["say why (kept in the audit trail)"]
    elif len(reason) > 500:
        errors["reason"] = ["at most 500 characters"]
    if errors:
        return _overview_with_errors(request, errors)
    services.kill_switch_engage(by=actor(request), reason=reason)
    return HttpResponseRedirect(reverse("dashboard-overview"))


@staff_page
@require_POST
def kill_switch_release(request: HttpRequest) -> HttpResponse:
    """Release the kill switch (staff; needs the confirmation box)."""
    if request.POST.get("confirm") != "yes":
        return _overview_with_errors(request, {"confirm_release": ["tick the box to confirm the release"]})
    services.kill_switch_release(by=actor(request))
    return HttpResponseRedirect(reverse("dashboard-overview"))


def _overview_with_errors(request: HttpRequest, errors: dict[str, list[str]]) -> HttpResponse:
    response = render(request, "dashboard/overview.html", {**_overview_context(request), "kill_errors": errors})
    response.status_code = 400
    return response


def _overview_context(request: HttpRequest) -> dict[str, Any]:
    now = timezone.now()
    accounts = selectors.accounts_today(now=now)
    names = {a.account.pk: str(a.account) for a in accounts}
    return {
        "accounts": accounts, "positions": selectors.positions_marked(), "fills": selectors.fills_latest(limit=10),
        "kill_switch": selectors.kill_switch_get(), "strategies_by_status": _status_counts(), "now": now,
        "equity_chart": _series_by(selectors.equity_points(since=now - timedelta(days=30), limit=EQUITY_POINTS),
                                   lambda k: names.get(k, str(k))),
        "venues": selectors.venue_health(), "prices": _prices(now),
    }


def _prices(now: datetime) -> list[selectors.PriceFreshness]:
    """The markets in use and the age of their prices (a stale one refuses entries)."""
    return selectors.prices_in_use(now=now, max_age_seconds=int(settings.TRADING["MAX_PRICE_AGE_SECONDS"]))


# --------------------------------------------------------------------------------------------- strategies

STRATEGY_FIELDS: list[dict[str, Any]] = [
    {"name": "name", "label": "Name"},
    {"name": "slug", "label": "Slug", "help": "lower-case letters, digits, hyphens; used in the webhook"},
    {"name": "kind", "label": "Kind", "choices": "kinds"},
    {"name": "account", "label": "Account", "choices": "accounts"},
    {"name": "mode", "label": "Mode", "choices": Strategy.Mode.choices},
    {"name": "symbol", "label": "Symbol", "help": "e.g. BTC/USD, ETH/BTC, BTC-PERP"},
    {"name": "timeframe", "label": "Timeframe", "choices": "timeframes"},
    {"name": "params", "label": "Params (JSON)", "textarea": True, "help": "{} for webhook strategies"},
    {"name": "sizing_mode", "label": "Sizing", "choices": Strategy.SizingMode.choices},
    {"name": "sizing_value", "label": "Sizing value", "help": "risk %, notional (quote) or quantity (base)"},
    {"name": "stop_loss_mode", "label": "Stop-loss", "choices": Strategy.ExitMode.choices},
    {"name": "stop_loss_value", "label": "Stop-loss value"},
    {"name": "take_profit_mode", "label": "Take-profit", "choices": Strategy.ExitMode.choices},
    {"name": "take_profit_value", "label": "Take-profit value"},
    {"name": "leverage", "label": "Leverage"},
    {"name": "protective_orders", "label": "Protective orders on the venue", "choices": Strategy.Protection.choices},
    {"name": "trailing_stop_percent", "label": "Trailing stop (%)", "help": "trail distance; empty: none"},
    {"name": "trailing_activation_percent", "label": "Trailing activation (%)",
     "help": "profit from entry at which trailing starts; empty or 0: at once"},
]
STRATEGY_DEFAULTS = {"kind": "webhook", "mode": "paper", "timeframe": "1m", "params": "{}", "sizing_mode": "notional",
                     "sizing_value": "100", "stop_loss_mode": "none", "take_profit_mode": "none", "leverage": "1",
                     "protective_orders": "auto"}


def _strategy_form(values: dict[str, Any], errors: dict[str, list[str]]) -> list[dict[str, Any]]:
    """The form's fields with their current values, choices and errors (params.<x> errors go under params)."""
    dynamic = {
        "kinds": [(k, k) for k in services.strategy_kinds()],
        "accounts": [(str(a.pk), str(a)) for a in selectors.account_list()],
        "timeframes": [(t, t) for t in services.TIMEFRAMES],
    }
    fields = []
    for spec in STRATEGY_FIELDS:
        name = spec["name"]
        field_errors = list(errors.get(name, []))
        if name == "params":
            field_errors += [f"{k[len('params.'):]}: {m}" for k, ms in errors.items() if k.startswith("params.")
                             for m in ms]
        choices = spec.get("choices")
        fields.append({**spec, "value": "" if values.get(name) is None else str(values.get(name)),
                       "choices": dynamic[choices] if isinstance(choices, str) else choices,
                       "errors": field_errors})
    return fields


def _strategy_data(request: HttpRequest) -> tuple[dict[str, Any], dict[str, Any], dict[str, list[str]]]:
    """The posted strategy fields: (raw values to re-show, data for the service, errors found before it)."""
    raw = {f["name"]: request.POST.get(f["name"], "").strip() for f in STRATEGY_FIELDS}
    data: dict[str, Any] = dict(raw)
    errors: dict[str, list[str]] = {}
    try:
        data["params"] = json.loads(raw["params"] or "{}")
    except ValueError as exc:
        errors["params"] = [f"not valid JSON: {exc}"]
    except RecursionError:
        errors["params"] = ["not valid JSON: nested too deeply"]
    for name in ("stop_loss_value", "take_profit_value", "trailing_stop_percent", "trailing_activation_percent"):
        data[name] = raw[name] or None
    return raw, data, errors


@page
def strategy_list(request: HttpRequest) -> HttpResponse:
    """Strategies with status, P&L, open position and last signal."""
    strategies = list(selectors.strategy_list_with_activity())
    pnl = {line.id: line for line in selectors.pnl_summary()["strategies"]}
    open_positions: dict[int, list[Position]] = {}
    for p in selectors.position_list():
        open_positions.setdefault(p.strategy_id, []).append(p)
    rows = [{"strategy": s, "pnl": pnl.get(s.pk), "positions": open_positions.get(s.pk, [])} for s in strategies]
    template = "dashboard/_strategy_rows.html" if is_partial(request) else "dashboard/strategy_list.html"
    return render(request, template, {"rows": rows})


@page
@require_http_methods(["GET", "POST"])
def strategy_create(request: HttpRequest) -> HttpResponse:
    """Create a strategy; every field is checked by the same service as the API (nothing saved on an error)."""
    values, errors = dict(STRATEGY_DEFAULTS), dict[str, Any]()
    if request.method == "POST":
        values, data, errors = _strategy_data(request)
        if not errors:
            try:
                strategy = services.strategy_create(data=data, by=actor(request))
            except ValidationError as exc:
                errors = errors_of(exc)
            else:
                return HttpResponseRedirect(reverse("dashboard-strategy", args=[strategy.pk]))
    response = render(request, "dashboard/strategy_form.html",
                      {"fields": _strategy_form(values, errors), "errors": errors, "strategy": None})
    if errors:
        response.status_code = 400
    return response


@page
@require_http_methods(["GET", "POST"])
def strategy_edit(request: HttpRequest, strategy_id: int) -> HttpResponse:
    """Change a strategy's settings through the update service."""
    strategy = get_object_or_404(selectors.strategy_list(), pk=strategy_id)
    values: dict[str, Any] = {f["name"]: getattr(strategy, f["name"] if f["name"] != "account" else "account_id")
                              for f in STRATEGY_FIELDS}
    values["params"] = json.dumps(strategy.params)
    errors: dict[str, list[str]] = {}
    if request.method == "POST":
        values, data, errors = _strategy_data(request)
        if not errors:
            try:
                services.strategy_update(strategy=strategy, data=data, by=actor(request))
            except ValidationError as exc:
                errors = errors_of(exc)
            else:
                return HttpResponseRedirect(reverse("dashboard-strategy", args=[strategy.pk]))
    response = render(request, "dashboard/strategy_form.html",
                      {"fields": _strategy_form(values, errors), "errors": errors, "strategy": strategy})
    if errors:
        response.status_code = 400
    return response


_TRANSITIONS = {"start": services.strategy_start, "pause": services.strategy_pause, "stop": services.strategy_stop}


@page
@require_POST
def strategy_transition(request: HttpRequest, strategy_id: int, action: str) -> HttpResponse:
    """Start, pause or stop a strategy."""
    if action not in _TRANSITIONS:
        raise PermissionDenied("unknown action")
    strategy = get_object_or_404(Strategy, pk=strategy_id)
    _TRANSITIONS[action](strategy=strategy, by=actor(request))
    return HttpResponseRedirect(_next_url(request) or reverse("dashboard-strategy", args=[strategy_id]))


def _next_url(request: HttpRequest) -> str:
    """The posted `next` when it is a path on this site (never an open redirect), else ""."""
    target = request.POST.get("next", "")
    ok = url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()},
                                         require_https=request.is_secure())
    return target if target and ok else ""


@page
def strategy_webhook(request: HttpRequest, strategy_id: int) -> HttpResponse:
    """The strategy's webhook URL and a ready-to-paste TradingView alert message."""
    strategy = get_object_or_404(selectors.strategy_list(), pk=strategy_id)
    return _webhook_page(request, strategy, secret=None)


@staff_page
@require_POST
def strategy_secret_rotate(request: HttpRequest, strategy_id: int) -> HttpResponse:
    """Issue a new webhook secret (staff): shown in this response only, never stored or shown again."""
    strategy = get_object_or_404(selectors.strategy_list(), pk=strategy_id)
    secret = services.strategy_webhook_secret_rotate(strategy=strategy, by=actor(request))
    response = _webhook_page(request, strategy, secret=secret)
    response["Cache-Control"] = "no-store"
    return response


def _webhook_page(request: HttpRequest, strategy: Strategy, *, secret: str | None) -> HttpResponse:
    url = request.build_absolute_uri(reverse("webhook-tradingview"))
    message = alert_message(strategy, secret=secret)
    return render(request, "dashboard/strategy_webhook.html",
                  {"strategy": strategy, "url": url, "message": message, "secret": secret})


def alert_message(strategy: Strategy, *, secret: str | None) -> str:
    """A TradingView alert message for a strategy's Pine strategy alerts (placeholders filled by TradingView)."""
    body = {
        "strategy": strategy.slug,
        "passphrase": secret or "<your webhook secret>",
        "action": "{{strategy.order.action}}",
        "ticker": "{{ticker}}",
        "contracts": "{{strategy.order.contracts}}",
        "position_size": "{{strategy.position_size}}",
        "price": "{{close}}",
        "order_id": "{{strategy.order.id}}",
        "time": "{{timenow}}",
    }
    return json.dumps(body, indent=2)


# --------------------------------------------------------------------------------------------- accounts


@page
def account_list(request: HttpRequest) -> HttpResponse:
    """Venue accounts and their risk limits; staff also see which credential variables are set (masked)."""
    accounts = list(selectors.account_list())
    rows = [{"account": a, "credentials": selectors.account_credentials_masked(a) if request.user.is_staff else None}
            for a in accounts]
    return render(request, "dashboard/account_list.html", {"rows": rows})


# ------------------------------------------------------------------------------------ orders, positions, signals


@page
def order_list(request: HttpRequest) -> HttpResponse:
    """Orders, newest first, filtered by strategy, account, status, symbol and time."""
    filters, filter_errors = filters_read(OrderFilter, request)
    orders = paginate(request, selectors.order_list(**filters))
    context = {"page": orders, "filter_errors": filter_errors, "query": query_without_page(request),
               "strategies": Strategy.objects.order_by("slug").only("id", "slug"), "statuses": Order.Status.choices,
               "f": request.GET}
    if is_partial(request):
        return render(request, "dashboard/_order_rows.html", context)
    return render(request, "dashboard/order_list.html", context)


@page
@require_POST
def order_cancel(request: HttpRequest, order_id: int) -> HttpResponse:
    """Cancel a working order."""
    order = get_object_or_404(Order, pk=order_id)
    if not order.is_final:
        orders.order_cancel(order_id=order.pk, by=actor(request))
    return HttpResponseRedirect(reverse("dashboard-orders"))


@page
def position_list(request: HttpRequest) -> HttpResponse:
    """Open positions with marks and unrealized P&L; each with a close button."""
    context = {"positions": selectors.positions_marked(), "message": request.GET.get("closed")}
    if is_partial(request):
        return render(request, "dashboard/_position_rows.html", context)
    return render(request, "dashboard/position_list.html", context)


@page
@require_POST
def position_close(request: HttpRequest, position_id: int) -> HttpResponse:
    """Ask the engine to close a position (a manual close signal)."""
    position = get_object_or_404(Position.objects.select_related("strategy"), pk=position_id)
    try:
        signal = services.position_close(position=position, by=actor(request))
    except ValidationError:
        return HttpResponseRedirect(reverse("dashboard-positions"))
    return HttpResponseRedirect(f"{reverse('dashboard-positions')}?closed={signal.pk}")


@page
def signal_list(request: HttpRequest) -> HttpResponse:
    """Signals with their decision trail and stage timings, filtered by strategy, source, decision and time."""
    raw = request.GET.copy()
    decision = raw.get("decision", "")
    filters, filter_errors = filters_read(SignalFilter, request)
    if decision in Signal.Status.values:
        filters["status"] = decision
    elif decision:
        filters["decision_rule"] = decision
    signals = paginate(request, selectors.signal_list(**filters))
    context = {"page": signals, "filter_errors": filter_errors, "query": query_without_page(request),
               "strategies": Strategy.objects.order_by("slug").only("id", "slug"), "sources": Signal.Source.choices,
               "statuses": Signal.Status.choices, "rules": DECISION_RULES, "f": request.GET,
               "problems": list(selectors.SIGNAL_PROBLEMS.items())}
    return render(request, "dashboard/signal_list.html", context)


DECISION_RULES = sorted({v for k, v in vars(Rule).items() if k.isupper() and isinstance(v, str)}
                        | {"strategy_inactive", "venue_unavailable"})
