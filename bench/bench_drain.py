"""Drain: events/s for a backlog, beside raw ``bulk_create`` of the same rows (same run).

    .venv/bin/python bench/bench_drain.py [--events 200000] [--runs 3] [--batch-size N]

The drain is ``writer.drain()``, exactly what the Celery task runs: claim a
batch in Redis, decode, build rows, ``bulk_create(ignore_conflicts=True)``
under a savepoint in one transaction, ack. The raw figure is only the
``bulk_create`` calls, same batch size, one transaction per batch, on rows
already built (decoding and building them is not timed), i.e. the ceiling
the drain can approach. Runs alternate drain / raw on an emptied table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import emit, ensure_database, median, queue_items, reset, setup_django


def push_all(items: list[bytes]) -> None:
    from server.apps.front.pipeline import queue

    for start in range(0, len(items), 10_000):
        queue.push(items[start : start + 10_000])


def time_drain(items: list[bytes], batch_size: int) -> float:
    from server.apps.front.pipeline import writer

    reset()
    push_all(items)
    started = time.perf_counter()
    result = writer.drain(batch_size=batch_size, budget=3600)
    seconds = time.perf_counter() - started
    if result.stored != len(items) or result.error:
        raise SystemExit(f"drain stored {result.stored} of {len(items)}: {result.error}")
    return seconds


def time_raw(items: list[bytes], batch_size: int) -> float:
    from django.db import transaction

    from server.apps.front.models import ABEvent
    from server.apps.front.pipeline import queue, writer

    reset()
    rows = [writer.event_from_payload(queue.decode_event(item)) for item in items]
    started = time.perf_counter()
    for start in range(0, len(rows), batch_size):
        with transaction.atomic():
            ABEvent.objects.bulk_create(rows[start : start + batch_size], ignore_conflicts=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=None, help="default: AB_BATCH_SIZE")
    args = parser.parse_args()

    ensure_database()
    setup_django()
    from django.conf import settings

    batch_size = args.batch_size or settings.AB_BATCH_SIZE
    items = queue_items(args.events)
    print(f"{args.events} events, batch size {batch_size}")
    print(f"{'run':<8} {'drain ev/s':>12} {'raw ev/s':>12} {'ratio':>7}")
    drains, raws = [], []
    for i in range(args.runs):
        drain_s = time_drain(items, batch_size)
        raw_s = time_raw(items, batch_size)
        drains.append(args.events / drain_s)
        raws.append(args.events / raw_s)
        print(f"#{i + 1:<7} {drains[-1]:>12.0f} {raws[-1]:>12.0f} {raw_s / drain_s:>7.2f}", flush=True)
    reset()
    ratio = median([d / r for d, r in zip(drains, raws, strict=True)])
    print(f"median   {median(drains):>12.0f} {median(raws):>12.0f} {ratio:>7.2f}")
    emit({"drain_events_per_s": median(drains), "raw_bulk_create_per_s": median(raws), "drain_ratio": ratio})


if __name__ == "__main__":
    main()
