"""Which HTTP server should serve the ingest endpoints? Candidates side by side, alternating rounds.

    .venv/bin/python bench/bench_servers.py [--rounds 3] [--seconds 10] [--connections 32]
        [--servers granian,gunicorn-gthread,...] [--no-batch]

Every candidate serves the same WSGI application (``server.wsgi``) with the
same settings, Redis and PostgreSQL; they all run at once, each on its own
port, so a round can visit them one after the other and the machine's drift
(this box is shared) hits every candidate alike. Beside them runs the spec's
synchronous MVP (``bench/baseline``: one INSERT per request) as issue 11
defines it: gunicorn with 4 sync workers. The ratio of a candidate to the MVP
is taken within each round.

1. Single events, 32 connections (wrk), with the real Celery worker and beat
   draining what the asynchronous endpoint queues, as in production. Each
   server is warmed up first (imports, connection pools, lazy Django set-up),
   and the order of the servers rotates from round to round.
2. Batches of 100 events, 32 connections, the web tier alone: the drain is
   stopped (at these rates it would take a core of the two) and the queue is
   emptied after every run.

Prints p50/p99/max and requests/s of every run with the 1-minute load
average, the medians at the end, and the answers that were not 2xx by
reason (from the servers' own ``/metrics``). Optional candidates whose
package is not installed (gevent, pyuwsgi, waitress) are skipped with a note.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    BATCH_PATH,
    INGEST_PATH,
    PYTHON,
    REPO_ROOT,
    Processes,
    WrkResult,
    emit,
    ensure_database,
    event_body,
    median,
    reset,
    wrk,
)
from devtools.embedded import free_port
from devtools.processes import Proc, wait_for

BATCH_EVENTS = 100
BIN = Path(PYTHON).parent


@dataclass(frozen=True)
class Candidate:
    """How to start one server on a port: argv, extra environment, and the package it needs."""

    name: str
    argv: Callable[[int], list[str]]
    env: dict[str, str] = field(default_factory=dict)
    needs: str | None = None  # importable module; skipped when missing
    baseline: bool = False  # the spec's MVP: single events only (its batch endpoint does not exist)


def _gunicorn(worker_class: str, workers: int, threads: int = 1, **env: str) -> Candidate:
    name = {"sync": "gunicorn-sync", "gthread": "gunicorn-gthread", "gevent": "gunicorn-gevent"}[worker_class]
    return Candidate(
        name if worker_class != "gthread" else f"{name}-{workers}x{threads}",
        lambda port: [PYTHON, "-m", "gunicorn", "-c", "bench/gunicorn.conf.py", "server.wsgi"],
        {
            "GUNICORN_WORKER_CLASS": worker_class,
            "WEB_CONCURRENCY": str(workers),
            "GUNICORN_THREADS": str(threads),
            **env,
        },
        needs="gevent" if worker_class == "gevent" else None,
    )


def _granian(workers: int, blocking_threads: int) -> Candidate:
    return Candidate(
        f"granian-{workers}x{blocking_threads}",
        lambda port: [
            PYTHON,
            *f"-m granian --interface wsgi --host 127.0.0.1 --port {port} --workers {workers}"
            f" --blocking-threads {blocking_threads} --no-ws --log-level warning server.wsgi:application".split(),
        ],
        needs="granian",
    )


def _uwsgi(processes: int, threads: int) -> Candidate:
    return Candidate(
        f"uwsgi-{processes}x{threads}",
        lambda port: [
            str(BIN / "uwsgi"),
            *f"--http11-socket 127.0.0.1:{port} --module server.wsgi:application --master --processes {processes}"
            f" --threads {threads} --enable-threads --die-on-term --disable-logging --listen 1024 --need-app"
            " --lazy-apps".split(),
        ],
        needs="pyuwsgi",
    )


def _waitress(threads: int) -> Candidate:
    return Candidate(
        f"waitress-{threads}",
        lambda port: [
            str(BIN / "waitress-serve"),
            *f"--listen=127.0.0.1:{port} --threads={threads} --connection-limit=1000 server.wsgi:application".split(),
        ],
        needs="waitress",
    )


def _shipped(threads: int | None = None, *, lane: bool = True) -> Candidate:
    """What `make run`, compose and systemd start (deploy/web.py), with its defaults, other WEB_THREADS, or with
    the ingest fast lane off (``shipped-django``: every request through Django, as before the lane)."""
    env = {} if threads is None else {"WEB_THREADS": str(threads)}
    if not lane:
        env["AB_FAST_LANE"] = "false"
    name = "shipped" if threads is None else f"shipped-t{threads}"
    return Candidate(name if lane else "shipped-django", lambda port: [PYTHON, "deploy/web.py"], env, needs="granian")


BASELINE = Candidate(
    "mvp-baseline",
    lambda port: [PYTHON, "-m", "gunicorn", "-c", "bench/gunicorn.conf.py", "server.wsgi"],
    {
        "DJANGO_SETTINGS_MODULE": "bench.baseline.settings",
        "GUNICORN_WORKER_CLASS": "sync",
        "WEB_CONCURRENCY": "4",
        "GUNICORN_THREADS": "1",
    },
    baseline=True,
)

CANDIDATES: dict[str, Candidate] = {
    c.name: c
    for c in (
        _gunicorn("sync", 4),
        _gunicorn("gthread", 2, 4),
        _gunicorn("gevent", 2, GUNICORN_PRELOAD="0"),  # monkey-patching must precede the app's imports
        _granian(2, 1),
        _granian(2, 2),
        _granian(2, 4),
        _uwsgi(2, 4),
        _waitress(8),
        _shipped(),
        _shipped(1),
        _shipped(2),
        _shipped(lane=False),
    )
}
DEFAULT = [
    "gunicorn-sync",
    "gunicorn-gthread-2x4",
    "gunicorn-gevent",
    "granian-2x1",
    "granian-2x4",
    "uwsgi-2x4",
    "waitress-8",
    "shipped",
]


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def start(procs: Processes, candidate: Candidate) -> str:
    """Start ``candidate`` on a free port; host:port once it answers HTTP (any status: the MVP has no /healthz)."""
    port = free_port()
    env = {"PORT": str(port), "GUNICORN_BIND": f"127.0.0.1:{port}", "WEB_BIND": f"127.0.0.1:{port}", **candidate.env}
    proc: Proc = procs.spawn(candidate.name, candidate.argv(port), **env)

    def healthy() -> bool:
        if not proc.alive():
            raise RuntimeError(f"{candidate.name} exited:\n{proc.output()[-3000:]}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            return conn.getresponse().status > 0
        return False

    wait_for(healthy, 60, f"{candidate.name} to answer", interval=0.2)
    return f"127.0.0.1:{port}"


def rejections(hostport: str) -> dict[str, float]:
    """abflow_events_rejected_total by reason, summed over the labels (multiprocess files: every server's)."""
    host, port = hostport.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("abflow_events_rejected_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            out[reason] = out.get(reason, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def row(label: str, r: WrkResult, per_request: int = 1, note: str = "") -> str:
    return (
        f"{label:<34} {r.rps * per_request:>9.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {r.max_ms:>8.1f}"
        f" {r.non2xx:>7} {r.errors:>6}  load {loadavg()}{note}"
    )


HEADER = f"{'run':<34} {'rate':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'non2xx':>7} {'errors':>6}"


def summary(runs: dict[str, list[WrkResult]], per_request: int, unit: str) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    print(f"\n{'median':<22} {unit:>10} {'p50 ms':>8} {'p99 ms':>8} {'worst p99':>10} {'non2xx+err':>11}")
    for name, results in runs.items():
        if not results:
            continue
        figures = {
            "rate": median([r.rps * per_request for r in results]),
            "p50_ms": median([r.p50_ms for r in results]),
            "p99_ms": median([r.p99_ms for r in results]),
            "worst_p99_ms": max(r.p99_ms for r in results),
            "bad": float(sum(r.non2xx + r.errors for r in results)),
        }
        out[name] = figures
        print(
            f"{name:<22} {figures['rate']:>10.0f} {figures['p50_ms']:>8.2f} {figures['p99_ms']:>8.2f}"
            f" {figures['worst_p99_ms']:>10.2f} {figures['bad']:>11.0f}"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--servers", default=",".join(DEFAULT), help=f"comma-separated, of: {', '.join(CANDIDATES)}")
    parser.add_argument("--no-baseline", action="store_true", help="skip the spec's MVP")
    parser.add_argument("--no-batch", action="store_true", help="single events only")
    args = parser.parse_args()

    chosen: list[Candidate] = []
    for name in [n.strip() for n in args.servers.split(",") if n.strip()]:
        candidate = CANDIDATES[name]
        if candidate.needs and importlib.util.find_spec(candidate.needs) is None:
            print(f"skipped {name}: the package {candidate.needs!r} is not installed")
            continue
        chosen.append(candidate)
    if not args.no_baseline:
        chosen.append(BASELINE)

    ensure_database()
    reset()
    single = json.dumps(event_body(1)).encode()
    batch = json.dumps({"events": [event_body(i) for i in range(BATCH_EVENTS)]}).encode()
    print(f"{len(chosen)} servers, {args.rounds} rounds x {args.seconds:.0f} s, {args.connections} connections;")
    print(f"load average at start {loadavg()}; cwd {REPO_ROOT}")

    with Processes("servers") as procs:
        hosts = {c.name: start(procs, c) for c in chosen}
        worker = procs.worker()
        beat = procs.beat()
        for c in chosen:  # warm-up: imports, connection pools, lazy set-up in every process
            wrk(hosts[c.name], INGEST_PATH, single, connections=args.connections, seconds=args.warmup)
        before = {c.name: rejections(hosts[c.name]) for c in chosen[:1]}

        print(f"\nsingle event, {args.connections} connections, drain running\n{HEADER}")
        single_runs: dict[str, list[WrkResult]] = {c.name: [] for c in chosen}
        ratios: dict[str, list[float]] = {c.name: [] for c in chosen if not c.baseline}
        for i in range(args.rounds):
            order = chosen[i % len(chosen) :] + chosen[: i % len(chosen)]
            this_round: dict[str, WrkResult] = {}
            for c in order:
                result = wrk(hosts[c.name], INGEST_PATH, single, connections=args.connections, seconds=args.seconds)
                single_runs[c.name].append(result)
                this_round[c.name] = result
                print(row(f"{c.name} #{i + 1}", result), flush=True)
            if BASELINE.name in this_round:
                for name in ratios:
                    ratios[name].append(this_round[name].rps / this_round[BASELINE.name].rps)
        after = {name: rejections(hosts[name]) for name in before}
        single_summary = summary(single_runs, 1, "req/s")
        if not args.no_baseline:
            print("\nratio to the MVP (median; per round)")
            for name, values in ratios.items():
                print(f"  {name:<22} {median(values):.2f}x  ({', '.join(f'{v:.2f}' for v in values)})")
        for name in before:
            moved = {k: after[name].get(k, 0) - before[name].get(k, 0) for k in after[name]}
            moved = {k: v for k, v in moved.items() if v}
            print(f"rejections during the single-event rounds, by reason (all servers): {moved or 'none'}")

        batch_summary: dict[str, dict[str, float]] = {}
        if not args.no_batch:
            beat.terminate()
            worker.terminate()
            batchers = [c for c in chosen if not c.baseline]
            print(f"\nbatch of {BATCH_EVENTS}, {args.connections} connections, web tier alone; rate = events/s")
            print(HEADER)
            batch_runs: dict[str, list[WrkResult]] = {c.name: [] for c in batchers}
            for i in range(args.rounds):
                order = batchers[i % len(batchers) :] + batchers[: i % len(batchers)]
                for c in order:
                    reset()
                    result = wrk(hosts[c.name], BATCH_PATH, batch, connections=args.connections, seconds=args.seconds)
                    batch_runs[c.name].append(result)
                    print(row(f"{c.name} batch #{i + 1}", result, BATCH_EVENTS), flush=True)
            reset()
            batch_summary = summary(batch_runs, BATCH_EVENTS, "events/s")
        print(f"\nload average at end {loadavg()}")

    emit(
        {
            "single": single_summary,
            "batch": batch_summary,
            "ratio_to_mvp": {name: median(values) for name, values in ratios.items() if values},
            "loadavg_end": os.getloadavg()[0],
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    )


if __name__ == "__main__":
    main()
