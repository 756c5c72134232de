"""The shipped deployment files agree: one web server, one metrics directory that no unit wipes, stop timeouts.

Issue 9 found ``abflow-web.service`` emptying ``/run/abflow-metrics`` on every
start, deleting the running worker's metric files, with no tmpfiles rule for
the directory. These checks read the files as shipped.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from deploy import web

REPO = Path(__file__).resolve().parents[2]
SYSTEMD = REPO / "deploy" / "systemd"


def unit(name: str) -> dict[str, list[str]]:
    """Key -> values of a systemd unit file (sections flattened; keys may repeat)."""
    values: dict[str, list[str]] = {}
    for line in (SYSTEMD / name).read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def environment(values: dict[str, list[str]]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in values.get("Environment", []))


def test_every_unit_shares_one_metrics_directory_that_tmpfiles_creates_and_no_unit_empties():
    units = ["abflow-web.service", "abflow-worker.service", "abflow-beat.service"]
    dirs = {environment(unit(name)).get("PROMETHEUS_MULTIPROC_DIR") for name in units}
    assert len(dirs) == 1 and None not in dirs, dirs
    (metrics_dir,) = dirs
    rules = [
        line.split()
        for line in (SYSTEMD / "abflow-tmpfiles.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ["d", metrics_dir, "0750", "abflow", "abflow", "-"] in rules  # "-": never aged out
    for name in units:
        for key, commands in unit(name).items():
            if key.startswith("Exec"):
                for command in commands:
                    assert not re.search(r"\brm\b", command) or metrics_dir not in command, (name, command)
        assert "RuntimeDirectory" not in unit(name), name  # would be removed when that unit stops


def test_make_run_compose_systemd_and_the_image_start_the_same_web_server():
    procfile = dict(line.split(": ", 1) for line in (REPO / "Procfile").read_text().splitlines() if line)
    assert procfile["web"].endswith("python deploy/web.py")
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert compose["services"]["web"]["command"] == ["python", "deploy/web.py"]
    assert unit("abflow-web.service")["ExecStart"] == ["/opt/abflow/.venv/bin/python deploy/web.py"]
    assert 'CMD ["python", "deploy/web.py"]' in (REPO / "deploy" / "Dockerfile").read_text()


def test_stop_timeouts_leave_room_for_the_graceful_drain():
    graceful = web.settings_from_env({}).graceful_timeout
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert int(compose["services"]["web"]["stop_grace_period"].rstrip("s")) > graceful
    assert int(unit("abflow-web.service")["TimeoutStopSec"][0]) > graceful
    assert unit("abflow-web.service")["KillMode"] == ["mixed"]  # SIGTERM to granian's main process only
