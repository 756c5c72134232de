"""Decision records: the report frozen with everything needed to say how it was made.

``record()`` computes the report, puts it into one document with its inputs (the options the
report was asked with, resolved: ``sequential`` None becomes the setting's value), the settings
that change its figures, the code version, who recorded it and when, and stores that document as
canonical JSON (orjson, sorted keys) with the SHA-256 of exactly those bytes
(``ReportSnapshot``). The row is never updated (the model and a database trigger refuse it), so
events that arrive later cannot change a decision already taken; ``verify_snapshot()`` tells
whether a stored document still matches its hash.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tomllib
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson
from django.conf import settings
from django.utils import timezone

from server.apps.front.models import ReportSnapshot
from server.apps.front.report import stats
from server.apps.front.report.build import analyse

# The settings that change what the report says (its verdict or its figures), recorded with it.
RECORDED_SETTINGS = (
    "AB_EXPECTED_SPLIT",
    "AB_REPORT_SEQUENTIAL",
    "AB_REPORT_INSIGHTS",
    "AB_TARGET_LIFT",
    "AB_POWER",
    "AB_COMPLETE_WITHIN_SECONDS",
)
SCHEMA_VERSION = 1
_REPO_ROOT = Path(__file__).resolve().parents[4]


def canonical(document: Any) -> bytes:
    """One byte string per document: sorted keys, no whitespace; NaN and infinities become null."""
    return orjson.dumps(document, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def code_version() -> str:
    """``ABFLOW_VERSION`` if set (a deploy stamps it: an image carries no .git), else ``git rev-parse HEAD``
    of the checkout, else the package version."""
    stamped = os.environ.get("ABFLOW_VERSION", "").strip()
    if stamped:
        return stamped
    head = git_head()
    return f"git:{head}" if head else f"abflow {package_version()}"


def git_head() -> str | None:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=_REPO_ROOT, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head or None


def package_version() -> str:
    """The installed distribution's version, else pyproject.toml's (the app runs from a checkout)."""
    try:
        return metadata.version("abflow")
    except metadata.PackageNotFoundError:
        pass
    try:
        with (_REPO_ROOT / "pyproject.toml").open("rb") as fh:
            return str(tomllib.load(fh)["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


def recorded_settings() -> dict[str, Any]:
    return {name: getattr(settings, name, None) for name in RECORDED_SETTINGS}


def record(
    *,
    recorded_by: str,
    note: str = "",
    since: datetime | None = None,
    until: datetime | None = None,
    expected_split: dict[str, float] | None = None,
    sequential: bool | None = None,
    alpha: float = stats.DEFAULT_ALPHA,
    now: datetime | None = None,
) -> ReportSnapshot:
    """Compute the report with these options and store it as a new, frozen snapshot."""
    if sequential is None:
        sequential = bool(getattr(settings, "AB_REPORT_SEQUENTIAL", False))
    report = analyse(since, until, expected_split=expected_split, sequential=sequential, alpha=alpha).to_dict()
    recorded_at = (now or timezone.now()).astimezone(UTC)
    document = {
        "schema": SCHEMA_VERSION,
        "recorded_at": recorded_at.isoformat(),
        "recorded_by": recorded_by,
        "note": note,
        "code_version": code_version(),
        "inputs": {
            "since": since.isoformat() if since else None,
            "until": until.isoformat() if until else None,
            "expected_split": expected_split,
            "sequential": sequential,
            "alpha": alpha,
        },
        "settings": recorded_settings(),
        "report": report,
    }
    data = canonical(document)
    snapshot = ReportSnapshot(
        recorded_at=recorded_at,
        recorded_by=recorded_by,
        note=note,
        code_version=document["code_version"],
        verdict=str(report.get("verdict", "")),
        document=data.decode("utf-8"),
        sha256=digest(data),
    )
    snapshot.save()
    return snapshot


def load(snapshot: ReportSnapshot) -> dict[str, Any]:
    """The stored document, parsed."""
    return orjson.loads(snapshot.document)


def verify_snapshot(snapshot: ReportSnapshot) -> bool:
    """The document hashes to the stored SHA-256, is still canonical, and the listed columns repeat it."""
    data = snapshot.document.encode("utf-8")
    if digest(data) != snapshot.sha256:
        return False
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    if canonical(document) != data:
        return False
    return (
        document.get("recorded_by") == snapshot.recorded_by
        and document.get("note") == snapshot.note
        and document.get("code_version") == snapshot.code_version
        and document.get("report", {}).get("verdict") == snapshot.verdict
        and document.get("recorded_at") == snapshot.recorded_at.astimezone(UTC).isoformat()
    )
