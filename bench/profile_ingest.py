"""CPU cost of one ingest request inside the WSGI app, and where it goes (pyinstrument).

    .venv/bin/python bench/profile_ingest.py [--requests 5000] [--profile] [--baseline]

Calls the real WSGI application (all middleware, DRF, the Redis push) in this
process, with no HTTP server and no load generator, and reports *CPU* time
per request (``time.process_time``), which, unlike requests/s on a busy
2-core box, barely moves when other processes compete for the cores. With
``--profile`` it prints pyinstrument's call tree of the same loop.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import BATCH_PATH, INGEST_PATH, emit, ensure_database, event_body, median, setup_django


def _environ(path: str, body: bytes) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1:8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }


def run(app: Any, path: str, body: bytes, n: int) -> float:
    """CPU seconds per request over ``n`` requests (after checking the first answers 2xx)."""
    statuses: list[str] = []

    def start_response(status: str, headers: list[Any], exc_info: Any = None) -> None:
        statuses.append(status)

    b"".join(app(_environ(path, body), start_response))
    if not statuses[0].startswith("20"):
        raise SystemExit(f"{path} answered {statuses[0]}")
    started = time.process_time()
    for _ in range(n):
        for chunk in app(_environ(path, body), start_response):
            del chunk
    return (time.process_time() - started) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="print pyinstrument's profile of the single endpoint")
    parser.add_argument("--baseline", action="store_true", help="profile the spec's synchronous view instead")
    args = parser.parse_args()

    ensure_database()
    settings_module = "bench.baseline.settings" if args.baseline else "server.settings"
    setup_django(DJANGO_SETTINGS_MODULE=settings_module)
    from django.core.wsgi import get_wsgi_application

    app = get_wsgi_application()
    single = json.dumps(event_body(1)).encode()
    batch = json.dumps({"events": [event_body(i) for i in range(100)]}).encode()

    if args.profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0002)
        profiler.start()
        run(app, INGEST_PATH, single, args.requests)
        profiler.stop()
        print(profiler.output_text(unicode=False, color=False, show_all=False))
        return

    cpu = median([run(app, INGEST_PATH, single, args.requests) for _ in range(args.repeat)])
    print(f"{settings_module}: single event {cpu * 1e6:.0f} us CPU/request ({1 / cpu:.0f} req/s per core)")
    figures = {"single_cpu_us": cpu * 1e6}
    if not args.baseline:
        per_batch = median([run(app, BATCH_PATH, batch, max(args.requests // 50, 20)) for _ in range(args.repeat)])
        print(f"batch of 100: {per_batch * 1e6:.0f} us CPU/request ({100 / per_batch:.0f} events/s per core)")
        figures["batch100_cpu_us"] = per_batch * 1e6
    emit(figures)


if __name__ == "__main__":
    main()
