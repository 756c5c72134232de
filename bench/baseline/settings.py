"""The app's settings with the baseline URLconf: same middleware, same database, same gunicorn config.

Serve with ``DJANGO_SETTINGS_MODULE=bench.baseline.settings gunicorn -c bench/gunicorn.conf.py server.wsgi``.
"""

from server.settings import *  # noqa: F403

ROOT_URLCONF = "bench.baseline.urls"
# The spec's synchronous endpoint as Django serves it: abflow's fast lane stays out of
# the way (it would turn itself off anyway: the path resolves to another view).
AB_FAST_LANE = False
