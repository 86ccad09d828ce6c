"""The hand-off contract between gateways and the meter: usage events on a Redis stream.

Gateways append one event per finished request (atomically with closing its in-flight entry,
see gateway/lua/inflight_settle.lua); the reaper appends a `lost` event for a request whose
gateway died. The meter consumer turns both into UsageRecord rows. Field values are JSON with
timestamps as Unix seconds (UTC).

The Redis keys both sides use are named here, and only here: the usage stream and the
in-flight journal's keys. They come in METERING_SHARDS shards (`journal_shards`), each under a
hash tag of its own, so that each shard's Lua scripts stay on one Redis Cluster slot and the
shards spread over the cluster's primaries; a request belongs to one shard (`journal_of`) for
its whole life. The first shard is `{meter}`, the only one there was before shards: a single
Redis, or a fleet going from one shard to several, keeps the events it has.
"""

import functools
import re
import uuid
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from psycopg.types.json import Jsonb
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

# What a client quotes for a request: the gateway's `x-request-id` (`req_<32 hex>`, the
# request's UUID), or the bare UUID, with or without its dashes.
_REQUEST_ID = re.compile(
    r"(?:req_)?([0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12})"
)

USAGE_GROUP = "meter"


@dataclass(frozen=True, slots=True)
class JournalKeys:
    """One shard's keys: its usage stream and the in-flight journal of its requests
    (gateway/inflight.py, gateway/lua/inflight_*.lua)."""

    tag: str

    @property
    def stream(self) -> str:
        return f"{{{self.tag}}}:usage"

    @property
    def leases(self) -> str:
        """request id -> lease expiry (Unix seconds), a sorted set."""
        return f"{{{self.tag}}}:inflight:leases"

    @property
    def entries(self) -> str:
        """request id -> JSON entry with at least "backend" and "started_at". Energy
        attribution reads it to know which records are still due."""
        return f"{{{self.tag}}}:inflight:entries"

    @property
    def progress(self) -> str:
        """request id -> "<completion tokens so far> <Unix seconds seen>", from renewals."""
        return f"{{{self.tag}}}:inflight:progress"


FIRST_SHARD = JournalKeys("meter")
# The first shard's keys, by their names from before shards.
USAGE_STREAM = FIRST_SHARD.stream
INFLIGHT_LEASES = FIRST_SHARD.leases
INFLIGHT_ENTRIES = FIRST_SHARD.entries
INFLIGHT_PROGRESS = FIRST_SHARD.progress


@functools.cache
def journal_shards(count: int) -> tuple[JournalKeys, ...]:
    """The `count` shards. Their tags are chosen so that their slots fall in `count` equal
    parts of the slot space, one each, the first shard's (`{meter}`) where it falls: a
    cluster made by `redis-cli --cluster create` gives its primaries equal ranges of slots
    in order, so `count` shards (a multiple of the primaries) spread evenly over them."""
    part = REDIS_CLUSTER_HASH_SLOTS / count
    first = int(key_slot(FIRST_SHARD.tag.encode()) // part)
    shards = [FIRST_SHARD]
    for index in (i for i in range(count) if i != first):
        low, high = index * part, (index + 1) * part
        suffix = next(n for n in range(100_000) if low <= key_slot(f"meter-{n}".encode()) < high)
        shards.append(JournalKeys(f"meter-{suffix}"))
    return tuple(shards)


def journal_of(request_id: str, shards: tuple[JournalKeys, ...]) -> JournalKeys:
    """The shard of a request, by its id."""
    if len(shards) == 1:
        return shards[0]
    return shards[zlib.crc32(request_id.encode()) % len(shards)]


FINAL = b"final"
LOST = b"lost"

# Columns of metering_usagerecord, in COPY order.
COLUMNS = (
    "request_id",
    "account_id",
    "api_key_id",
    "tier",
    "model",
    "backend",
    "endpoint",
    "prompt_tokens",
    "cached_prompt_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "tokens_estimated",
    "queue_wait_ms",
    "ttft_ms",
    "latency_ms",
    "status_code",
    "outcome",
    "streamed",
    "started_at",
    "ended_at",
    "energy_joules",
)
# What the writers store: the exported columns, the key's project (events from gateways older
# than projects have none: the writers fill it in from the key, metering.services), and, for
# review only, the backend's refused usage report (null unless the gateway found it wrong).
STORED_COLUMNS = (*COLUMNS, "project_id", "usage_anomaly")

# The request fee is for an answered request: one that failed on every backend (outcome
# backend_error) pays none, though any tokens it was sent are billed (docs/billing.md,
# "Policies"). Billing's SQL and the gateway's spend counter both apply it.
FEE_EXEMPT_OUTCOMES = frozenset({"backend_error"})


def record_row(record: dict[str, Any]) -> list[Any]:
    """A record's values in STORED_COLUMNS order, ready for COPY."""
    anomaly = record.get("usage_anomaly")
    return [
        *(record[column] for column in COLUMNS),
        record.get("project_id"),
        None if anomaly is None else Jsonb(anomaly),
    ]


# A lost request never got a response; 0 says "no HTTP status" without inventing one.
NO_STATUS = 0


def record_from_event(fields: dict[bytes, bytes]) -> dict[str, Any]:
    """One usage record (column -> value) from a stream entry's fields."""
    record: dict[str, Any] = orjson.loads(fields[b"record"])
    if fields[b"kind"] == LOST:
        record = _record_lost(record, fields.get(b"progress"))
    record["started_at"] = _utc(record["started_at"])
    record["ended_at"] = _utc(record["ended_at"])
    record.setdefault("energy_joules", None)
    return record


def _record_lost(entry: dict[str, Any], progress: bytes | None) -> dict[str, Any]:
    """What the in-flight entry and its last lease renewal knew, marked as estimated."""
    completion_tokens, last_seen = 0, entry["started_at"]
    if progress:
        tokens, seen = progress.split(b" ")
        completion_tokens, last_seen = int(tokens), float(seen)
    return {
        **entry,
        "cached_prompt_tokens": 0,
        "completion_tokens": completion_tokens,
        "reasoning_tokens": 0,
        "tokens_estimated": True,
        "ttft_ms": None,
        "latency_ms": (last_seen - entry["started_at"]) * 1000,
        "status_code": NO_STATUS,
        "outcome": "gateway_lost",
        "ended_at": last_seen,
    }


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, tz=UTC)


def request_ref(request_id: uuid.UUID) -> str:
    """The request's id as its client sees it (the `x-request-id` header): `req_<32 hex>`."""
    return f"req_{request_id.hex}"


def request_id_parse(text: str) -> uuid.UUID | None:
    """The request's UUID in `text` as clients quote it: `req_<hex>` (`request_ref`) or the
    bare UUID with or without dashes, any case, spaces or quotes around it; None for anything
    else."""
    match = _REQUEST_ID.fullmatch(text.strip().strip("\"'`").lower())
    return uuid.UUID(match.group(1)) if match else None
