from django.apps import AppConfig


class FrontConfig(AppConfig):
    name = "server.apps.front"
    label = "front"
    default_auto_field = "django.db.models.BigAutoField"
