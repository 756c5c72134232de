from django.contrib import admin
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

# Imported for its schema extensions (the ingest and report operations' documentation).
from server.apps.front import schema  # noqa: F401
from server.apps.front.ops import views as ops_views
from server.apps.front.report import views as report_views

urlpatterns = [
    path("api/rest/front/", include("server.apps.front.urls")),
    # Operations (docs/operations.md): Prometheus scrape, liveness, readiness. GET only (require_GET
    # answers 405 to anything else); CSRF-exempt so that it does, instead of CsrfViewMiddleware's 403
    # page for an unsafe method (schemathesis: QUERY /healthz was 403). They change nothing.
    path("metrics", csrf_exempt(ops_views.metrics_view), name="metrics"),
    path("healthz", csrf_exempt(ops_views.healthz), name="healthz"),
    path("readyz", csrf_exempt(ops_views.readyz), name="readyz"),
    # The OpenAPI contract (docs/openapi.yaml): YAML, ?format=json for JSON; a Swagger UI page served offline.
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/schema/ui/", SpectacularSwaggerView.as_view(url_name="schema"), name="schema-ui"),
    # The experiment report page (staff only), before the admin's catch-all.
    path("admin/ab-report/", report_views.admin_report, name="ab-report-admin"),
    path("admin/ab-report/record/", report_views.admin_record, name="ab-report-record"),
    path("admin/ab-report/plotly.min.js", report_views.plotly_js, name="ab-report-plotly-js"),
    path("admin/", admin.site.urls),
]
