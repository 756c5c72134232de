"""Prometheus metrics for the ingest pipeline (served at ``GET /metrics``).

Two kinds of figures, collected differently on purpose:

* **Queue state** (depth, in flight, dead letters, lag, last successful
  drain) is read live from Redis by ``QueueCollector`` at scrape time, with
  ``queue.stats()`` (a few pipelined round trips per scrape, however many
  shards; none per request), as totals and per shard (label ``shard``).
  It is therefore the same in every process that serves ``/metrics``, however
  many web workers or hosts there are.
* **Counters and histograms** (events accepted / rejected / stored /
  dead-lettered, drain batch size and duration, ingest request latency) are
  incremented in the process where the thing happens: the web workers count
  requests, the Celery worker counts drains. An increment is a few hundred
  nanoseconds and never touches the network.

Multiprocess mode: with ``PROMETHEUS_MULTIPROC_DIR`` set (before the process
starts, so prometheus_client picks mmap-backed values at import), every
process - each web worker, each Celery pool process - writes its
counters to files in that directory, and ``/metrics`` merges them all. The web
and worker processes must share the directory (same host or a shared volume)
for the drain counters to appear in the web's ``/metrics``; the directory must
be emptied before the processes start. abflow keeps no live gauges in those
files, so nothing needs removing when a worker exits (granian has no exit hook
and needs none; ``mark_process_dead`` serves gunicorn's ``child_exit`` in the
benchmarks' gunicorn candidates, bench/gunicorn.conf.py).
Without the variable, the default in-process registry is used.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from server.apps.front.pipeline import queue

log = logging.getLogger("abflow.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
if os.environ.get(MULTIPROC_ENV):
    # prometheus_client opens its files there as each metric below is created.
    os.makedirs(os.environ[MULTIPROC_ENV], exist_ok=True)

# --- counters and histograms (incremented where things happen) --------------------

EVENTS_ACCEPTED = Counter("abflow_events_accepted", "Events accepted by the ingest endpoints (queued in Redis).")
EVENTS_REJECTED = Counter(
    "abflow_events_rejected",
    "Events refused by the ingest endpoints. reason: validation (field = the first invalid field), "
    "parse, media_type, queue_full, redis_down, or the request-level class (method, auth, throttle, ...).",
    ["reason", "field"],
)
EVENTS_STORED = Counter("abflow_events_stored", "Events written to ab_events by the drain.")
EVENTS_DEAD_LETTERED = Counter(
    "abflow_events_dead_lettered", "Events moved to the dead-letter list (bad data, or their worker kept dying)."
)
EVENT_ID_CONFLICTS = Counter(
    "abflow_event_id_conflicts",
    "Events dead-lettered because their event_id is already stored for a different event "
    "(another session or payload; a redelivery of the same event is not counted).",
)
DRAIN_RUNS = Counter(
    "abflow_drain_runs", "Drain runs, by outcome: ok, or db_error (batch returned to the queue).", ["outcome"]
)
DRAIN_BATCH_SIZE = Histogram(
    "abflow_drain_batch_size",
    "Events per claimed batch (AB_BATCH_SIZE caps it).",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000, 20000),
)
DRAIN_DURATION = Histogram(
    "abflow_drain_duration_seconds",
    "Wall time of one drain run (reap + claim/write/ack loop).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60),
)
REQUEST_LATENCY = Histogram(
    "abflow_http_request_duration_seconds",
    "Latency of requests to the ingest endpoints, by route, method and status code.",
    ["route", "method", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


# --- queue state, live from Redis at scrape time -----------------------------------


class QueueCollector(Collector):
    """Reads ``queue.stats()`` on every scrape; Redis down gives ``abflow_queue_up 0``, not a failed scrape."""

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("abflow_queue_up", "1 if Redis answered this scrape's queue read, else 0.")
        try:
            stats = queue.stats()
        except queue.ERRORS as exc:
            log.warning("metrics scrape: Redis unavailable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield GaugeMetricFamily("abflow_queue_depth", "Events waiting in the Redis queue.", value=stats.depth)
        yield GaugeMetricFamily(
            "abflow_queue_inflight_events", "Events claimed by a drain and not yet acknowledged.", value=stats.inflight
        )
        yield GaugeMetricFamily(
            "abflow_queue_inflight_batches",
            "Claimed batches (leases) not yet acknowledged.",
            value=stats.inflight_batches,
        )
        yield GaugeMetricFamily(
            "abflow_queue_max",
            "AB_QUEUE_MAX: above this depth the endpoint sheds load (503).",
            value=settings.AB_QUEUE_MAX,
        )
        yield GaugeMetricFamily("abflow_queue_dead_letters", "Events in the dead-letter list.", value=stats.dead)
        yield GaugeMetricFamily(
            "abflow_queue_oldest_age_seconds",
            "Age of the oldest queued event (lag between receipt and write); 0 when the queue is empty.",
            value=stats.oldest_age_seconds or 0.0,
        )
        yield from _shard_families(stats)
        if stats.last_drain_at is not None:
            yield GaugeMetricFamily(
                "abflow_drain_last_success_timestamp_seconds",
                "Unix time the last drain run finished without a database error (absent if none ever did).",
                value=stats.last_drain_at,
            )


def _shard_families(stats: queue.QueueStats) -> Iterator[Metric]:
    """Per-shard series (label ``shard``) beside the unlabelled totals above.

    Separate names, not a label on the totals: ``sum(abflow_queue_depth)``
    must never count the same events twice. Every shard that may hold items
    is listed (range(AB_QUEUE_SHARDS) and leftovers of a larger setting).
    """
    families = {
        "depth": GaugeMetricFamily("abflow_queue_shard_depth", "Events waiting in one queue shard.", labels=["shard"]),
        "inflight": GaugeMetricFamily(
            "abflow_queue_shard_inflight_events",
            "Events claimed from one shard, not yet acknowledged.",
            labels=["shard"],
        ),
        "dead": GaugeMetricFamily(
            "abflow_queue_shard_dead_letters", "Events in one shard's dead-letter list.", labels=["shard"]
        ),
        "oldest": GaugeMetricFamily(
            "abflow_queue_shard_oldest_age_seconds",
            "Age of the oldest event queued in one shard; 0 when that shard is empty.",
            labels=["shard"],
        ),
    }
    for shard in stats.shards:
        label = [str(shard.shard)]
        families["depth"].add_metric(label, shard.depth)
        families["inflight"].add_metric(label, shard.inflight)
        families["dead"].add_metric(label, shard.dead)
        families["oldest"].add_metric(label, shard.oldest_age_seconds or 0.0)
    yield from families.values()
    yield GaugeMetricFamily(
        "abflow_queue_shard_max",
        "One shard's share of AB_QUEUE_MAX (ceil(AB_QUEUE_MAX / AB_QUEUE_SHARDS)): above it that shard answers 503.",
        value=queue.shard_cap(),
    )
    yield GaugeMetricFamily(
        "abflow_queue_shards", "AB_QUEUE_SHARDS: how many shards new events are spread over.", value=queue.shard_count()
    )


class _Scrape(Collector):
    """What one scrape exposes: the process-local (or merged multiprocess) metrics plus the queue state."""

    def __init__(self, *collectors: Collector) -> None:
        self._collectors = collectors

    def collect(self) -> Iterator[Metric]:
        for collector in self._collectors:
            yield from collector.collect()


@lru_cache(maxsize=1)
def _scrape_collector() -> _Scrape:
    if os.environ.get(MULTIPROC_ENV):
        # Counters of every process that shares the directory, merged. (The
        # default registry would hold only this process's share.)
        return _Scrape(multiprocess.MultiProcessCollector(CollectorRegistry()), QueueCollector())
    return _Scrape(REGISTRY, QueueCollector())


def render() -> bytes:
    """The Prometheus text exposition (format 0.0.4) of everything above."""
    return generate_latest(_scrape_collector())


def mark_process_dead(pid: int) -> None:
    """For gunicorn's ``child_exit`` hook (bench/gunicorn.conf.py): drops a dead worker's live gauges, if any."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)


