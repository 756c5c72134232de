"""Authentication of the ingest endpoints, through a PostgreSQL outage.

Ingest never needs PostgreSQL (events go to Redis), except to find out *who*
sent an event: DRF's session and token authentication each read a table
(``django_session``, ``authtoken_token``). With PostgreSQL down, a request
carrying ``Cookie: sessionid=...`` or ``Authorization: Token ...`` would be a
500 while anonymous requests are accepted.

The choice: when authentication cannot reach the database, the event is
accepted as **anonymous** (``user`` NULL), counted in
``abflow_auth_db_unavailable_total{method}`` and logged (one WARNING line per
minute at most, with the count). The alternative, resolving the user later,
would need the credential stored with the event; an anonymous event costs the
report nothing (it counts sessions, not users).

* The first failure opens a short breaker (:data:`BACKOFF_SECONDS`): later
  requests skip the lookup instead of each waiting for the connect timeout of
  an unreachable host, which would tie up every web thread.
* CSRF is unchanged for a session user the database confirms. A request that
  is anonymous because of the outage needs no CSRF check: it acts as nobody,
  exactly as a request without the cookie would.
* Only database errors are absorbed: a bad token with the database up is
  still refused (403: DRF answers 403 rather than 401 because session
  authentication, listed first, sends no WWW-Authenticate challenge), a
  missing CSRF token still a 403.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from django import db
from django.conf import settings
from prometheus_client import Counter
from rest_framework.authentication import SessionAuthentication, TokenAuthentication
from rest_framework.request import Request

log = logging.getLogger(__name__)

# After a failed lookup, skip the database for this long (then try again).
BACKOFF_SECONDS = 5.0
# At most one log line per this many seconds, with the count since the last.
LOG_INTERVAL_SECONDS = 60.0

AUTH_DB_UNAVAILABLE = Counter(
    "abflow_auth_db_unavailable",
    "Ingest requests with a session cookie or token accepted as anonymous because PostgreSQL was unreachable "
    "(method: session or token).",
    ["method"],
)


class _Outage:
    """When the database last failed an authentication, and the rate-limited log of it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.down_until = 0.0
        self._logged_at = float("-inf")
        self._unlogged = 0

    def is_down(self) -> bool:
        return time.monotonic() < self.down_until

    def failed(self) -> None:
        self.down_until = time.monotonic() + BACKOFF_SECONDS

    def anonymous(self, method: str, error: str) -> None:
        AUTH_DB_UNAVAILABLE.labels(method).inc()
        with self._lock:
            self._unlogged += 1
            now = time.monotonic()
            if now - self._logged_at < LOG_INTERVAL_SECONDS:
                return
            count, self._unlogged, self._logged_at = self._unlogged, 0, now
        log.warning(
            "ab_auth_db_unavailable",
            extra={"event": "ab_auth_db_unavailable", "method": method, "count": count, "error": error},
        )

    def reset(self) -> None:
        with self._lock:
            self.down_until = 0.0
            self._logged_at = float("-inf")
            self._unlogged = 0


OUTAGE = _Outage()


def _credentials_present(request: Request, method: str) -> bool:
    """Whether the request carries what ``method`` would have looked up (only those are counted)."""
    if method == "token":
        return request.META.get("HTTP_AUTHORIZATION", "").split(" ", 1)[0].lower() == "token"
    return settings.SESSION_COOKIE_NAME in request._request.COOKIES


class _OutageTolerant:
    """Mixin: the parent's authenticate(), or anonymous (None) when the database cannot answer."""

    method = ""

    def authenticate(self, request: Request) -> Any:
        if OUTAGE.is_down():
            if _credentials_present(request, self.method):
                OUTAGE.anonymous(self.method, "database marked unavailable by an earlier failure")
            return None
        try:
            return super().authenticate(request)  # type: ignore[misc]
        except db.Error as exc:  # OperationalError, InterfaceError, ...: not the client's fault
            OUTAGE.failed()
            OUTAGE.anonymous(self.method, f"{type(exc).__name__}: {exc}".strip())
            return None


class IngestSessionAuthentication(_OutageTolerant, SessionAuthentication):
    method = "session"


class IngestTokenAuthentication(_OutageTolerant, TokenAuthentication):
    method = "token"
