"""Error reports (technical 500 page, mail to admins) that never show a secret, by name or by value."""

from __future__ import annotations

import html
import re
from typing import Any

from django.views.debug import ExceptionReporter as _DjangoReporter
from django.views.debug import SafeExceptionReporterFilter as _DjangoFilter

from tradesite.logging import redact, secret_values

# Django's default plus more credential words; URLs are cleansed by value (their password part).
_HIDDEN = re.compile(r"API|TOKEN|KEY|SECRET|PASS|SIGNATURE|HTTP_COOKIE|AUTH|CREDENTIAL|PRIVATE|DSN|BROKER",
                     re.I)
# scheme://user:password@host -> the password part.
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^/@:\s]*:)(?P<pw>[^@/\s]+)(?P<tail>@)", re.I)


def cleanse_text(text: str) -> str:
    """Mask passwords inside URLs and every known secret value in a string."""
    return redact(_URL_PASSWORD.sub(r"\g<head>********\g<tail>", text))


class SafeExceptionReporterFilter(_DjangoFilter):
    """Hide settings whose names look secret, and any value (setting, request header, POST field, local variable)
    that holds a URL with a password or a known secret value."""

    hidden_settings = _HIDDEN

    def cleanse_setting(self, key: Any, value: Any) -> Any:
        cleansed = super().cleanse_setting(key, value)
        if isinstance(cleansed, str):  # lazy strings too: compare their text
            text = str(cleansed)
            masked = cleanse_text(text)
            return cleansed if masked == text else masked
        return cleansed

    def get_traceback_frame_variables(self, request: Any, tb_frame: Any) -> Any:
        secrets = secret_values()
        out = []
        for name, value in super().get_traceback_frame_variables(request, tb_frame):
            try:
                text = repr(value)
            except Exception:  # noqa: BLE001 - a broken __repr__ must not break the error page
                text = ""
            empty = value is None or (isinstance(value, str) and not value)
            named_secret = bool(self.hidden_settings.search(str(name))) and not empty
            if named_secret or cleanse_text(text) != text or redact(text, secrets) != text:
                value = self.cleansed_substitute  # a secret-named local (password, api_secret...) or a secret value
            out.append((name, value))
        return out

    def get_post_parameters(self, request: Any) -> Any:
        params: Any = super().get_post_parameters(request)  # a QueryDict (the stubs say dict)
        if not params:
            return params
        cleansed = params.copy()
        for key, values in params.lists():
            cleansed.setlist(key, [cleanse_text(v) if isinstance(v, str) else v for v in values])
        return cleansed


class ExceptionReporter(_DjangoReporter):
    """The technical 500 page and text report, with every known secret value masked in the whole output
    (an exception message or a source line can carry one where no filter looks)."""

    def get_traceback_html(self) -> str:  # type: ignore[override]  # plain text once masked; callers take str
        page = cleanse_text(super().get_traceback_html())
        for secret in secret_values():  # as the template escaped them (&, <, >, quotes)
            page = page.replace(html.escape(secret), "[REDACTED]")
        return page

    def get_traceback_text(self) -> str:  # type: ignore[override]  # plain text once masked; callers take str
        return cleanse_text(super().get_traceback_text())
