"""Every list endpoint runs a fixed number of queries whatever the page size (token lookup included)."""

from __future__ import annotations

from typing import Any

import pytest

LISTS = [
    ("/api/strategies/", 3),  # token, count, page (with accounts)
    ("/api/accounts/", 3),
    ("/api/orders/", 3),
    ("/api/positions/?all=1", 3),
    ("/api/signals/", 4),  # + the signals' orders, prefetched
    ("/api/pnl/equity/", 3),
    ("/api/backtests/", 3),
    ("/api/pnl/", 5),  # token, accounts, strategies, positions, marks (not paginated)
]


@pytest.mark.parametrize("limit", [5, 50])
@pytest.mark.parametrize(("url", "queries"), LISTS)
def test_list_query_count_is_fixed(api: Any, make_book: Any, make_account: Any, django_assert_num_queries: Any,
                                   url: str, queries: int, limit: int) -> None:
    make_book(7)
    for _ in range(6):
        make_account()
    sep = "&" if "?" in url else "?"
    with django_assert_num_queries(queries):
        response = api.get(f"{url}{sep}limit={limit}")
    assert response.status_code == 200
    body = response.json()
    if "results" in body:
        assert len(body["results"]) == min(limit, body["count"]) and body["count"] >= 6