# --- request latency -----------------------------------------------------------------

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class IngestLatencyMiddleware:
    """Times requests under AB_INGEST_PATH_PREFIX. First in MIDDLEWARE, so the time includes every layer.

    Labels stay bounded whatever clients send: the URL pattern (not the
    path), a fixed set of methods, the status code.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.prefix: str = getattr(settings, "AB_INGEST_PATH_PREFIX", "/api/rest/front/")

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.path.startswith(self.prefix):
            return self.get_response(request)
        started = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        route = match.route if match is not None else "unmatched"
        method = request.method if request.method in _METHODS else "other"
        REQUEST_LATENCY.labels(route, method, str(response.status_code)).observe(time.perf_counter() - started)
        return response


# --- rejections: counted per event, logged per class and window ----------------------


class RejectionLog:
    """Aggregates rejections per process and logs one JSON line per class at most every ``interval`` s.

    A lone rejection after a quiet spell is logged at once; a burst becomes a
    count. What is still pending when the process exits is logged then.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._counts: Tally[tuple[str, str]] = Tally()
        self._lock = threading.Lock()
        self._window_start = time.monotonic() - interval

    def add(self, reason: str, field: str = "") -> None:
        with self._lock:
            self._counts[(reason, field)] += 1
            now = time.monotonic()
            if now - self._window_start < self.interval:
                return
            pending, self._counts = self._counts, Tally()
            window, self._window_start = now - self._window_start, now
        self._emit(pending, window)

    def flush(self) -> None:
        with self._lock:
            pending, self._counts = self._counts, Tally()
            now = time.monotonic()
            window, self._window_start = now - self._window_start, now
        self._emit(pending, window)

    @staticmethod
    def _emit(pending: Tally[tuple[str, str]], window: float) -> None:
        for (reason, field), count in sorted(pending.items()):
            log.info(
                "ab_rejected",
                extra={
                    "event": "ab_rejected",
                    "reason": reason,
                    "field": field,
                    "count": count,
                    "window_seconds": round(window, 1),
                },
            )


