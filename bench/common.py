"""What every benchmark shares: the bench database and Redis, the real processes, wrk.

Where the benchmarks run
------------------------
On the PostgreSQL and Redis of ``DATABASE_URL`` / ``REDIS_URL`` (the embedded
ones that ``make bench`` starts when those are unset), but never on their
data: a dedicated database ``abflow_bench`` (created and migrated here,
truncated between runs) and Redis database 15 with its own key prefix
(flushed between runs). Override with ``BENCH_DATABASE_URL`` /
``BENCH_REDIS_URL``.

Each figure is the median over repeated runs; the load generator (``wrk``,
Debian package ``wrk``) runs on the same machine as the stack, so it takes
CPU from it, as the targets assume.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from devtools.embedded import free_port  # noqa: E402
from devtools.processes import Proc, celery_worker_argv, spawn_logged, wait_for, web_server_argv  # noqa: E402
from server.defaults import DEFAULT_DATABASE_URL, DEFAULT_REDIS_URL  # noqa: E402

PYTHON = sys.executable
RESULTS_DIR = REPO_ROOT / "bench" / "results"  # git-ignored: logs of the processes
KEY_PREFIX = "abbench"
WRK_SCRIPT = REPO_ROOT / "bench" / "wrk_post.lua"
INGEST_PATH = "/api/rest/front/ab-event/"
BATCH_PATH = "/api/rest/front/ab-events/"


def _with_path(url: str, path: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def bench_database_url() -> str:
    return os.environ.get("BENCH_DATABASE_URL") or _with_path(
        os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL), "/abflow_bench"
    )


def bench_redis_url() -> str:
    return os.environ.get("BENCH_REDIS_URL") or _with_path(os.environ.get("REDIS_URL", DEFAULT_REDIS_URL), "/15")


def bench_env(**overrides: str) -> dict[str, str]:
    """The environment of every process of the bench stack (and of Django in this process)."""
    # AB_*, GUNICORN_* and WEB_CONCURRENCY from the caller's environment pass
    # through, so a setting can be tried with e.g. `AB_BATCH_SIZE=5000 python bench/...`.
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="server.settings",
        DATABASE_URL=bench_database_url(),
        REDIS_URL=bench_redis_url(),
        AB_QUEUE_KEY_PREFIX=KEY_PREFIX,
        DEBUG="0",
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    env.update(overrides)
    return env


def setup_django(**overrides: str) -> None:
    """Configure Django in this process against the bench database and Redis."""
    os.environ.update(bench_env(**overrides))
    import django

    django.setup()


def ensure_database() -> None:
    """Create ``abflow_bench`` if missing, and migrate it."""
    import psycopg2
    from psycopg2 import sql

    url = bench_database_url()
    name = urlsplit(url).path.lstrip("/")
    conn = psycopg2.connect(_with_path(url, "/postgres"))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
        if cur.fetchone() is None:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    conn.close()
    subprocess.run([PYTHON, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=REPO_ROOT, env=bench_env(), check=True)
    # The spec's MVP writes into the spec's own table (bench/baseline/models.py).
    subprocess.run(
        [PYTHON, "-c", "import django; django.setup(); from bench.baseline.models import ensure_table; ensure_table()"],
        cwd=REPO_ROOT,
        env={**bench_env(), "DJANGO_SETTINGS_MODULE": "bench.baseline.settings"},
        check=True,
    )


def reset() -> None:
    """Empty ``ab_events`` and the bench Redis database (dedicated to the bench)."""
    import psycopg2
    import redis

    conn = psycopg2.connect(bench_database_url())
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("TRUNCATE ab_events, ab_event_ids RESTART IDENTITY")
        cur.execute("SELECT to_regclass('bench_mvp_ab_events') IS NOT NULL")
        if cur.fetchone()[0]:
            cur.execute("TRUNCATE bench_mvp_ab_events RESTART IDENTITY")
    conn.close()
    redis.Redis.from_url(bench_redis_url()).flushdb()


def db_scalar(query: str, params: Sequence[Any] = ()) -> Any:
    import psycopg2

    conn = psycopg2.connect(bench_database_url())
    try:
        with conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchone()[0]
    finally:
        conn.close()


# --- processes --------------------------------------------------------------------


class Processes:
    """Children of a benchmark; all killed on exit, whatever happens."""

    def __init__(self, name: str) -> None:
        self.dir = RESULTS_DIR / name
        self.dir.mkdir(parents=True, exist_ok=True)
        # Metrics as deployed (Makefile, compose, systemd): multiprocess mode, a fresh directory.
        self.metrics_dir = self.dir / "metrics"
        shutil.rmtree(self.metrics_dir, ignore_errors=True)
        self.metrics_dir.mkdir()
        self.procs: list[Proc] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self.procs):
            proc.terminate()

    def spawn(self, name: str, argv: list[str], **env: str) -> Proc:
        log = self.dir / f"{name}.log"
        proc = spawn_logged(name, argv, log, bench_env(**{"PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir), **env}))
        self.procs.append(proc)
        return proc

    def web(self, name: str = "web", **env: str) -> str:
        """The shipped web server (deploy/web.py) on a free port; returns host:port."""
        port = free_port()
        proc = self.spawn(name, web_server_argv(), WEB_BIND=f"127.0.0.1:{port}", **env)
        return _wait_listening(proc, port)

    def mvp(self, name: str = "web-baseline") -> str:
        """The spec's synchronous MVP as issue 11 defines it: bench/baseline under gunicorn, 4 sync workers."""
        port = free_port()
        proc = self.spawn(
            name,
            [PYTHON, "-m", "gunicorn", "-c", "bench/gunicorn.conf.py", "server.wsgi"],
            DJANGO_SETTINGS_MODULE="bench.baseline.settings",
            GUNICORN_BIND=f"127.0.0.1:{port}",
            GUNICORN_WORKER_CLASS="sync",
            WEB_CONCURRENCY="4",
        )
        return _wait_listening(proc, port)

    def worker(self, name: str = "worker", **env: str) -> Proc:
        """The Procfile's worker (one solo-pool process)."""
        proc = self.spawn(name, celery_worker_argv(f"{name}@%h"), **{"LOG_LEVEL": "INFO", **env})
        wait_for(lambda: " ready." in proc.output() or _dead(proc), 60, f"worker {name}")
        return proc

    def beat(self, **env: str) -> Proc:
        return self.spawn(
            "beat",
            [PYTHON, "-m", "celery", "-A", "celery_app", "beat", "-l", "info", "-s", str(self.dir / "beat-schedule")],
            **env,
        )


