"""The report's JSON API of two checkouts on the same data, alternated: before/after on a shared machine.

    .venv/bin/python bench/bench_report_ab.py --before /path/to/other/checkout [--events 1000000] [--rounds 3]
                                              [--runs 7]

Each round runs, in alternating order, one process per checkout (its own code, from its directory) that
warms up twice and then times ``--runs`` calls of ``GET /api/rest/front/ab-report/`` through Django's test
client as staff, on ``bench_report.py``'s database for ``--events`` (generate it first with that script;
``BENCH_DATABASE_URL`` overrides it as there). Prints each side's median per round with the load average:
the ratio within a round is the figure to quote when the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from server.defaults import DEFAULT_DATABASE_URL  # noqa: E402

CHILD = """
import os, sys, time
sys.path.insert(0, os.getcwd())
from bench.common import setup_django
setup_django(AB_QUEUE_KEY_PREFIX="abbench-report")
from django.contrib.auth import get_user_model
from django.test import Client
user, _ = get_user_model().objects.get_or_create(username="bench-staff", defaults={"is_staff": True})
client = Client()
client.force_login(user)
def api():
    assert client.get("/api/rest/front/ab-report/", HTTP_HOST="localhost").status_code == 200
api(); api()
seconds = []
for _ in range(int(sys.argv[1])):
    started = time.perf_counter(); api(); seconds.append(time.perf_counter() - started)
seconds.sort()
print(f"{seconds[len(seconds) // 2]:.3f} {seconds[0]:.3f} {os.getloadavg()[0]:.1f}")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="the other checkout (e.g. main's)")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()

    env = dict(os.environ)
    if "BENCH_DATABASE_URL" not in env:
        parts = urlsplit(env.get("DATABASE_URL", DEFAULT_DATABASE_URL))
        env["BENCH_DATABASE_URL"] = urlunsplit(parts._replace(path=f"/abflow_bench_report_{args.events}"))
    sides = {"before": Path(args.before).resolve(), "after": REPO_ROOT}
    medians: dict[str, list[float]] = {"before": [], "after": []}
    for round_ in range(args.rounds):
        for side in ("before", "after") if round_ % 2 == 0 else ("after", "before"):
            out = subprocess.run(
                [sys.executable, "-W", "ignore", "-c", CHILD, str(args.runs)],
                cwd=sides[side],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            median, fastest, load = (float(x) for x in out[-3:])
            medians[side].append(median)
            print(f"round {round_} {side:>6}: API median {median:.3f} s (min {fastest:.3f}), load {load}", flush=True)
    ratios = [a / b for a, b in zip(medians["after"], medians["before"], strict=True)]
    print("after / before per round: " + ", ".join(f"{r:.3f}" for r in ratios))


if __name__ == "__main__":
    main()
