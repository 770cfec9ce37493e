"""API token authentication: `Authorization: Token <key>`, the key checked against the SHA-512 digest stored by
django-rest-knox (the key itself is never stored)."""

from __future__ import annotations

from typing import Any

from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.plumbing import build_bearer_security_scheme_object
from knox.auth import TokenAuthentication
from knox.models import AuthToken
from rest_framework import exceptions


class ApiTokenAuthentication(TokenAuthentication):
    """knox's token check without its writes on the request path: an expired token is refused (401) but kept, so
    it is still listed, as expired, until revoked; knox would delete it (and the user's other expired ones)."""

    def authenticate_credentials(self, token: bytes) -> tuple[Any, AuthToken]:
        """The user and token of a key; 401 for anything else (knox answers a non-UTF-8 key with a 500)."""
        try:
            token.decode("ascii")
        except UnicodeError:
            raise exceptions.AuthenticationFailed("Invalid token.") from None
        user_token: tuple[Any, AuthToken] = super().authenticate_credentials(token)
        return user_token

    def _cleanup_token(self, auth_token: AuthToken) -> bool:
        """Whether to skip this token: it has expired."""
        return auth_token.expiry is not None and auth_token.expiry <= timezone.now()


class ApiTokenScheme(OpenApiAuthenticationExtension):
    """The schema's security scheme: `Authorization: Token <key>`, named as DRF's own was (tokenAuth)."""

    target_class = "trading.auth.ApiTokenAuthentication"
    name = "tokenAuth"
    priority = 1

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        definition: dict[str, Any] = build_bearer_security_scheme_object(header_name="Authorization",
                                                                         token_prefix="Token")
        return definition
