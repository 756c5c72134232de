"""The fault-suite harness: a whole abflow stack in a temp dir, load, and counting.

One ``Stack`` is a private PostgreSQL and Redis (``devtools.embedded``, on free
ports, so a scenario may stop or SIGKILL them), the shipped web server
(``deploy/web.py``: granian) serving the real endpoint, and real Celery worker / beat /
``manage.py ab_flush`` *processes* talking to them through the ordinary
``DATABASE_URL`` / ``REDIS_URL`` environment. Nothing here is mocked: a
scenario's verdict comes from counting rows in PostgreSQL by key.

How "exactly once" is judged
----------------------------
Every event gets a unique ``session_id`` (its *key*); half of them also carry
a client ``event_id`` and half let the server generate one at enqueue, so a
writer that re-generated ids on a retry would show up as two rows for one key
(``event_id`` alone could never show a duplicate: it is a unique column).
Only an explicit 2xx is a promise: such a key must have exactly one row. A
4xx must have none. A 503 or a client-side error is no promise either way
(Redis may have applied the push and died before replying), but still may
not have more than one row.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import random
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg2
import redis

from devtools.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from devtools.processes import PYTHON, REPO_ROOT, Proc, celery_worker_argv, spawn_logged, wait_for, web_server_argv

QUEUE_PREFIX = "ab"  # the settings default, used by every process of a stack

# What every process of a stack gets besides the two URLs: small leases so
# reaping happens within a scenario, fast beats, production-like DEBUG off.
BASE_ENV = {
    "DJANGO_SETTINGS_MODULE": "server.settings",
    "DEBUG": "0",
    "AB_LEASE_SECONDS": "2",
    "AB_FLUSH_INTERVAL": "0.5",
    "AB_BATCH_SIZE": "200",
    "AB_DRAIN_BUDGET": "5",
    "LOG_LEVEL": "INFO",
    "PYTHONUNBUFFERED": "1",
}


# --- PostgreSQL template ---------------------------------------------------------


def build_pg_template(root: Path) -> Path:
    """initdb + ``manage.py migrate`` once; scenarios copy the stopped cluster.

    Copying a migrated data dir (``cp -a`` keeps the server user's ownership)
    costs a fraction of a second; migrating every scenario would cost seconds.
    """
    pg = EmbeddedPostgres(root / "template", port=free_port())
    pg.start()
    try:
        env = {**os.environ, **BASE_ENV, "DATABASE_URL": pg.url, "REDIS_URL": "redis://127.0.0.1:1/0"}
        subprocess.run(
            [PYTHON, "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=REPO_ROOT,
            env=env,
            check=True,
            capture_output=True,
            timeout=120,
        )
    finally:
        pg.stop(mode="fast")
    return pg.data_dir


# --- the stack ------------------------------------------------------------------


class Stack:
    """PostgreSQL + Redis + web server + workers of one scenario, all in ``root``."""

    def __init__(
        self,
        root: Path,
        pg_template: Path,
        *,
        appendfsync: str = "everysec",
        env: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", str(pg_template), str(root / "pg")], check=True)
        self.pg = EmbeddedPostgres(root / "pg", port=free_port())
        self.redis = EmbeddedRedis(root / "redis", port=free_port(), appendfsync=appendfsync)
        self.extra_env = dict(env or {})
        self.procs: list[Proc] = []
        self.web_port: int | None = None
        self._counter = itertools.count()
        self.pg.start()
        self.redis.start()
        self.r = redis.Redis.from_url(self.redis.url, socket_timeout=5)

    # -- environment and processes --

    def env(self, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AB_", "PG", "GUNICORN_", "WEB_", "CELERY_"))}
        env.update(BASE_ENV)
        env.update(DATABASE_URL=self.pg.url, REDIS_URL=self.redis.url)
        env.update(self.extra_env)
        env.update(overrides)
        return env

    def spawn(self, name: str, argv: list[str], **env: str) -> Proc:
        log = self.root / f"{name}-{next(self._counter)}.log"
        proc = spawn_logged(name, argv, log, self.env(**env))
        self.procs.append(proc)
        return proc

    def start_web(self, workers: int = 2) -> str:
        """The shipped web server (``deploy/web.py``) on a free port; returns its base URL."""
        self.web_port = free_port()
        proc = self.spawn(
            "web",
            web_server_argv(),
            WEB_BIND=f"127.0.0.1:{self.web_port}",
            WEB_CONCURRENCY=str(workers),
            LOG_LEVEL="WARNING",
        )

        def answers() -> bool:
            if not proc.alive():
                raise RuntimeError(f"web server exited:\n{proc.output()}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.web_port, timeout=2)
                conn.request("GET", "/api/rest/front/ab-event/")
                conn.getresponse().read()
                return True
            except OSError:
                return False

        wait_for(answers, 30, "the web server to answer")
        return f"http://127.0.0.1:{self.web_port}"

    def start_worker(self, name: str = "worker", **env: str) -> Proc:
        """A real Celery worker (solo pool: the drain runs in this very pid, so kill -9 hits it)."""
        proc = self.spawn(name, celery_worker_argv(f"{name}-{uuid.uuid4().hex[:6]}@%h"), **env)

        def ready() -> bool:
            if not proc.alive():
                raise RuntimeError(f"worker {name} exited:\n{proc.output()}")
            return " ready." in proc.output()

        wait_for(ready, 30, f"worker {name} to be ready")
        return proc

    def start_beat(self, **env: str) -> Proc:
        schedule = self.root / f"beat-schedule-{next(self._counter)}"
        return self.spawn(
            "beat",
            [PYTHON, "-m", "celery", "-A", "celery_app", "beat", "-l", "info", "-s", str(schedule), "--pidfile="],
            **env,
        )

    def start_flush(self, **env: str) -> Proc:
        """``manage.py ab_flush``: one drain run in its own process."""
        return self.spawn("flush", [PYTHON, "manage.py", "ab_flush"], **env)

    def trigger_drain(self) -> None:
        """Put one drain task on the broker, as beat would."""
        from celery import Celery

        app = Celery("abflow-test", broker=self.redis.url)
        try:
            app.send_task("worker.tasks.flush_ab_events")
        finally:
            app.close()

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
        with contextlib.suppress(Exception):
            self.redis.kill()
        with contextlib.suppress(Exception):
            self.pg.kill()

    # -- Redis side --

    def keys(self) -> Any:
        from server.apps.front.pipeline.queue import Keys

        return Keys(QUEUE_PREFIX)

    def queue_state(self) -> tuple[int, int, int]:
        """(queued, leases in flight, dead letters)."""
        k = self.keys()
        pipe = self.r.pipeline(transaction=False)
        pipe.llen(k.queue)
        pipe.zcard(k.leases)
        pipe.llen(k.dead)
        depth, leases, dead = pipe.execute()
        return int(depth), int(leases), int(dead)

    def dead_letters(self) -> list[dict[str, Any]]:
        return [json.loads(item) for item in self.r.lrange(self.keys().dead, 0, -1)]

    def push(self, items: list[bytes]) -> None:
        """Push queue items straight into this stack's Redis with the app's own protocol."""
        from django.test import override_settings

        from server.apps.front.pipeline import queue

        with override_settings(AB_QUEUE_KEY_PREFIX=QUEUE_PREFIX):
            for start in range(0, len(items), 5000):
                queue.push(items[start : start + 5000], client=self.r)

    # -- PostgreSQL side --

    @contextlib.contextmanager
    def db(self) -> Iterator[Any]:
        conn = psycopg2.connect(self.pg.url, connect_timeout=5)
        try:
            conn.autocommit = True
            yield conn
        finally:
            conn.close()

    def rows_by_key(self, prefix: str) -> Counter[str]:
        """Stored rows per session_id (the event's key) among keys starting with ``prefix``."""
        with self.db() as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT session_id, count(*) FROM ab_events WHERE session_id LIKE %s GROUP BY session_id",
                [prefix.replace("_", r"\_") + "%"],
            )
            return Counter({key: int(n) for key, n in cur.fetchall()})

    def wait_drained(self, promised: set[str], prefix: str, timeout: float = 60, cap: float = 300) -> None:
        """Until queue and leases are empty and every promised key is stored.

        ``timeout`` is measured from the last progress (rows stored, queue
        shrinking), not from the start: on a loaded machine a drain can be
        slow without being stuck, and a slow drain is not a lost event. ``cap``
        bounds the whole wait. On timeout the scenario goes on to its verdict,
        which names what is missing and whether the queue still held it.
        """
        started = last_progress = time.monotonic()
        seen: tuple[int, int] | None = None
        while True:
            depth, leases, _ = self.queue_state()
            stored = self.rows_by_key(prefix)
            if depth == 0 and leases == 0 and promised <= set(stored):
                return
            now = time.monotonic()
            state = (len(stored), -(depth + leases))
            if seen is None or state > seen:
                seen, last_progress = state, now
            if now - last_progress > timeout or now - started > cap:
                return
            time.sleep(0.25)


# --- events ----------------------------------------------------------------------

VARIANTS = ("fast", "deep")
EVENT_TYPES = ("variant_assigned", "onboarding_started", "step_completed", "onboarding_completed")


def event_body(key: str, seq: int) -> dict[str, Any]:
    """A valid event keyed by ``session_id``; every other one brings its own event_id."""
    body: dict[str, Any] = {
        "session_id": key,
        "variant": VARIANTS[seq % 2],
        "event_type": EVENT_TYPES[seq % len(EVENT_TYPES)],
        "step_number": seq % 7,
        "metadata": {"seq": seq, "source": "faults"},
    }
    if seq % 2 == 0:
        body["event_id"] = str(uuid.uuid4())
    return body


def queue_item(key: str, seq: int, **fields: Any) -> bytes:
    """An event as the endpoint would have queued it (for backlogs pushed directly); ``fields`` override."""
    from tests.factories import queue_item as build

    return build(**{**event_body(key, seq), "received_at": datetime.now(UTC), **fields})


@dataclass
class Outcome:
    key: str
    status: int | None  # None: no HTTP answer (timeout, connection reset)
    started: float  # time.monotonic() when sent
    latency: float


class Load:
    """Threads POSTing unique events to the real endpoint, paced to ``rate`` events/s.

    Bounded: stops after ``total`` events or at ``stop()``. Each thread keeps
    its own stdlib HTTP connection and reopens it after an error.
    """

    PATH = "/api/rest/front/ab-event/"

    def __init__(self, base_url: str, prefix: str, *, rate: float = 300, threads: int = 4, total: int = 20_000):
        host, port = base_url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.prefix = prefix
        self.rate = rate
        self.threads = threads
        self.total = total
        self.outcomes: list[Outcome] = []
        self._seq = itertools.count()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def __enter__(self) -> Load:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        for index in range(self.threads):
            thread = threading.Thread(target=self._run, args=(index,), daemon=True)
            thread.start()
            self._workers.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._workers:
            thread.join(timeout=30)

    def wait(self, timeout: float = 120) -> None:
        """Until all ``total`` events were sent."""
        for thread in self._workers:
            thread.join(timeout=timeout)

    def _run(self, index: int) -> None:
        interval = self.threads / self.rate
        conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
        next_at = time.monotonic() + random.random() * interval
        while not self._stop.is_set():
            seq = next(self._seq)
            if seq >= self.total:
                break
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            next_at = max(next_at + interval, time.monotonic() - interval)
            key = f"{self.prefix}{seq}"
            body = json.dumps(event_body(key, seq)).encode()
            started = time.monotonic()
            status: int | None
            try:
                conn.request("POST", self.PATH, body=body, headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                status = response.status
                if response.getheader("Connection", "").lower() == "close":
                    conn.close()
            except (OSError, http.client.HTTPException):
                status = None
                conn.close()
            self.outcomes.append(Outcome(key, status, started, time.monotonic() - started))
        conn.close()

    def between(self, start: float, end: float) -> list[Outcome]:
        return [o for o in self.outcomes if start <= o.started and o.started + o.latency <= end]

    def accepted(self) -> set[str]:
        return {o.key for o in self.outcomes if o.status is not None and 200 <= o.status < 300}


# --- verdict -----------------------------------------------------------------------


@dataclass
class Tally:
    scenario: str
    sent: int = 0
    accepted: int = 0
    refused: int = 0  # 4xx: promised never to be stored
    unanswered: int = 0  # 503 / no answer: no promise
    stored: int = 0
    lost: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    problems: list[str] = field(default_factory=list)

    HEADER = (
        f"{'scenario':<46} {'sent':>7} {'accepted':>8} {'refused':>7} {'no-promise':>10} "
        f"{'stored':>7} {'lost':>5} {'dupes':>5} {'dead':>5}"
    )

    def row(self) -> str:
        return (
            f"{self.scenario:<46} {self.sent:>7} {self.accepted:>8} {self.refused:>7} {self.unanswered:>10} "
            f"{self.stored:>7} {self.lost:>5} {self.duplicates:>5} {self.dead_lettered:>5}"
        )

    def print(self) -> None:
        print(f"\n{self.HEADER}\n{self.row()}")
        for problem in self.problems[:20]:
            print(f"  ! {problem}")


def verdict(
    stack: Stack,
    scenario: str,
    prefix: str,
    *,
    outcomes: Iterable[Outcome] = (),
    pushed: Iterable[str] = (),
    expected_dead: int = 0,
) -> Tally:
    """Count rows per key and compare with what was promised; prints the table row.

    ``outcomes`` are HTTP answers; ``pushed`` are keys pushed straight into
    the queue (each push returned, so each is a promise like a 201).
    """
    statuses: dict[str, int | None] = {o.key: o.status for o in outcomes}
    for key in pushed:
        statuses[key] = 201
    rows = stack.rows_by_key(prefix)
    _, _, dead = stack.queue_state()
    tally = Tally(scenario, sent=len(statuses), dead_lettered=dead)
    for key, status in statuses.items():
        n = rows.get(key, 0)
        if status is not None and 200 <= status < 300:
            tally.accepted += 1
            if n == 0:
                tally.lost += 1
                tally.problems.append(f"{key}: answered {status} but not stored")
        elif status is not None and 400 <= status < 500:
            tally.refused += 1
            if n:
                tally.problems.append(f"{key}: answered {status} but stored {n}x")
        else:
            tally.unanswered += 1
        if n > 1:
            tally.duplicates += n - 1
            tally.problems.append(f"{key}: stored {n} times")
    strays = set(rows) - set(statuses)
    if strays:
        tally.problems.append(f"{len(strays)} stored keys were never sent, e.g. {sorted(strays)[:3]}")
    tally.stored = sum(rows.values())
    if dead != expected_dead:
        tally.problems.append(f"{dead} dead letters, expected {expected_dead}")
    depth, leases, _ = stack.queue_state()
    if tally.problems and (depth or leases):
        # Not a loss yet: the promised events may still be in the queue or leased to a live drain.
        tally.problems.insert(0, f"the queue was not drained at the verdict: {depth} queued, {leases} leased")
    tally.print()
    return tally


def assert_exactly_once(tally: Tally) -> None:
    assert not tally.problems, "\n".join([tally.HEADER, tally.row(), *tally.problems[:20]])
    assert tally.accepted > 0
    assert tally.lost == 0 and tally.duplicates == 0
