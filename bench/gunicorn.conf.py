"""Gunicorn settings of the benchmarks (``gunicorn -c bench/gunicorn.conf.py server.wsgi``).

abflow ships granian (``deploy/web.py``; why: docs/performance.md). This file
serves what is measured beside it: the spec's synchronous MVP (4 sync workers,
issue 11's definition) and the gunicorn candidates of bench/bench_servers.py
(sync, gthread, gevent), each set from the environment below. It was the
shipped configuration until granian replaced it.
"""

import multiprocessing
import os

bind = os.environ.get("GUNICORN_BIND", f"127.0.0.1:{os.environ.get('PORT', '8000')}")
# The endpoint is short and CPU-bound (parse, validate, one Redis round trip).
# gthread, one process per core, a few threads each: it keeps HTTP/1.1
# connections alive (browsers, sendBeacon and load balancers reuse them),
# where sync workers close every connection, so each request paid a TCP
# handshake and a thundering-herd accept across workers. Measured with
# bench/bench_ingest.py on 2 cores at 32 connections: sync x3 ~1.8-3 ms of
# gunicorn CPU per request, gthread 2x4 ~1.45 ms, and 2-5x the requests/s
# (docs/performance.md). The threads overlap the Redis round trip; more
# processes than cores only add context switches.
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count()))
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gthread")
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
backlog = int(os.environ.get("GUNICORN_BACKLOG", "2048"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "20"))
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))
# Recycle workers now and then so a slow leak can never take the service down.
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "100000"))
max_requests_jitter = int(os.environ.get("GUNICORN_MAX_REQUESTS_JITTER", "10000"))
accesslog = os.environ.get("GUNICORN_ACCESSLOG") or None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
preload_app = os.environ.get("GUNICORN_PRELOAD", "1") == "1"


def child_exit(server, worker):
    """Prometheus multiprocess mode: a dead worker's live gauges must not linger."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from server.apps.front.ops.metrics import mark_process_dead

        mark_process_dead(worker.pid)
