"""The WSGI application: Django's handler behind the ingest fast lane (server/apps/front/ingest/fastlane.py)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "server.settings")

django_application = get_wsgi_application()

# Imported after Django is set up: the lane's modules use models and settings.
from server.apps.front.ingest.fastlane import IngestFastLane  # noqa: E402

application = IngestFastLane(django_application)
