"""Read-only admin for ``ab_events``.

Search is exact, never ``icontains``: on a table of millions of rows a
``LIKE '%term%'`` is a sequential scan per page load. A term is looked up
where an index answers it: ``event_id`` (indexed) when it is a UUID, which is
what ``ab_deadletters`` prints; ``session_id`` (the ``(session_id, timestamp)``
index); and the user, by id,
username or email, resolved in ``auth_user`` first so ``ab_events`` is read by
its ``(user, timestamp)`` index.
"""

from __future__ import annotations

import json
import uuid

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from .models import ABEvent, ReportSnapshot
from .report import record


def search_filter(term: str) -> Q:
    """Exact matches for one admin search term; every branch is an index lookup on ``ab_events``."""
    term = term.strip()
    condition = Q(session_id=term)
    try:
        condition |= Q(event_id=uuid.UUID(term))
    except ValueError:
        pass
    users = Q(username=term) | Q(email=term)
    if term.isascii() and term.isdigit():
        users |= Q(pk=int(term))
    user_ids = list(get_user_model().objects.filter(users).values_list("pk", flat=True))
    if user_ids:
        condition |= Q(user_id__in=user_ids)
    return condition


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

    # Only so the changelist shows its search box; get_search_results does the lookup.
    search_fields = ["session_id"]
    search_help_text = "Exact match: event_id (UUID), session_id, or a user's id, username or email."

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

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[ABEvent], search_term: str
    ) -> tuple[QuerySet[ABEvent], bool]:
        if not search_term.strip():
            return queryset, False
        # The whole term is one value (a session id may contain spaces), and
        # no join is added, so the rows cannot repeat.
        return queryset.filter(search_filter(search_term)), False

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


@admin.register(ReportSnapshot)
class ReportSnapshotAdmin(admin.ModelAdmin):
    """Decision records (report/record.py): listed and shown, never added, changed or deleted here.

    New ones come from the "Record this report" button on the A/B report page or ``ab_report --record``.
    """

    list_display = ["recorded_at", "recorded_by", "verdict", "hash_prefix", "note"]
    list_filter = ["verdict"]
    date_hierarchy = "recorded_at"
    fields = ["recorded_at", "recorded_by", "note", "verdict", "code_version", "sha256", "integrity", "frozen"]
    readonly_fields = fields

    @admin.display(description="SHA-256")
    def hash_prefix(self, obj: ReportSnapshot) -> str:
        return obj.sha256[:12]

    @admin.display(description="Integrity")
    def integrity(self, obj: ReportSnapshot) -> str:
        return "document matches its SHA-256" if obj.verify() else "TAMPERED: document does not match its SHA-256"

    @admin.display(description="Frozen report (inputs, settings, code version, report)")
    def frozen(self, obj: ReportSnapshot) -> str:
        return format_html(
            '<pre id="ab-snapshot-document" style="white-space: pre-wrap; max-height: 60em; overflow: auto">{}</pre>',
            json.dumps(record.load(obj), indent=2, sort_keys=True, ensure_ascii=False),
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: ReportSnapshot | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: ReportSnapshot | None = None) -> bool:
        return False
