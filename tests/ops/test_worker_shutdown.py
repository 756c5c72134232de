"""A real Celery worker stopped with SIGTERM in the middle of a large backlog loses and duplicates nothing.

On SIGTERM Celery does a warm shutdown: the running task is allowed to end.
The drain (writer.request_stop, wired to ``worker_shutting_down``) finishes
and acknowledges the batch it holds, claims no more, and returns, so the
worker exits promptly with no leased batch left behind; the rest waits in
Redis for the next drain.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from celery_app import app
from server.apps.front.models import ABEvent
from server.apps.front.pipeline import queue, writer
from tests.factories import queue_item as make_item

REPO = Path(__file__).resolve().parents[2]
BACKLOG = 30_000


def database_url() -> str:
    """The pytest-django test database, for the worker process."""
    db = settings.DATABASES["default"]
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


def parse_json(line: str) -> dict:
    try:
        value = json.loads(line)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.faults
@pytest.mark.django_db(transaction=True)
def test_sigterm_mid_drain_loses_and_duplicates_nothing(tmp_path):
    items = [make_item() for _ in range(BACKLOG)]
    for start in range(0, BACKLOG, 5000):
        queue.push(items[start : start + 5000])
    expected = {queue.decode_event(item)["id"] for item in items}

    task_queue = f"abtest-{uuid.uuid4().hex[:8]}"  # this test's own Celery queue on the shared broker
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "AB_QUEUE_KEY_PREFIX": settings.AB_QUEUE_KEY_PREFIX,
        # Small batches and a long budget: left alone, one run would drain the
        # whole backlog; only the stop request can end it early.
        "AB_BATCH_SIZE": "200",
        "AB_DRAIN_BUDGET": "300",
        "LOG_FORMAT": "json",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log_path = tmp_path / "worker.log"
    with open(log_path, "w") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "--pool=solo", "-Q", task_queue,
             "--without-heartbeat", "--without-gossip", "--without-mingle", "-l", "INFO"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        app.send_task("worker.tasks.flush_ab_events", queue=task_queue)
        # SIGTERM once the drain is well under way (rows are landing).
        wait_until(lambda: ABEvent.objects.count() >= 2000, timeout=90, what="the worker to start draining")
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    output = log_path.read_text()
    assert worker.returncode == 0, output

    # Gracefully stopped: nothing left claimed, and it stopped early.
    stats = queue.stats()
    assert stats.inflight == 0, output
    assert stats.inflight_batches == 0
    assert stats.depth > 0, "the drain ran to the end instead of stopping on SIGTERM"
    # The interrupted run's one structured log line accounts for every row written.
    runs = [line for line in map(parse_json, output.splitlines()) if line.get("message") == "ab_drain"]
    assert len(runs) == 1, output
    assert runs[0]["stored"] == runs[0]["claimed"] == ABEvent.objects.count()
    assert runs[0]["error"] is None
    assert ABEvent.objects.count() + stats.depth == BACKLOG

    # The next drain takes the rest: every event exactly once.
    connection.close()
    assert writer.drain(budget=300).error is None
    stored = Counter(str(i) for i in ABEvent.objects.values_list("event_id", flat=True))
    assert set(stored) == expected
    assert max(stored.values()) == 1
