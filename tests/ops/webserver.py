"""The shipped web server (``deploy/web.py``) as a real process for the tests, and raw-socket helpers."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from devtools.embedded import free_port
from devtools.processes import web_server_argv

INGEST_PATH = "/api/rest/front/ab-event/"


def database_url() -> str:
    """The pytest-django test database, for the server process (only /readyz touches it)."""
    db = settings.DATABASES["default"]
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


@dataclass
class WebServer:
    popen: subprocess.Popen[bytes]
    port: int
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def connection(self, timeout: float = 5) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def post_event(self, conn: http.client.HTTPConnection, session_id: str) -> int:
        body = json.dumps({"session_id": session_id, "variant": "fast", "event_type": "variant_assigned"})
        conn.request("POST", INGEST_PATH, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        return response.status

    def raw(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=5)


def server_env(**extra: str) -> dict[str, str]:
    """A web server process's environment: this test's database, Redis and queue prefix; no inherited
    WEB_* / GUNICORN_* settings and no shared Prometheus directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WEB_", "GUNICORN_", "PROMETHEUS_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="server.settings",
        DATABASE_URL=database_url(),
        REDIS_URL=settings.REDIS_URL,
        AB_QUEUE_KEY_PREFIX=settings.AB_QUEUE_KEY_PREFIX,
        LOG_LEVEL="WARNING",
    )
    env.update(extra)
    return env


@contextlib.contextmanager
def running_server(tmp_path: Path, **env: str) -> Iterator[WebServer]:
    """Start ``deploy/web.py`` on a free loopback port with the test's Redis prefix; stop it at the end."""
    port = free_port()
    full_env = server_env(WEB_BIND=f"127.0.0.1:{port}", PYTHONUNBUFFERED="1", **env)
    log = tmp_path / f"web-{port}.log"
    with open(log, "wb") as out:
        popen = subprocess.Popen(
            web_server_argv(),
            cwd=Path(__file__).resolve().parents[2],
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = WebServer(popen, port, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if popen.poll() is not None:
                raise RuntimeError(f"the web server exited:\n{server.output()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = server.connection(timeout=2)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    conn.close()
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the web server did not answer within 60 s:\n{server.output()}")
            time.sleep(0.1)
        yield server
    finally:
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)
        popen.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)  # workers left in the group


def closed_within(sock: socket.socket, timeout: float) -> tuple[bool, bytes]:
    """Read until the server closes ``sock`` (True) or ``timeout`` passes (False); returns what was read."""
    received = b""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False, received
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return False, received
        except OSError:  # reset by the server: closed
            return True, received
        if not chunk:
            return True, received
        received += chunk
