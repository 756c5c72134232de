"""Request bodies of the ingest endpoints: size cap and gzip, before any view reads them.

Browsers may gzip what they send (``CompressionStream``), and anyone can send a
gzip bomb: a few kilobytes that inflate to gigabytes. So the body is capped
twice by ``AB_MAX_BODY_BYTES``: as sent (``Content-Length``, checked before a
byte is read) and as inflated (zlib is asked for at most the cap plus one
byte, so memory stays bounded whatever the ratio). Over the cap: 413 in the
spec's envelope. The inflated body then replaces the request's, so parsers,
CSRF checks and views see plain JSON and never know it was compressed.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from io import BytesIO

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse, UnreadablePostError

from server.apps.front.ingest.errors import error_response

# gzip header and trailer (wbits 16 + 15); "x-gzip" is the same thing (RFC 9110).
_GZIP_WBITS = 16 + zlib.MAX_WBITS
_GZIP_NAMES = {"gzip", "x-gzip"}
_IDENTITY_NAMES = {"", "identity"}


def too_large(size_note: str) -> JsonResponse:
    return error_response(
        413, "body", f"Request body {size_note} is over the limit of {settings.AB_MAX_BODY_BYTES} bytes."
    )


def declared_length(request: HttpRequest) -> int:
    try:
        return max(0, int(request.META.get("CONTENT_LENGTH") or 0))
    except ValueError:
        return 0


def inflate_gzip(body: bytes, limit: int) -> bytes | None:
    """The inflated body, or None when it would exceed ``limit`` bytes.

    Raises zlib.error / ValueError for a body that is not one complete gzip stream.
    """
    inflater = zlib.decompressobj(wbits=_GZIP_WBITS)
    # max_length bounds the output buffer: at most limit + 1 bytes are ever made.
    out = inflater.decompress(body, limit + 1)
    if len(out) > limit or inflater.unconsumed_tail:
        return None
    if not inflater.eof:
        raise ValueError("the gzip stream is truncated")
    if inflater.unused_data:
        raise ValueError("data follows the gzip stream")
    return out


def prepare_body(request: HttpRequest) -> HttpResponse | None:
    """Cap and inflate the body in place; an error response, or None to go on."""
    limit = settings.AB_MAX_BODY_BYTES
    length = declared_length(request)
    if length > limit:
        return too_large(f"of {length} bytes")
    coding = request.META.get("HTTP_CONTENT_ENCODING", "").strip().lower()
    if coding in _IDENTITY_NAMES:
        # Django reads at most Content-Length bytes, which is within the cap.
        return None
    if coding not in _GZIP_NAMES:
        return error_response(415, "content_encoding", f"Content-Encoding {coding!r} is not supported; use gzip.")
    try:
        raw = request.body
    except RequestDataTooBig:  # DATA_UPLOAD_MAX_MEMORY_SIZE set below AB_MAX_BODY_BYTES
        return too_large(f"of {length} bytes")
    except UnreadablePostError:
        return error_response(400, "body", "The request body could not be read.")
    try:
        inflated = inflate_gzip(raw, limit)
    except (zlib.error, ValueError) as exc:
        return error_response(400, "body", f"Content-Encoding is gzip but the body is not valid gzip: {exc}")
    if inflated is None:
        return too_large("after gunzip")
    # Hand the plain body on as if it had been sent uncompressed.
    request._body = inflated
    request._stream = BytesIO(inflated)
    request.META["CONTENT_LENGTH"] = str(len(inflated))
    del request.META["HTTP_CONTENT_ENCODING"]
    return None


class IngestBodyMiddleware:
    """Applies :func:`prepare_body` to POSTs under ``AB_INGEST_PATH_PREFIX``."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.method == "POST" and request.path_info.startswith(settings.AB_INGEST_PATH_PREFIX):
            error = prepare_body(request)
            if error is not None:
                return error
        return self.get_response(request)
