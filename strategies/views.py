"""Dashboard pages of the strategies app: strategy detail (with its market's candles) and backtests."""

from __future__ import annotations

import json
from datetime import datetime, UTC
from typing import Any

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.views.decorators.http import require_http_methods, require_POST

from strategies import download, selectors, services
from strategies.candles import timeframe_delta
from strategies.library import RULES
from strategies.models import BacktestRun
from trading import selectors as trading_selectors
from trading.fields import parse_id
from trading.models import Order
from trading.services import TIMEFRAMES
from trading.views import actor, errors_of, is_partial, page, paginate

_EXIT_PURPOSES = {Order.Purpose.EXIT, Order.Purpose.STOP_LOSS, Order.Purpose.TAKE_PROFIT, Order.Purpose.KILL_SWITCH}


@page
def strategy_detail(request: HttpRequest, strategy_id: int) -> HttpResponse:
    """Price chart with entries and exits, equity curve, position, trades, and signals with their decision trail."""
    strategy = get_object_or_404(trading_selectors.strategy_list(), pk=strategy_id)
    pnl = next((line for line in trading_selectors.pnl_summary()["strategies"] if line.id == strategy.pk), None)
    fills = list(trading_selectors.fill_list(strategy=strategy.pk)[:200])
    context: dict[str, Any] = {
        "strategy": strategy, "pnl": pnl, "fills": fills,
        "positions": trading_selectors.positions_marked(strategy=strategy.pk),
        "signals": list(trading_selectors.signal_list(strategy=strategy.pk)[:50]),
    }
    if is_partial(request):
        return render(request, "dashboard/_strategy_live.html", context)
    price = selectors.strategy_price_chart(strategy)
    markers = [{"t": int(f.time.timestamp()), "price": str(f.price), "side": f.side,
                "exit": f.order.purpose in _EXIT_PURPOSES} for f in reversed(fills)]
    equity = trading_selectors.equity_points(strategy=strategy.pk)
    context["price_chart"] = {**price, "markers": markers, "symbol": strategy.symbol}
    context["equity_chart"] = {"x": [int(t.timestamp()) for t, _, _ in equity],
                               "series": [{"label": "equity", "values": [str(e) for _, _, e in equity]}]}
    return render(request, "dashboard/strategy_detail.html", context)


# --------------------------------------------------------------------------------------------- backtests

BACKTEST_DEFAULTS = {"kind": "rsi", "params": "{}", "symbol": "ETH/BTC", "timeframe": "1m", "venue": "paper",
                     "start": "", "end": "", "cash": "10000", "fee": "0.001", "slippage_bps": "0",
                     "allow_short": ""}


def _backtest_form(request: HttpRequest) -> tuple[dict[str, str], dict[str, Any], dict[str, list[str]]]:
    """Posted launch fields: (raw values, arguments for backtest_run_create, errors found before it)."""
    raw = {k: request.POST.get(k, "").strip() for k in BACKTEST_DEFAULTS}
    errors: dict[str, list[str]] = {}
    args: dict[str, Any] = {k: raw[k] for k in ("kind", "symbol", "timeframe", "venue")}
    try:
        args["params"] = json.loads(raw["params"] or "{}")
        if not isinstance(args["params"], dict):
            raise ValueError("must be a JSON object")
    except ValueError as exc:
        errors["params"] = [f"not a JSON object: {exc}"]
    except RecursionError:
        errors["params"] = ["not a JSON object: nested too deeply"]
    if raw["timeframe"] not in TIMEFRAMES:
        errors["timeframe"] = [f"must be one of {', '.join(TIMEFRAMES)}"]
    if not raw["symbol"]:
        errors["symbol"] = ["this field is required"]
    for name in ("start", "end"):
        value: datetime | None = None
        if raw[name]:
            try:  # a well-formed but impossible date (2024-02-30) raises; so does a UTC time past year 9999
                value = parse_datetime(raw[name])
                if value is not None:
                    value = (timezone.make_aware(value, UTC) if timezone.is_naive(value)
                             else value).astimezone(UTC)
            except (ValueError, OverflowError):
                value = None
            if value is None:
                errors[name] = ["a date and time such as 2024-01-31T12:00"]
        args[name] = value
    config: dict[str, Any] = {k: raw[k] for k in ("cash", "fee", "slippage_bps") if raw[k]}
    if raw["allow_short"]:
        config["allow_short"] = True
    args["config"] = config
    return raw, args, errors


