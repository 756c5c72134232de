from django.urls import path

from .views import track_ab_event

urlpatterns = [
    path("api/rest/front/ab-event/", track_ab_event, name="ab-event-sync"),
]
