from django.contrib import admin
from django.http import HttpRequest

from .models import ABEvent


@admin.register(ABEvent)
class ABEventAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "user",
        "session_id_short",
        "variant",
        "event_type",
        "step_number",
        "timestamp",
    ]

    list_filter = [
        "variant",
        "event_type",
        "timestamp",
    ]

    search_fields = [
        "session_id",
        "user__email",
        "user__username",
    ]

    readonly_fields = [
        "event_id",
        "user",
        "session_id",
        "variant",
        "event_type",
        "step_number",
        "metadata",
        "timestamp",
    ]

    date_hierarchy = "timestamp"
    list_select_related = ["user"]
    # Counting millions of rows on every page load is what makes admin slow.
    show_full_result_count = False

    @admin.display(description="Session")
    def session_id_short(self, obj: ABEvent) -> str:
        """The session id shortened for the list view."""
        return obj.session_id[:8] + "..."

    def has_add_permission(self, request: HttpRequest) -> bool:
        """Events are created through the API only, never in the admin."""
        return False

    def has_change_permission(self, request: HttpRequest, obj: ABEvent | None = None) -> bool:
        """The admin is read-only: events are facts, never edited."""
        return False
