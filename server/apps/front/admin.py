"""Read-only admin for ``ab_events``.

Search is exact, never ``icontains``: on a table of millions of rows a
``LIKE '%term%'`` is a sequential scan per page load. A term is looked up
where an index answers it: ``event_id`` (unique) when it is a UUID, which is
what ``ab_deadletters`` prints; ``session_id`` (indexed); and the user, by id,
username or email, resolved in ``auth_user`` first so ``ab_events`` is read by
its ``(user, timestamp)`` index.
"""

from __future__ import annotations

import uuid

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.db.models import Q, QuerySet
from django.http import HttpRequest

from .models import ABEvent


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
