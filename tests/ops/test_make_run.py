"""`make run` gives the .env file to every process it starts, not only to the Procfile's.

Before, only honcho read ``.env``: after ``cp deploy/.env.example .env``,
`make run` migrated the embedded database while web, worker and beat ran
against the one in ``.env``. Here the real Makefile runs with a probe in place
of ``manage.py`` and of the Procfile's commands; each records what it saw.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from devtools.embedded import free_port

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import json, os, sys
with open(sys.argv[1], "a") as out:
    out.write(json.dumps({"who": " ".join(sys.argv[2:]), "probe": os.environ.get("ABFLOW_PROBE"),
                          "db": os.environ.get("DATABASE_URL")}) + "\\n")
"""


def test_make_run_gives_the_env_file_to_migrate_collectstatic_and_every_procfile_process(tmp_path):
    seen = tmp_path / "seen.jsonl"
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    python = sys.executable
    env_file = tmp_path / "dot.env"
    file_db = "postgres://probe@127.0.0.1:1/from_env_file"
    env_file.write_text(
        "# as deploy/.env.example would set them\n"
        f"DATABASE_URL={file_db}\n"
        "REDIS_URL=redis://127.0.0.1:1/0\n"
        "ABFLOW_PROBE=from-env-file\n"
    )
    procfile = tmp_path / "Procfile"
    # honcho stops every process when one ends: each records, then lingers a moment.
    procfile.write_text(
        f"web: sh -c '{python} {probe} {seen} web && sleep 2'\n"
        f"worker: sh -c '{python} {probe} {seen} worker && sleep 2'\n"
    )
    shell_env = {**os.environ, "DATABASE_URL": "postgres://shell@127.0.0.1:1/from_shell", "ABFLOW_PROBE": "shell"}
    result = subprocess.run(
        [
            "make", "--no-print-directory", "-o", ".venv/.installed", "run",
            f"ENV_FILE={env_file}", f"PROCFILE={procfile}", f"MANAGE={python} {probe} {seen} manage",
            f"PORT={free_port()}", f"METRICS_DIR={tmp_path / 'metrics'}",
        ],
        cwd=REPO, env=shell_env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    records = [json.loads(line) for line in seen.read_text().splitlines()] if seen.exists() else []
    whom = {record["who"].split(" ")[0] if record["who"].startswith(("web", "worker")) else record["who"]
            for record in records}  # fmt: skip
    assert {"manage migrate --noinput", "manage collectstatic --noinput -v 0", "web", "worker"} <= whom, (
        result.stdout + result.stderr
    )
    for record in records:
        assert record["probe"] == "from-env-file", record
        assert record["db"] == file_db, record
