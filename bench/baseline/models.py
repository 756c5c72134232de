"""The spec's ``ABEvent`` (section 1), field for field and index for index, in a table of its own.

The MVP writes here, not into abflow's ``ab_events``: abflow's table carries
what the MVP never had (monthly partitions, the session rollup's triggers,
which take one advisory lock per statement and so serialize one-row INSERTs),
and measuring the MVP against those would flatter abflow. The table is made
by Django's schema editor from this model, i.e. with exactly the DDL the
spec's own migration would produce.
"""

from __future__ import annotations

from django.conf import settings
from django.db import connection, models

TABLE = "bench_mvp_ab_events"


class SpecABEvent(models.Model):
    EVENT_TYPES = [
        ("variant_assigned", "Variant assigned"),
        ("onboarding_started", "Onboarding started"),
        ("step_completed", "Step completed"),
        ("onboarding_completed", "Onboarding completed"),
        ("onboarding_abandoned", "Onboarding abandoned"),
    ]

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+", null=True, blank=True
    )
    session_id = models.CharField(max_length=100, db_index=True)
    variant = models.CharField(max_length=20, choices=[("fast", "Fast"), ("deep", "Deep")], db_index=True)
    event_type = models.CharField(max_length=50, choices=EVENT_TYPES, db_index=True)
    step_number = models.IntegerField(null=True, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    timestamp = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        app_label = "front"  # loaded only by the baseline's processes; never migrated
        managed = False
        db_table = TABLE
        ordering = ["-timestamp"]
        indexes = [
            models.Index(fields=["variant", "event_type"], name="mvp_variant_type"),
            models.Index(fields=["session_id", "timestamp"], name="mvp_session_ts"),
            models.Index(fields=["user", "timestamp"], name="mvp_user_ts"),
        ]


def ensure_table() -> None:
    """Create the MVP's table (and its indexes) if it does not exist yet."""
    if TABLE in connection.introspection.table_names():
        return
    with connection.schema_editor() as editor:
        editor.create_model(SpecABEvent)


def empty_table() -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {TABLE}")
