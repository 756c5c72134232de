"""``COPY ... FROM STDIN (FORMAT binary)`` for ``ab_events``: columns, row encoder, staging table.

The writer sends a batch to PostgreSQL as one binary COPY into a temporary
staging table, then moves it into ``ab_events`` with one statement that
inserts the ids into ``ab_event_ids`` (``ON CONFLICT DO NOTHING RETURNING``)
and the rows whose id was new into ``ab_events`` (``insert_sql``,
pipeline/writer.py). This
module knows the wire format; the writer knows the promises.

Why binary: the server does no text parsing of timestamps, UUIDs or integers,
and the encoder here is a handful of ``struct.pack`` calls per row (measured
against text COPY in bench/bench_writer.py and docs/performance.md).

The columns are derived from the model's concrete fields (all but the
auto primary key), so a column added to ``ABEvent`` (and produced by
``queue.event_fields``) goes through COPY with no change here, as long as its
type is one of ``_TYPES``; an unknown type fails at import, naming the field,
not at run time.

The staging table's columns have the table's binary types (so the same rows
can be COPYed straight into ``ab_events``, as bench/bench_writer.py does for
its ceiling), except ``text`` for ``varchar``: the bytes on the wire are the
same, and a value too long for ``varchar(100)`` is refused by the ``INSERT``
with PostgreSQL's own message (the row is bisected to a dead letter with it).
An integer outside its column's range cannot be encoded at all: the encoder
refuses it, naming the column, and the writer dead-letters the row.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from django.db import models

from server.apps.front.models import ABEvent
from server.apps.front.pipeline.queue import to_micros

HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
TRAILER = struct.pack("!h", -1)
NULL = struct.pack("!i", -1)
# timestamptz on the wire: microseconds since 2000-01-01 UTC.
_PG_EPOCH_MICROS = to_micros(datetime(2000, 1, 1, tzinfo=UTC))

_int4 = struct.Struct("!i").pack
_int8_field = struct.Struct("!iq").pack  # length 8, then the value
_float8_field = struct.Struct("!id").pack


def _text(value: str) -> bytes:
    data = value.encode()
    return _int4(len(data)) + data


def _uuid(value: Any) -> bytes:
    return b"\x00\x00\x00\x10" + value.bytes


_int2_field = struct.Struct("!ih").pack
_int4_field = struct.Struct("!ii").pack


def _integer_encoder(pack: Callable[[int, int], bytes], size: int, name: str) -> Callable[[int], bytes]:
    def encode(value: int) -> bytes:
        try:
            return pack(size, value)
        except struct.error:
            raise OverflowError(f"{value} is outside the {name} range") from None

    return encode


_smallint = _integer_encoder(_int2_field, 2, "smallint")
_integer = _integer_encoder(_int4_field, 4, "integer")
_bigint = _integer_encoder(_int8_field, 8, "bigint")


def _timestamptz(value: datetime) -> bytes:
    return _int8_field(8, to_micros(value) - _PG_EPOCH_MICROS)


def _jsonb(value: Any) -> bytes:
    try:
        data = orjson.dumps(value)
    except orjson.JSONEncodeError:
        # What orjson refuses (nesting past 254 levels, an integer past 64
        # bits) goes the way Django's JSONField would send it, and fails, if it
        # does, with the stdlib's error (e.g. RecursionError).
        data = json.dumps(value).encode()
    return _int4(len(data) + 1) + b"\x01" + data  # jsonb binary format version 1


def _boolean(value: bool) -> bytes:
    return b"\x00\x00\x00\x01\x01" if value else b"\x00\x00\x00\x01\x00"


def _float8(value: float) -> bytes:
    return _float8_field(8, value)


# Django internal type -> (staging column type, encoder of a non-null value).
_SMALLINT = ("smallint", _smallint)
_INTEGER = ("integer", _integer)
_BIGINT = ("bigint", _bigint)
_TEXT = ("text", _text)
_TYPES: dict[str, tuple[str, Callable[[Any], bytes]]] = {
    "UUIDField": ("uuid", _uuid),
    "CharField": _TEXT,
    "TextField": _TEXT,
    "SlugField": _TEXT,
    "EmailField": _TEXT,
    "IntegerField": _INTEGER,
    "BigIntegerField": _BIGINT,
    "SmallIntegerField": _SMALLINT,
    "PositiveIntegerField": _INTEGER,
    "PositiveBigIntegerField": _BIGINT,
    "PositiveSmallIntegerField": _SMALLINT,
    "AutoField": _INTEGER,
    "BigAutoField": _BIGINT,
    "SmallAutoField": _SMALLINT,
    "JSONField": ("jsonb", _jsonb),
    "DateTimeField": ("timestamptz", _timestamptz),
    "BooleanField": ("boolean", _boolean),
    "FloatField": ("double precision", _float8),
}


@dataclass(frozen=True)
class Column:
    attname: str  # key in queue.event_fields()' dict
    column: str  # database column
    staging_type: str
    encode: Callable[[Any], bytes]
    default: Callable[[], Any]


def _column(field: models.Field) -> Column:
    type_field = field.target_field if field.is_relation else field
    internal = type_field.get_internal_type()
    if internal not in _TYPES:
        raise TypeError(f"ABEvent.{field.name}: no COPY encoder for {internal} (add one to copyin._TYPES)")
    staging_type, encode = _TYPES[internal]
    return Column(field.attname, field.column, staging_type, encode, field.get_default)


COLUMNS: tuple[Column, ...] = tuple(
    _column(f) for f in ABEvent._meta.concrete_fields if not (f.primary_key and isinstance(f, models.AutoField))
)
_FIELD_COUNT = struct.pack("!h", len(COLUMNS))


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


_COLUMN_LIST = ", ".join(_quote(c.column) for c in COLUMNS)
_STAGING_DDL = ", ".join(f"{_quote(c.column)} {c.staging_type}" for c in COLUMNS)
# The name carries the shape: a connection that outlived a deploy adding a
# column gets a new staging table instead of COPYing into the old one.
STAGING = "ab_events_staging_" + hashlib.sha1(_STAGING_DDL.encode()).hexdigest()[:10]

# Temporary (never WAL-logged, private to the connection); created once per
# connection and emptied by every COMMIT (ON COMMIT DELETE ROWS), so no
# catalog rows are written per batch as with ON COMMIT DROP. IF NOT EXISTS
# each transaction: costs a catalog lookup, and stays right behind a
# transaction-pooling proxy that hands each transaction another server
# connection.
CREATE_STAGING = f"CREATE TEMPORARY TABLE IF NOT EXISTS {STAGING} ({_STAGING_DDL}) ON COMMIT DELETE ROWS"
EMPTY_STAGING = f"DELETE FROM {STAGING}"
COPY_STAGING = f"COPY {STAGING} ({_COLUMN_LIST}) FROM STDIN WITH (FORMAT binary)"


def insert_sql(table: str, ids_table: str = "ab_event_ids", returning: str = "event_id") -> str:
    """Staged rows into ``table``, each only if its event_id is new in ``ids_table``; the new ids come back.

    One statement: the ids go into the (unpartitioned) ids table first, ``ON CONFLICT DO NOTHING RETURNING``
    telling which are new, and only those rows are copied into ``table`` (partitioned by month, where a unique
    index on event_id cannot exist; migration 0008). A row the table refuses fails the whole statement, its
    id included. Ids are inserted in order, so two drains writing overlapping batches (a redelivery beside
    the first delivery) wait for each other's ids in one order and cannot deadlock.
    """
    return (
        f"WITH new_ids AS (INSERT INTO {_quote(ids_table)} (event_id, received) "
        f'SELECT event_id, "timestamp" FROM {STAGING} ORDER BY event_id '
        "ON CONFLICT DO NOTHING RETURNING event_id) "
        f"INSERT INTO {_quote(table)} ({_COLUMN_LIST}) SELECT {_COLUMN_LIST} FROM {STAGING} "
        f"WHERE event_id IN (SELECT event_id FROM new_ids) RETURNING {returning}"
    )


_MISSING = object()


def encode_row(values: dict[str, Any]) -> bytes:
    """One row of binary COPY; raises (naming the column) when a value cannot be encoded."""
    parts = [_FIELD_COUNT]
    for col in COLUMNS:
        value = values.get(col.attname, _MISSING)
        if value is _MISSING:
            value = col.default()
        if value is None:
            parts.append(NULL)
            continue
        try:
            parts.append(col.encode(value))
        except MemoryError:
            raise
        except Exception as exc:
            raise ValueError(f"column {col.column}: {type(exc).__name__}: {exc}") from exc
    return b"".join(parts)


def copy_data(rows: list[bytes]) -> bytes:
    """A whole binary COPY stream of already encoded rows."""
    return b"".join((HEADER, *rows, TRAILER))


# --- the queue's items straight into COPY rows ---------------------------------------
#
# queue.event_fields() + encode_row() build a dict, UUID and datetime objects
# only for this encoder to take them apart again; that was most of the
# writer's own CPU time (bench/bench_writer.py). For the columns the model has
# today, encode_item() goes from the decoded payload to the COPY row directly.
# It must give byte for byte what the generic path gives, and refuse what it
# refuses (tests/pipeline/test_writer_copy.py checks both with hypothesis):
# anything it does not recognise raises, and the caller then takes the generic
# path, which accepts it or raises the canonical reason. A model with other
# columns (a new field) simply uses the generic path until this one learns it.

_FAST_COLUMNS = (
    ("user_id", "integer"),
    ("session_id", "text"),
    ("variant", "text"),
    ("event_type", "text"),
    ("step_number", "integer"),
    ("metadata", "jsonb"),
    ("timestamp", "timestamptz"),
    ("event_id", "uuid"),
    ("client_ts", "timestamptz"),
    ("event_time", "timestamptz"),
    ("seq", "integer"),
)
FAST = tuple((c.attname, c.staging_type) for c in COLUMNS) == _FAST_COLUMNS
_MIN_MICROS = to_micros(datetime.min.replace(tzinfo=UTC))
_MAX_MICROS = to_micros(datetime.max.replace(tzinfo=UTC))
_UUID_TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_UUID_FIELD = b"\x00\x00\x00\x10"
_TIMESTAMP_FIELD = struct.Struct("!iq").pack


class NotFast(Exception):
    """The fast path does not handle this payload; take the generic one."""


def _fast_text(value: Any) -> bytes:
    if type(value) is not str or "\x00" in value:
        raise NotFast
    data = value.encode()
    return _int4(len(data)) + data


def _fast_int4(value: Any) -> bytes:
    if value is None:
        return NULL
    if type(value) is not int or not -0x80000000 <= value <= 0x7FFFFFFF:
        raise NotFast
    return _int4_field(4, value)


def _fast_optional_micros(value: Any) -> bytes:
    return NULL if value is None else _fast_micros(value)


def _fast_micros(value: Any) -> bytes:
    if type(value) is not int or not _MIN_MICROS <= value <= _MAX_MICROS:
        raise NotFast
    return _TIMESTAMP_FIELD(8, value - _PG_EPOCH_MICROS)


def encode_item(payload: dict[str, Any]) -> tuple[str, bytes]:
    """(event_id as canonical text, COPY row) of a decoded queue payload; NotFast/KeyError/... otherwise."""
    event_id = payload["id"]
    if type(event_id) is not str or not _UUID_TEXT.fullmatch(event_id):
        raise NotFast  # upper case, braces, no dashes...: uuid.UUID's job
    metadata = payload.get("m")
    if metadata is None:
        metadata = {}
    elif type(metadata) is not dict:
        raise NotFast
    user = payload.get("u")
    if user is not None and (type(user) is not int or not -0x80000000 <= user <= 0x7FFFFFFF):
        raise NotFast
    json_data = orjson.dumps(metadata)
    return event_id, b"".join(
        (
            _FIELD_COUNT,
            NULL if user is None else _int4_field(4, user),
            _fast_text(payload["s"]),
            _fast_text(payload["v"]),
            _fast_text(payload["e"]),
            _fast_int4(payload.get("n")),
            _int4(len(json_data) + 1),
            b"\x01",
            json_data,
            _fast_micros(payload["t"]),
            _UUID_FIELD,
            bytes.fromhex(event_id.replace("-", "")),
            _fast_optional_micros(payload.get("c")),
            _fast_optional_micros(payload.get("w")),
            _fast_int4(payload.get("q")),
        )
    )
