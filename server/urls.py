from django.contrib import admin
from django.urls import include, path

from server.apps.front import ops_views

urlpatterns = [
    path("api/rest/front/", include("server.apps.front.urls")),
    # Operations (docs/operations.md): Prometheus scrape, liveness, readiness.
    path("metrics", ops_views.metrics_view, name="metrics"),
    path("healthz", ops_views.healthz, name="healthz"),
    path("readyz", ops_views.readyz, name="readyz"),
    path("admin/", admin.site.urls),
]
