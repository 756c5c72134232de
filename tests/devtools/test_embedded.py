"""Tests for devtools/embedded.py: real PostgreSQL / Redis from pip wheels.

Self-contained: no Django, no DB fixtures. Every server runs in a tmp dir on
a ``free_port()`` so these tests never touch a developer's ``make run``
instance on the default ports (nor the system services on 5432/6379), and
every fixture stops what it started, even when a test fails.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import redis

from devtools import embedded
from devtools.embedded import EmbeddedPostgres, EmbeddedRedis, free_port

pytestmark = pytest.mark.embedded

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _isolated_queue() -> None:
    """Override the root conftest's autouse fixture of the same name.

    That one needs pytest-django's ``settings`` and the app's Redis; these
    tests use neither, and must also run with ``-p no:django`` on a machine
    whose services are not up yet.
    """


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """One cluster for the module: initdb is the slowest step (~1 s)."""
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data", port=free_port())
    server.start()
    yield server
    server.stop(mode="immediate")


@pytest.fixture
def running_pg(pg: EmbeddedPostgres) -> EmbeddedPostgres:
    """The module cluster, (re)started in case a previous test stopped it."""
    pg.start()
    return pg


@pytest.fixture
def make_redis(tmp_path: Path) -> Iterator[Callable[..., EmbeddedRedis]]:
    """Factory for Redis servers in tmp dirs; kills them all at teardown."""
    servers: list[EmbeddedRedis] = []

    def make(**kwargs: Any) -> EmbeddedRedis:
        server = EmbeddedRedis(tmp_path / f"redis{len(servers)}", port=free_port(), **kwargs)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.kill()


# ---------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------


def test_pg_url_and_idempotent_start(running_pg: EmbeddedPostgres) -> None:
    assert running_pg.url == f"postgres://postgres@127.0.0.1:{running_pg.port}/abflow"
    assert running_pg.is_running()
    running_pg.start()  # second start is a no-op
    assert running_pg.is_running()


def test_pg_settings(running_pg: EmbeddedPostgres) -> None:
    with psycopg2.connect(running_pg.url) as conn, conn.cursor() as cur:
        cur.execute("SHOW fsync")
        assert cur.fetchone() == ("on",)
        cur.execute("SHOW max_connections")
        assert cur.fetchone() == ("200",)
        cur.execute(
            "SELECT current_database(), pg_encoding_to_char(encoding) "
            "FROM pg_database WHERE datname = current_database()"
        )
        assert cur.fetchone() == ("abflow", "UTF8")
    conn.close()


def test_pg_committed_row_survives_kill(running_pg: EmbeddedPostgres) -> None:
    conn = psycopg2.connect(running_pg.url)
    with conn, conn.cursor() as cur:  # `with conn` commits
        cur.execute("CREATE TABLE durable (id int PRIMARY KEY, note text)")
        cur.execute("INSERT INTO durable VALUES (1, 'committed')")
    conn.close()

    running_pg.kill()
    assert not running_pg.is_running()
    assert not _port_open(running_pg.port)
    # A crash leaves the pid file behind; start() must cope with it.
    assert (running_pg.data_dir / "postmaster.pid").exists()

    running_pg.start()
    conn = psycopg2.connect(running_pg.url)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT note FROM durable WHERE id = 1")
        assert cur.fetchone() == ("committed",)
    conn.close()


def test_pg_stop_modes_and_stop_when_stopped(running_pg: EmbeddedPostgres) -> None:
    running_pg.stop(mode="immediate")
    assert not running_pg.is_running()
    running_pg.stop()  # not running: no error
    running_pg.start()
    running_pg.stop(mode="fast")
    assert not running_pg.is_running()
    assert not _port_open(running_pg.port)
    with pytest.raises(ValueError):
        running_pg.stop(mode="bogus")


def test_pg_refuses_port_taken_by_someone_else(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        server = EmbeddedPostgres(tmp_path / "pg", port=squatter.getsockname()[1])
        with pytest.raises(RuntimeError, match="already in use"):
            server.start()
    server.stop()


def test_pg_data_dir_too_long_for_unix_socket(tmp_path: Path) -> None:
    # Deep CI checkouts exceed the 107-byte AF_UNIX limit; postgres would
    # refuse to start with its socket in the data dir.
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    server = EmbeddedPostgres(deep / "pg", port=free_port(), database="other-db")
    try:
        server.start()
        socket_dir = server._socket_dir()
        assert socket_dir != server.data_dir
        assert (socket_dir / f".s.PGSQL.{server.port}").is_socket()
        conn = psycopg2.connect(server.url)  # database names needing quotes work too
        conn.close()
    finally:
        server.stop(mode="immediate")
    shutil.rmtree(socket_dir, ignore_errors=True)


# ---------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("appendfsync", ["always", "everysec"])
def test_redis_aof_survives_kill(make_redis: Callable[..., EmbeddedRedis], appendfsync: str) -> None:
    server = make_redis(appendfsync=appendfsync)
    server.start()
    server.start()  # idempotent
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    client = redis.Redis.from_url(server.url)
    client.set("answer", "42")
    client.rpush("queue", "task-1", "task-2")
    if appendfsync == "everysec":
        # Redis write()s the AOF before replying, so a process crash is
        # already safe; waiting past one fsync also makes it OS-crash safe and
        # rules out the rare "fsync in progress, write postponed" window.
        time.sleep(1.1)
    client.close()

    server.kill()
    assert not server.is_running()
    assert not _port_open(server.port)

    server.start()
    client = redis.Redis.from_url(server.url)
    assert client.get("answer") == b"42"
    assert client.lrange("queue", 0, -1) == [b"task-1", b"task-2"]
    assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    client.close()


def test_redis_graceful_stop(make_redis: Callable[..., EmbeddedRedis]) -> None:
    server = make_redis()
    server.stop()  # never started: no error
    server.start()
    client = redis.Redis.from_url(server.url)
    client.set("k", "v")
    client.close()
    server.stop()
    assert not server.is_running()
    assert not _port_open(server.port)
    server.stop()
    server.start()
    client = redis.Redis.from_url(server.url)
    assert client.get("k") == b"v"
    client.close()


# ---------------------------------------------------------------------------
# ensure_services / stop_services / CLI
# ---------------------------------------------------------------------------


def test_ensure_services_concurrent_and_stop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "DEFAULT_PG_PORT", free_port())
    monkeypatch.setattr(embedded, "DEFAULT_REDIS_PORT", free_port())
    results: list[dict[str, str]] = []
    errors: list[BaseException] = []

    def up() -> None:
        try:
            results.append(embedded.ensure_services(tmp_path))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    # Concurrent callers must serialise on the file lock: one initdb, one
    # server each, and everyone gets the same URLs.
    threads = [threading.Thread(target=up) for _ in range(3)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        expected = {
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:{embedded.DEFAULT_PG_PORT}/abflow",
            "REDIS_URL": f"redis://127.0.0.1:{embedded.DEFAULT_REDIS_PORT}/0",
        }
        assert results == [expected] * 3
        with psycopg2.connect(expected["DATABASE_URL"]) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
        conn.close()
        assert redis.Redis.from_url(expected["REDIS_URL"]).ping()
    finally:
        embedded.stop_services(tmp_path)
    assert not EmbeddedPostgres(tmp_path / "pg", port=embedded.DEFAULT_PG_PORT).is_running()
    assert not EmbeddedRedis(tmp_path / "redis", port=embedded.DEFAULT_REDIS_PORT).is_running()


def test_cli_status_when_stopped(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "devtools.embedded", "status", "--data-dir", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert res.returncode == 1, res.stderr
    assert "postgres: stopped" in res.stdout
    assert "redis: stopped" in res.stdout


def test_defaults_and_port_overrides() -> None:
    assert embedded.DEFAULT_DATA_DIR == REPO_ROOT / ".data"
    env = {**os.environ, "ABFLOW_EMBEDDED_PG_PORT": "55999", "ABFLOW_EMBEDDED_REDIS_PORT": "56999"}
    env.pop("DATABASE_URL", None)
    code = "from server import defaults as e; print(e.DEFAULT_DATABASE_URL, e.DEFAULT_REDIS_URL)"
    run = {"env": env, "cwd": REPO_ROOT, "capture_output": True, "text": True, "check": True}
    out = subprocess.run([sys.executable, "-c", code], **run)
    assert out.stdout.split() == ["postgres://postgres@127.0.0.1:55999/abflow", "redis://127.0.0.1:56999/0"]
    env.pop("ABFLOW_EMBEDDED_PG_PORT")
    env.pop("ABFLOW_EMBEDDED_REDIS_PORT")
    out = subprocess.run([sys.executable, "-c", code], **run)
    assert out.stdout.split() == ["postgres://postgres@127.0.0.1:55432/abflow", "redis://127.0.0.1:56379/0"]
