"""Decision records (report/record.py): a frozen, hashed report that later data does not change."""

from __future__ import annotations

import hashlib
import io
import random
import re
from datetime import UTC, datetime

import orjson
import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.db import IntegrityError, transaction
from django.test import Client, override_settings

from server.apps.front.models import ABEvent, ReportSnapshot, SnapshotFrozen
from server.apps.front.report import record
from server.apps.front.report.build import build_report
from server.apps.front.report.stats import NO_DIFFERENCE

from .factories import bulk_sessions

pytestmark = pytest.mark.django_db
PAGE = "/admin/ab-report/"
RECORD = "/admin/ab-report/record/"


def _experiment(seed: int, fast: tuple[int, int], deep: tuple[int, int], prefix: str = "") -> None:
    rng = random.Random(seed)
    events = bulk_sessions("fast", *fast, rng) + bulk_sessions("deep", *deep, rng)
    for event in events:
        event.session_id = prefix + event.session_id
    ABEvent.objects.bulk_create(events)


def test_later_events_leave_the_recorded_snapshot_and_its_hash_unchanged() -> None:
    _experiment(1, (200, 60), (200, 62))
    snapshot = record.record(recorded_by="alice", note="before launch review")
    stored = ReportSnapshot.objects.get(pk=snapshot.pk)
    document, sha = stored.document, stored.sha256
    assert record.load(stored)["report"]["verdict"] == NO_DIFFERENCE

    # Far more data arrives, and now deep clearly wins: the live report changes, the record does not.
    _experiment(2, (600, 150), (600, 330), prefix="late-")
    assert build_report()["verdict"] == "deep wins"
    again = ReportSnapshot.objects.get(pk=snapshot.pk)
    assert (again.document, again.sha256, again.verdict) == (document, sha, NO_DIFFERENCE)
    assert again.verify()
    assert record.load(again)["report"]["sessions"]["analysed"] == {"fast": 200, "deep": 200}

    later = record.record(recorded_by="alice")
    assert later.sha256 != sha and later.verdict == "deep wins" and later.verify()


def test_a_tampered_document_no_longer_matches_its_hash() -> None:
    _experiment(3, (100, 30), (100, 60))
    snapshot = ReportSnapshot.objects.get(pk=record.record(recorded_by="bob").pk)
    assert snapshot.verify()

    doctored = record.load(snapshot)
    doctored["report"]["verdict"] = "fast wins"
    snapshot.document = record.canonical(doctored).decode()
    assert not snapshot.verify()

    # Re-hashing the doctored document is caught too: the listed verdict no longer agrees with it...
    snapshot.sha256 = hashlib.sha256(snapshot.document.encode()).hexdigest()
    assert not snapshot.verify()
    # ...and one byte of whitespace (same JSON, not canonical) is a different document.
    fresh = ReportSnapshot.objects.get(pk=snapshot.pk)
    fresh.document = fresh.document.replace(":", ": ", 1)
    assert not fresh.verify()


def test_a_stored_snapshot_cannot_be_saved_or_updated() -> None:
    snapshot = record.record(recorded_by="carol")
    snapshot.note = "edited afterwards"
    with pytest.raises(SnapshotFrozen):
        snapshot.save()
    # An UPDATE that skips save() is refused by the database's trigger.
    with pytest.raises(IntegrityError, match="frozen"), transaction.atomic():
        ReportSnapshot.objects.filter(pk=snapshot.pk).update(note="edited afterwards")
    assert ReportSnapshot.objects.get(pk=snapshot.pk).note == ""


@override_settings(AB_TARGET_LIFT=0.1, AB_POWER=0.9, AB_COMPLETE_WITHIN_SECONDS=120.0, AB_REPORT_SEQUENTIAL=True)
def test_the_document_holds_inputs_settings_version_author_and_time(monkeypatch: pytest.MonkeyPatch) -> None:
    _experiment(4, (150, 40), (150, 80))
    monkeypatch.setenv("ABFLOW_VERSION", "deadbeef-build-7")
    at = datetime(2025, 3, 9, 10, 30, 15, 123456, tzinfo=UTC)
    snapshot = record.record(
        recorded_by="dana",
        note="ship deep",
        since=datetime(2025, 3, 1, tzinfo=UTC),
        expected_split={"fast": 0.5, "deep": 0.5},
        now=at,
    )
    stored = ReportSnapshot.objects.get(pk=snapshot.pk)
    document = record.load(stored)
    assert stored.document.encode() == orjson.dumps(document, option=orjson.OPT_SORT_KEYS)
    assert stored.sha256 == hashlib.sha256(stored.document.encode()).hexdigest()
    assert document["inputs"] == {
        "since": "2025-03-01T00:00:00+00:00",
        "until": None,
        "expected_split": {"fast": 0.5, "deep": 0.5},
        "sequential": True,  # resolved from AB_REPORT_SEQUENTIAL, not left as "default"
        "alpha": 0.05,
    }
    assert document["settings"]["AB_TARGET_LIFT"] == 0.1 and document["settings"]["AB_POWER"] == 0.9
    assert document["settings"]["AB_COMPLETE_WITHIN_SECONDS"] == 120.0
    assert document["settings"]["AB_REPORT_SEQUENTIAL"] is True
    assert document["code_version"] == stored.code_version == "deadbeef-build-7"
    assert (document["recorded_by"], document["note"]) == ("dana", "ship deep")
    assert document["recorded_at"] == "2025-03-09T10:30:15.123456+00:00" and stored.recorded_at == at
    assert document["report"]["params"]["sequential"] is True
    assert document["report"] == orjson.loads(
        orjson.dumps(
            build_report(
                since=at.replace(day=1, hour=0, minute=0, second=0, microsecond=0),
                expected_split={"fast": 0.5, "deep": 0.5},
                sequential=True,
            )
        )
    )
    assert stored.verify()


