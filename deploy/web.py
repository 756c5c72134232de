"""The abflow web server: granian (a Rust HTTP/1.1 server) in front of the Django app; settings in one place.

    .venv/bin/python deploy/web.py        # what `make run`, compose, systemd and the Dockerfile start

Why granian, and why this shape (figures in docs/performance.md, limits in docs/operations.md):

* **Throughput.** HTTP parsing, keep-alive and the socket writes run in Rust,
  outside the GIL; Python only runs the application. On 2 cores it served the
  single-event endpoint at 1.2-1.6x the requests/s of gunicorn's gthread
  workers in the same rounds (``bench/bench_servers.py``).
* **Slow clients cannot starve the application threads.** A request reaches
  a Python thread only once it is complete:

  - its *headers* are read by the Rust side, which closes a connection whose
    header block has not arrived within ``WEB_HEADER_TIMEOUT`` seconds of the
    connection opening or of the previous response (hyper's HTTP/1 header read
    timer; it also bounds idle keep-alive connections);
  - its *body* is read here, on the worker's event loop, within
    ``WEB_BODY_TIMEOUT`` seconds; a body that is late gets 408 in the JSON
    envelope and the connection is closed.

  Only then does ``WSGIBridge`` hand the request to one of ``WEB_THREADS``
  threads that run the Django WSGI application. Granian's own WSGI mode reads
  the body from inside the application thread with no time limit, so a few
  slow uploads held every thread (measured; docs/performance.md): that is why
  the bridge speaks granian's native RSGI protocol instead.
* A connection holds one of ``WEB_MAX_CONNECTIONS`` slots of its worker until it
  closes (granian's backpressure); slow or idle ones are bounded by the timeouts
  above, so the slots come back.

Every value comes from the environment with a default below, so the same file
serves `make run`, docker compose, systemd and the tests. SIGTERM / SIGINT stop
accepting, let requests in flight finish (at most ``WEB_GRACEFUL_TIMEOUT``
seconds), then exit; SIGHUP respawns the workers gracefully.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent

# --- settings -------------------------------------------------------------------------


@dataclass(frozen=True)
class WebSettings:
    host: str
    port: int
    workers: int
    threads: int
    header_timeout: float  # seconds: whole header block, and idle keep-alive
    body_timeout: float  # seconds: whole body, from the end of the headers
    max_connections: int  # per worker, open connections (granian's backpressure)
    max_header_bytes: int  # request line + headers; over it: 431
    backlog: int
    graceful_timeout: int
    log_level: str


def _number(env: Mapping[str, str], name: str, kind: type[int] | type[float], default: float) -> Any:
    raw = env.get(name, "").strip()
    try:
        return kind(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None


def _int(env: Mapping[str, str], name: str, default: int, minimum: int, maximum: int | None = None) -> int:
    value = _number(env, name, int, default)
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"{name}={value} is outside {minimum}..{maximum if maximum is not None else 'inf'}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, minimum: float, maximum: float) -> float:
    value = _number(env, name, float, default)
    if not minimum <= value <= maximum:
        raise ValueError(f"{name}={value} is outside {minimum}..{maximum}")
    return value


def settings_from_env(env: Mapping[str, str] = os.environ) -> WebSettings:
    """The server's settings; ``WEB_BIND`` (host:port) wins over ``PORT`` (then 127.0.0.1:8000)."""
    bind = env.get("WEB_BIND", "").strip() or f"127.0.0.1:{env.get('PORT', '').strip() or '8000'}"
    host, _, port = bind.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"WEB_BIND={bind!r} is not host:port")
    level = env.get("LOG_LEVEL", "info").strip().lower() or "info"
    return WebSettings(
        host=host.strip("[]"),
        port=int(port),
        # One process per core: the application is CPU-bound under the GIL.
        workers=_int(env, "WEB_CONCURRENCY", os.cpu_count() or 1, 1),
        # Threads per process overlap the Redis round trip; more only add GIL contention.
        threads=_int(env, "WEB_THREADS", 4, 1, 64),
        # hyper accepts 1 ms .. 60 s. 5 s as gunicorn's keep-alive was: a browser
        # or a proxy sends its headers in one packet, and reopens an idle connection.
        header_timeout=_float(env, "WEB_HEADER_TIMEOUT", 5.0, 0.001, 60.0),
        # 1 MiB at 100 kB/s, a poor mobile link, takes ~10 s; a slow upload costs
        # only a coroutine and a connection slot here, never a thread.
        body_timeout=_float(env, "WEB_BODY_TIMEOUT", 15.0, 0.001, 600.0),
        max_connections=_int(env, "WEB_MAX_CONNECTIONS", 1024, 1),
        # hyper's read buffer: a head that does not fit gets 431. Browsers send a few kB;
        # 64 KiB leaves room for large cookies.
        max_header_bytes=_int(env, "WEB_MAX_HEADER_BYTES", 65536, 8192),
        backlog=_int(env, "WEB_BACKLOG", 2048, 128),
        graceful_timeout=_int(env, "WEB_GRACEFUL_TIMEOUT", 20, 1, 1800),
        log_level="warning" if level == "warn" else level,
    )


