"""End-to-end lag: from receive (``timestamp``) to the row being visible, under a steady load.

    .venv/bin/python bench/bench_lag.py [--rate 1000] [--seconds 30]

The real stack (the shipped web server, Celery worker, beat every AB_FLUSH_INTERVAL s) takes
a paced wrk load; a poller reads new rows every 50 ms and records, per row,
``clock_timestamp() - timestamp``: the time from the server receiving the
event to its commit being visible (an upper bound by at most one poll).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    INGEST_PATH,
    Processes,
    bench_database_url,
    bench_env,
    emit,
    ensure_database,
    event_body,
    reset,
    wrk,
)

POLL_SECONDS = 0.05


class LagPoller(threading.Thread):
    """Collects receive-to-visible lags of new rows until stopped."""

    def __init__(self, since_epoch: float) -> None:
        super().__init__(daemon=True)
        self.since = since_epoch
        self.lags: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        import psycopg2

        conn = psycopg2.connect(bench_database_url())
        conn.autocommit = True
        last_id = 0
        with conn.cursor() as cur:
            while not self.stop.is_set():
                cur.execute(
                    "SELECT id, extract(epoch FROM timestamp), extract(epoch FROM clock_timestamp())"
                    " FROM ab_events WHERE id > %s ORDER BY id",
                    [last_id],
                )
                for row_id, received, seen in cur.fetchall():
                    last_id = row_id
                    if float(received) >= self.since:
                        self.lags.append(float(seen) - float(received))
                time.sleep(POLL_SECONDS)
        conn.close()


def calibrate_delay(web: str, connections: int, rate: float) -> float:
    """wrk paces by a delay between a connection's requests; find the one that gives ``rate``.

    A connection's cycle is its delay plus the request's own time (with
    reconnects, where a server closes each connection), so the
    delay is corrected from short trial runs.
    """
    import json

    body = json.dumps(event_body(3)).encode()
    target_cycle_ms = connections / rate * 1000
    delay_ms = target_cycle_ms
    tried: list[tuple[float, float]] = []  # (distance from the rate, delay)
    for _ in range(5):
        trial = wrk(web, INGEST_PATH, body, connections=connections, seconds=3, delay_ms=delay_ms)
        print(f"  calibration: delay {delay_ms:.1f} ms -> {trial.rps:.0f} events/s", flush=True)
        tried.append((abs(trial.rps - rate), delay_ms))
        cycle_ms = connections / trial.rps * 1000
        if abs(cycle_ms - target_cycle_ms) < 0.03 * target_cycle_ms:
            break
        # The cycle is the delay plus the request's own time.
        delay_ms = max(1.0, delay_ms - (cycle_ms - target_cycle_ms))
    return min(tried)[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1000, help="target events/s")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--connections", type=int, default=10)
    args = parser.parse_args()

    import json

    ensure_database()
    reset()
    flush_interval = float(bench_env().get("AB_FLUSH_INTERVAL", "2"))
    with Processes("lag") as procs:
        web = procs.web()
        procs.worker()
        procs.beat()
        # Warm up (imports, pools), then let the queue empty before measuring.
        wrk(web, INGEST_PATH, json.dumps(event_body(1)).encode(), connections=4, seconds=2)
        time.sleep(flush_interval + 1)
        delay_ms = calibrate_delay(web, args.connections, args.rate)
        time.sleep(flush_interval + 1)  # calibration's events drained
        poller = LagPoller(since_epoch=time.time() + 0.5)
        poller.start()
        load = wrk(
            web,
            INGEST_PATH,
            json.dumps(event_body(2)).encode(),
            connections=args.connections,
            seconds=args.seconds,
            delay_ms=delay_ms,
        )
        time.sleep(flush_interval * 2 + 2)
        poller.stop.set()
        poller.join()
    lags = poller.lags
    if not lags:
        raise SystemExit("no rows became visible")
    p50, p99, worst = percentile(lags, 50), percentile(lags, 99), max(lags)
    print(f"load {load.rps:.0f} events/s for {load.seconds:.0f} s ({load.non2xx + load.errors} failures)")
    print(f"lag over {len(lags)} events: p50 {p50:.2f} s  p99 {p99:.2f} s  max {worst:.2f} s")
    print(f"flush interval {flush_interval:.1f} s; target p99 <= {flush_interval + 1:.1f} s")
    emit(
        {
            "lag_rate": load.rps,
            "lag_p50_s": p50,
            "lag_p99_s": p99,
            "lag_max_s": worst,
            "flush_interval_s": flush_interval,
        }
    )


if __name__ == "__main__":
    main()
