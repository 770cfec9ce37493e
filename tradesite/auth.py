"""Admin login throttling (django-axes) with the real client address behind our proxy."""

from __future__ import annotations

from typing import Any

from axes.backends import AxesStandaloneBackend
from django.http import HttpRequest

from webhooks.sources import client_ip as _client_ip


class AxesBackend(AxesStandaloneBackend):
    """django-axes' lockout check for HTTP logins; an authenticate() without a request (shell, test client) is not
    an attempt from the network, so there is nothing to count or lock."""

    def authenticate(self, request: HttpRequest | None, username: str | None = None,
                     password: str | None = None, **kwargs: Any) -> Any:
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)


def client_ip(request: HttpRequest) -> str:
    """The login's client address: the peer, or the trusted proxy's forwarded address (WEBHOOK_TRUSTED_PROXIES)."""
    return _client_ip(request.META)
