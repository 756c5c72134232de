"""A large backlog (default 1,000,000 events): time for the real worker to drain it, and its peak memory.

    .venv/bin/python bench/bench_backlog.py [--events 1000000] [--workers 1]

The events are pushed straight into the bench queue (as the endpoint would
have queued them), then the Procfile's worker (one solo-pool process) and beat
start; the clock runs from beat's start until the queue and the in-flight
leases are empty, so beat's scheduling gaps between drain runs (each run
stops after AB_DRAIN_BUDGET s) are included. Memory is the resident set of
the worker's processes, sampled every 0.2 s (peak of the drain process, and
of parent + child together).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Processes, db_scalar, emit, ensure_database, event_body, reset, setup_django

CHUNK = 10_000


def push_backlog(n: int) -> None:
    """Encode and push in chunks, so this process never holds the whole backlog."""
    from server.apps.front.pipeline import queue

    received_at = datetime.now(UTC)
    for start in range(0, n, CHUNK):
        items = []
        for i in range(start, min(n, start + CHUNK)):
            data = event_body(i)
            data["event_id"] = uuid.uuid4()
            items.append(queue.encode_event(data, user_id=None, received_at=received_at))
        queue.push(items)


class MemorySampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_process = 0
        self.peak_tree = 0
        self.stop = threading.Event()

    def run(self) -> None:
        import psutil

        root = psutil.Process(self.pid)
        while not self.stop.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
                rss = [p.memory_info().rss for p in procs]
            except psutil.Error:
                rss = []
            if rss:
                self.peak_process = max(self.peak_process, max(rss))
                self.peak_tree = max(self.peak_tree, sum(rss))
            time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--workers", type=int, default=1, help="worker processes (each the Procfile's solo pool)")
    args = parser.parse_args()

    ensure_database()
    setup_django()
    from django.conf import settings

    from server.apps.front.pipeline import queue

    reset()
    started = time.perf_counter()
    push_backlog(args.events)
    print(f"pushed {args.events} events in {time.perf_counter() - started:.1f} s; batch size {settings.AB_BATCH_SIZE}")
    with Processes("backlog") as procs:
        worker = procs.worker()
        # More worker processes (--workers): beat's next drain task goes to a free one while the first
        # still drains (each run lasts up to AB_DRAIN_BUDGET s, beat fires every AB_FLUSH_INTERVAL s).
        for n in range(1, args.workers):
            procs.worker(f"worker{n + 1}")
        sampler = MemorySampler(worker.pid)
        sampler.start()
        started = time.perf_counter()
        procs.beat()
        last_print = 0.0
        while True:
            st = queue.stats()
            elapsed = time.perf_counter() - started
            if st.depth == 0 and st.inflight_batches == 0:
                break
            if elapsed - last_print >= 10:
                print(f"  {elapsed:5.0f} s: {st.depth} queued, {st.inflight} in flight", flush=True)
                last_print = elapsed
            if elapsed > args.timeout:
                raise SystemExit(f"not drained after {args.timeout} s")
            time.sleep(0.2)
        seconds = time.perf_counter() - started
        sampler.stop.set()
        sampler.join()
    stored = db_scalar("SELECT count(*) FROM ab_events")
    mb = 1024 * 1024
    print(
        f"drained {stored} of {args.events} events in {seconds:.1f} s ({stored / seconds:.0f} events/s), "
        f"{args.workers} worker process(es)"
    )
    print(
        f"worker peak RSS: drain process {sampler.peak_process / mb:.0f} MB,"
        f" parent + child {sampler.peak_tree / mb:.0f} MB"
    )
    reset()
    emit(
        {
            "backlog_events": args.events,
            "backlog_stored": stored,
            "backlog_seconds": seconds,
            "backlog_events_per_s": stored / seconds,
            "worker_peak_rss_mb": sampler.peak_process / mb,
            "worker_tree_peak_rss_mb": sampler.peak_tree / mb,
        }
    )


if __name__ == "__main__":
    main()
