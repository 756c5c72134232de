"""The ``ABEvent`` model, as the spec defines it, plus what the async path needs."""

from __future__ import annotations

import uuid

from django.contrib.auth import get_user_model
from django.contrib.postgres.indexes import BrinIndex
from django.db import models
from django.utils import timezone

from . import experiment

User = get_user_model()


class ABEvent(models.Model):
    """One event of the A/B test, for analytics (the spec's model; its Russian help texts are user-facing).

    The table is partitioned by month on ``timestamp`` (migration 0008, docs/scaling.md): its primary key in
    the database is (id, timestamp), since a partitioned table's unique index must hold the partition key;
    Django keeps ``id`` as the primary key (the identity sequence still makes ids unique). The indexes below
    are the ones a query uses (0008's docstring says which query); they are created by 0008, not by Django.
    """

    EVENT_TYPES = experiment.EVENT_TYPES

    user = models.ForeignKey(
        User,
        on_delete=models.CASCADE,
        related_name="ab_events",
        null=True,
        blank=True,
        # Found through the (user, timestamp) index below.
        db_index=False,
        help_text="Пользователь (null для анонимных)",
    )

    # Found through the (session_id, timestamp) index below.
    session_id = models.CharField(
        max_length=100,
        help_text="ID сессии (для анонимных пользователей)",
    )

    variant = models.CharField(
        max_length=20,
        choices=experiment.VARIANTS,
        help_text="Вариант онбординга",
    )

    event_type = models.CharField(
        max_length=50,
        choices=EVENT_TYPES,
        help_text="Тип события",
    )

    step_number = models.IntegerField(
        null=True,
        blank=True,
        help_text="Номер шага (если применимо)",
    )

    metadata = models.JSONField(
        default=dict,
        blank=True,
        help_text="Дополнительные данные (время на шаге, выборы пользователя, etc)",
    )

    # Changed from the spec's ``auto_now_add=True``: events are written in
    # batches seconds after they arrive, and ``bulk_create`` would stamp every
    # row with the flush time. The endpoint sets the *receive* time at enqueue
    # and the writer stores it unchanged.
    timestamp = models.DateTimeField(
        default=timezone.now,
        db_index=True,
        help_text="Время события",
    )

    # Added to the spec: the identity of an event. Taken from the client when
    # it sends one (so a retried request is the same event), else generated at
    # enqueue. Unique through ABEventId (a partitioned table cannot hold a
    # unique index without the partition key): the writer stores an event only
    # if its id is new there, so a batch written twice after a crash stores
    # each event once. Indexed here for the admin's search and the writer's
    # conflict check.
    event_id = models.UUIDField(
        default=uuid.uuid4,
        db_index=True,
        editable=False,
        help_text="Идентификатор события (идемпотентность записи)",
    )

    # Added for browser delivery (docs/frontend.md): ``client_ts`` is the
    # browser's own clock reading when the event happened, stored as sent;
    # ``event_time`` is that moment on the server's clock, corrected by the
    # batch's ``sent_at`` and clamped to [timestamp - 7 days, timestamp]
    # (clocks.py). Analytics should use COALESCE(event_time, timestamp).
    # Both null for events sent without client_ts (e.g. the spec's client).
    client_ts = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Время события по часам клиента (как прислано)",
    )
    event_time = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Время события по часам сервера (client_ts с поправкой на сдвиг часов)",
    )

    # Added for the event-loss guard (docs/report.md): the client's number of this event within its
    # session (1 for the session's first event, then 2, 3, ...; abtrack.js sends it). Gaps in a
    # session's numbers are events lost on the way. Null for clients that do not number events.
    seq = models.IntegerField(
        null=True,
        blank=True,
        help_text="Порядковый номер события в сессии (от клиента)",
    )

    class Meta:
        db_table = "ab_events"
        ordering = ["-timestamp"]
        indexes = [
            models.Index(fields=["session_id", "timestamp"]),
            models.Index(fields=["user", "timestamp"]),
        ]

    def __str__(self) -> str:
        user_id = self.user_id or self.session_id[:8]
        return f"{user_id} - {self.variant} - {self.event_type}"


class ABEventId(models.Model):
    """Every stored event's id, once: the global idempotency key of ``ab_events`` (migration 0008).

    The writer inserts a batch's ids here first (``ON CONFLICT DO NOTHING RETURNING``) and stores in
    ``ab_events`` only the events whose id was new, in the same statement (pipeline/writer.py).
    ``received`` is the event's ``timestamp``; retention trims ids by it once their events are gone
    (ops/retention.py). Only the writer fills it: rows put into ``ab_events`` another way (a test's
    ``bulk_create``, a manual restore) are not deduplicated against later deliveries.
    """

    event_id = models.UUIDField(primary_key=True)
    received = models.DateTimeField()

    class Meta:
        db_table = "ab_event_ids"
        indexes = [BrinIndex(fields=["received"], name="ab_event_ids_received_brin")]

    def __str__(self) -> str:
        return str(self.event_id)


