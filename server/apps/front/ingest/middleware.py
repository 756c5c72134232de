"""Request bodies of the ingest endpoints: size cap and gzip, before any view reads them.

Browsers may gzip what they send (``CompressionStream``), and anyone can send a
gzip bomb: a few kilobytes that inflate to gigabytes. So the body is capped
twice by ``AB_MAX_BODY_BYTES``: as sent (``Content-Length``, checked before a
byte is read) and as inflated (zlib is asked for at most the cap plus one
byte, so memory stays bounded whatever the ratio). Over the cap: 413 in the
spec's envelope. The inflated body then replaces the request's, so parsers,
CSRF checks and views see plain JSON and never know it was compressed.

The same middleware keeps every error under the prefix in the envelope, for
answers the views never produce: a path that does not resolve (404; a POST
without the trailing slash would otherwise be a 301, or a RuntimeError in
DEBUG), and Django's own HTML error pages (a bad ``Host`` header, a
``SuspiciousOperation``, a 500) become ``{"success": false, "errors": ...}``
with the same status and headers.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from functools import lru_cache
from io import BytesIO
from typing import Any

from django.conf import settings
from django.contrib.messages.middleware import MessageMiddleware
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse, UnreadablePostError
from django.urls import Resolver404, resolve
from django.utils.http import parse_header_parameters

from server.apps.front.ingest.errors import error_response

from .parsers import is_text_charset

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


def _set_content_type_params(self: HttpRequest, meta: dict[str, Any]) -> None:
    """Django's HttpRequest._set_content_type_params, keeping only a charset that is a text encoding.

    Django takes any name ``codecs.lookup`` knows as the request's encoding,
    ``rot13`` or ``base64`` too, and decodes the query string with it as the
    request object is built, before any middleware: ``POST /any/path?x=1``
    with ``Content-Type: application/json; charset=rot13`` was a LookupError,
    a 500 from the WSGI handler itself. Such a charset is now ignored like an
    unknown one (Django's own rule for those): the request decodes as UTF-8
    and the ingest parsers answer 415 for it (parsers.body_charset).
    """
    self.content_type, self.content_params = parse_header_parameters(meta.get("CONTENT_TYPE", ""))
    charset = self.content_params.get("charset")
    if charset is not None and is_text_charset(charset):
        self.encoding = charset


# Installed when this module is imported, i.e. when the handler loads its
# middleware, before it builds the first request (WSGIRequest calls this in
# its __init__, so a middleware could not intercept it).
HttpRequest._set_content_type_params = _set_content_type_params  # type: ignore[method-assign]


# The key of ``errors`` for an error page Django made; "request" for the rest.
_PAGE_FIELDS = {403: "auth", 404: "path", 405: "method", 413: "body", 431: "headers"}
_SAFE_METHODS = {"GET", "HEAD"}


def unresolvable(request: HttpRequest) -> HttpResponse | None:
    """A 404 in the envelope for a path that matches no view; None if one does.

    Only for methods APPEND_SLASH cannot help: a GET without the slash is
    still redirected by CommonMiddleware.
    """
    urlconf = getattr(request, "urlconf", None) or settings.ROOT_URLCONF
    if request.method in _SAFE_METHODS or _resolves(request.path_info, urlconf):
        return None
    hint = " (the endpoints end with a slash)" if not request.path_info.endswith("/") else ""
    return error_response(404, "path", f"No endpoint at this path{hint}.")


@lru_cache(maxsize=256)
def _resolves(path: str, urlconf: Any) -> bool:
    # Cached: resolving costs ~15 us, and nearly every request is to one of two paths.
    try:
        resolve(path, urlconf)
    except Resolver404:
        return False
    return True


def in_envelope(response: HttpResponse) -> HttpResponse:
    """An error page that is not JSON, as the envelope with the same status and headers."""
    if response.status_code < 400 or response.get("Content-Type", "").startswith("application/json"):
        return response
    field = _PAGE_FIELDS.get(response.status_code, "server" if response.status_code >= 500 else "request")
    answer = error_response(response.status_code, field, f"{response.reason_phrase}.")
    for name, value in response.items():
        if name.lower() not in {"content-type", "content-length"}:
            answer[name] = value
    answer.cookies = response.cookies
    # Django logged the page when it made it (a 500 with its traceback): not twice.
    answer._has_been_logged = getattr(response, "_has_been_logged", False)
    return answer


class IngestBodyMiddleware:
    """Under ``AB_INGEST_PATH_PREFIX``: :func:`prepare_body` for POSTs, every error in the envelope."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.path_info.startswith(settings.AB_INGEST_PATH_PREFIX):
            return self.get_response(request)
        error = unresolvable(request)
        if error is None and request.method == "POST":
            error = prepare_body(request)
        if error is not None:
            return error
        return in_envelope(self.get_response(request))


class AdminMessageMiddleware(MessageMiddleware):
    """Django's MessageMiddleware everywhere but under ``AB_INGEST_PATH_PREFIX``.

    Flash messages are the admin's (and its templates'); no JSON endpoint under
    the prefix stores or shows one, so there the middleware only built a
    message storage per request (a cookie and a session backend, ~30 us of CPU)
    and then saved nothing. Skipping it changes no response: with no message
    added, its process_response writes no cookie and touches no session.
    """

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not self.async_mode and request.path_info.startswith(settings.AB_INGEST_PATH_PREFIX):
            return self.get_response(request)
        return super().__call__(request)
