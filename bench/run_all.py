"""Run every benchmark and print one summary table against the targets.

    .venv/bin/python bench/run_all.py [--quick]      # or: make bench

Each benchmark runs as its own process (bench/bench_*.py, each usable alone)
and reports its figures on a ``BENCH_JSON`` line, collected here. ``--quick``
shortens every run (for trying the scripts, not for figures). The machine's
load average is printed beside the figures: on a shared 2-core box another
process's load shows directly in them. No figure is asserted anywhere; this
prints, and exits 0, whether targets hold or not.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
PYTHON = sys.executable


def run(script: str, *args: str) -> dict[str, Any]:
    """Run one benchmark, streaming its output; returns its BENCH_JSON figures ({} if it failed)."""
    print(f"\n=== {script} {' '.join(args)}", flush=True)
    started = time.perf_counter()
    proc = subprocess.Popen(
        [PYTHON, str(BENCH / script), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    figures: dict[str, Any] = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("BENCH_JSON "):
            figures.update(json.loads(line.removeprefix("BENCH_JSON ")))
        else:
            print(line, end="", flush=True)
    if proc.wait() != 0:
        print(f"!!! {script} failed (exit {proc.returncode})")
    print(f"=== {script}: {time.perf_counter() - started:.0f} s, load average {os.getloadavg()[0]:.2f}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs, to try the scripts")
    args = parser.parse_args()
    quick = args.quick
    load_before = os.getloadavg()

    f: dict[str, Any] = {}
    f |= run("profile_ingest.py", "--requests", "500" if quick else "3000")
    f |= run("bench_ingest.py", "--runs", "1" if quick else "3", "--seconds", "3" if quick else "10")
    f |= run("bench_drain.py", "--events", "20000" if quick else "200000", "--runs", "1" if quick else "3")
    f |= run("bench_lag.py", "--seconds", "5" if quick else "30")
    f |= run("bench_backlog.py", "--events", "50000" if quick else "1000000")
    f |= run("bench_slow_clients.py", "--servers", "shipped", "--seconds", "3" if quick else "10")

    def fig(key: str, fmt: str) -> str:
        return format(f[key], fmt) if key in f else "n/a"

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("holds" if ok else "NOT YET")

    def check(*keys: str) -> bool:
        return all(k in f for k in keys)

    rows = [
        (
            "single-event ingest req/s (32 conns)",
            f"{fig('ingest_rps', '.0f')} vs baseline {fig('baseline_rps', '.0f')} = {fig('ingest_ratio', '.2f')}x",
            ">= 2.0x baseline",
            verdict(f["ingest_ratio"] >= 2.0 if check("ingest_ratio") else None),
        ),
        (
            "single-event ingest p50 / p99 (worst run)",
            f"{fig('ingest_p50_ms', '.1f')} / {fig('ingest_p99_ms', '.1f')} ({fig('ingest_worst_p99_ms', '.1f')}) ms"
            f" (baseline {fig('baseline_p50_ms', '.1f')} / {fig('baseline_p99_ms', '.1f')})",
            "p99 <= 50 ms, every run",
            verdict(f["ingest_worst_p99_ms"] <= 50 if check("ingest_worst_p99_ms") else None),
        ),
        (
            "batch ingest events/s (100 per request)",
            fig("batch_events_per_s", ".0f"),
            ">= 40,000",
            verdict(f["batch_events_per_s"] >= 40_000 if check("batch_events_per_s") else None),
        ),
        (
            "single events with 64 slow connections",
            f"p99 {fig('slow_worst_p99_ms', '.1f')} ms (worst of slowloris / slow body / idle),"
            f" {fig('slow_failures', '.0f')} failed",
            "p99 <= 100 ms",
            verdict(
                f["slow_worst_p99_ms"] <= 100 and f["slow_failures"] == 0
                if check("slow_worst_p99_ms", "slow_failures")
                else None
            ),
        ),
        (
            "drain events/s (200k backlog)",
            f"{fig('drain_events_per_s', '.0f')} vs raw bulk_create {fig('raw_bulk_create_per_s', '.0f')}"
            f" = {fig('drain_ratio', '.2f')}x",
            ">= 0.85x raw",
            verdict(f["drain_ratio"] >= 0.85 if check("drain_ratio") else None),
        ),
        (
            "end-to-end lag p50 / p99",
            f"{fig('lag_p50_s', '.2f')} / {fig('lag_p99_s', '.2f')} s at {fig('lag_rate', '.0f')} ev/s",
            f"p99 <= {fig('flush_interval_s', '.0f')} + 1 s",
            verdict(f["lag_p99_s"] <= f["flush_interval_s"] + 1 if check("lag_p99_s", "flush_interval_s") else None),
        ),
        (
            f"backlog of {fig('backlog_events', ',')}: time",
            f"{fig('backlog_seconds', '.1f')} s ({fig('backlog_events_per_s', '.0f')} ev/s)",
            "<= 90 s (1M)",
            verdict(
                f["backlog_seconds"] <= 90 * f["backlog_events"] / 1_000_000
                and f["backlog_stored"] == f["backlog_events"]
                if check("backlog_seconds", "backlog_events", "backlog_stored")
                else None
            ),
        ),
        (
            "worker peak RSS (drain process / tree)",
            f"{fig('worker_peak_rss_mb', '.0f')} / {fig('worker_tree_peak_rss_mb', '.0f')} MB",
            "<= 300 MB",
            verdict(f["worker_peak_rss_mb"] <= 300 if check("worker_peak_rss_mb") else None),
        ),
        (
            "CPU per request in the WSGI app",
            f"single {fig('single_cpu_us', '.0f')} us, batch of 100 {fig('batch100_cpu_us', '.0f')} us",
            "(explains the above)",
            "",
        ),
    ]
    print("\n" + "=" * 118)
    print(
        f"summary{' (--quick: not figures)' if quick else ''}; load average before {load_before[0]:.2f}, "
        f"after {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs"
    )
    print(f"{'measure':<40} {'figure':<52} {'target':<18} verdict")
    for name, value, target, ok in rows:
        print(f"{name:<40} {value:<52} {target:<18} {ok}")


if __name__ == "__main__":
    main()
