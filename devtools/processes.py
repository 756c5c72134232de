"""Child processes for the fault suite and the benchmarks: start, log, wait, kill.

Shared by ``tests/faults/harness.py`` and ``bench/common.py`` (the benchmarks
never import the tests). Every process runs in its own session with its
output in a log file, so a scenario can SIGKILL it (or its whole group) and
still read what it said.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Proc:
    """A child process in its own session, its output in a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stored_by_drains(self) -> int:
        """Events this worker's drain runs reported stored (its JSON ``abflow.drain`` log lines)."""
        total = 0
        for line in self.output().splitlines():
            if '"abflow.drain"' not in line:
                continue
            with contextlib.suppress(ValueError):
                total += int(json.loads(line).get("stored", 0))
        return total

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill9(self) -> None:
        """SIGKILL the process itself (a crash: no cleanup, no ack)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)

    def terminate(self) -> None:
        """Kill the whole session (the web server's workers, celery's children) and reap."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)  # orphans left in the group


def spawn_logged(name: str, argv: list[str], log: Path, env: dict[str, str]) -> Proc:
    """Start a process of the stack in its own session (signals go to it alone), output to ``log``."""
    with open(log, "wb") as out:
        popen = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Proc(name, popen, log)


def web_server_argv() -> list[str]:
    """The Procfile's web server: granian with the settings of ``deploy/web.py`` (from WEB_* variables)."""
    return [PYTHON, str(REPO_ROOT / "deploy" / "web.py")]


def celery_worker_argv(node: str) -> list[str]:
    """The Procfile's worker: one solo-pool process, so the drain runs in this very pid."""
    return [
        PYTHON,
        "-m",
        "celery",
        "-A",
        "celery_app",
        "worker",
        "--pool=solo",
        "-l",
        "info",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "-n",
        node,
    ]
