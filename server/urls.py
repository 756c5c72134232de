from django.contrib import admin
from django.urls import include, path

from server.apps.front.ops import views as ops_views
from server.apps.front.report import views as report_views

urlpatterns = [
    path("api/rest/front/", include("server.apps.front.urls")),
    # Operations (docs/operations.md): Prometheus scrape, liveness, readiness.
    path("metrics", ops_views.metrics_view, name="metrics"),
    path("healthz", ops_views.healthz, name="healthz"),
    path("readyz", ops_views.readyz, name="readyz"),
    # The experiment report page (staff only), before the admin's catch-all.
    path("admin/ab-report/", report_views.admin_report, name="ab-report-admin"),
    path("admin/ab-report/plotly.min.js", report_views.plotly_js, name="ab-report-plotly-js"),
    path("admin/", admin.site.urls),
]
