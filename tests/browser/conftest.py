"""Helpers for the Chromium tests: a second origin serving test pages, waits on the queue and the table."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from server.apps.front.models import ABEvent
from server.apps.front.pipeline import queue
from server.apps.front.pipeline.writer import drain


class PageServer:
    """A second origin: serves pages by path (HTML, or ``(content type, text)``)."""

    def __init__(self, pages: dict[str, str | tuple[str, str]]) -> None:
        pages_ref = pages

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = pages_ref.get(self.path.split("?")[0])
                if body is None:
                    self.send_error(404)
                    return
                content_type, text = body if isinstance(body, tuple) else ("text/html", body)
                data = text.encode()
                self.send_response(200)
                self.send_header("Content-Type", f"{content_type}; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> PageServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def wait_for_depth(expected: int, timeout: float = 15.0) -> int:
    deadline = time.monotonic() + timeout
    depth = queue.stats().depth
    while depth < expected and time.monotonic() < deadline:
        time.sleep(0.05)
        depth = queue.stats().depth
    return depth


def drain_until(session: str, expected: int, timeout: float = 20.0) -> int:
    """Drains until ``expected`` rows of ``session`` are stored (or the time is up), then once more after a pause."""
    deadline = time.monotonic() + timeout
    rows = ABEvent.objects.filter(session_id=session)
    while rows.count() < expected and time.monotonic() < deadline:
        drain()
        time.sleep(0.1)
    time.sleep(0.5)  # late duplicates, if any, would land now
    drain()
    return rows.count()
