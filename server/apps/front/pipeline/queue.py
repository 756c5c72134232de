"""The Redis queue protocol: keys, payload encoding and the Lua scripts.

This module is the only place that knows how events sit in Redis: the keys,
the scripts and the whole item codec (``encode_event`` on the way in,
``decode_event`` / ``event_fields`` on the way out). The writer, the clocks,
the tests and the benchmarks never read an item's one-letter keys.

    push     endpoint --RPUSH--> ab:{abflow}:queue            (one round trip, capped)
    claim    queue --LPOP n--> ab:{abflow}:inflight:<uuid>     + lease in ab:{abflow}:leases
    ack      after the PostgreSQL commit: drop the in-flight list and its lease,
             and append the batch's dead letters, in one atomic step
    release  the database failed: put the batch back at the head of the queue
    reap     a lease expired (its worker died): put the batch back, counting
             attempts per event; an event past AB_MAX_ATTEMPTS is dead-lettered
    replay   (operator, after a fix) dead letters --> back to the queue's tail
    purge    (operator) drop dead letters
    record_drain  a drain run finished without a database error: note when,
             so ops can tell a stalled writer from an idle one

Every step is a Lua script, so it is atomic on the server: any number of
drains may run at once and an event is always in exactly one place (queue,
one in-flight list, or the dead-letter list).

Shards (AB_QUEUE_SHARDS = N). The queue is N independent queues, each with
its own queue, leases, in-flight lists, attempts and dead letters under one
hash tag: shard 0 keeps the pre-sharding tag ``{abflow}`` (so a system that
ran unsharded finds its items in shard 0, nothing to migrate), shard i > 0
uses ``{abflow-i}``. Every script touches the keys of one shard only, i.e.
one Redis Cluster slot, and the shards' slots spread over the cluster's
masters. An event goes to shard ``crc32(session_id) % N`` (stable across
processes and restarts); a batch may span shards: one pipelined round trip,
each shard's push atomic on its own. The drain claims from the shards in
turn, starting at a random one, and the reaper, stats and dead-letter
operations visit every shard.

Changing N loses nothing: before its first push with N > 1 a process adds
0..N-1 to the registry set ``ab:{abflow}:shards`` (and again every few
minutes), and every drain, reap, stat and dead-letter operation visits
range(N) | registry. Shards a smaller N no longer pushes to are therefore
still drained (and still counted) until they are empty; the registry is
never pruned automatically (an old-config process may still push there
during a rolling deploy), an idle shard costs one empty claim per drain.

The drain record and the registry are global keys under ``{abflow}``.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import orjson
import redis
from django.conf import settings
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.exceptions import ClusterDownError, NoScriptError, RedisClusterException, TryAgainError
from redis.retry import Retry

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# What an unreachable queue Redis raises. On a cluster, redis-py raises
# RedisClusterException (not a RedisError) when no node of its slot map
# answers; every caller that turns a Redis outage into a 503, a "down" probe
# or a skipped drain catches this tuple.
ERRORS: tuple[type[Exception], ...] = (redis.RedisError, RedisClusterException)

# Lua's unpack() is limited by the C stack (about 8000 values), so scripts
# move items in chunks of this size.
_LUA_CHUNK = 1000

_LUA_HELPERS = (
    """
local function push_chunked(cmd, key, items, first)
  local n = #items
  local i = first or 1
  while i <= n do
    local j = math.min(i + %d - 1, n)
    redis.call(cmd, key, unpack(items, i, j))
    i = j + 1
  end
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- The field that counts an item's claims in the attempts hash: its event id
-- when that is a string, else a digest of the item itself. Never an error,
-- whatever the item is (a table or boolean id would make HINCRBY fail the
-- whole script, and with it every drain), and every item gets counted, so
-- the writer, not the reaper, gives a malformed one its true reason.
local function attempt_key(item)
  local ok, ev = pcall(cjson.decode, item)
  if ok and type(ev) == 'table' and type(ev['id']) == 'string' then return ev['id'] end
  return 'sha1:' .. redis.sha1hex(item)
end
"""
    % _LUA_CHUNK
)

# KEYS: queue. ARGV: cap, item...
# Returns the new depth, or -1 when the queue is over its cap (backpressure).
_PUSH = (
    """
local depth = redis.call('LLEN', KEYS[1])
if depth + #ARGV - 1 > tonumber(ARGV[1]) then return -1 end
local n = #ARGV
local i = 2
local result = depth
while i <= n do
  local j = math.min(i + %d - 1, n)
  result = redis.call('RPUSH', KEYS[1], unpack(ARGV, i, j))
  i = j + 1
