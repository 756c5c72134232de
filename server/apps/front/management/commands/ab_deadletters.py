"""``manage.py ab_deadletters list|replay|purge``: inspect, re-queue (after a fix) or drop dead letters.

Covers every queue shard (and shards left over from a larger AB_QUEUE_SHARDS):
``list`` indexes run over the shards in order, each oldest first; a replayed
event goes back to its own shard's queue.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from server.apps.front.pipeline import queue


class Command(BaseCommand):
    help = (
        "Dead-lettered events: `list` them (oldest first), `replay` them into the queue once the cause is fixed "
        "(each keeps its event_id, so it is stored once however often it is replayed), or `purge` them."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        show = actions.add_parser("list", help="print dead letters, oldest first")
        show.add_argument("--offset", type=int, default=0)
        show.add_argument("--limit", type=int, default=20)
        show.add_argument("--json", action="store_true", help="one JSON object per line, the queued item included")
        for name, what in (("replay", "move back to the queue"), ("purge", "delete for good")):
            sub = actions.add_parser(name, help=f"{what}: --all, --limit N (oldest first) or --event-id ID ...")
            pick = sub.add_mutually_exclusive_group(required=True)
            pick.add_argument("--all", action="store_true")
            pick.add_argument("--limit", type=int)
            pick.add_argument("--event-id", dest="event_ids", action="append", metavar="ID")
            if name == "purge":
                sub.add_argument("--yes", action="store_true", help="required: purged events are gone")

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        try:
            if action == "list":
                self._list(options["offset"], options["limit"], options["json"])
                return
            if action == "purge" and not options["yes"]:
                raise CommandError("purge deletes events for good: add --yes")
            if options["limit"] is not None and options["limit"] < 1:
                raise CommandError("--limit must be at least 1")
            operation = queue.replay_dead if action == "replay" else queue.purge_dead
            count = operation(options["limit"], event_ids=options["event_ids"] or ())
        except queue.ERRORS as exc:
            raise CommandError(f"Redis unavailable: {exc}") from exc
        done = "re-queued (they land with the next drain)" if action == "replay" else "purged"
        self.stdout.write(f"{count} dead letters {done}; {queue.stats().dead} left")

    def _list(self, offset: int, limit: int, as_json: bool) -> None:
        letters = queue.dead_letters(offset, limit)
        total = queue.stats().dead
        for letter in letters:
            if as_json:
                self.stdout.write(
                    json.dumps(
                        {
                            "index": letter.index,
                            "shard": letter.shard,
                            "event_id": letter.event_id,
                            "at": letter.at.isoformat() if letter.at else None,
                            "error": letter.error,
                            "item": letter.item,
                        }
                    )
                )
            else:
                at = letter.at.strftime("%Y-%m-%d %H:%M:%S") if letter.at else "-"
                error = " ".join(letter.error.split())[:300]  # PostgreSQL's errors span lines
                shard = f"  shard {letter.shard}" if letter.shard else ""
                self.stdout.write(f"#{letter.index}{shard}  {at}  {letter.event_id or '-'}  {error}")
        if not as_json:
            self.stdout.write(f"{len(letters)} shown of {total} dead letters")
