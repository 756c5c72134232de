"""The shipped web server (deploy/web.py): same answers as before, graceful stop, metrics, settings, own errors."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from deploy import web as web_module  # granian imports it the same way: deploy.web
from devtools.embedded import free_port
from server.apps.front.pipeline import queue

from .webserver import INGEST_PATH, WebServer, closed_within, running_server, server_env

REPO = Path(__file__).resolve().parents[2]

BATCH_PATH = "/api/rest/front/ab-events/"

# --- settings ---------------------------------------------------------------------------


def test_settings_default_to_bounded_read_times_on_loopback():
    s = web_module.settings_from_env({})
    assert (s.host, s.port) == ("127.0.0.1", 8000)
    assert 0 < s.header_timeout <= 60 and 0 < s.body_timeout <= 600
    assert s.threads >= 1 and s.workers >= 1 and s.max_connections >= 64


def test_settings_come_from_the_environment():
    s = web_module.settings_from_env(
        {"PORT": "9000", "WEB_THREADS": "2", "WEB_HEADER_TIMEOUT": "1.5", "LOG_LEVEL": "WARN"}
    )
    assert (s.host, s.port, s.threads, s.header_timeout, s.log_level) == ("127.0.0.1", 9000, 2, 1.5, "warning")
    assert web_module.settings_from_env({"WEB_BIND": "0.0.0.0:8000", "PORT": "9000"}).host == "0.0.0.0"
    assert web_module.settings_from_env({"WEB_BIND": "[::1]:8001"}).host == "::1"


@pytest.mark.parametrize(
    "env",
    [
        {"WEB_HEADER_TIMEOUT": "0"},
        {"WEB_HEADER_TIMEOUT": "61"},
        {"WEB_THREADS": "0"},
        {"WEB_THREADS": "four"},
        {"WEB_BIND": "nohost"},
    ],
)
def test_settings_refuse_unbounded_or_malformed_values(env):
    with pytest.raises(ValueError):
        web_module.settings_from_env(env)


# --- the same answers as the WSGI server it replaced ---------------------------------------

CASES: list[tuple[str, str, str, dict[str, str], bytes]] = [
    ("valid event", "POST", INGEST_PATH, {"Content-Type": "application/json"},
     json.dumps({"session_id": "cmp-1", "variant": "fast", "event_type": "variant_assigned"}).encode()),
    ("invalid fields", "POST", INGEST_PATH, {"Content-Type": "application/json"},
     json.dumps({"session_id": "cmp-2", "variant": "slow", "event_type": "x"}).encode()),
    ("malformed json", "POST", INGEST_PATH, {"Content-Type": "application/json"}, b"{"),
    ("wrong content type", "POST", INGEST_PATH, {"Content-Type": "text/plain"}, b"hello"),
    ("gzip body", "POST", INGEST_PATH, {"Content-Type": "application/json", "Content-Encoding": "gzip"},
     gzip.compress(json.dumps({"session_id": "cmp-3", "variant": "deep", "event_type": "step_completed"}).encode())),
    ("batch", "POST", BATCH_PATH, {"Content-Type": "application/json"},
     json.dumps({"events": [{"session_id": "cmp-4", "variant": "fast", "event_type": "step_completed",
                             "step_number": 2}, {"session_id": "cmp-5", "variant": "bad"}]}).encode()),
    ("over the body cap", "POST", INGEST_PATH, {"Content-Type": "application/json"}, b"[" + b" " * 1_100_000 + b"]"),
    ("method not allowed", "GET", INGEST_PATH, {}, b""),
    ("cors preflight", "OPTIONS", INGEST_PATH,
     {"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
      "Access-Control-Request-Headers": "content-type"}, b""),
    ("query string and cookie", "POST", INGEST_PATH + "?a=1&b=%20",
     {"Content-Type": "application/json", "Cookie": "a=1; b=2"},
     json.dumps({"session_id": "cmp-6", "variant": "fast", "event_type": "variant_assigned"}).encode()),
    ("chunked body", "POST", INGEST_PATH, {"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
     json.dumps({"session_id": "cmp-7", "variant": "fast", "event_type": "variant_assigned"}).encode()),
    ("underscore header dropped", "GET", "/healthz", {"X_Forwarded_For": "203.0.113.9"}, b""),
    ("percent-encoded path", "GET", "/api/rest/front/ab-ev%65nt/", {}, b""),
    ("unknown path", "GET", "/nothing-here/%C3%A9", {}, b""),
    ("healthz", "GET", "/healthz", {}, b""),
]  # fmt: skip

# Headers that are the servers' own and allowed to differ: identity, time, and framing (a body
# of known length goes out with Content-Length from granian where gunicorn chose chunked; the
# bytes of the body are compared).
SERVER_HEADERS = {"server", "date", "connection", "keep-alive", "content-length", "transfer-encoding"}


def _send(port: int, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple:
    """(the response, its body) of one request on a connection of its own."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    if headers.get("Transfer-Encoding") == "chunked":
        conn.request(method, path, body=iter([body]), headers={"Host": "localhost", **headers}, encode_chunked=True)
    else:
        conn.request(method, path, body=body or None, headers={"Host": "localhost", **headers})
    response = conn.getresponse()
    payload = response.read()
    conn.close()
    return response, payload


