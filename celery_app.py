"""The Celery application, wired as in Celery's ``examples/django``.

Run a worker with ``celery -A celery_app worker`` and the scheduler with
``celery -A celery_app beat`` (exactly one beat; see docs/operations.md).
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "server.settings")

app = Celery("abflow")

# All CELERY_* settings from server/settings.py. The broker is
# CELERY_BROKER_URL (default REDIS_URL): a plain Redis or RabbitMQ, never the
# queue's Redis Cluster (AB_QUEUE_REDIS_CLUSTER), for which kombu has no
# transport; settings.py refuses that combination at start-up.
app.config_from_object("django.conf:settings", namespace="CELERY")

# Tasks live in worker/tasks.py, thin wrappers around plain functions.
app.conf.include = ["worker.tasks"]
