"""Ingest: single events vs the spec's synchronous MVP (alternating runs), and batches.

    .venv/bin/python bench/bench_ingest.py [--runs 3] [--seconds 10] [--connections 32]

Both servers run at once against the same PostgreSQL: abflow under the shipped
web server (deploy/web.py), the spec's MVP as issue 11 defines it (gunicorn, 4
sync workers, one INSERT per request); the Celery worker and beat of the real stack run
throughout, draining what the asynchronous endpoint queues. Runs alternate
(async, baseline, async, ...) so that drift of the machine hits both alike.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    BATCH_PATH,
    INGEST_PATH,
    Processes,
    WrkResult,
    emit,
    ensure_database,
    event_body,
    median,
    reset,
    wrk,
)

BATCH_EVENTS = 100


def _row(label: str, r: WrkResult, per_request: int = 1) -> str:
    return (
        f"{label:<22} {r.rps * per_request:>10.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {r.max_ms:>8.1f}"
        f" {r.non2xx:>7} {r.errors:>6}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--batch-connections", type=int, default=32)
    args = parser.parse_args()

    ensure_database()
    reset()
    single = json.dumps(event_body(1)).encode()
    batch = json.dumps({"events": [event_body(i) for i in range(BATCH_EVENTS)]}).encode()
    with Processes("ingest") as procs:
        async_web = procs.web("web-async")
        sync_web = procs.mvp()
        worker = procs.worker()
        beat = procs.beat()
        for hostport in (async_web, sync_web):  # warm-up: imports, connections, caches
            wrk(hostport, INGEST_PATH, single, connections=args.connections, seconds=3)

        print(f"{'run':<22} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'non2xx':>7} {'errors':>6}")
        runs: dict[str, list[WrkResult]] = {"async": [], "baseline": []}
        for i in range(args.runs):
            for kind, hostport in (("async", async_web), ("baseline", sync_web)):
                result = wrk(hostport, INGEST_PATH, single, connections=args.connections, seconds=args.seconds)
                runs[kind].append(result)
                print(_row(f"{kind} #{i + 1}", result), flush=True)

        # Batches measure the web tier alone: at these rates the drain (one
        # worker, bench_drain.py) would take a core of the two, so worker and
        # beat stop and the queue absorbs the runs (emptied afterwards).
        beat.terminate()
        worker.terminate()
        batches: list[WrkResult] = []
        for i in range(args.runs):
            reset()
            result = wrk(async_web, BATCH_PATH, batch, connections=args.batch_connections, seconds=args.seconds)
            batches.append(result)
            print(_row(f"batch x{BATCH_EVENTS} #{i + 1} (ev/s)", result, BATCH_EVENTS), flush=True)
        reset()

    rps = {kind: median([r.rps for r in rs]) for kind, rs in runs.items()}
    p50 = {kind: median([r.p50_ms for r in rs]) for kind, rs in runs.items()}
    p99 = {kind: median([r.p99_ms for r in rs]) for kind, rs in runs.items()}
    ratios = [a.rps / b.rps for a, b in zip(runs["async"], runs["baseline"], strict=True)]
    bad = sum(r.non2xx + r.errors for rs in runs.values() for r in rs)
    batch_eps = median([r.rps * BATCH_EVENTS for r in batches])
    batch_bad = sum(r.non2xx + r.errors for r in batches)
    print()
    print(f"median of {args.runs} x {args.seconds:.0f} s, {args.connections} connections")
    print(f"  async     {rps['async']:>8.0f} req/s  p50 {p50['async']:.2f} ms  p99 {p99['async']:.2f} ms")
    print(f"  baseline  {rps['baseline']:>8.0f} req/s  p50 {p50['baseline']:.2f} ms  p99 {p99['baseline']:.2f} ms")
    print(f"  ratio     {rps['async'] / rps['baseline']:.2f}x (per pair: {', '.join(f'{r:.2f}' for r in ratios)})")
    print(
        f"  batch     {batch_eps:>8.0f} events/s ({BATCH_EVENTS} per request, {args.batch_connections} connections,"
        " web tier alone)"
    )
    if bad or batch_bad:
        print(f"  WARNING: {bad + batch_bad} non-2xx answers or socket errors; see bench/results/ingest/")
    emit(
        {
            "ingest_rps": rps["async"],
            "ingest_p50_ms": p50["async"],
            "ingest_p99_ms": p99["async"],
            "ingest_worst_p99_ms": max(r.p99_ms for r in runs["async"]),
            "baseline_rps": rps["baseline"],
            "baseline_p50_ms": p50["baseline"],
            "baseline_p99_ms": p99["baseline"],
            "ingest_ratio": rps["async"] / rps["baseline"],
            "batch_events_per_s": batch_eps,
            "ingest_failures": bad + batch_bad,
        }
    )


if __name__ == "__main__":
    main()
