from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("api/rest/front/", include("server.apps.front.urls")),
    path("admin/", admin.site.urls),
]