end
return result
"""
    % _LUA_CHUNK
)

# KEYS: queue, leases, inflight. ARGV: count, lease_ms.
_CLAIM = (
    _LUA_HELPERS
    + """
local items = redis.call('LPOP', KEYS[1], ARGV[1])
if not items then return {} end
push_chunked('RPUSH', KEYS[3], items)
redis.call('ZADD', KEYS[2], now_ms() + tonumber(ARGV[2]), KEYS[3])
return items
"""
)

# KEYS: leases, inflight, dead, attempts. ARGV: dead entry...
_ACK = (
    _LUA_HELPERS
    + """
if redis.call('HLEN', KEYS[4]) > 0 then
  for _, item in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
    redis.call('HDEL', KEYS[4], attempt_key(item))
  end
end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], KEYS[2])
if #ARGV > 0 then push_chunked('RPUSH', KEYS[3], ARGV) end
return #ARGV
"""
)

# KEYS: queue, leases, inflight. Puts the batch back at the head, in order.
_RELEASE = (
    _LUA_HELPERS
    + """
local items = redis.call('LRANGE', KEYS[3], 0, -1)
for i = #items, 1, -1 do redis.call('LPUSH', KEYS[1], items[i]) end
redis.call('DEL', KEYS[3])
redis.call('ZREM', KEYS[2], KEYS[3])
return #items
"""
)

# KEYS: leases. ARGV: limit. The in-flight lists whose lease has expired.
_EXPIRED = (
    _LUA_HELPERS
    + """
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms(), 'LIMIT', 0, tonumber(ARGV[1]))
"""
)

# KEYS: queue, leases, inflight, attempts, dead. ARGV: max_attempts.
# Re-checks the lease inside the script: a batch acked in the meantime is left
# alone. Returns {requeued, dead_lettered}.
_REQUEUE = (
    _LUA_HELPERS
    + """
