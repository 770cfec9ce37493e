"""The REST API's JSON parser (settings: REST_FRAMEWORK["DEFAULT_PARSER_CLASSES"]). In a module of its own: DRF
imports it while it builds APIView, so it must not import DRF's views."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser


class JsonParser(JSONParser):
    """DRF's JSON parser, with a body nested past Python's recursion limit refused as 400 (DRF lets it out as 500)."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Mapping[str, Any] | None = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply") from None
