from django.urls import path

from server.apps.front.ingest.views import track_ab_event, track_ab_events
from server.apps.front.report.views import ABReportView

urlpatterns = [
    path("ab-event/", track_ab_event, name="ab-event"),
    path("ab-events/", track_ab_events, name="ab-events"),
    path("ab-report/", ABReportView.as_view(), name="ab-report"),
]