@page
@require_http_methods(["GET", "POST"])
def backtest_list(request: HttpRequest) -> HttpResponse:
    """Backtest runs (pick two to compare) and the launch form (errors per field from the launch service)."""
    values, errors = dict(BACKTEST_DEFAULTS), dict[str, Any]()
    if request.method == "POST":
        values, args, errors = _backtest_form(request)
        if not errors:
            try:
                run = services.backtest_run_create(**args, by=actor(request))
            except ValidationError as exc:
                errors = errors_of(exc)
            else:
                return HttpResponseRedirect(reverse("dashboard-backtest", args=[run.pk]))
    runs = paginate(request, selectors.backtest_run_list())
    response = render(request, "dashboard/backtest_list.html", {
        "page": runs, "values": values, "errors": errors, "kinds": sorted(RULES), "timeframes": TIMEFRAMES,
        "download_offer": "symbol" in errors and not (set(errors) & {"timeframe", "start", "end"})
                          and _download_offered(values),
        "markets": selectors.candle_markets(),
        "param_help": {k: [(p.name, p.default, p.help) for p in rule.params] for k, rule in sorted(RULES.items())},
    })
    if errors:
        response.status_code = 400
    return response


def _download_offered(values: dict[str, str]) -> bool:
    """Whether the market the form names can be downloaded from its venue (checked without asking the venue)."""
    venue, network = download.feed_venue(values["venue"])
    try:
        download.download_check(venue=venue, network=network, timeframe=values["timeframe"], since=None, until=None)
    except ValidationError:
        return False
    return True


@page
@require_POST
def backtest_candles_download(request: HttpRequest) -> HttpResponse:
    """Queue a candle download for the backtest form's market and period; say so on the backtests page."""
    values, args, errors = _backtest_form(request)
    venue, network = download.feed_venue(values["venue"])  # the form names the store's key: a price feed's name
    if not errors:
        # The form's end is the last candle's open; a download's end is the first candle left out.
        until = args["end"] + timeframe_delta(values["timeframe"]) if args["end"] is not None else None
        try:
            download.candles_download_queue(venue=venue, network=network, symbol=values["symbol"],
                                            timeframe=values["timeframe"], since=args["start"], until=until,
                                            by=actor(request))
        except ValidationError as exc:
            errors = errors_of(exc)
    if errors:
        problems = "; ".join(f"{field}: {', '.join(m)}" for field, m in errors.items())
        messages.error(request, f"Nothing was queued: {problems}")
    else:
        messages.success(request, f"Download queued: {values['venue']} {values['symbol']} {values['timeframe']} "
                                  "candles arrive in the stored candles table as a worker fetches them (reload); "
                                  "they are stored under the venue's own symbol")
    return HttpResponseRedirect(reverse("dashboard-backtests"))


@page
def backtest_detail(request: HttpRequest, run_id: int) -> HttpResponse:
    """A run: progress while it runs, then metrics, equity and drawdown charts, and trades."""
    run = get_object_or_404(BacktestRun, pk=run_id)
    running = run.status in (BacktestRun.Status.QUEUED, BacktestRun.Status.RUNNING)
    if is_partial(request):
        response = render(request, "dashboard/_backtest_progress.html", {"run": run, "running": running})
        if not running:
            response["HX-Refresh"] = "true"  # finished: reload the page with the charts
        return response
    return render(request, "dashboard/backtest_detail.html", {
        "run": run, "running": running, "chart": selectors.backtest_equity_bars(run) or selectors.backtest_equity(run),
        "trades": run.trades[:1000],
        "metrics": _metrics_rows(run.metrics),
    })


@page
def backtest_compare(request: HttpRequest) -> HttpResponse:
    """Two runs side by side: metrics and equity curves."""
    ids = [i for i in map(parse_id, request.GET.getlist("run")) if i is not None][:2]
    runs = list(BacktestRun.objects.filter(pk__in=ids).order_by("id"))
    if len(runs) != 2:
        return render(request, "dashboard/backtest_compare.html", {"runs": runs, "error": "pick two runs"},
                      status=400)
    keys = sorted(set(runs[0].metrics) | set(runs[1].metrics))
    rows = [{"name": k, "a": runs[0].metrics.get(k), "b": runs[1].metrics.get(k)} for k in keys]
    charts = [{"label": f"#{r.pk} {r.kind}", **(selectors.backtest_equity_bars(r) or selectors.backtest_equity(r))}
              for r in runs]
    return render(request, "dashboard/backtest_compare.html", {"runs": runs, "rows": rows, "charts": charts})


def _metrics_rows(metrics: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(k, v) for k, v in sorted(metrics.items())]