def _wait_listening(proc: Proc, port: int) -> str:
    def up() -> bool:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited:\n{proc.output()[-3000:]}")
        import socket

        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
        return False

    wait_for(up, 60, proc.name)
    time.sleep(0.5)  # all workers booted
    return f"127.0.0.1:{port}"


def _dead(proc: Proc) -> bool:
    if not proc.alive():
        raise RuntimeError(f"{proc.name} exited:\n{proc.output()[-3000:]}")
    return False


# --- wrk -----------------------------------------------------------------------------


@dataclass
class WrkResult:
    requests: int
    seconds: float
    non2xx: int
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def require_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    return path


def wrk(
    hostport: str,
    path: str,
    body: bytes,
    *,
    connections: int = 32,
    seconds: float = 10,
    threads: int = 2,
    delay_ms: float = 0,
) -> WrkResult:
    """One wrk run POSTing ``body``; latency percentiles from wrk's own histogram."""
    body_file = RESULTS_DIR / f"body-{os.getpid()}.json"
    body_file.write_bytes(body)
    env = {**os.environ, "WRK_BODY_FILE": str(body_file), "WRK_DELAY_MS": str(delay_ms)}
    out = subprocess.run(
        [
            require_wrk(),
            f"-t{threads}",
            f"-c{connections}",
            f"-d{round(seconds)}s",
            "--timeout",
            "10s",
            "-s",
            str(WRK_SCRIPT),
            f"http://{hostport}{path}",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(line for line in out.splitlines() if line.startswith("WRK_JSON "))
    data = json.loads(line.removeprefix("WRK_JSON "))
    return WrkResult(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        non2xx=data["non2xx"],
        errors=data["errors"],
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
    )


def event_body(n: int = 0) -> dict[str, Any]:
    return {
        "session_id": f"bench-session-{n:06d}",
        "variant": "fast" if n % 2 else "deep",
        "event_type": "step_completed",
        "step_number": n % 10,
        "metadata": {"time_spent_ms": 15000, "category_selected": "health"},
    }


def queue_items(n: int, *, session_prefix: str | None = None, with_event_time: bool = False) -> list[bytes]:
    """``n`` queued events as the endpoint encodes them (through the queue's codec; needs setup_django()).

    ``session_prefix``: one random session per event under that prefix (spreads them over queue shards).
    ``with_event_time``: the corrected client time the endpoint sets when the client sends one.
    """
    import uuid
    from datetime import UTC, datetime

    from server.apps.front.pipeline import queue

    received_at = datetime.now(UTC)
    items = []
    for i in range(n):
        data = event_body(i)
        if session_prefix is not None:
            data["session_id"] = f"{session_prefix}{uuid.uuid4().hex[:12]}"
        data["event_id"] = uuid.uuid4()
        event_time = received_at if with_event_time else None
        items.append(queue.encode_event(data, user_id=None, received_at=received_at, event_time=event_time))
    return items


def drain_all() -> int:
    """Drain the bench queue into PostgreSQL in this process until it is empty; the events stored."""
    from server.apps.front.pipeline import writer

    stored = 0
    while True:
        result = writer.drain(budget=600)
        stored += result.stored
        if result.claimed == 0:
            return stored


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


@contextlib.contextmanager
def timer() -> Iterator[list[float]]:
    box: list[float] = []
    started = time.perf_counter()
    try:
        yield box
    finally:
        box.append(time.perf_counter() - started)


def emit(figures: dict[str, Any]) -> None:
    """The machine-readable line run_all.py collects."""
    print("BENCH_JSON " + json.dumps(figures), flush=True)