# --- the bridge: complete requests from the event loop to WSGI threads -------------------

_JSON_CLOSE = [("content-type", "application/json"), ("connection", "close")]
_Response = tuple[int, list[tuple[str, str]], bytes]


def _envelope(field: str, message: str) -> bytes:
    # The shape of every abflow rejection: {"success": false, "errors": {field: [message]}}.
    return json.dumps({"success": False, "errors": {field: [message]}}).encode()


def _split_address(address: str) -> tuple[str, str]:
    """("203.0.113.9", "51234") from "203.0.113.9:51234" or "[::1]:51234"."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), port


class WSGIBridge:
    """An RSGI application that serves a WSGI application (PEP 3333) from a thread pool.

    The request body is read on the event loop, whole, before any thread is
    involved: within ``body_timeout`` seconds (else 408 and the connection is
    closed) and at most ``max_body`` bytes held in memory. A body whose
    ``Content-Length`` is over ``max_body`` is not read at all: the application
    answers from the declared length (abflow's 413), and the unread body makes
    the server close the connection.
    """

    def __init__(
        self, app: Callable[..., Iterable[bytes]], *, threads: int, body_timeout: float, max_body: int
    ) -> None:
        self.app = app
        self.body_timeout = body_timeout
        self.max_body = max_body
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="wsgi")
        self._timeout_body = _envelope(
            "body", f"The request body did not arrive within {body_timeout:g} seconds; the connection is closed."
        )

    # granian calls this when the worker stops: the threads end after the last request.
    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.pool.shutdown(wait=True)

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        if scope.proto != "http":  # websockets are off; nothing else exists
            return
        headers = scope.headers
        declared = headers.get("content-length")
        try:
            async with asyncio.timeout(self.body_timeout):
                body = await self._read_body(proto, declared)
        except TimeoutError:
            proto.response_bytes(408, _JSON_CLOSE, self._timeout_body)
            return
        except Exception:  # the client went away mid-body (granian's ProtocolClosed / ProtocolError)
            return
        if body is None:
            proto.response_bytes(
                413,
                _JSON_CLOSE,
                _envelope("body", f"Request body is over the limit of {self.max_body} bytes."),
            )
            return
        environ = self._environ(scope, headers, body)
        loop = asyncio.get_running_loop()
        status, response_headers, payload = await loop.run_in_executor(self.pool, self._call, environ)
        proto.response_bytes(status, response_headers, payload)

    async def _read_body(self, proto: Any, declared: str | None) -> bytes | None:
        """The whole body; b"" when the declared length is over the cap (left unread); None when a
        body without a length runs over the cap."""
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                length = 0  # hyper refuses a malformed Content-Length before we get here
            if length == 0:
                return b""
            if length > self.max_body:
                return b""
            return await proto()  # hyper stops at Content-Length
        # Chunked (or no) body: read it up to the cap, no further.
        chunks: list[bytes] = []
        size = 0
        async for chunk in proto:
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    @staticmethod
    def _environ(scope: Any, headers: Any, body: bytes) -> dict[str, Any]:
        server_host, server_port = _split_address(scope.server)
        client_host, client_port = _split_address(scope.client)
        environ: dict[str, Any] = {
            "REQUEST_METHOD": scope.method,
            "SCRIPT_NAME": "",
            # PEP 3333 wants the raw bytes as latin-1; granian gives the path
            # percent-decoded as UTF-8, which this turns back into those bytes.
            "PATH_INFO": scope.path.encode("utf-8").decode("latin-1"),
            "QUERY_STRING": scope.query_string,
            "SERVER_NAME": server_host,
            "SERVER_PORT": server_port,
            "SERVER_PROTOCOL": f"HTTP/{scope.http_version}",
            "REMOTE_ADDR": client_host,
            "REMOTE_PORT": client_port,
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": scope.scheme,
            "wsgi.input": BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,
        }
        for name, value in headers.items():
            if name == "content-type":
                environ["CONTENT_TYPE"] = value
            elif name == "content-length":
                environ["CONTENT_LENGTH"] = value
            elif "_" in name:
                # "X_Forwarded_For" would land on the same key as
                # "X-Forwarded-For": dropped, as gunicorn and nginx do.
                continue
            else:
                key = "HTTP_" + name.upper().replace("-", "_")
                if key in environ:
                    environ[key] += ("; " if key == "HTTP_COOKIE" else ",") + value
                else:
                    environ[key] = value
        if "HTTP_HOST" not in environ and scope.authority:
            environ["HTTP_HOST"] = scope.authority
        return environ

    def _call(self, environ: dict[str, Any]) -> _Response:
        """Runs in a pool thread: the whole WSGI call, close() included (Django's request_finished)."""
        started: list[Any] = []

        def start_response(status: str, response_headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if exc_info is not None and started:
                raise exc_info[1].with_traceback(exc_info[2])
            started[:] = [status, response_headers]
            return written.append

        written: list[bytes] = []
        result = self.app(environ, start_response)
        try:
            payload = b"".join([*written, *result])
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return int(started[0][:3]), list(started[1]), payload


def make_application() -> WSGIBridge:
    """Granian's factory, called in each worker process: Django is imported there, not in the launcher."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from django.conf import settings as django_settings
    from django.urls import get_resolver

    from server.wsgi import application

    # Import every URLconf and view module now (~1-3 s: DRF, the report's scipy/plotly)
    # rather than in the first request this process serves, which would take that long.
    # The worker accepts connections only after this returns; until then they wait in
    # the listen queue or go to a worker that is ready.
    get_resolver().url_patterns  # noqa: B018 (evaluated for its imports)
    # The ingest fast lane's settings and cached header values, made now (and, if the
    # stack is not the one it models, its one "off" log line written at start-up).
    application.config  # noqa: B018
    # Everything loaded so far (Django, DRF, the URLconf, the report's scipy) lives as long
    # as the process. Frozen, the collector no longer walks those objects in every full
    # collection a request's garbage triggers: that walk cost CPU and, as a pause holding
    # the GIL, latency in the tail (docs/performance.md).
    gc.collect()
    gc.freeze()
    web = settings_from_env()
    # The largest body anything in the app accepts; over it the app answers 413 from
    # the declared length (ingest) or refuses it (Django's own cap) without reading it.
    max_body = max(django_settings.AB_MAX_BODY_BYTES, django_settings.DATA_UPLOAD_MAX_MEMORY_SIZE or 0)
    return WSGIBridge(application, threads=web.threads, body_timeout=web.body_timeout, max_body=max_body)


# --- the launcher ---------------------------------------------------------------------


def build_server(web: WebSettings) -> Any:
    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings
    from granian.log import LogLevels
    from granian.server import Server

    return Server(
        "deploy.web:make_application",
        factory=True,
        working_dir=REPO_ROOT,
        address=web.host,
        port=web.port,
        interface=Interfaces.RSGI,
        workers=web.workers,
        # HTTP/1.1 only: hyper's automatic HTTP/1-or-2 detection runs without the
        # header timer, so a client sending nothing would hold its connection.
        http=HTTPModes.http1,
        http1_settings=HTTP1Settings(
            header_read_timeout=max(1, round(web.header_timeout * 1000)),
            keep_alive=True,
            max_buffer_size=web.max_header_bytes,
        ),
        websockets=False,
        backlog=web.backlog,
        backpressure=web.max_connections,
        respawn_failed_workers=True,
        workers_kill_timeout=web.graceful_timeout,
        log_level=LogLevels(web.log_level),
        log_access=False,
    )


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "server.settings")
    build_server(settings_from_env()).serve()


if __name__ == "__main__":
    main()