local score = redis.call('ZSCORE', KEYS[2], KEYS[3])
if not score or tonumber(score) > now_ms() then return {0, 0} end
local items = redis.call('LRANGE', KEYS[3], 0, -1)
local max_attempts = tonumber(ARGV[1])
local back, dead = {}, {}
for _, item in ipairs(items) do
  local key = attempt_key(item)
  local attempts = redis.call('HINCRBY', KEYS[4], key, 1)
  if attempts >= max_attempts then
    redis.call('HDEL', KEYS[4], key)
    dead[#dead + 1] = cjson.encode({event = item, error = 'claimed ' .. attempts ..
      ' times without being written (its worker died each time)', at = now_ms()})
  else
    back[#back + 1] = item
  end
end
for i = #back, 1, -1 do redis.call('LPUSH', KEYS[1], back[i]) end
if #dead > 0 then push_chunked('RPUSH', KEYS[5], dead) end
redis.call('DEL', KEYS[3])
redis.call('ZREM', KEYS[2], KEYS[3])
return {#back, #dead}
"""
)


# KEYS: drain. ARGV: stored, dead_lettered. Server time, like stats()' ages.
_RECORD_DRAIN = (
    _LUA_HELPERS
    + """
local t = now_ms()
redis.call('HSET', KEYS[1], 'last_success_ms', t, 'last_stored', ARGV[1], 'last_dead_lettered', ARGV[2])
return t
"""
)

# KEYS: dead, queue. ARGV: mode ('replay' | 'purge'), limit, event_id...
# Without ids: takes up to ``limit`` entries from the head of the dead list.
# With ids: takes the entries whose event has one of those ids, wherever they
# are (walks the whole list, which stays small unless something is badly
# wrong). 'replay' appends each entry's original queued item to the queue, so
# the event keeps its event_id and a replay stores it once however often it
# runs; an entry that is not our JSON is queued raw, and the writer
# dead-letters it again (nothing is lost). Returns the number taken.
_DEAD_TAKE = (
    _LUA_HELPERS
    + """
local mode, limit = ARGV[1], tonumber(ARGV[2])
local function item_of(entry)
  local ok, dead = pcall(cjson.decode, entry)
  if ok and type(dead) == 'table' and type(dead['event']) == 'string' then return dead['event'] end
  return entry
end
local taken = {}
if #ARGV > 2 then
  local wanted = {}
  for i = 3, #ARGV do wanted[ARGV[i]] = true end
  local kept = {}
  for _, entry in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
    local ok, ev = pcall(cjson.decode, item_of(entry))
    if #taken < limit and ok and type(ev) == 'table' and wanted[ev['id']] then
      taken[#taken + 1] = entry
    else
      kept[#kept + 1] = entry
    end
  end
  if #taken > 0 then
    redis.call('DEL', KEYS[1])
    if #kept > 0 then push_chunked('RPUSH', KEYS[1], kept) end
  end
else
  taken = redis.call('LPOP', KEYS[1], limit) or {}
end
if mode == 'replay' and #taken > 0 then
  local items = {}
  for i, entry in ipairs(taken) do items[i] = item_of(entry) end
  push_chunked('RPUSH', KEYS[2], items)
end
return #taken
"""
)


class QueueFull(Exception):
    """The queue is over AB_QUEUE_MAX: the writer is far behind, shed load."""


# The pre-sharding hash tag: shard 0's, and the global keys'.
_GLOBAL_TAG = "{abflow}"


def shard_tag(shard: int) -> str:
    """The hash tag of a shard's keys: one Redis Cluster slot per shard."""
    return _GLOBAL_TAG if shard == 0 else f"{{abflow-{shard}}}"


@dataclass(frozen=True)
class Keys:
    """The keys of one shard (``queue`` ... ``inflight``) and the global ones (``drain``, ``shards``)."""

    prefix: str
    shard: int = 0

    @property
    def _base(self) -> str:
        return f"{self.prefix}:{shard_tag(self.shard)}"

    @property
    def queue(self) -> str:
        return f"{self._base}:queue"

    @property
    def leases(self) -> str:
        return f"{self._base}:leases"

    @property
    def dead(self) -> str:
        return f"{self._base}:dead"

    @property
    def attempts(self) -> str:
        return f"{self._base}:attempts"

    @property
    def inflight_prefix(self) -> str:
        return f"{self._base}:inflight:"

    def inflight(self, claim_id: str) -> str:
        return f"{self.inflight_prefix}{claim_id}"

    @property
    def drain(self) -> str:
        return f"{self.prefix}:{_GLOBAL_TAG}:drain"

    @property
    def shards(self) -> str:
        """The registry: ids of every shard ever pushed to with N > 1."""
        return f"{self.prefix}:{_GLOBAL_TAG}:shards"


def keys(shard: int = 0) -> Keys:
    return Keys(getattr(settings, "AB_QUEUE_KEY_PREFIX", "ab"), shard)


def shard_count() -> int:
    """AB_QUEUE_SHARDS: how many shards new events are spread over."""
    return max(1, int(getattr(settings, "AB_QUEUE_SHARDS", 1)))


def shard_for(session_id: str, shards: int) -> int:
    """The shard of a session: stable across processes (crc32, not hash()), so a session stays in one shard."""
    if shards <= 1:
        return 0
    return zlib.crc32(session_id.encode("utf-8", "surrogatepass")) % shards


def shard_of_item(item: bytes, shards: int) -> int:
    """The shard of a queued item (by its session); never raises: an unreadable item goes by its bytes."""
    if shards <= 1:
        return 0
    try:
        session = decode_event(item)["s"]
        if type(session) is str:
            return shard_for(session, shards)
    except (ValueError, KeyError, TypeError):
        pass
    return zlib.crc32(item) % shards


QueueClient = redis.Redis | RedisCluster


@lru_cache(maxsize=8)
def _client(url: str, timeout: float, cluster: bool = False) -> QueueClient:
    if cluster:
        # The URL names any node; the client learns the slot map from it.
        # One quick retry (refreshing the map) covers a MOVED after a
        # failover; more would only delay the 503 a dead master must give.
        return RedisCluster.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(ExponentialBackoff(cap=0.1, base=0.01), 1),
            # A master down must not stop the client from serving the other
            # masters' shards (the server side: cluster-require-full-coverage no).
            require_full_coverage=False,
        )
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
        # A connection error must surface at once (the endpoint turns it into
        # a 503); the drain simply runs again on the next beat.
        retry_on_timeout=False,
    )


def get_redis() -> QueueClient:
    """The process-wide client of the queue's Redis (AB_QUEUE_REDIS_URL, else REDIS_URL; one pool per URL).

    With AB_QUEUE_REDIS_CLUSTER a ``RedisCluster``: every script touches one
    shard's keys, so one slot, and the client routes it to that slot's master.
    """
    url = getattr(settings, "AB_QUEUE_REDIS_URL", "") or settings.REDIS_URL
    return _client(url, settings.REDIS_SOCKET_TIMEOUT, bool(getattr(settings, "AB_QUEUE_REDIS_CLUSTER", False)))


# Scripts are sent by SHA (EVALSHA) and loaded on first use on each server.
_SCRIPTS = {
    name: Script(None, source.encode())  # bytes: no client needed to hash them
    for name, source in {
        "push": _PUSH,
        "claim": _CLAIM,
        "ack": _ACK,
        "release": _RELEASE,
        "expired": _EXPIRED,
        "requeue": _REQUEUE,
        "record_drain": _RECORD_DRAIN,
        "dead_take": _DEAD_TAKE,
    }.items()
}


def _run(name: str, keys: list[str], args: list[Any], client: QueueClient | None) -> Any:
    """EVALSHA; on NOSCRIPT, EVAL of the source, which also caches it on that server.

    Not redis-py's Script.__call__: on a cluster its SCRIPT LOAD goes to every
    master, so one master down would fail every shard's script.
    """
    r = client or get_redis()
    script = _SCRIPTS[name]
    try:
        return r.evalsha(script.sha, len(keys), *keys, *args)
    except NoScriptError:
        return r.eval(script.script, len(keys), *keys, *args)


# Re-register a process's shards this often: a registry lost with its Redis
# (no AOF) is rebuilt by the pushing processes within this time.
_REGISTER_EVERY = 300.0
_registered: dict[tuple[int, str, int], float] = {}
_registered_lock = threading.Lock()


def _register_shards(r: QueueClient, n: int) -> None:
    """Record shards 0..n-1 in the registry before pushing to them (cached per client, key and N)."""
    if n <= 1:
        return  # shard 0 is always visited
    k = keys()
    cache_key = (id(r), k.shards, n)
    now = time.monotonic()
    with _registered_lock:
        if now - _registered.get(cache_key, -_REGISTER_EVERY) < _REGISTER_EVERY:
            return
    r.sadd(k.shards, *range(n))
    with _registered_lock:
        _registered[cache_key] = now


def shard_ids(*, client: QueueClient | None = None) -> list[int]:
    """Every shard that may hold items: range(AB_QUEUE_SHARDS) and all shards ever registered."""
    r = client or get_redis()
    found = set(range(shard_count()))
    registry = keys().shards
    try:
        members = r.smembers(registry)
    except SHARD_DOWN:
        # The registry's master (shard 0's) is down: the shards this process
        # saw last time, so the other masters' shards are still drained.
        members = _known_members.get((id(r), registry), set())
    else:
        _known_members[(id(r), registry)] = set(members)
    for member in members:
        try:
            found.add(int(member))
        except ValueError:
            continue  # not ours; never let it stop a drain
    return sorted(found)


_known_members: dict[tuple[int, str], set[Any]] = {}


# --- payload -------------------------------------------------------------------


def to_micros(moment: datetime) -> int:
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


def storable_time(moment: datetime) -> datetime:
    """``moment`` in UTC if the item codec carries it unchanged; ValueError otherwise.

    Validation calls this so that no accepted event carries a time the writer
    cannot decode (outside the years 1-9999 in UTC: OverflowError at drain time).
    """
    try:
        utc = moment.astimezone(UTC)
        if from_micros(to_micros(utc)) == utc:
            return utc
    except OverflowError:
        pass
    raise ValueError("outside the years 1-9999 in UTC")


def encode_event(
    validated: dict[str, Any], *, user_id: int | None, received_at: datetime, event_time: datetime | None = None
) -> bytes:
    """One accepted event as it sits in the queue (compact JSON).

    ``id`` is the event's idempotency key; ``t`` the receive time in epoch
    microseconds (exact, no float rounding). Optional, and absent from older
    items: ``c`` the client's clock reading, ``w`` the corrected event time,
    ``q`` the event's number within its session (``seq``).
    """
    event_id = validated.get("event_id") or uuid.uuid4()
    extra: dict[str, int] = {}
    if validated.get("client_ts") is not None:
        extra["c"] = to_micros(validated["client_ts"])
    if event_time is not None:
        extra["w"] = to_micros(event_time)
    if validated.get("seq") is not None:
        extra["q"] = validated["seq"]
    return orjson.dumps(
        {
            **extra,
            "id": str(event_id),
            "s": validated["session_id"],
            "v": validated["variant"],
            "e": validated["event_type"],
            "n": validated.get("step_number"),
            "m": validated.get("metadata") or {},
            "t": to_micros(received_at),
            "u": user_id,
        }
    )


def decode_event(item: bytes) -> dict[str, Any]:
    """The queued item's payload as stored (compact keys); ValueError when it is not a JSON object."""
    payload = orjson.loads(item)
    if not isinstance(payload, dict):
        raise ValueError("queued item is not a JSON object")
    return payload


def event_fields(payload: dict[str, Any]) -> dict[str, Any]:
    """A decoded payload as ``ab_events`` column values; raises on a malformed payload.

    Every field is checked for its JSON type here, because a wrong type would
    otherwise fail later and further from its cause (psycopg2 refuses a dict
    or a NUL character outside the statement, so not as a row error) or, worse,
    be coerced silently (PostgreSQL rounds ``1.5`` into an integer column).
    A time outside the years 1-9999 raises OverflowError naming its field.
    """
    return {
        "event_id": uuid.UUID(_text(payload, "id")),
        "session_id": _text(payload, "s"),
        "variant": _text(payload, "v"),
        "event_type": _text(payload, "e"),
        "step_number": _optional_int(payload, "n"),
        "metadata": _metadata(payload),
        "timestamp": _moment("t", payload["t"]),
        "user_id": _optional_int(payload, "u"),
        # Optional (items queued before these existed have neither).
        "client_ts": _optional_moment(payload, "c"),
        "event_time": _optional_moment(payload, "w"),
        "seq": _optional_int(payload, "q"),
    }


def _text(payload: dict[str, Any], key: str) -> str:
    value = payload[key]
    if type(value) is not str:
        raise TypeError(f"{key!r} must be a string, not {type(value).__name__}")
    if "\x00" in value:
        raise ValueError(f"{key!r} contains a NUL character, which PostgreSQL text cannot hold")
    return value


def _optional_int(payload: dict[str, Any], key: str) -> int | None:
    value = payload.get(key)
    # ``type() is int``: a JSON true/false is a Python bool, an int subclass.
    if value is not None and type(value) is not int:
        raise TypeError(f"{key!r} must be an integer or null, not {type(value).__name__}")
    return value


def _metadata(payload: dict[str, Any]) -> dict[str, Any]:
    value = payload.get("m")
    if value is None:
        return {}
    if type(value) is not dict:
        raise TypeError(f"'m' must be an object or null, not {type(value).__name__}")
    return value


def _moment(key: str, value: Any) -> datetime:
    if type(value) is not int:
        raise TypeError(f"{key!r} must be integer epoch microseconds, not {type(value).__name__}")
    try:
        return from_micros(value)
    except OverflowError as exc:
        raise OverflowError(f"{key!r}={value} microseconds is outside the years 1-9999 ({exc})") from None


def _optional_moment(payload: dict[str, Any], key: str) -> datetime | None:
    value = payload.get(key)
    return None if value is None else _moment(key, value)


def event_id_of(item: bytes) -> str:
    """The queued item's event id; ValueError/KeyError/TypeError when it has none."""
    return str(decode_event(item)["id"])


def received_micros(item: bytes) -> int:
    """When the queued item was received, in epoch microseconds; ValueError/KeyError/TypeError when unreadable."""
    return int(decode_event(item)["t"])


def dead_entry(item: bytes, error: str) -> bytes:
    """A dead letter: the raw queued item, why it failed, and when.

    Never raises: the reason is an exception's message, which could quote a
    value orjson cannot encode (a lone surrogate), and failing here would
    fail the whole batch the dead letter was meant to spare.
    """
    error = error.encode("utf-8", "replace").decode("utf-8")
    return orjson.dumps({"event": item.decode("utf-8", "replace"), "error": error, "at": int(time.time() * 1000)})


# --- operations -----------------------------------------------------------------


def shard_cap(shards: int | None = None) -> int:
    """Each shard holds its share of AB_QUEUE_MAX (sessions hash evenly, so the total cap holds)."""
    shards = shard_count() if shards is None else shards
    return -(-settings.AB_QUEUE_MAX // shards)  # ceil: N shards together hold at least AB_QUEUE_MAX


def push(items: Sequence[bytes], *, client: QueueClient | None = None) -> int:
    """Append events in one round trip, each to its session's shard; returns the depth of the last shard pushed.

    Raises QueueFull when a shard is over its cap and redis.RedisError when
    Redis is down. Items spanning shards go in one pipeline, each shard's
    push atomic: on an error some shards may have taken their items, so the
    caller answers 503 and the client retries the whole batch (its event_ids
    make the retry store each event once).
    """
    if not items:
        return 0
    r = client or get_redis()
    n = shard_count()
    cap = shard_cap(n)
    _register_shards(r, n)
    groups: dict[int, list[bytes]] = {}
    for item in items:
        groups.setdefault(shard_of_item(item, n), []).append(item)
    if len(groups) == 1:
        ((shard, group),) = groups.items()
        depths = [_run("push", [keys(shard).queue], [cap, *group], r)]
    else:
        depths = _push_pipelined(r, groups, cap)
    if any(int(d) < 0 for d in depths):
        raise QueueFull(f"queue shard is over its share of AB_QUEUE_MAX={settings.AB_QUEUE_MAX} ({n} shards)")
    return int(depths[-1])


def _push_pipelined(r: QueueClient, groups: dict[int, list[bytes]], cap: int) -> list[int]:
    """One EVALSHA per shard in one pipeline (on a cluster: one request per master, sent in parallel).

    Plain EVALSHA, not Script objects: redis-py's pipeline would spend a
    SCRIPT EXISTS round trip on every execute, and its cluster pipeline
    cannot load scripts. A shard whose server lacks the script (NoScriptError:
    it did not run) is pushed again alone, which loads it.
    """
    script = _SCRIPTS["push"]
    pipe = r.pipeline(transaction=False)
    order = list(groups)
    for shard in order:
        # execute_command, not pipe.evalsha: redis-py blocks that name in a
        # cluster pipeline (a script *may* span slots); ours touches one.
        pipe.execute_command("EVALSHA", script.sha, 1, keys(shard).queue, cap, *groups[shard])
    replies = pipe.execute(raise_on_error=False)
    depths: list[int] = []
    for shard, reply in zip(order, replies, strict=True):
        if isinstance(reply, NoScriptError):
            reply = _run("push", [keys(shard).queue], [cap, *groups[shard]], r)
        elif isinstance(reply, Exception):
            raise reply
        depths.append(int(reply))
    return depths


@dataclass
class Claim:
    key: str
    items: list[bytes]
    shard: int = 0


def _claim_shard(shard: int, count: int, lease_seconds: float, client: QueueClient | None) -> Claim | None:
    k = keys(shard)
    inflight = k.inflight(uuid.uuid4().hex)
    items = _run("claim", [k.queue, k.leases, inflight], [count, int(lease_seconds * 1000)], client)
    if not items:
        return None
    return Claim(key=inflight, items=list(items), shard=shard)


# A shard's server is unreachable or refuses service (a cluster master down):
# the other shards carry on. Anything else (a bug, a refused script) raises.
SHARD_DOWN = (redis.ConnectionError, redis.TimeoutError, ClusterDownError, TryAgainError)


class Claimer:
    """Claims from the shards in turn, starting at a random one (one per drain run).

    Round-robin keeps every shard's lag bounded whatever the others hold;
    the random start spreads concurrent drains over the shards. ``claim``
    returns None only after a whole round found every shard empty. A shard
    whose server is down (SHARD_DOWN) is left out for the rest of the run,
    so a dead cluster master stops only its own shards; when every shard
    is down the error is raised.
    """

    def __init__(self, shards: Sequence[int], *, client: QueueClient | None = None, start: int | None = None):
        self.shards = list(shards) or [0]
        self.client = client
        self.position = random.randrange(len(self.shards)) if start is None else start % len(self.shards)
        self.down: dict[int, Exception] = {}

    def claim(self, count: int, lease_seconds: float) -> Claim | None:
        n = len(self.shards)
        for step in range(n):
            shard = self.shards[(self.position + step) % n]
            if shard in self.down:
                continue
            try:
                batch = _claim_shard(shard, count, lease_seconds, self.client)
            except SHARD_DOWN as exc:
                self.down[shard] = exc
                if len(self.down) == n:
                    raise
                continue
            if batch is not None:
                self.position = (self.position + step + 1) % n
                return batch
        return None


def claimer(*, client: QueueClient | None = None) -> Claimer:
    """A Claimer over every shard that may hold items (see ``shard_ids``)."""
    r = client or get_redis()
    return Claimer(shard_ids(client=r), client=r)


def claim(
    count: int, lease_seconds: float, *, client: QueueClient | None = None, shard: int | None = None
) -> Claim | None:
    """Atomically move up to ``count`` events of one shard into a new leased in-flight list.

    Without ``shard``: the first non-empty shard from a random one.
    """
    if shard is not None:
        return _claim_shard(shard, count, lease_seconds, client)
    return claimer(client=client).claim(count, lease_seconds)


def ack(batch: Claim, dead: Iterable[bytes] = (), *, client: QueueClient | None = None) -> None:
    """The batch is committed: forget it, and record its dead letters (in its shard)."""
    k = keys(batch.shard)
    _run("ack", [k.leases, batch.key, k.dead, k.attempts], list(dead), client)


def release(batch: Claim, *, client: QueueClient | None = None) -> int:
    """The database failed: give the batch back, at the head of its shard, untouched."""
    k = keys(batch.shard)
    return int(_run("release", [k.queue, k.leases, batch.key], [], client))


def reap(max_attempts: int, *, limit: int = 100, client: QueueClient | None = None) -> tuple[int, int]:
    """Return batches of dead workers to their shard's queue, in every shard. Returns (requeued, dead_lettered)."""
    r = client or get_redis()
    requeued = dead = 0
    shards = shard_ids(client=r)
    down = 0
    for shard in shards:
        k = keys(shard)
        try:
            for inflight in _run("expired", [k.leases], [limit], r):
                name = inflight.decode() if isinstance(inflight, bytes) else inflight
                back, gone = _run("requeue", [k.queue, k.leases, name, k.attempts, k.dead], [max_attempts], r)
                requeued += int(back)
                dead += int(gone)
        except SHARD_DOWN:
            # Its master is down: its leases wait there (nothing is lost), the
            # other shards are reaped; the next run tries again.
            down += 1
            if down == len(shards):
                raise
    return requeued, dead


@dataclass(frozen=True)
class ShardStats:
    shard: int
    depth: int
    inflight: int
    inflight_batches: int
    dead: int
    oldest_age_seconds: float | None


@dataclass(frozen=True)
class QueueStats:
    """Totals over every shard (``oldest_age_seconds``: the oldest of all), and ``shards`` one by one."""

    depth: int
    inflight: int
    inflight_batches: int
    dead: int
    oldest_age_seconds: float | None
    # When the last drain run finished without a database error (epoch
    # seconds, Redis server clock) and how long ago; None if never.
    last_drain_at: float | None = None
    last_drain_age_seconds: float | None = None
    shards: tuple[ShardStats, ...] = ()


def _age(head: bytes | None, now_micros: int) -> float | None:
    if head is None:
        return None
    try:
        return max(0.0, (now_micros - received_micros(head)) / 1e6)
    except (ValueError, KeyError, TypeError):
        return None  # the head carries no readable receive time (it will be dead-lettered)


def stats(*, client: QueueClient | None = None) -> QueueStats:
    """Queue depth, events in flight, dead letters and the age of the oldest queued event, per shard and in total.

    Three pipelined round trips whatever the number of shards (on a cluster,
    each is one request per master, in parallel).
    """
    r = client or get_redis()
    shards = shard_ids(client=r)
    pipe = r.pipeline(transaction=False)
    for shard in shards:
        k = keys(shard)
        pipe.llen(k.queue)
        pipe.zrange(k.leases, 0, -1)
        pipe.llen(k.dead)
        pipe.lindex(k.queue, 0)
    pipe.hget(keys().drain, "last_success_ms")
    cluster = isinstance(r, RedisCluster)
    if not cluster:
        pipe.time()
    replies = pipe.execute()
    if cluster:
        # A cluster pipeline routes by key; TIME has none. Ask the master of
        # the drain record, whose clock wrote last_success_ms.
        replies.append(r.time(target_nodes=r.get_node_from_key(keys().drain)))
    secs, micros = replies[-1]
    now_micros = secs * 1_000_000 + micros
    last_drain_ms = replies[-2]
    per_shard = [replies[i * 4 : i * 4 + 4] for i in range(len(shards))]
    all_leases = [lease for _, leases, _, _ in per_shard for lease in leases]
    sizes: list[int] = []
    if all_leases:
        pipe = r.pipeline(transaction=False)
        for name in all_leases:
            pipe.llen(name)
        sizes = [int(n) for n in pipe.execute()]
    result: list[ShardStats] = []
    offset = 0
    for shard, (depth, leases, dead, head) in zip(shards, per_shard, strict=True):
        result.append(
            ShardStats(
                shard=shard,
                depth=int(depth),
                inflight=sum(sizes[offset : offset + len(leases)]),
                inflight_batches=len(leases),
                dead=int(dead),
                oldest_age_seconds=_age(head, now_micros),
            )
        )
        offset += len(leases)
    ages = [s.oldest_age_seconds for s in result if s.oldest_age_seconds is not None]
    last_drain_at = int(last_drain_ms) / 1000 if last_drain_ms is not None else None
    return QueueStats(
        depth=sum(s.depth for s in result),
        inflight=sum(s.inflight for s in result),
        inflight_batches=sum(s.inflight_batches for s in result),
        dead=sum(s.dead for s in result),
        oldest_age_seconds=max(ages) if ages else None,
        last_drain_at=last_drain_at,
        last_drain_age_seconds=None if last_drain_at is None else max(0.0, now_micros / 1e6 - last_drain_at),
        shards=tuple(result),
    )


def depth(*, client: QueueClient | None = None) -> int:
    """Events waiting in the queue, every shard (not those in flight)."""
    r = client or get_redis()
    shards = shard_ids(client=r)
    pipe = r.pipeline(transaction=False)
    for shard in shards:
        pipe.llen(keys(shard).queue)
    return sum(int(n) for n in pipe.execute())


def record_drain(*, stored: int, dead_lettered: int, client: QueueClient | None = None) -> None:
    """A drain run finished without a database error (idle runs count: the writer is alive)."""
    _run("record_drain", [keys().drain], [stored, dead_lettered], client)


# --- dead letters (operator actions) ----------------------------------------------


@dataclass(frozen=True)
class DeadLetter:
    index: int
    event_id: str | None
    error: str
    at: datetime | None
    item: str  # the original queued item (JSON), as it would be replayed
    shard: int = 0


def _parse_dead(index: int, entry: bytes, shard: int = 0) -> DeadLetter:
    try:
        dead = orjson.loads(entry)
        item, error, at_ms = dead["event"], str(dead.get("error", "")), dead.get("at")
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return DeadLetter(index, None, "not a dead-letter entry", None, entry.decode("utf-8", "replace"), shard)
    try:
        event_id = event_id_of(item.encode())
    except (ValueError, KeyError, TypeError):
        event_id = None
    at = EPOCH + timedelta(milliseconds=int(at_ms)) if isinstance(at_ms, int | float) else None
    return DeadLetter(index, event_id, error, at, item, shard)


def dead_letters(start: int = 0, count: int = 50, *, client: QueueClient | None = None) -> list[DeadLetter]:
    """Dead letters of every shard, ``count`` of them from ``start``.

    Indexes run over the shards' lists in shard order, each oldest first.
    """
    if count <= 0:
        return []
    r = client or get_redis()
    shards = shard_ids(client=r)
    pipe = r.pipeline(transaction=False)
    for shard in shards:
        pipe.llen(keys(shard).dead)
    lengths = [int(n) for n in pipe.execute()]
    found: list[DeadLetter] = []
    base = 0
    for shard, length in zip(shards, lengths, strict=True):
        first = max(start, base)
        last = min(start + count, base + length)  # exclusive, global index
        if first < last:
            entries = r.lrange(keys(shard).dead, first - base, last - base - 1)
            found.extend(_parse_dead(first + i, entry, shard) for i, entry in enumerate(entries))
        base += length
        if base >= start + count:
            break
    return found


def _dead_take(mode: str, limit: int | None, event_ids: Sequence[str], chunk: int, client: QueueClient | None) -> int:
    """Replay or purge in every shard; a replayed item goes back to its own shard's queue (its slot)."""
    r = client or get_redis()
    total = 0
    for shard in shard_ids(client=r):
        if limit is not None and total >= limit:
            break
        k = keys(shard)
        if event_ids:
            cap = (limit if limit is not None else len(event_ids)) - total
            total += int(_run("dead_take", [k.dead, k.queue], [mode, cap, *event_ids], r))
            continue
        # Chunked, each chunk atomic: a huge dead list never blocks Redis for long.
        while limit is None or total < limit:
            step = chunk if limit is None else min(chunk, limit - total)
            taken = int(_run("dead_take", [k.dead, k.queue], [mode, step], r))
            total += taken
            if taken < step:
                break
    return total


def replay_dead(
    limit: int | None = None, *, event_ids: Sequence[str] = (), chunk: int = 1000, client: QueueClient | None = None
) -> int:
    """Move dead letters back to the queue (after a fix), oldest first in each shard. Returns how many."""
    return _dead_take("replay", limit, event_ids, chunk, client)


def purge_dead(
    limit: int | None = None, *, event_ids: Sequence[str] = (), chunk: int = 1000, client: QueueClient | None = None
) -> int:
    """Drop dead letters for good, oldest first in each shard. Returns how many."""
    return _dead_take("purge", limit, event_ids, chunk, client)
