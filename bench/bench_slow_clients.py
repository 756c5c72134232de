"""Ordinary single events while 64 slow clients hold connections: p99 of the ordinary ones.

    .venv/bin/python bench/bench_slow_clients.py [--servers shipped,gunicorn-gthread-2x4] [--seconds 10]

For each server (candidates of bench_servers.py; default the shipped one and
the gunicorn configuration it replaced) and each kind of slow client, 64
slow connections are kept open for the whole run (one that the server closes
is reopened at once, as a slowloris does), while wrk sends ordinary single
events at 32 connections:

* ``none``: no slow clients (the reference);
* ``headers``: a request head sent at 1 byte/s, never finished;
* ``body``: headers announcing 10,000 bytes, then 1 byte/s;
* ``idle``: one request, then a silent keep-alive connection.

Prints requests/s, p50/p99 of the ordinary requests, their failures, and how
many slow connections the server closed (it must: bounded read times) with
their median lifetime. The Celery worker does not run: the queue is emptied
after each run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_servers import CANDIDATES, loadavg, start
from bench.common import INGEST_PATH, Processes, emit, ensure_database, event_body, reset, wrk

SLOW = 64
KINDS = ("none", "headers", "body", "idle")
EVENT = json.dumps(event_body(1)).encode()
HEAD = f"POST {INGEST_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n".encode()


class SlowClients:
    """Keeps ``SLOW`` misbehaving connections open; reopens each one the server closes."""

    def __init__(self, hostport: str, kind: str) -> None:
        host, port = hostport.split(":")
        self.address = (host, int(port))
        self.kind = kind
        self.lifetimes: list[float] = []  # of connections the server closed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SlowClients:
        self._thread.start()
        time.sleep(1.0)  # all open before the measure starts
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _open(self) -> tuple[socket.socket, float]:
        sock = socket.create_connection(self.address, timeout=5)
        if self.kind == "headers":
            sock.sendall(HEAD)
        elif self.kind == "body":
            sock.sendall(HEAD + b"Content-Length: 10000\r\n\r\n{")
        else:
            sock.sendall(HEAD + f"Content-Length: {len(EVENT)}\r\n\r\n".encode() + EVENT)
            sock.recv(65536)  # the answer; then silence
        sock.setblocking(False)
        return sock, time.monotonic()

    def _run(self) -> None:
        conns = [self._open() for _ in range(SLOW)]
        next_byte = time.monotonic()
        while not self._stop.is_set():
            trickle = self.kind in ("headers", "body") and time.monotonic() >= next_byte
            if trickle:
                next_byte += 1.0
            for index, (sock, opened) in enumerate(conns):
                closed = False
                try:
                    if sock.recv(65536) == b"":
                        closed = True
                except BlockingIOError:
                    pass
                except OSError:
                    closed = True
                if not closed and trickle:
                    try:
                        sock.send(b"a")
                    except BlockingIOError:
                        pass
                    except OSError:
                        closed = True
                if closed:
                    self.lifetimes.append(time.monotonic() - opened)
                    sock.close()
                    with contextlib.suppress(OSError):
                        conns[index] = self._open()
            self._stop.wait(0.05)
        for sock, _ in conns:
            sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default="shipped,gunicorn-gthread-2x4")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()

    ensure_database()
    reset()
    chosen = [CANDIDATES[name.strip()] for name in args.servers.split(",") if name.strip()]
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    figures: dict[str, dict[str, list[float]]] = {}
    print(f"load average at start {loadavg()}")
    with Processes("slow-clients") as procs:
        hosts = {c.name: start(procs, c) for c in chosen}
        for c in chosen:
            wrk(hosts[c.name], INGEST_PATH, EVENT, connections=args.connections, seconds=3)  # warm-up
        print(
            f"{'server / slow clients':<34} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'failed':>7}"
            f" {'slow closed':>11} {'lifetime s':>10}"
        )
        for round_no in range(args.rounds):
            for kind in kinds:
                for c in chosen:
                    reset()
                    slow = SlowClients(hosts[c.name], kind) if kind != "none" else None
                    with slow or contextlib.nullcontext():
                        r = wrk(hosts[c.name], INGEST_PATH, EVENT, connections=args.connections, seconds=args.seconds)
                    closed = len(slow.lifetimes) if slow else 0
                    lifetime = statistics.median(slow.lifetimes) if slow and slow.lifetimes else float("nan")
                    key = f"{c.name}/{kind}"
                    figures.setdefault(key, {"rps": [], "p99_ms": [], "failed": []})
                    figures[key]["rps"].append(r.rps)
                    figures[key]["p99_ms"].append(r.p99_ms)
                    figures[key]["failed"].append(r.non2xx + r.errors)
                    print(
                        f"{key + f' #{round_no + 1}':<34} {r.rps:>7.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f}"
                        f" {r.non2xx + r.errors:>7} {closed:>11} {lifetime:>10.1f}  load {loadavg()}",
                        flush=True,
                    )
        reset()
    first = chosen[0].name
    slow_keys = [key for key in figures if key.startswith(f"{first}/") and not key.endswith("/none")]
    emit(
        {
            "slow_clients": {key: {k: statistics.median(v) for k, v in f.items()} for key, f in figures.items()},
            # run_all's verdict, for the first server: the worst run with slow clients open.
            "slow_worst_p99_ms": max((p for key in slow_keys for p in figures[key]["p99_ms"]), default=0.0),
            "slow_failures": sum(n for key in slow_keys for n in figures[key]["failed"]),
        }
    )
    print(f"load average at end {loadavg()}; pid {os.getpid()}")


if __name__ == "__main__":
    main()