def test_code_version_falls_back_from_the_environment_to_git_to_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ABFLOW_VERSION", raising=False)
    assert re.fullmatch(r"git:[0-9a-f]{40}", record.code_version())
    monkeypatch.setattr(record, "git_head", lambda: None)
    assert record.code_version() == "abflow 0.1.0"


def _run(*args: str) -> str:
    out = io.StringIO()
    call_command("ab_report", *args, stdout=out)
    return out.getvalue()


def test_ab_report_record_stores_a_snapshot_and_prints_its_hash() -> None:
    _experiment(5, (150, 40), (150, 80))
    text = _run("--record", "--note", "decided: deep", "--by", "erin", "--since", "2025-03-01")
    snapshot = ReportSnapshot.objects.get()
    assert f"sha256 {snapshot.sha256}" in text and "deep wins" in text
    assert (snapshot.recorded_by, snapshot.note, snapshot.verdict) == ("erin", "decided: deep", "deep wins")
    assert record.load(snapshot)["inputs"]["since"] == "2025-03-01T00:00:00+00:00"
    frozen = orjson.loads(_run("--record", "--json"))
    assert frozen["report"]["verdict"] == "deep wins" and ReportSnapshot.objects.count() == 2
    with pytest.raises(CommandError):
        _run("--note", "a note without --record")


def _staff() -> Client:
    user = get_user_model().objects.create_user("staff", password="pw", is_staff=True, is_superuser=True)
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def test_admin_button_records_with_csrf_and_the_admin_shows_it_read_only() -> None:
    _experiment(6, (150, 40), (150, 80))
    client = _staff()
    page = client.get(PAGE, {"since": "2025-03-01", "sequential": "1"}).content.decode()
    form = page[page.index('id="ab-record"') :]
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form).group(1)
    assert 'name="since" value="2025-03-01"' in form and 'name="sequential" value="1"' in form

    assert client.post(RECORD, {"since": "2025-03-01", "note": "x"}).status_code == 403  # no CSRF token
    assert client.get(RECORD).status_code == 405
    response = client.post(
        RECORD, {"since": "2025-03-01", "sequential": "1", "note": "go deep", "csrfmiddlewaretoken": token}
    )
    snapshot = ReportSnapshot.objects.get()
    assert response.status_code == 302 and response["Location"].endswith(f"/reportsnapshot/{snapshot.pk}/change/")
    assert (snapshot.recorded_by, snapshot.note) == ("staff", "go deep")
    document = record.load(snapshot)
    assert document["inputs"]["sequential"] is True and document["inputs"]["since"] == "2025-03-01T00:00:00+00:00"

    listing = client.get("/admin/front/reportsnapshot/").content.decode()
    assert snapshot.sha256[:12] in listing and "go deep" in listing and "deep wins" in listing
    assert "/admin/front/reportsnapshot/add/" not in listing
    detail = client.get(response["Location"]).content.decode()
    assert "document matches its SHA-256" in detail and 'id="ab-snapshot-document"' in detail
    assert snapshot.sha256 in detail
    assert 'name="_save"' not in detail and "/delete/" not in detail
    # The admin has no path to change or delete one, even posting directly.
    csrf = client.cookies["csrftoken"].value
    edit = client.post(response["Location"], {"note": "changed", "csrfmiddlewaretoken": csrf})
    assert edit.status_code == 403
    assert (
        client.post(
            f"/admin/front/reportsnapshot/{snapshot.pk}/delete/", {"post": "yes", "csrfmiddlewaretoken": csrf}
        ).status_code
        == 403
    )
    assert ReportSnapshot.objects.get().note == "go deep"


def test_record_button_refuses_non_staff_and_bad_options() -> None:
    user = get_user_model().objects.create_user("plain", password="pw")
    client = Client()
    client.force_login(user)
    assert client.post(RECORD, {"note": "x"}).status_code == 302  # to the admin login
    staff = _staff()
    staff.get(PAGE)
    csrf = staff.cookies["csrftoken"].value
    response = staff.post(RECORD, {"since": "yesterday", "csrfmiddlewaretoken": csrf})
    assert response.status_code == 302 and response["Location"] == PAGE
    assert not ReportSnapshot.objects.exists()
