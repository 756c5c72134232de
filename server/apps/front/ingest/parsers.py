"""Request body parsers for the ingest endpoints.

Browsers send ``application/json`` from ``fetch`` and ``text/plain`` from
``navigator.sendBeacon`` (the only type a beacon sends without a CORS
preflight); both carry the same JSON.

orjson parses the common case fast. A body it refuses may still be JSON that
Python reads (``NaN``, ``Infinity``, lone surrogates): those are parsed
leniently so that the field validators reject them *by field name*, which
tells the client what is wrong; nothing non-finite or unencodable gets past
the serializer.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import BaseParser


def parse_json_bytes(body: bytes, encoding: str = "utf-8") -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body.decode(encoding))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ParseError(f"JSON parse error - {exc}") from exc


class ABEventJSONParser(BaseParser):
    media_type = "application/json"

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        parser_context = parser_context or {}
        encoding = parser_context.get("encoding", settings.DEFAULT_CHARSET)
        body = stream.read() if stream is not None else b""
        return parse_json_bytes(body, encoding)


class PlainTextJSONParser(ABEventJSONParser):
    """``text/plain`` bodies as JSON: what ``navigator.sendBeacon(url, string)`` sends."""

    media_type = "text/plain"
