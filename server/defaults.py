"""Where the development data stores listen when ``DATABASE_URL`` / ``REDIS_URL`` are unset.

``make run`` and ``make test`` start an embedded PostgreSQL and Redis there
(``devtools/embedded.py``); ``server/settings.py`` falls back to these URLs so
any ``manage.py`` command beside them talks to the same data. This module is
part of the runtime so the settings never import the development tooling.
"""

from __future__ import annotations

import os

# Overridable for a machine where these ports are taken (or for running a
# second checkout's `make run` beside the first).
DEFAULT_PG_PORT = int(os.environ.get("ABFLOW_EMBEDDED_PG_PORT", "55432"))
DEFAULT_REDIS_PORT = int(os.environ.get("ABFLOW_EMBEDDED_REDIS_PORT", "56379"))
DEFAULT_DATABASE_URL = f"postgres://postgres@127.0.0.1:{DEFAULT_PG_PORT}/abflow"
DEFAULT_REDIS_URL = f"redis://127.0.0.1:{DEFAULT_REDIS_PORT}/0"
