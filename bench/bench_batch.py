"""Batch ingest vs single-event ingest, in events/s, measured in one run.

Starts the shipped web server (deploy/web.py) on a free loopback
port against the local services (DATABASE_URL / REDIS_URL from the
environment, else the embedded ones from devtools/embedded.py), with its own
queue key prefix so nothing else drains or sees its events. Then, for each
mode, a threaded keep-nothing HTTP client posts a fixed number of requests
and the wall time gives events/s; modes are interleaved over several rounds
and the median is printed. Every response is checked (201/200, all events
accepted) and the queue depth must equal the events sent, so a figure can
never come from failed requests. The queue is emptied between runs
(the writer is not part of this measure).

    .venv/bin/python bench/bench_batch.py [--rounds 3] [--clients 4] [--workers 2]

Client and server share the machine's cores: the absolute figures are
lower bounds; the ratio batch/single is what this shows.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SINGLE = "/api/rest/front/ab-event/"
BATCH = "/api/rest/front/ab-events/"


def make_event(i: int) -> dict:
    return {
        "event_id": str(uuid.uuid4()),
        "session_id": f"bench-{i % 997}",
        "variant": "fast" if i % 2 else "deep",
        "event_type": "step_completed",
        "step_number": i % 7,
        "metadata": {"time_spent_ms": 1000 + i % 5000, "choice": "health"},
        "client_ts": int(time.time() * 1000),
    }


@dataclass
class Mode:
    name: str
    events_per_request: int
    requests: int
    gzip: bool = False

    def body(self, i: int) -> tuple[str, bytes, dict[str, str]]:
        if self.events_per_request == 1:
            return SINGLE, json.dumps(make_event(i)).encode(), {"Content-Type": "application/json"}
        events = [make_event(i * self.events_per_request + k) for k in range(self.events_per_request)]
        raw = json.dumps({"events": events, "sent_at": int(time.time() * 1000)}).encode()
        headers = {"Content-Type": "text/plain;charset=UTF-8"}
        if self.gzip:
            raw = gzip.compress(raw, 6)
            headers["Content-Encoding"] = "gzip"
        return BATCH, raw, headers


def run_mode(port: int, mode: Mode, clients: int) -> float:
    """Post mode.requests requests from `clients` threads; returns events/s."""
    # Bodies are built before the clock starts: the client's JSON work is not the server's.
    bodies = [mode.body(i) for i in range(mode.requests)]
    next_index = iter(range(mode.requests))
    lock = threading.Lock()
    failures: list[str] = []

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while True:
            with lock:
                i = next(next_index, None)
            if i is None:
                break
            path, raw, headers = bodies[i]
            conn.request("POST", path, body=raw, headers=headers)
            response = conn.getresponse()
            payload = response.read()
            ok = response.status == 201 if mode.events_per_request == 1 else response.status == 200
            if ok and mode.events_per_request > 1:
                ok = json.loads(payload)["accepted"] == mode.events_per_request
            if not ok:
                failures.append(f"{response.status} {payload[:200]!r}")
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if failures:
        raise SystemExit(f"{mode.name}: {len(failures)} failed requests, e.g. {failures[0]}")
    return mode.requests * mode.events_per_request / elapsed


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the web server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the web server did not start listening")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4, help="concurrent client threads")
    parser.add_argument("--workers", type=int, default=2, help="web server processes")
    parser.add_argument("--single-requests", type=int, default=2000)
    parser.add_argument("--batch-events", type=int, default=20000, help="events per batch mode per round")
    args = parser.parse_args()

    from devtools.embedded import ensure_services, free_port

    env = dict(os.environ)
    if not (env.get("DATABASE_URL") and env.get("REDIS_URL")):
        env.update(ensure_services())
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    port = free_port()
    env.update(
        {
            "WEB_BIND": f"127.0.0.1:{port}",
            "WEB_CONCURRENCY": str(args.workers),
            "AB_QUEUE_KEY_PREFIX": prefix,
            "AB_QUEUE_MAX": "100000000",
            "AB_THROTTLE_RATE": "",
            "LOG_LEVEL": "WARNING",
            "DJANGO_SETTINGS_MODULE": "server.settings",
        }
    )
    os.environ.update(
        {k: env[k] for k in ("DATABASE_URL", "REDIS_URL", "AB_QUEUE_KEY_PREFIX", "DJANGO_SETTINGS_MODULE")}
    )
    import django

    django.setup()
    from server.apps.front.pipeline import queue

    modes = [
        Mode("single event / request", 1, args.single_requests),
        Mode("batch of 50", 50, args.batch_events // 50),
        Mode("batch of 500", 500, args.batch_events // 500),
        Mode("batch of 500, gzip", 500, args.batch_events // 500, gzip=True),
    ]
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "deploy" / "web.py")],
        cwd=ROOT,
        env=env,
    )
    results: dict[str, list[float]] = {mode.name: [] for mode in modes}
    redis_client = queue.get_redis()

    def empty_queue() -> None:
        redis_client.delete(queue.keys().queue)

    try:
        wait_listening(port, server)
        run_mode(port, Mode("warm-up", 1, 50), args.clients)
        run_mode(port, Mode("warm-up", 50, 10), args.clients)
        empty_queue()
        for _ in range(args.rounds):
            for mode in modes:
                rate = run_mode(port, mode, args.clients)
                depth = queue.stats().depth
                expected = mode.requests * mode.events_per_request
                if depth != expected:
                    raise SystemExit(f"{mode.name}: queue holds {depth} events, {expected} were accepted")
                results[mode.name].append(rate)
                empty_queue()
    finally:
        server.terminate()
        server.wait(timeout=30)
        names = list(redis_client.scan_iter(match=f"{prefix}:*"))
        if names:
            redis_client.delete(*names)

    single = statistics.median(results[modes[0].name])
    print(
        f"ingest throughput, shipped web server with {args.workers} processes, {args.clients} client threads, "
        f"median of {args.rounds} rounds (same run, same machine: {os.cpu_count()} cores shared with the client)"
    )
    print(f"{'mode':<26}{'events/s':>12}{'vs single':>12}   rounds")
    for mode in modes:
        rates = results[mode.name]
        median = statistics.median(rates)
        rounds = ", ".join(f"{r:,.0f}" for r in rates)
        print(f"{mode.name:<26}{median:>12,.0f}{median / single:>11.1f}x   {rounds}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
