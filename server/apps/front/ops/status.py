"""The queue at a glance, for ``manage.py ab_queue`` (and scripts, with ``--json``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from server.apps.front.pipeline import queue


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def snapshot() -> dict[str, Any]:
    """The figures ``ab_queue`` prints, as plain JSON-able values: totals over every shard, then ``shards``.

    ``shards`` lists every shard that may hold items: range(AB_QUEUE_SHARDS)
    and shards left over from a larger AB_QUEUE_SHARDS (still drained).
    """
    stats = queue.stats()
    return {
        "configured_shards": queue.shard_count(),
        "shards": [
            {
                "shard": shard.shard,
                "depth": shard.depth,
                "inflight": shard.inflight,
                "inflight_batches": shard.inflight_batches,
                "dead_letters": shard.dead,
                "oldest_age_seconds": _seconds(shard.oldest_age_seconds),
            }
            for shard in stats.shards
        ],
        "depth": stats.depth,
        "inflight": stats.inflight,
        "inflight_batches": stats.inflight_batches,
        "dead_letters": stats.dead,
        "oldest_age_seconds": None if stats.oldest_age_seconds is None else round(stats.oldest_age_seconds, 3),
        "last_drain_at": None
        if stats.last_drain_at is None
        else datetime.fromtimestamp(stats.last_drain_at, UTC).isoformat(timespec="seconds"),
        "last_drain_age_seconds": None
        if stats.last_drain_age_seconds is None
        else round(stats.last_drain_age_seconds, 3),
    }


def _ago(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f} s ago"


def _oldest(depth: int, age: float | None) -> str:
    if depth == 0:
        return "queue empty"
    # The head item carries no readable receive time (it will be dead-lettered).
    return "unknown" if age is None else _ago(age)


def _shard_rows(figures: dict[str, Any]) -> list[tuple[str, str]]:
    """One line per shard under the total, when there is more than one."""
    shards = figures["shards"]
    if len(shards) <= 1:
        return []
    configured = figures["configured_shards"]
    return [
        (
            f"  shard {s['shard']}",
            f"{s['depth']} queued, {s['inflight']} in flight, {s['dead_letters']} dead, "
            f"oldest {_oldest(s['depth'], s['oldest_age_seconds'])}"
            + ("" if s["shard"] < configured else f" (beyond AB_QUEUE_SHARDS={configured}: drained, gets nothing new)"),
        )
        for s in shards
    ]


def lines(figures: dict[str, Any]) -> list[str]:
    """``snapshot()`` as the aligned lines ``ab_queue`` prints."""
    drain = (
        "never"
        if figures["last_drain_at"] is None
        else (f"{figures['last_drain_at']} ({_ago(figures['last_drain_age_seconds'])})")
    )
    batches = figures["inflight_batches"]
    rows = [
        ("queued", f"{figures['depth']} events"),
        *_shard_rows(figures),
        ("in flight", f"{figures['inflight']} events in {batches} batch{'es' if batches != 1 else ''}"),
        ("dead letters", f"{figures['dead_letters']} events"),
        ("oldest queued", _oldest(figures["depth"], figures["oldest_age_seconds"])),
        ("last good drain", drain),
    ]
    return [f"{label:<16} {value}" for label, value in rows]