def _answer(port: int, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple:
    response, payload = _send(port, method, path, headers, body)
    kept = sorted(
        # DRF's @api_view keeps the allowed methods in a set: the order of Allow depends on
        # the process's hash seed, so it varies from one start to the next under any server.
        (k.lower(), ", ".join(sorted(v.split(", "))) if k.lower() == "allow" else v)
        for k, v in response.getheaders()
        if k.lower() not in SERVER_HEADERS
    )
    return response.status, kept, payload


@pytest.fixture
def previous_server(tmp_path, settings):
    """The WSGI server abflow shipped before (gunicorn, deploy config of that time, now bench/gunicorn.conf.py)."""
    port = free_port()
    env = server_env(GUNICORN_BIND=f"127.0.0.1:{port}", WEB_CONCURRENCY="1")
    log = open(tmp_path / "gunicorn.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "bench/gunicorn.conf.py", "server.wsgi"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "gunicorn.log").read_text()
                time.sleep(0.1)
        yield port
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        log.close()


def test_answers_are_byte_for_byte_those_of_the_previous_wsgi_server(tmp_path, previous_server):
    with running_server(tmp_path, WEB_CONCURRENCY="1") as server:
        for name, method, path, headers, body in CASES:
            now = _answer(server.port, method, path, headers, body)
            before = _answer(previous_server, method, path, headers, body)
            assert now == before, name


# --- graceful stop -------------------------------------------------------------------------


def test_sigterm_lets_a_request_in_flight_finish_then_exits(tmp_path):
    body = json.dumps({"session_id": "in-flight", "variant": "fast", "event_type": "variant_assigned"}).encode()
    with running_server(tmp_path, WEB_CONCURRENCY="1") as server:
        sock = server.raw()
        head = f"POST {INGEST_PATH} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        sock.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body[:10])
        time.sleep(0.3)  # the request is in the server, its body half read
        server.popen.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        sock.sendall(body[10:])
        closed, received = closed_within(sock, 10)
        sock.close()
        assert received.startswith(b"HTTP/1.1 201"), received[:300] or server.output()
        assert server.popen.wait(timeout=30) == 0, server.output()
        assert closed
    assert queue.stats().depth == 1  # accepted means queued


def test_sigterm_with_nothing_in_flight_exits_at_once(tmp_path):
    with running_server(tmp_path, WEB_CONCURRENCY="2", LOG_LEVEL="INFO") as server:
        # Both workers serving (a worker still importing the app when the stop comes is
        # waited for up to WEB_GRACEFUL_TIMEOUT, then killed: docs/operations.md).
        _wait_for_workers(server, 2)
        started = time.monotonic()
        server.popen.send_signal(signal.SIGTERM)
        assert server.popen.wait(timeout=30) == 0, server.output()
        assert time.monotonic() - started < 10
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", server.port), timeout=1)


def _wait_for_workers(server: WebServer, n: int) -> None:
    """Until granian logged that each of its n workers started (needs LOG_LEVEL=INFO)."""
    deadline = time.monotonic() + 60
    while not all(f"Started worker-{i}\n" in server.output() for i in range(1, n + 1)):
        assert time.monotonic() < deadline, server.output()
        time.sleep(0.1)


# --- Prometheus multiprocess metrics and readiness ---------------------------------------------


def _accepted_total(server: WebServer) -> float:
    conn = server.connection()
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "abflow_events_accepted_total":
                return sample.value
    return 0.0


@pytest.mark.django_db
def test_metrics_of_every_worker_process_are_merged_and_readyz_answers(tmp_path):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    with running_server(
        tmp_path, WEB_CONCURRENCY="2", LOG_LEVEL="INFO", PROMETHEUS_MULTIPROC_DIR=str(metrics_dir)
    ) as server:
        # The first worker may answer while the second still loads the app: then every request goes to one.
        _wait_for_workers(server, 2)
        for n in range(40):  # a new connection each: the kernel spreads them over both processes
            conn = server.connection()
            assert server.post_event(conn, f"metrics-{n}") == 201
            conn.close()
        assert _accepted_total(server) == 40
        writers = {path.stem.rsplit("_", 1)[-1] for path in metrics_dir.glob("counter_*.db")}
        assert len(writers) == 2, sorted(metrics_dir.iterdir())  # one file per worker process
        conn = server.connection()
        conn.request("GET", "/readyz")
        response = conn.getresponse()
        assert response.status == 200, response.read()


# --- the server's own answers and the body cap ------------------------------------------------


def test_server_level_errors_are_bare_status_codes_and_a_late_body_gets_the_envelope(tmp_path):
    with running_server(tmp_path, WEB_CONCURRENCY="1", WEB_BODY_TIMEOUT="1") as server:
        answers = {}
        for name, data in {
            "bad request line": b"GARBAGE\r\n\r\n",
            "bad content-length": f"POST {INGEST_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n".encode(),
            # hyper checks the 64 KiB cap between reads: a head sent in one burst may pass up to ~2x.
            "head over 64 KiB": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n",
            "late body": f"POST {INGEST_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{{".encode(),
        }.items():
            sock = server.raw()
            sock.sendall(data)
            closed, answers[name] = closed_within(sock, 10)
            sock.close()
            assert closed, name
    # hyper answers these before any Python runs; it offers no hook for a body (docs/operations.md).
    assert answers["bad request line"].startswith(b"HTTP/1.1 400 ")
    assert answers["bad content-length"].startswith(b"HTTP/1.1 400 ")
    assert answers["head over 64 KiB"].startswith(b"HTTP/1.1 431 ")
    for name in ("bad request line", "bad content-length", "head over 64 KiB"):
        assert answers[name].endswith(b"\r\n\r\n") and b"content-length: 0" in answers[name].lower(), name
    head, _, body = answers["late body"].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert json.loads(body) == {
        "success": False,
        "errors": {"body": ["The request body did not arrive within 1 seconds; the connection is closed."]},
    }


def test_chunked_body_over_the_cap_gets_413_without_being_held_in_memory(tmp_path, settings):
    with running_server(tmp_path, WEB_CONCURRENCY="1") as server:
        sock = server.raw()
        sock.sendall(
            f"POST {INGEST_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        chunk = b"a" * 65536
        answer = b""
        with pytest.raises(OSError):  # the server answers and closes long before 10 MB
            for _ in range(160):
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sock.setblocking(False)
                try:
                    answer += sock.recv(65536)
                except BlockingIOError:
                    pass
                sock.setblocking(True)
        _, rest = closed_within(sock, 5)
        sock.close()
    head, _, body = (answer + rest).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 "), head
    assert json.loads(body)["errors"]["body"]


# --- the ingest fast lane over the wire -----------------------------------------------------------------------

LANE_CASES = [
    *CASES,
    ("valid batch", "POST", BATCH_PATH, {"Content-Type": "text/plain;charset=UTF-8", "Origin": "https://app.example"},
     json.dumps({"events": [{"session_id": "lane-w1", "variant": "deep", "event_type": "variant_assigned"}]}).encode()),
    ("valid event, allowed origin", "POST", INGEST_PATH, {"Content-Type": "application/json",
     "Origin": "https://app.example", "Accept": "*/*", "Cookie": "theme=dark"},
     json.dumps({"session_id": "lane-w2", "variant": "fast", "event_type": "variant_assigned"}).encode()),
    ("valid event, other origin", "POST", INGEST_PATH, {"Content-Type": "application/json",
     "Origin": "https://elsewhere.example"},
     json.dumps({"session_id": "lane-w3", "variant": "fast", "event_type": "variant_assigned"}).encode()),
]  # fmt: skip


def _exact_answer(port: int, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple:
    """Status, every header but Date in the order sent, and the body."""
    response, payload = _send(port, method, path, headers, body)
    return response.status, [(k, v) for k, v in response.getheaders() if k.lower() != "date"], payload


def test_the_fast_lane_answers_over_the_wire_exactly_as_django_does(tmp_path):
    # One hash seed for both processes: DRF's Allow lists its methods in set order.
    common = {"WEB_CONCURRENCY": "1", "PYTHONHASHSEED": "0", "CORS_ALLOWED_ORIGINS": "https://app.example"}
    with (
        running_server(tmp_path, **common) as lane,
        running_server(tmp_path, AB_FAST_LANE="false", **common) as django,
    ):
        for name, method, path, headers, body in LANE_CASES:
            assert _exact_answer(lane.port, method, path, headers, body) == _exact_answer(
                django.port, method, path, headers, body
            ), name
        counted = [_scrape(server.port, "abflow_events_accepted_total") for server in (lane, django)]
    # The same events accepted and counted on both (which requests the lane answers itself is
    # tests/ingest/test_fastlane.py's to show; over the wire the answers cannot tell).
    assert counted[0] == counted[1] > 0, counted


def _scrape(port: int, name: str) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics", headers={"Host": "localhost"})
    text = conn.getresponse().read().decode()
    conn.close()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)
