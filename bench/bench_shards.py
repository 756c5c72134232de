"""Sharded queue on a 3-master Redis Cluster on loopback: ingest and drain throughput, 1 vs 4 shards.

    .venv/bin/python bench/bench_shards.py [--events 40000] [--runs 3] [--procs 2] [--shards 1,4]

Starts its own cluster (devtools/cluster.py, AOF everysec, in a temp dir) and
points the queue at it (AB_QUEUE_REDIS_CLUSTER); PostgreSQL is the bench
database (bench/common.py). Per run and per shard count, sides alternating
(the order flips every run), each from an empty queue:

* ``push 1``: ``--procs`` processes push single events (``queue.push`` of one
  item: the endpoint's Redis work for ``POST /ab-event/``), events/s;
* ``push 100``: the same with batches of 100 events of distinct sessions
  (``POST /ab-events/``; with 4 shards each batch is 4 EVALSHAs in one
  cluster pipeline, one request per master);
* ``claim+ack``: ``--procs`` processes claim batches of AB_BATCH_SIZE and ack
  them, no database: the queue side of a drain, events/s;
* ``drain``: ``writer.drain()`` (claim, write to PostgreSQL, ack) by 1 and by
  ``--procs`` processes at once, events/s.

Medians over the runs; the load average is printed, since the machine is
shared. The load generator runs on the same cores as the three redis-servers.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import bench_redis_url, emit, ensure_database, median, queue_items, reset, setup_django
from devtools.cluster import RedisCluster


def _fresh_client() -> None:
    # A forked child must not share the parent's sockets.
    from server.apps.front.pipeline import queue

    queue._client.cache_clear()


def _set_shards(shards: int) -> None:
    from django.conf import settings

    settings.AB_QUEUE_SHARDS = shards


def _push_worker(shards: int, items: list[bytes], per_call: int, start: float) -> None:
    from server.apps.front.pipeline import queue

    _fresh_client()
    _set_shards(shards)
    queue.push(items[:1])  # connect to every master and load the script before the clock starts
    while time.time() < start:
        time.sleep(0.001)
    for i in range(1, len(items), per_call):
        queue.push(items[i : i + per_call])


def _claim_worker(shards: int, batch: int, start: float) -> None:
    from server.apps.front.pipeline import queue

    _fresh_client()
    _set_shards(shards)
    claims = queue.claimer()
    while time.time() < start:
        time.sleep(0.001)
    while (got := claims.claim(batch, 600)) is not None:
        queue.ack(got)


def _drain_worker(shards: int, batch: int, start: float) -> None:
    from django.db import connection

    from server.apps.front.pipeline import writer

    _fresh_client()
    connection.close()  # a connection of its own, not the parent's
    _set_shards(shards)
    while time.time() < start:
        time.sleep(0.001)
    result = writer.drain(batch_size=batch, budget=3600)
    if result.error:
        raise SystemExit(result.error)


def in_processes(count: int, target: Callable[..., None], args_of: Callable[[int, float], tuple]) -> float:
    """Run ``count`` forked processes that start together; seconds from the common start to the last exit."""
    ctx = multiprocessing.get_context("fork")
    start = time.time() + 0.5 + 0.1 * count
    procs = [ctx.Process(target=target, args=args_of(i, start)) for i in range(count)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
        if proc.exitcode != 0:
            raise SystemExit(f"{target.__name__} exited {proc.exitcode}")
    return time.time() - start


def clear_cluster(cluster: RedisCluster) -> None:
    for index in range(len(cluster.ports)):
        cluster.node(index).flushall()


def fill(items: list[bytes], shards: int) -> None:
    from server.apps.front.pipeline import queue

    _set_shards(shards)
    for i in range(0, len(items), 2000):
        queue.push(items[i : i + 2000])
    assert queue.depth() == len(items), queue.depth()


def measure(cluster: RedisCluster, items: list[bytes], shards: int, procs: int, batch: int) -> dict[str, float]:
    from server.apps.front.pipeline import queue

    n = len(items)
    rates: dict[str, float] = {}
    chunk = -(-n // procs)
    parts = [items[i * chunk : (i + 1) * chunk] for i in range(procs)]
    for label, per_call in (("push 1", 1), ("push 100", 100)):
        clear_cluster(cluster)
        seconds = in_processes(procs, _push_worker, lambda i, start, pc=per_call: (shards, parts[i], pc, start))
        _set_shards(shards)
        if queue.depth() != n:
            raise SystemExit(f"{label}: {queue.depth()} queued of {n}")
        rates[label] = n / seconds
    seconds = in_processes(procs, _claim_worker, lambda i, start: (shards, batch, start))
    rates[f"claim+ack x{procs}"] = n / seconds
    for workers in sorted({1, procs}):
        clear_cluster(cluster)
        reset()
        fill(items, shards)
        seconds = in_processes(workers, _drain_worker, lambda i, start: (shards, batch, start))
        rates[f"drain x{workers}"] = n / seconds
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--procs", type=int, default=2, help="client processes (default: 2, the cores)")
    parser.add_argument("--shards", default="1,4")
    parser.add_argument("--batch-size", type=int, default=2000)
    args = parser.parse_args()
    sides = [int(s) for s in args.shards.split(",")]

    root = Path(tempfile.mkdtemp(prefix="abflow-bench-cluster-"))
    cluster = RedisCluster(root, 3).start()
    try:
        # The broker must not be the cluster (settings refuse it); the bench's plain Redis is.
        setup_django(AB_QUEUE_REDIS_URL=cluster.url, AB_QUEUE_REDIS_CLUSTER="true", CELERY_BROKER_URL=bench_redis_url())
        ensure_database()
        items = queue_items(args.events, session_prefix="bench-shard-")
        print(f"cluster {cluster.binary} ports {cluster.ports}; {args.events} events, {args.procs} processes")
        print(f"load average before: {os.getloadavg()}")
        measure(cluster, items[: min(5000, len(items))], sides[0], args.procs, args.batch_size)  # warm-up
        results: dict[int, list[dict[str, float]]] = {s: [] for s in sides}
        for run in range(args.runs):
            order = sides if run % 2 == 0 else list(reversed(sides))
            for shards in order:
                rates = measure(cluster, items, shards, args.procs, args.batch_size)
                results[shards].append(rates)
                print(f"run {run + 1} shards={shards}: " + ", ".join(f"{k} {v:,.0f}/s" for k, v in rates.items()))
        print(f"load average after: {os.getloadavg()}")
        labels = list(results[sides[0]][0])
        print(f"\n{'events/s (median)':<22}" + "".join(f"{f'{s} shard(s)':>14}" for s in sides) + f"{'ratio':>8}")
        figures: dict[str, float] = {}
        for label in labels:
            medians = [median([r[label] for r in results[s]]) for s in sides]
            ratio = medians[-1] / medians[0]
            print(f"{label:<22}" + "".join(f"{m:>14,.0f}" for m in medians) + f"{ratio:>8.2f}")
            for s, m in zip(sides, medians, strict=True):
                figures[f"shards_{s}_{label.replace(' ', '_').replace('+', '_')}"] = round(m)
        emit({"bench": "shards", "events": args.events, "procs": args.procs, **figures})
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
