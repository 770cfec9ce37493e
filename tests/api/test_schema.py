"""The OpenAPI schema holds up under schemathesis, and the docs page uses local static files only."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tradesite.wsgi import application

MAX_EXAMPLES = 25


@pytest.fixture
def keep_db_connection() -> Any:
    """Calls through the raw WSGI app must not close the test's connection (Django's test client does this too)."""
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


def test_schema_fuzz_has_no_server_errors_and_conforms(staff_key: str, make_book: Any, keep_db_connection: Any) -> None:
    """Every API operation (the TradingView webhook excluded: it has its own tests) with a staff token."""
    make_book(2)
    headers = {"Authorization": f"Token {staff_key}"}
    schema = schemathesis.openapi.from_wsgi("/api/schema/", application, headers=headers)
    operations = [r.ok() for r in schema.get_all_operations()]
    operations = [op for op in operations if "webhook" not in op.path]
    assert len(operations) >= 20
    started = time.monotonic()
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            case.call_and_validate(headers=headers, checks=[not_a_server_error, response_schema_conformance])

        check()
    assert time.monotonic() - started < 90


def test_docs_page_uses_only_local_static_assets(api: Any) -> None:
    response = api.get("/api/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "swagger-ui" in html.lower()
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    assert assets and all(a.startswith("/static/") for a in assets), assets
    assert not re.search(r"https?://", html.replace("http://www.w3.org", "")), html


def test_schema_documents_money_as_strings(api: Any) -> None:
    schema = api.get("/api/schema/?format=json").json()
    order = schema["components"]["schemas"]["OrderOutput"]["properties"]
    assert order["quantity"]["type"] == "string" and order["quantity"]["format"] == "decimal"
    assert "/api/kill-switch/engage/" in schema["paths"]
    assert schema["components"]["securitySchemes"].keys() >= {"tokenAuth", "cookieAuth"}


def test_docs_static_assets_are_served_locally(api: Any) -> None:
    html = api.get("/api/docs/").content.decode()
    script = re.findall(r"""src=["'](/static/[^"']+\.js)["']""", html)[0]
    response = api.get(script)
    assert response.status_code == 200 and int(response.get("Content-Length", 1)) > 0
