"""Slow clients cannot starve the ingest endpoint, and are cut off within bounded read times.

The shipped server (``deploy/web.py``, one worker process so that every slow
connection lands on the same process: the worst case) runs with short bounds
so the test stays fast. 64 connections misbehave at once:

* **headers**: a request head sent at one byte per second (slowloris), never finished;
* **body**: complete headers announcing 10,000 bytes, then one byte per second (slow POST);
* **idle**: one request answered, then the keep-alive connection left silent.

While they are open, ordinary single-event requests must all succeed at their
normal latency; then every slow connection must be closed by the server
within its bound (a late body with 408 in the JSON envelope). On the
previous server (gunicorn gthread, 2x4 threads) the headers and body cases
answered none of the ordinary requests within 3 s, and closed no slow
connection within a minute.
"""

from __future__ import annotations

import contextlib
import json
import socket
import statistics
import threading
import time
import uuid

import pytest

from .webserver import INGEST_PATH, WebServer, closed_within, running_server

HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 2.0
SLOW_CONNECTIONS = 64
SLACK = 3.0  # scheduling on a loaded 2-core machine; the bound itself is the timeout
ORDINARY_WINDOW = 1.5  # ordinary requests are sent while every slow connection is surely still open

EVENT = json.dumps({"session_id": "slow-test", "variant": "fast", "event_type": "variant_assigned"}).encode()


@pytest.fixture
def server(tmp_path):
    with running_server(
        tmp_path,
        WEB_CONCURRENCY="1",
        WEB_THREADS="4",
        WEB_HEADER_TIMEOUT=str(HEADER_TIMEOUT),
        WEB_BODY_TIMEOUT=str(BODY_TIMEOUT),
    ) as web:
        yield web


class Trickle:
    """Sends one byte per second on each of its sockets until the server closes it or ``stop()``."""

    def __init__(self, socks: list[socket.socket], data: bytes) -> None:
        self.socks = socks
        self.data = data
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Trickle:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        alive = set(range(len(self.socks)))
        position = 0
        while alive and not self._stop.wait(1.0):
            byte = self.data[position % len(self.data) : position % len(self.data) + 1]
            position += 1
            for index in list(alive):
                try:
                    self.socks[index].send(byte)
                except OSError:  # closed by the server: that is the point
                    alive.discard(index)


def open_slow(server: WebServer, kind: str) -> tuple[list[socket.socket], list[float], bytes]:
    """Opens the misbehaving connections; returns them, when each one's bound started, and its trickle."""
    socks: list[socket.socket] = []
    started: list[float] = []
    head = f"POST {INGEST_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    for _ in range(SLOW_CONNECTIONS):
        sock = server.raw()
        if kind == "headers":
            sock.sendall(head.encode())  # the head without its closing blank line; a header at 1 byte/s
            started.append(time.monotonic())  # the header timer runs from the connection's start
        elif kind == "body":
            sock.sendall(f"{head}Content-Length: 10000\r\n\r\n{{".encode())
            started.append(time.monotonic())
        else:  # idle: one complete request, then silence
            sock.sendall(f"{head}Content-Length: {len(EVENT)}\r\n\r\n".encode() + EVENT)
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
                answer += sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 201"), answer[:200]
            started.append(time.monotonic())
        socks.append(sock)
    trickle = {"headers": b"X-Slow: " + b"a" * 10_000, "body": b"a" * 10_000, "idle": b""}[kind]
    return socks, started, trickle


def ordinary_requests(server: WebServer, seconds: float) -> list[tuple[int | None, float]]:
    """Single events, one after another on one keep-alive connection, for ``seconds``: (status, latency)."""
    outcomes: list[tuple[int | None, float]] = []
    conn = server.connection(timeout=3)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        begun = time.monotonic()
        try:
            status: int | None = server.post_event(conn, f"ordinary-{uuid.uuid4().hex[:8]}")
        except OSError:
            status = None
            conn.close()
            conn = server.connection(timeout=3)
        outcomes.append((status, time.monotonic() - begun))
    conn.close()
    return outcomes


@pytest.mark.parametrize("kind", ["headers", "body", "idle"])
def test_slow_connections_neither_starve_ordinary_requests_nor_stay_open(server, kind):
    socks, started, trickle = open_slow(server, kind)
    try:
        with Trickle(socks, trickle) if trickle else contextlib.nullcontext():
            outcomes = ordinary_requests(server, ORDINARY_WINDOW)
            window_end = time.monotonic()
            # Every slow connection is closed by the server within its bound.
            bound = BODY_TIMEOUT if kind == "body" else HEADER_TIMEOUT
            answers: list[bytes] = []
            late: list[int] = []
            for index, sock in enumerate(socks):
                closed, received = closed_within(sock, started[index] + bound + SLACK - time.monotonic())
                answers.append(received)
                if not closed:
                    late.append(index)
    finally:
        for sock in socks:
            sock.close()

    statuses = [status for status, _ in outcomes]
    latencies = sorted(latency for _, latency in outcomes)
    assert statuses and all(status == 201 for status in statuses), statuses[:20]
    assert len(statuses) >= 10, f"only {len(statuses)} ordinary requests in {ORDINARY_WINDOW} s"
    assert statistics.median(latencies) < 0.1, latencies
    assert latencies[-1] < 2.0, latencies[-5:]  # a starved request never completes (3 s client timeout)
    # They were still open while the ordinary requests ran (else this proved nothing).
    assert window_end < min(started) + bound, "the slow connections were not open during the ordinary requests"
    assert not late, f"{len(late)} of {SLOW_CONNECTIONS} slow connections still open {bound + SLACK:.0f} s on"
    if kind == "body":
        for received in answers:
            head, _, body = received.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408"), received[:300]
            assert json.loads(body)["success"] is False
            assert "body" in json.loads(body)["errors"]
    else:
        assert all(received == b"" for received in answers), [r[:100] for r in answers if r][:3]