REJECTIONS = RejectionLog(float(getattr(settings, "AB_REJECTION_LOG_INTERVAL", 60.0)))


@atexit.register
def _flush_at_exit() -> None:
    # At exit a handler's stream may already be closed (test runners close
    # theirs): losing the tail summary then beats a traceback on stderr.
    logging.raiseExceptions = False
    REJECTIONS.flush()


def record_rejection(reason: str, field: str = "") -> None:
    """One rejected event: a counter increment and an entry in the aggregated log."""
    EVENTS_REJECTED.labels(reason, field).inc()
    REJECTIONS.add(reason, field)


def record_invalid(errors: Any) -> None:
    """A 400 from the serializer: counted under the first invalid field (declared order)."""
    field = next(iter(errors), "non_field_errors") if isinstance(errors, dict) else "non_field_errors"
    record_rejection("validation", str(field))


# --- drains ----------------------------------------------------------------------------


def observe_drain(*, stored: int, dead_lettered: int, seconds: float, error: str | None, conflicts: int = 0) -> None:
    """One drain run's counters (called by writer.drain, in the worker process)."""
    EVENTS_STORED.inc(stored)
    EVENTS_DEAD_LETTERED.inc(dead_lettered)
    EVENT_ID_CONFLICTS.inc(conflicts)
    DRAIN_DURATION.observe(seconds)
    DRAIN_RUNS.labels("db_error" if error else "ok").inc()