class ABSession(models.Model):
    """One session of the experiment, folded from its stored events (the report's unit).

    Kept by PostgreSQL triggers on ``ab_events`` in the transaction that stores
    or deletes the events (report/rollup.py, docs/report.md); never written by
    Django. ``manage.py ab_rollup --rebuild`` recomputes it from ``ab_events``.
    """

    session_id = models.CharField(max_length=100, primary_key=True, help_text="ID сессии")
    events = models.BigIntegerField(help_text="Событий сессии в ab_events")
    # The variant of its variant_assigned events (the smallest name if several); min/max over all its
    # events tell a contaminated session (events in two variants).
    variant = models.CharField(max_length=20, null=True, blank=True, help_text="Назначенный вариант")
    min_variant = models.CharField(max_length=20)
    max_variant = models.CharField(max_length=20)
    started = models.BooleanField()
    completed = models.BooleanField()
    abandoned = models.BooleanField()
    abandoned_step = models.IntegerField(null=True, blank=True)
    min_step = models.IntegerField(null=True, blank=True)
    max_step = models.IntegerField(null=True, blank=True)
    # {step: smallest metadata.time_spent_ms of that step's step_completed events}
    step_ms = models.JSONField(null=True, blank=True)
    # Times are COALESCE(event_time, timestamp) of the events; assigned_at is when the session entered the
    # experiment (what the report's date range selects on; first_event_at for a session never assigned).
    first_event_at = models.DateTimeField()
    last_event_at = models.DateTimeField()
    assigned_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    # The client's per-session numbering (ABEvent.seq; abtrack.js sends it): the highest number stored and how
    # many stored events carry one. Their difference is the number of the session's events that never arrived
    # (the report's event-loss guard).
    seq_max = models.IntegerField(null=True, blank=True)
    seq_events = models.BigIntegerField(default=0, db_default=0)

    class Meta:
        db_table = "ab_sessions"
        managed = True
        indexes = [
            models.Index(models.functions.Coalesce("assigned_at", "first_event_at"), name="ab_sessions_entered_at"),
        ]

    def __str__(self) -> str:
        return f"{self.session_id} - {self.variant}"


class SnapshotFrozen(Exception):
    """Raised on any attempt to change a stored report snapshot."""


class ReportSnapshot(models.Model):
    """A decision record: the report as it stood when someone recorded it, frozen (report/record.py).

    ``document`` is the canonical JSON (orjson, sorted keys) of the report together with its inputs, the
    relevant settings, the code version, who recorded it, when, and the note; ``sha256`` is the hash of
    exactly those bytes. The other columns repeat what the document says, for the admin's list; ``verify()``
    checks both. Rows are only ever inserted: ``save()`` refuses an existing row and a trigger
    (migration 0005) refuses any UPDATE, so later data cannot change a decision already taken.
    """

    recorded_at = models.DateTimeField(db_index=True, help_text="Когда записан")
    recorded_by = models.CharField(max_length=150, help_text="Кто записал")
    note = models.TextField(blank=True, default="", help_text="Заметка")
    code_version = models.CharField(max_length=100, help_text="Версия кода (git commit или версия пакета)")
    verdict = models.CharField(max_length=200, help_text="Вердикт отчёта")
    document = models.TextField(help_text="Канонический JSON отчёта с входными данными")
    sha256 = models.CharField(max_length=64, help_text="SHA-256 канонического JSON")

    class Meta:
        db_table = "ab_report_snapshots"
        ordering = ["-recorded_at"]

    def __str__(self) -> str:
        return f"{self.recorded_at:%Y-%m-%d %H:%M} {self.verdict} {self.sha256[:12]}"

    def save(self, *args: object, **kwargs: object) -> None:
        # Only the first save inserts; any later one would overwrite a decision already recorded.
        if not self._state.adding:
            raise SnapshotFrozen(f"report snapshot {self.pk} is frozen and cannot be changed")
        kwargs["force_insert"] = True
        super().save(*args, **kwargs)  # type: ignore[arg-type]

    def verify(self) -> bool:
        """True when the document still hashes to ``sha256`` and the listed columns agree with it."""
        from server.apps.front.report.record import verify_snapshot

        return verify_snapshot(self)
