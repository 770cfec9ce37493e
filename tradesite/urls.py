"""URL map: admin, health probes, the control API (with its OpenAPI schema and docs), and each app's routes."""

from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from strategies import apis as backtest_apis
from tradesite import health, metrics
from trading.apis import (
    accounts as accounts_api,
    health as health_api,
    killswitch as killswitch_api,
    orders as orders_api,
    pnl as pnl_api,
    signals as signals_api,
    strategies as strategies_api,
    tokens as tokens_api,
)
from webhooks.apis import SignalCreateApi
from django.contrib.auth import views as auth_views
from strategies import views as strategy_views
from trading import views as pages
from webhooks import views as webhook_views

# The dashboard: server-rendered pages (login required on each).
page_patterns = [
    path("", pages.overview, name="dashboard-overview"),
    path("login/", auth_views.LoginView.as_view(template_name="dashboard/login.html", next_page="dashboard-overview",
                                                redirect_authenticated_user=True), name="dashboard-login"),
    path("logout/", auth_views.LogoutView.as_view(next_page="dashboard-login"), name="dashboard-logout"),
    path("kill-switch/engage/", pages.kill_switch_engage, name="dashboard-kill-engage"),
    path("kill-switch/release/", pages.kill_switch_release, name="dashboard-kill-release"),
    path("strategies/", pages.strategy_list, name="dashboard-strategies"),
    path("strategies/new/", pages.strategy_create, name="dashboard-strategy-create"),
    path("strategies/<int:strategy_id>/", strategy_views.strategy_detail, name="dashboard-strategy"),
    path("strategies/<int:strategy_id>/edit/", pages.strategy_edit, name="dashboard-strategy-edit"),
    path("strategies/<int:strategy_id>/webhook/", pages.strategy_webhook, name="dashboard-strategy-webhook"),
    path("strategies/<int:strategy_id>/rotate-secret/", pages.strategy_secret_rotate,
         name="dashboard-strategy-rotate"),
    path("strategies/<int:strategy_id>/<str:action>/", pages.strategy_transition, name="dashboard-strategy-action"),
    path("accounts/", pages.account_list, name="dashboard-accounts"),
    path("orders/", pages.order_list, name="dashboard-orders"),
    path("orders/<int:order_id>/cancel/", pages.order_cancel, name="dashboard-order-cancel"),
    path("positions/", pages.position_list, name="dashboard-positions"),
    path("positions/<int:position_id>/close/", pages.position_close, name="dashboard-position-close"),
    path("signals/", pages.signal_list, name="dashboard-signals"),
    path("backtests/", strategy_views.backtest_list, name="dashboard-backtests"),
    path("backtests/compare/", strategy_views.backtest_compare, name="dashboard-backtest-compare"),
    path("backtests/download/", strategy_views.backtest_candles_download, name="dashboard-backtest-download"),
    path("backtests/<int:run_id>/", strategy_views.backtest_detail, name="dashboard-backtest"),
    path("webhook-tester/", webhook_views.webhook_tester, name="dashboard-webhook-tester"),
]


def by_method(default: Any, **views: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """One URL, a view per HTTP method (GET /api/signals/ lists, POST submits through the webhooks app).

    Each DRF view does its own authentication and CSRF checks; the schema documents `default`'s class.
    """
    views = {"get": default, "head": default, "options": default, **views}

    @csrf_exempt
    def dispatch(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        view = views.get(request.method.lower() if request.method else "")
        if view is None:
            return HttpResponseNotAllowed(sorted(m.upper() for m in views))
        return view(request, *args, **kwargs)

    dispatch.cls = default.cls  # type: ignore[attr-defined]
    dispatch.initkwargs = default.initkwargs  # type: ignore[attr-defined]
    return dispatch



api_patterns = [
    path("strategies/", strategies_api.StrategyListApi.as_view(), name="strategy-list"),
    path("strategies/validate/", strategies_api.StrategyValidateApi.as_view(), name="strategy-validate"),
    path("strategies/<int:strategy_id>/", strategies_api.StrategyDetailApi.as_view(), name="strategy-detail"),
    path("strategies/<int:strategy_id>/start/", strategies_api.StrategyStartApi.as_view(), name="strategy-start"),
    path("strategies/<int:strategy_id>/pause/", strategies_api.StrategyPauseApi.as_view(), name="strategy-pause"),
    path("strategies/<int:strategy_id>/stop/", strategies_api.StrategyStopApi.as_view(), name="strategy-stop"),
    path("strategies/<int:strategy_id>/rotate-secret/", strategies_api.StrategySecretRotateApi.as_view(),
         name="strategy-rotate-secret"),
    path("accounts/", accounts_api.AccountListApi.as_view(), name="account-list"),
    path("accounts/<int:account_id>/", accounts_api.AccountDetailApi.as_view(), name="account-detail"),
    path("venues/", health_api.VenueHealthListApi.as_view(), name="venue-health-list"),
    path("orders/", orders_api.OrderListApi.as_view(), name="order-list"),
    path("orders/<int:order_id>/", orders_api.OrderDetailApi.as_view(), name="order-detail"),
    path("orders/<int:order_id>/cancel/", orders_api.OrderCancelApi.as_view(), name="order-cancel"),
    path("positions/", orders_api.PositionListApi.as_view(), name="position-list"),
    path("positions/<int:position_id>/close/", orders_api.PositionCloseApi.as_view(), name="position-close"),
    path("signals/", by_method(signals_api.SignalListApi.as_view(), post=SignalCreateApi.as_view()),
         name="signal-list"),
    path("signals/<int:signal_id>/", signals_api.SignalDetailApi.as_view(), name="signal-detail"),
    path("pnl/", pnl_api.PnlSummaryApi.as_view(), name="pnl"),
    path("pnl/equity/", pnl_api.EquitySeriesApi.as_view(), name="pnl-equity"),
    path("kill-switch/", killswitch_api.KillSwitchApi.as_view(), name="kill-switch"),
    path("kill-switch/engage/", killswitch_api.KillSwitchEngageApi.as_view(), name="kill-switch-engage"),
    path("kill-switch/release/", killswitch_api.KillSwitchReleaseApi.as_view(), name="kill-switch-release"),
    path("tokens/", tokens_api.ApiTokenListApi.as_view(), name="token-list"),
    path("tokens/<str:prefix>/revoke/", tokens_api.ApiTokenRevokeApi.as_view(), name="token-revoke"),
    path("backtests/", backtest_apis.BacktestListApi.as_view(), name="backtest-list"),
    path("backtests/<int:run_id>/", backtest_apis.BacktestDetailApi.as_view(), name="backtest-detail"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
]

urlpatterns = [
    path(settings.ADMIN_URL, admin.site.urls),
    path("metrics", metrics.metrics_view, name="metrics"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("api/", include(api_patterns)),
]
urlpatterns.append(path("api/", include("webhooks.urls")))  # the TradingView webhook
urlpatterns += page_patterns
