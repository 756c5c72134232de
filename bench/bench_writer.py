"""The writer: the same rows through raw ``bulk_create``, raw ``COPY`` and the full drain, same run.

    .venv/bin/python bench/bench_writer.py [--events 30000] [--rounds 5] [--batch-size N] [--variants]

Each round empties ``ab_events`` before each side and runs, in an order that
rotates from round to round (so no side always follows another):

* ``bulk_create``: rows already built, ``ABEvent.objects.bulk_create(...,
  ignore_conflicts=True)`` per batch, one transaction per batch (what the
  writer did before COPY);
* ``copy``: rows already encoded (binary), ``COPY ab_events (...) FROM STDIN``
  per batch straight into the table, one transaction per batch: no staging,
  no conflict handling, nothing decoded; the ceiling of any COPY writer;
* ``drain``: the events queued in Redis (untimed), then ``writer.drain()``,
  what the worker runs: claim, decode, encode, COPY into the staging table,
  ``INSERT ... SELECT ... ON CONFLICT DO NOTHING RETURNING``, ack;
* ``drain-2``: the same with two drains at once in this process
  (``writer.drain_concurrently(2)``), what the shipped worker does on a
  backlog (``AB_DRAIN_THREADS``). The raw sides stay one connection each.

``--variants`` adds ``copy-text`` (raw COPY in text format, for the
binary-or-text choice) and ``drain-drop`` (the drain with an ``ON COMMIT DROP``
staging table created per batch instead of one per connection).

A short warm-up round is not counted. Medians per side and the ratios of the
drain to the raw sides (median of the per-round ratios) are printed with the
load average; the machine is shared, so the ratios are the figures to quote.

Runs on its own database (``abflow_bench_writer``), its own Redis database
(11) and key prefix, deleting only its own keys, so it can run beside the
other benches.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import emit, median, queue_items, setup_django

KEY_PREFIX = "abbench-writer"


def _own_database() -> None:
    if "BENCH_DATABASE_URL" not in os.environ:
        from server.defaults import DEFAULT_DATABASE_URL

        parts = urlsplit(os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL))
        os.environ["BENCH_DATABASE_URL"] = urlunsplit(parts._replace(path="/abflow_bench_writer"))
    if "BENCH_REDIS_URL" not in os.environ:
        # Not database 15: the other benches FLUSHDB it between runs, which
        # would empty this one's queue in the middle of a drain.
        from server.defaults import DEFAULT_REDIS_URL

        parts = urlsplit(os.environ.get("REDIS_URL", DEFAULT_REDIS_URL))
        os.environ["BENCH_REDIS_URL"] = urlunsplit(parts._replace(path="/11"))


def _create_database() -> None:
    import psycopg2
    from psycopg2 import sql

    url = os.environ["BENCH_DATABASE_URL"]
    conn = psycopg2.connect(urlunsplit(urlsplit(url)._replace(path="/postgres")))
    conn.autocommit = True
    with conn.cursor() as cur:
        name = urlsplit(url).path.lstrip("/")
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
        if cur.fetchone() is None:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    conn.close()


def reset() -> None:
    from django.db import connection

    from server.apps.front.pipeline import queue

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE ab_events, ab_event_ids")
    client = queue.get_redis()
    keys = list(client.scan_iter(match=f"{KEY_PREFIX}:*", count=1000))
    for start in range(0, len(keys), 1000):
        client.delete(*keys[start : start + 1000])


def _batches(rows: list, size: int) -> list[list]:
    return [rows[start : start + size] for start in range(0, len(rows), size)]


def time_bulk_create(items: list[bytes], batch_size: int) -> float:
    from django.db import transaction

    from server.apps.front.models import ABEvent
    from server.apps.front.pipeline import queue, writer

    rows = [writer.event_from_payload(queue.decode_event(item)) for item in items]
    started = time.perf_counter()
    for batch in _batches(rows, batch_size):
        with transaction.atomic():
            ABEvent.objects.bulk_create(batch, ignore_conflicts=True)
    return time.perf_counter() - started


def _text_row(values: dict) -> bytes:
    """One row of text-format COPY (the same columns as the binary encoder)."""
    import orjson

    from server.apps.front.pipeline import copyin

    def text(value: object) -> str:
        if value is None:
            return "\\N"
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, dict | list):
            value = orjson.dumps(value).decode()
        else:
            value = str(value)
        return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")

    return ("\t".join(text(values.get(c.attname)) for c in copyin.COLUMNS) + "\n").encode()


def time_copy(items: list[bytes], batch_size: int, *, binary: bool = True) -> float:
    from django.db import connection, transaction

    from server.apps.front.pipeline import copyin, queue

    values = [queue.event_fields(queue.decode_event(item)) for item in items]
    columns = ", ".join(c.column for c in copyin.COLUMNS)
    if binary:
        rows = [copyin.encode_row(v) for v in values]
        sql = f"COPY ab_events ({columns}) FROM STDIN WITH (FORMAT binary)"
    else:
        rows = [_text_row(v) for v in values]
        sql = f"COPY ab_events ({columns}) FROM STDIN"
    started = time.perf_counter()
    for batch in _batches(rows, batch_size):
        data = copyin.copy_data(batch) if binary else b"".join(batch)
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.cursor.copy_expert(sql, io.BytesIO(data), size=1 << 20)
    return time.perf_counter() - started


def _push(items: list[bytes]) -> None:
    from server.apps.front.pipeline import queue

    for start in range(0, len(items), 10_000):
        queue.push(items[start : start + 10_000])


def time_drain(items: list[bytes], batch_size: int, *, staging: str | None = None, threads: int = 1) -> float:
    from django.db import connection

    from server.apps.front.pipeline import copyin, writer

    _push(items)
    # A fresh connection for each drain: the per-connection staging table of
    # one variant must not be found by the other (and both pay one connect).
    connection.close()
    saved = copyin.CREATE_STAGING
    if staging == "drop":
        copyin.CREATE_STAGING = saved.replace(" IF NOT EXISTS", "").replace("ON COMMIT DELETE ROWS", "ON COMMIT DROP")
    try:
        started = time.perf_counter()
        result = writer.drain_concurrently(threads, batch_size=batch_size, budget=3600)
        seconds = time.perf_counter() - started
    finally:
        copyin.CREATE_STAGING = saved
    if result.stored != len(items) or result.error:
        from server.apps.front.pipeline import queue

        dead = queue.dead_letters(0, 1)
        raise SystemExit(f"drain stored {result.stored} of {len(items)}: {result.as_log()} {dead}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=None, help="default: AB_BATCH_SIZE")
    parser.add_argument("--variants", action="store_true", help="also copy-text and drain-drop")
    args = parser.parse_args()

    _own_database()
    _create_database()
    setup_django(AB_QUEUE_KEY_PREFIX=KEY_PREFIX)
    from django.core.management import call_command

    # In this process: `manage.py migrate` would also import the URLconf
    # (system checks), which the writer does not need.
    call_command("migrate", verbosity=0)
    from django.conf import settings

    batch_size = args.batch_size or settings.AB_BATCH_SIZE
    sides: dict[str, Callable[[list[bytes]], float]] = {
        "bulk_create": lambda items: time_bulk_create(items, batch_size),
        "copy": lambda items: time_copy(items, batch_size),
        "drain": lambda items: time_drain(items, batch_size),
        # What the shipped worker runs on a backlog: AB_DRAIN_THREADS (2) drains in one process.
        "drain-2": lambda items: time_drain(items, batch_size, threads=2),
    }
    if args.variants:
        sides["copy-text"] = lambda items: time_copy(items, batch_size, binary=False)
        sides["drain-drop"] = lambda items: time_drain(items, batch_size, staging="drop")
    names = list(sides)

    warm = queue_items(min(args.events, 5000), with_event_time=True)
    for name in names:
        reset()
        sides[name](warm)
    items = queue_items(args.events, with_event_time=True)
    print(f"{args.events} events, batch size {batch_size}, load average {os.getloadavg()}")
    print("round  " + " ".join(f"{name:>12}" for name in names) + "   (events/s)")
    rates: dict[str, list[float]] = {name: [] for name in names}
    for round_no in range(args.rounds):
        order = names[round_no % len(names) :] + names[: round_no % len(names)]
        for name in order:
            reset()
            rates[name].append(args.events / sides[name](items))
        print(f"#{round_no + 1:<5} " + " ".join(f"{rates[name][-1]:>12.0f}" for name in names), flush=True)
    reset()

    def ratio(a: str, b: str) -> float:
        return median([x / y for x, y in zip(rates[a], rates[b], strict=True)])

    print("median " + " ".join(f"{median(rates[name]):>12.0f}" for name in names))
    figures = {f"{name}_events_per_s": median(rates[name]) for name in names}
    figures["drain_vs_bulk_create"] = ratio("drain", "bulk_create")
    figures["drain_vs_copy"] = ratio("drain", "copy")
    figures["drain2_vs_bulk_create"] = ratio("drain-2", "bulk_create")
    figures["drain2_vs_copy"] = ratio("drain-2", "copy")
    figures["copy_vs_bulk_create"] = ratio("copy", "bulk_create")
    if args.variants:
        figures["copy_text_vs_binary"] = ratio("copy-text", "copy")
        figures["drain_drop_vs_reuse"] = ratio("drain-drop", "drain")
    for key, value in figures.items():
        if not key.endswith("_per_s"):
            print(f"{key:<22} {value:.2f}")
    print(f"load average {os.getloadavg()}")
    emit(figures)


if __name__ == "__main__":
    main()
