"""Request body parsers for the ingest endpoints.

Browsers send ``application/json`` from ``fetch`` and ``text/plain`` from
``navigator.sendBeacon`` (the only type a beacon sends without a CORS
preflight); both carry the same JSON.

orjson parses the common case fast. A body it refuses may still be JSON that
Python reads (``NaN``, ``Infinity``, lone surrogates, or text in the declared
``charset``): those are parsed leniently so that the field validators reject
them *by field name*, which tells the client what is wrong; nothing
non-finite or unencodable gets past the serializer.

Whatever the body, parsing ends in a value or a 4xx: a ``charset`` that is
not a text encoding (``rot13``, ``base64``, ``zlib``, an unknown name) is a
415; JSON nested deeper than orjson's 1,024 levels, which the lenient parser
would meet as a RecursionError, is a 400.
"""

from __future__ import annotations

import codecs
import json
from typing import Any

import orjson
from django.conf import settings
from django.http import UnreadablePostError
from django.utils.http import parse_header_parameters
from rest_framework.exceptions import ParseError, UnsupportedMediaType
from rest_framework.parsers import BaseParser

# Text codecs whose decode() fails with a bare UnicodeError, not the
# UnicodeDecodeError that Django's QueryDict falls back on: useless as a charset.
_UNDECODABLE_CODECS = frozenset({"undefined", "punycode"})


def is_text_charset(name: str) -> bool:
    """Whether ``name`` is a charset bytes.decode() can use: a known text encoding.

    Not ``rot13``, ``base64``, ``zlib``, ...: codecs knows them, but they are
    bytes-to-bytes or str-to-str, and decode() raises LookupError for them.
    """
    try:
        info = codecs.lookup(name)
    except LookupError:
        return False
    # _is_text_encoding is what bytes.decode() itself checks.
    return getattr(info, "_is_text_encoding", True) and info.name not in _UNDECODABLE_CODECS


def body_charset(media_type: str | None, default: str) -> str:
    """The ``charset`` of a Content-Type, if it names a text encoding; else UnsupportedMediaType.

    Django silently drops unknown names and, before the middleware's fix,
    kept any name ``codecs`` knows, ``rot13`` included; both are refused
    here, before a byte is decoded.
    """
    _, params = parse_header_parameters(media_type or "")
    charset = params.get("charset", "").strip()
    if not charset:
        return default
    if not is_text_charset(charset):
        raise UnsupportedMediaType(
            media_type or "", detail=f"charset {charset!r} is not a known text encoding; send UTF-8 JSON."
        )
    return charset


def parse_json_bytes(body: bytes, encoding: str = "utf-8") -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body.decode(encoding))
    except RecursionError as exc:
        raise ParseError("JSON parse error - nested too deeply") from exc
    except (ValueError, LookupError) as exc:  # UnicodeDecodeError is a ValueError
        raise ParseError(f"JSON parse error - {exc}") from exc


class ABEventJSONParser(BaseParser):
    media_type = "application/json"

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        encoding = body_charset(media_type, settings.DEFAULT_CHARSET)
        try:
            body = stream.read() if stream is not None else b""
        except UnreadablePostError as exc:  # the client went away mid-body
            raise ParseError("The request body could not be read.") from exc
        return parse_json_bytes(body, encoding)


class PlainTextJSONParser(ABEventJSONParser):
    """``text/plain`` bodies as JSON: what ``navigator.sendBeacon(url, string)`` sends."""

    media_type = "text/plain"
