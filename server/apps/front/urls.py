from django.urls import path

from .report_views import ABReportView
from .views import track_ab_event, track_ab_events

urlpatterns = [
    path("ab-event/", track_ab_event, name="ab-event"),
    path("ab-events/", track_ab_events, name="ab-events"),
    path("ab-report/", ABReportView.as_view(), name="ab-report"),
]
