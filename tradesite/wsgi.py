"""WSGI entry point: Django's handler, with a lean lane for the URLs named in settings.LEAN_URL_NAMES.

A lane is Django's own WSGI handler (request, signals, error handling, response logging, the same view) with three
things less: the URL is not resolved (the lane serves one URL); the middleware that such a view never uses
(sessions, CSRF, auth, messages, axes: LEAN_SKIPPED_MIDDLEWARE) is not in its chain; and django-prometheus' two
middlewares (~0.25 ms a request: a dozen label look-ups and three histograms) are replaced by LaneMetrics, which
counts the same request, response and latency series with pre-bound labels. Every other middleware of
settings.MIDDLEWARE runs, in the same order: SecurityMiddleware (SSL redirect, HSTS, nosniff), CommonMiddleware
(ALLOWED_HOSTS, Content-Length), XFrameOptionsMiddleware, and any added later. The TradingView webhook's answers
are the same either way (tests/webhooks/test_lane.py compares them).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tradesite.settings")

# What a lane leaves out: state a webhook or machine-to-machine endpoint never reads or writes.
LEAN_SKIPPED_MIDDLEWARE = frozenset({
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "axes.middleware.AxesMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",  # the lane serves its one URL, never a static file
})
_PROMETHEUS = ("django_prometheus.middleware.PrometheusBeforeMiddleware",
               "django_prometheus.middleware.PrometheusAfterMiddleware")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class LaneMetrics:
    """django-prometheus' series for a lane's one view, cheaply: requests (before middleware and by method, by
    view/transport/method), responses (before middleware, by status, by status/view/method) and latency by
    view/method. Label sets are bound once; body-size and charset series are not kept."""

    def __init__(self, get_response: Callable[[Any], Any], view_name: str) -> None:
        from django_prometheus.middleware import Metrics

        self.get_response = get_response
        self.metrics = metrics = Metrics.get_instance()
        self.view_name = view_name
        self.requests_total = metrics.requests_total
        self.responses_total = metrics.responses_total
        self._by_request: dict[tuple[str, str], tuple[Any, ...]] = {}
        self._by_status: dict[tuple[str, str], tuple[Any, ...]] = {}

    def _request_series(self, method: str, transport: str) -> tuple[Any, ...]:
        m = self.metrics
        series = (m.requests_by_method.labels(method=method),
                  m.requests_by_view_transport_method.labels(view=self.view_name, transport=transport, method=method),
                  m.requests_latency_by_view_method.labels(view=self.view_name, method=method))
        if len(self._by_request) < 64:  # methods are client input: bound only a few
            self._by_request[(method, transport)] = series
        return series

    def _status_series(self, method: str, status: str) -> tuple[Any, ...]:
        m = self.metrics
        series = (m.responses_by_status.labels(status=status),
                  m.responses_by_status_view_method.labels(status=status, view=self.view_name, method=method))
        if len(self._by_status) < 256:
            self._by_status[(method, status)] = series
        return series

    def __call__(self, request: Any) -> Any:
        started = time.perf_counter()
        self.requests_total.inc()
        method = request.method if request.method in _METHODS else "<invalid method>"
        transport = "https" if request.is_secure() else "http"
        by_method, by_view, latency = self._by_request.get((method, transport)) or self._request_series(
            method, transport)
        by_method.inc()
        by_view.inc()
        response = self.get_response(request)
        status = str(response.status_code)
        for series in self._by_status.get((method, status)) or self._status_series(method, status):
            series.inc()
        latency.observe(time.perf_counter() - started)
        self.responses_total.inc()
        return response


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "TRACE", "OPTIONS", "CONNECT", "PATCH"})


def lane_handler(url_name: str) -> tuple[str, WSGIApp]:
    """(path, WSGI handler) serving the URL with this name, as Django would minus the lean-skipped middleware."""
    from django.conf import settings
    from django.core.exceptions import MiddlewareNotUsed
    from django.core.handlers.exception import convert_exception_to_response
    from django.core.handlers.wsgi import WSGIHandler
    from django.urls import resolve, reverse
    from django.utils.module_loading import import_string

    path = reverse(url_name)
    match = resolve(path)

    class LaneHandler(WSGIHandler):
        def load_middleware(self, is_async: bool = False) -> None:
            # BaseHandler.load_middleware for a sync stack, over settings.MIDDLEWARE minus the skipped ones.
            self._view_middleware: list[Any] = []
            self._template_response_middleware = []
            self._exception_middleware = []
            handler = convert_exception_to_response(self._get_response)  # type: ignore[attr-defined]  # private, not in the stubs
            metrics = False
            for middleware_path in reversed(settings.MIDDLEWARE):
                if middleware_path in _PROMETHEUS:
                    metrics = True
                    continue
                if middleware_path in LEAN_SKIPPED_MIDDLEWARE:
                    continue
                try:
                    instance = import_string(middleware_path)(handler)
                except MiddlewareNotUsed:
                    continue
                if hasattr(instance, "process_view"):
                    self._view_middleware.insert(0, instance.process_view)
                if hasattr(instance, "process_template_response"):
                    self._template_response_middleware.append(instance.process_template_response)
                if hasattr(instance, "process_exception"):
                    self._exception_middleware.append(instance.process_exception)
                handler = convert_exception_to_response(instance)
            if metrics:  # outermost, where PrometheusBeforeMiddleware was
                handler = convert_exception_to_response(LaneMetrics(handler, match.view_name))
            self._middleware_chain = handler

        def resolve_request(self, request: Any) -> Any:
            request.resolver_match = match  # the lane serves this one URL: no walk through the URL patterns
            return match

    return path, LaneHandler()


def lanes_application(default: WSGIApp, url_names: Iterable[str]) -> WSGIApp:
    """`default`, except for the paths of `url_names`, which their lane serves."""
    lanes = dict(lane_handler(name) for name in url_names)
    if not lanes:
        return default

    def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        lane = lanes.get(environ.get("PATH_INFO", ""))
        return (lane or default)(environ, start_response)

    return application


def _build() -> WSGIApp:
    from django.conf import settings

    django_application = get_wsgi_application()  # django.setup()
    return lanes_application(django_application, getattr(settings, "LEAN_URL_NAMES", ()))


application = _build()
