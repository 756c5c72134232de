"""CPU per request inside the real web server under load, for variants side by side (alternating rounds).

    .venv/bin/python bench/profile_server.py [--rounds 5] [--seconds 8] [--connections 32]
        [--variant NAME=ROOT[,KEY=VALUE...]] ... [--mode single,batch,batch5]

Each variant is the shipped server (``deploy/web.py``: granian RSGI, the WSGI
bridge, Django, DRF, the Redis push) started from a checkout ``ROOT`` (``.``
for this one; e.g. ``git archive <commit> | tar -x -C /tmp/before`` for the
commit before a change) with extra environment (``WEB_THREADS=2``...). wrk
drives each in turn at 32 connections; for every run the script reads the
CPU time (user + system) of the server's whole process tree before and after,
and prints it per request and per event beside requests/s and p99.

Why CPU time: on this shared 2-core box requests/s and p99 move with whatever
else runs, while the CPU a request costs the server barely does, so a change
is judged by CPU per request (medians of alternating rounds, ratio within
the run); the wall-clock figures are printed for context with the load
average. The Celery worker is not started (the queue is emptied after each
run) unless ``--worker-nice`` asks for it: then the worker and beat drain as in
production, and every round visits each nice value of the worker in turn
(``--worker-nice 0,10``: does the drain's CPU on the same cores show in the
web tier's tail?).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    BATCH_PATH,
    INGEST_PATH,
    PYTHON,
    REPO_ROOT,
    Processes,
    emit,
    ensure_database,
    event_body,
    median,
    reset,
    wrk,
)
from bench.common import _wait_listening as wait_listening
from devtools.embedded import free_port

BATCH_EVENTS = 100


@dataclass(frozen=True)
class Variant:
    name: str
    root: Path
    env: dict[str, str]


def parse_variant(spec: str) -> Variant:
    """``NAME=ROOT[,KEY=VALUE...]``."""
    name, _, rest = spec.partition("=")
    root, *pairs = rest.split(",")
    env = dict(pair.split("=", 1) for pair in pairs if pair)
    return Variant(name, (REPO_ROOT / root).resolve() if root else REPO_ROOT, env)


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and all its descendants, live ones."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            times = proc.cpu_times()
            total += times.user + times.system
    except psutil.NoSuchProcess:
        pass
    return total


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--warmup", type=float, default=4)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--mode", default="single,batch", help="comma-separated: single, batch (100 events), batch5 (a browser's 5)"
    )
    parser.add_argument("--variant", action="append", default=[], help="NAME=ROOT[,KEY=VALUE...] (repeatable)")
    parser.add_argument(
        "--worker-nice",
        default="",
        help="run the Celery worker and beat (the drain, as in production) and alternate the worker's nice "
        "value through this comma-separated list in every round, e.g. 0,10",
    )
    args = parser.parse_args()
    variants = [parse_variant(v) for v in args.variant] or [Variant("this", REPO_ROOT, {})]
    modes = [m.strip() for m in args.mode.split(",") if m.strip()]
    nices = [int(n) for n in args.worker_nice.split(",") if n.strip()]
    bodies = {
        "single": (INGEST_PATH, json.dumps(event_body(1)).encode(), 1),
        "batch": (BATCH_PATH, json.dumps({"events": [event_body(i) for i in range(BATCH_EVENTS)]}).encode(), 100),
        # What abtrack.js sends from a page: a few events per beacon.
        "batch5": (BATCH_PATH, json.dumps({"events": [event_body(i) for i in range(5)]}).encode(), 5),
    }

    ensure_database()
    reset()
    print(f"{len(variants)} variants, {args.rounds} rounds x {args.seconds:.0f} s, {args.connections} connections")
    print(f"load average at start {loadavg()}")
    figures: dict[str, dict[str, dict[str, float]]] = {}
    with Processes("profile-server") as procs:
        hosts: dict[str, tuple[str, int]] = {}
        for v in variants:
            port = free_port()
            # Started from inside the checkout: granian's workers import the code of their cwd.
            proc = procs.spawn(
                v.name,
                ["/bin/sh", "-c", f'cd "{v.root}" && exec "{PYTHON}" deploy/web.py'],
                WEB_BIND=f"127.0.0.1:{port}",
                PYTHONPATH=str(v.root),
                **v.env,
            )
            hosts[v.name] = (wait_listening(proc, port), proc.popen.pid)
        worker_pid = None
        if nices:
            worker_pid = procs.worker().pid
            procs.beat()
        runs = [(v, n) for v in variants for n in (nices or [None])]
        for mode in modes:
            path, body, events = bodies[mode]
            for v in variants:
                wrk(hosts[v.name][0], path, body, connections=args.connections, seconds=args.warmup)
                reset()
            print(f"\n{mode}: {'run':<22} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>11} {'us/event':>9}")
            per: dict[str, list[tuple[float, float, float]]] = {}
            for i in range(args.rounds):
                order = runs[i % len(runs) :] + runs[: i % len(runs)]
                for v, nice in order:
                    label = v.name if nice is None else f"{v.name} nice={nice}"
                    if nice is not None and worker_pid is not None:
                        os.setpriority(os.PRIO_PROCESS, worker_pid, nice)
                    host, pid = hosts[v.name]
                    before = tree_cpu(pid)
                    result = wrk(host, path, body, connections=args.connections, seconds=args.seconds)
                    cpu = tree_cpu(pid) - before
                    if worker_pid is None:
                        reset()  # no drain: empty the queue
                    us = cpu / max(result.requests, 1) * 1e6
                    per.setdefault(label, []).append((us, result.rps, result.p99_ms))
                    print(
                        f"{mode}: {label + ' #' + str(i + 1):<22} {result.rps:>8.0f} {result.p50_ms:>8.2f}"
                        f" {result.p99_ms:>8.2f} {us:>11.0f} {us / events:>9.1f}"
                        f"  non2xx {result.non2xx + result.errors}  load {loadavg()}",
                        flush=True,
                    )
            print(f"{mode}: medians")
            for label, values in per.items():
                us = median([r[0] for r in values])
                rps = median([r[1] for r in values])
                p99 = median([r[2] for r in values])
                figures.setdefault(mode, {})[label] = {"cpu_us": us, "rps": rps, "p99_ms": p99}
                print(
                    f"  {label:<20} CPU {us:>7.0f} us/request ({us / events:.1f} us/event),"
                    f" {rps:.0f} req/s, p99 {p99:.1f} ms"
                )
    print(f"\nload average at end {loadavg()}")
    emit(figures)


if __name__ == "__main__":
    main()
