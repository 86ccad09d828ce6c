"""The meter at the limit: how fast one meter process stores a backlog of usage events.

    python -m bench.meter [--events 1000000] [--meters 1 2] [--accounts 1000]
                          [--batch-size N] [--database tf_bench_meter]
                          [--redis-cluster PRIMARIES] [--shards N]

Starts a redis-server of its own on a spare port (append-only file, fsync every second, as
production must run it), or with --redis-cluster a Redis Cluster of that many primaries, each
with a replica (bench/redis_cluster.py), and creates the database `--database` on the server of
DATABASE_URL (dropped first if it exists, and after the run), migrated. For each count in
`--meters` it fills the usage streams with `--events` final usage events, built and appended as
the gateway builds and appends them (gateway.usage.usage_record, then
gateway/lua/inflight_settle.lua, each in the shard of METERING_SHARDS=`--shards` that its
request id picks; one shard per primary by default), over `--accounts` accounts, four models
on six backends, streamed and not, a few requests disconnected or failed. Then it starts that
many `manage.py meter` processes (each one consumer per shard) on the backlog and times them
until every stream is empty and the ledger holds every record: records stored per second,
counted from the first read (the processes' start-up is reported apart). Then it appends
again the first 10,000 events, as a gateway retrying its settles would, and checks that the
ledger still holds exactly `--events` rows and nothing was quarantined.
"""

import argparse
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import django
import orjson
import psutil
import redis

from bench.billing import MODELS, REASONING, _drop, _recreate, _server_url
from bench.overhead import ROOT, _machine
from bench.redis_cluster import RedisClusterServers, redis_server
from metering.events import JournalKeys, journal_of, journal_shards
from metering.redis_clients import redis_connect

# The events appended again after the run, to check that the ledger stores each request once.
REPLAYED = 10_000
# Events sent to Redis per pipeline while filling the stream.
_PIPELINE = 5_000
_TIERS = ("free",) * 6 + ("interactive",) * 3 + ("premium",)


@dataclass
class Store:
    """The Redis a bench runs on (one redis-server or a cluster) and the usage shards on it."""

    name: str
    url: str
    client: redis.Redis
    processes: list[psutil.Process]
    shards: tuple[JournalKeys, ...]

    def env(self) -> dict[str, str]:
        """The environment of a gateway or meter process on it."""
        return {
            **os.environ,
            "LOG_LEVEL": "WARNING",
            "REDIS_URL": self.url,
            "METERING_SHARDS": str(len(self.shards)),
        }

    def backlog(self) -> int:
        """Events in the usage streams, not yet stored and acknowledged."""
        return sum(int(self.client.xlen(shard.stream)) for shard in self.shards)


@contextmanager
def store(primaries: int, shards: int, replicas: int = 1) -> Iterator[Store]:
    """One redis-server of the bench's own (`primaries` 0), or a Redis Cluster of `primaries`
    primaries with `replicas` replicas each; removed afterwards."""
    if primaries == 0:
        with redis_server() as (url, process):
            processes = [psutil.Process(process.pid)]
            yield Store("single", url, redis_connect(url), processes, journal_shards(shards))
        return
    servers = RedisClusterServers(primaries=primaries, replicas=replicas)
    try:
        processes = [psutil.Process(process.pid) for process in servers.processes.values()]
        name = f"cluster {primaries}+{primaries * replicas}"
        client = redis_connect(servers.url)
        yield Store(name, servers.url, client, processes, journal_shards(shards))
    finally:
        servers.stop()


@dataclass
class Result:
    redis: str
    shards: int
    meters: int
    events: int
    fill_seconds: float
    startup_seconds: float
    drain_seconds: float
    meter_cpu_seconds: float
    redis_cpu_seconds: float
    busy_cpu_seconds: float
    rows: int
    rows_after_replay: int
    quarantined: int

    @property
    def records_per_second(self) -> float:
        return self.events / self.drain_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--meters", type=int, nargs="+", default=[1], help="meter processes")
    parser.add_argument("--accounts", type=int, default=1_000)
    parser.add_argument("--batch-size", type=int, help="METERING_BATCH_SIZE (default: settings)")
    parser.add_argument("--database", default="tf_bench_meter")
    parser.add_argument(
        "--redis-cluster",
        type=int,
        default=0,
        metavar="PRIMARIES",
        help="a Redis Cluster of this many primaries, each with a replica, not one redis-server",
    )
    parser.add_argument("--shards", type=int, help="METERING_SHARDS (default: one per primary)")
    args = parser.parse_args()
    shards = args.shards or max(1, args.redis_cluster)
    with (
        bench_database(args.database, args.batch_size),
        store(args.redis_cluster, shards) as redis_store,
    ):
        print(_machine())
        print(f"{_backlog_line(args)}; {_store_line(redis_store)}\n", flush=True)
        results = [run(redis_store, meters, args) for meters in args.meters]
    print_results(results)


@contextmanager
def bench_database(name: str, batch_size: int | None) -> Iterator[None]:
    """Django set up on a database of the bench's own on DATABASE_URL's server, migrated;
    dropped afterwards."""
    if shutil.which("redis-server") is None:
        sys.exit("bench needs redis-server on the PATH")
    server = _server_url()
    _recreate(server, name)
    os.environ["DATABASE_URL"] = f"{server}/{name}"
    if batch_size:
        os.environ["METERING_BATCH_SIZE"] = str(batch_size)
    os.environ.setdefault("TF_PROFILE", "local")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    try:
        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        yield
    finally:
        from django.db import connections

        connections.close_all()
        _drop(server, name)


def _backlog_line(args: argparse.Namespace) -> str:
    from django.conf import settings

    return (
        f"{args.events:,} usage events over {args.accounts:,} accounts; meter batch size "
        f"{settings.METERING.batch_size:,}"
    )


def _store_line(redis_store: Store) -> str:
    what = "redis-server" if redis_store.name == "single" else f"Redis {redis_store.name}"
    return f"private {what} with AOF (fsync every second), {len(redis_store.shards)} usage shard(s)"


def run(redis_store: Store, meters: int, args: argparse.Namespace) -> Result:
    """One backlog of `args.events` drained by `meters` meter processes."""
    client = redis_store.client
    reset(redis_store)
    started = time.monotonic()
    replay = _fill(redis_store, args.events, args.accounts, random.Random(meters))
    fill_seconds = time.monotonic() - started
    print(
        f"{meters} meter(s) on {redis_store.name}: backlog of {redis_store.backlog():,} events "
        f"appended in {fill_seconds:.1f} s",
        flush=True,
    )

    spawned = time.monotonic()
    processes = [meter_spawn(redis_store) for _ in range(meters)]
    try:
        watched = [psutil.Process(process.pid) for process in processes]
        first_read = _wait_first_read(client, redis_store.shards, processes)
        # From here on: the meters' start-up (imports, Django) is not theirs per record.
        meter_cpu, redis_cpu = _cpu_seconds(watched), _cpu_seconds(redis_store.processes)
        busy = _busy_cpu_seconds()
        wait_drained(redis_store, processes, args.events, timeout=120 + args.events / 500)
        done = time.monotonic()
        meter_cpu = _cpu_seconds(watched) - meter_cpu
        redis_cpu = _cpu_seconds(redis_store.processes) - redis_cpu
        busy = _busy_cpu_seconds() - busy
        rows = ledger_rows()
        _append(redis_store, replay)
        wait_drained(redis_store, processes, args.events, timeout=120)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)
    return Result(
        redis=redis_store.name,
        shards=len(redis_store.shards),
        meters=meters,
        events=args.events,
        fill_seconds=fill_seconds,
        startup_seconds=first_read - spawned,
        drain_seconds=done - first_read,
        meter_cpu_seconds=meter_cpu,
        redis_cpu_seconds=redis_cpu,
        busy_cpu_seconds=busy,
        rows=rows,
        rows_after_replay=ledger_rows(),
        quarantined=_quarantined(),
    )


def meter_spawn(redis_store: Store, cpus: str | None = None) -> subprocess.Popen[bytes]:
    """A `manage.py meter` process on the store (one consumer per shard), on `cpus` if given
    (taskset's list)."""
    pinned = ["taskset", "-c", cpus] if cpus else []
    command = [*pinned, sys.executable, "manage.py", "meter"]
    return subprocess.Popen(command, cwd=ROOT, env=redis_store.env())


def reset(redis_store: Store) -> None:
    """Empty streams (their consumer groups go with them) and an empty ledger."""
    from django.db import connection

    for shard in redis_store.shards:
        redis_store.client.delete(shard.stream)
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE metering_usagerecord, metering_quarantinedevent")


def _fill(
    redis_store: Store, events: int, accounts: int, rng: random.Random
) -> list[tuple[str, bytes]]:
    """Append the events; returns the first REPLAYED of them, to append again later."""
    batch: list[tuple[str, bytes]] = []
    replay: list[tuple[str, bytes]] = []
    for event in _events(events, accounts, rng):
        batch.append(event)
        if len(replay) < REPLAYED:
            replay.append(event)
        if len(batch) == _PIPELINE:
            _append(redis_store, batch)
            batch = []
    _append(redis_store, batch)
    return replay


def _append(redis_store: Store, events: list[tuple[str, bytes]]) -> None:
    """Settle the requests as the gateway's in-flight journal does (gateway/inflight.py):
    one inflight_settle call each, on the keys of the request's shard, which appends the usage
    event to that shard's stream."""
    from metering.redis_scripts import SCRIPTS

    settle = SCRIPTS["inflight_settle"]
    redis_store.client.script_load(settle.text)
    pipe = redis_store.client.pipeline(transaction=False)
    for request_id, record in events:
        shard = journal_of(request_id, redis_store.shards)
        keys = (shard.leases, shard.entries, shard.progress, shard.stream)
        pipe.evalsha(settle.sha, len(keys), *keys, request_id, record)
    pipe.execute()


def _events(count: int, accounts: int, rng: random.Random) -> Iterator[tuple[str, bytes]]:
    """(request id, usage record JSON) of finished requests, built by the gateway's own code
    from what a backend reports, over the last hour."""
    from gateway.inflight import Progress
    from gateway.proxy import Forwarded
    from gateway.routing import Backend
    from gateway.usage import UsageBounds, usage_record
    from gateway.validation import CHAT, COMPLETIONS

    names = sorted({name for serving in MODELS.values() for name in serving})
    backends = {
        name: Backend(i, name, f"http://{name}:8000", "m", ("m",), 256)
        for i, name in enumerate(names, 1)
    }
    models = sorted(MODELS)
    now_wall, now = time.time(), time.monotonic()
    bounds = UsageBounds(prompt=200_000, completion=32_768)
    for _ in range(count):
        account = rng.randint(1, accounts)
        model = rng.choice(models)
        streamed = rng.random() < 0.7
        prompt = int(rng.lognormvariate(6, 1.2)) + 8
        completion = min(int(rng.lognormvariate(5, 1.0)) + 1, 8_192)
        ttft = 0.02 + prompt / 20_000
        latency = ttft + completion * 0.012
        ago = rng.uniform(latency, 3_600)
        request_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        backend, started_at = rng.choice(MODELS[model]), now_wall - ago
        entry: dict[str, Any] = {
            "request_id": request_id,
            "account_id": account,
            "project_id": account * 10,
            "api_key_id": account * 10 + rng.randint(0, 2),
            "tier": _TIERS[account % len(_TIERS)],
            "model": model,
            "backend": backend,
            "endpoint": CHAT if rng.random() < 0.95 else COMPLETIONS,
            "streamed": streamed,
            "started_at": started_at,
            "prompt_tokens": prompt + rng.randint(-4, 4),
            "queue_wait_ms": 0.0 if rng.random() < 0.9 else rng.uniform(1, 2_000),
        }
        forwarded = Forwarded(backends[backend], 200)
        progress = Progress(completion if streamed else 0)
        fate = rng.random()
        if fate < 0.01:
            forwarded.status_code, forwarded.outcome = 502, "backend_error"
            progress.completion_tokens = 0
        elif fate < 0.03:
            # The client left mid-answer: no usage report, the gateway's count is billed.
            forwarded.status_code, forwarded.outcome = 499, "client_disconnected"
            progress.completion_tokens //= 2
        else:
            forwarded.first_token_at = now - ago + ttft
            forwarded.usage = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": rng.choice((0, 0, prompt // 2))},
                "completion_tokens_details": {
                    "reasoning_tokens": completion // 2 if model in REASONING else 0
                },
            }
        # usage_record reads the clock for the end: `arrived` is when it began, as monotonic.
        record = usage_record(entry, forwarded, progress, time.monotonic() - latency, bounds)
        yield request_id, orjson.dumps(record)


def _wait_first_read(
    client: redis.Redis,
    shards: tuple[JournalKeys, ...],
    processes: list[subprocess.Popen[bytes]],
) -> float:
    """When a meter first read from a stream: its consumer exists from its first read."""
    from metering.events import USAGE_GROUP

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        _check_alive(processes)
        for shard in shards:
            groups = client.xinfo_groups(shard.stream) if client.exists(shard.stream) else []
            if any(g["name"].decode() == USAGE_GROUP and g["consumers"] for g in groups):
                return time.monotonic()
        time.sleep(0.005)
    sys.exit("no meter read the stream within 60 s")


def wait_drained(
    redis_store: Store, processes: list[subprocess.Popen[bytes]], rows: int, *, timeout: float
) -> None:
    """Until every stream is empty (every event stored and acknowledged) and the ledger has
    `rows` rows."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _check_alive(processes)
        if redis_store.backlog() == 0 and ledger_rows() + _quarantined() >= rows:
            return
        time.sleep(0.02)
    sys.exit(f"the meters did not drain the streams within {timeout:.0f} s")


def _check_alive(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is not None:
            sys.exit(f"a meter exited with status {process.returncode}")


def ledger_rows() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM metering_usagerecord")
        return int(cursor.fetchone()[0])


def _quarantined() -> int:
    from metering.models import QuarantinedEvent

    return QuarantinedEvent.objects.count()


def _cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        times = process.cpu_times()
        total += times.user + times.system
    return total


def _busy_cpu_seconds() -> float:
    """CPU time the whole machine spent on anything but idling, all cores together."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def print_results(results: list[Result]) -> None:
    print(
        f"\n{'redis':<13} {'shards':>6} {'meters':>6} {'events':>10} {'fill s':>7} "
        f"{'start s':>7} {'drain s':>8} {'records/s':>10} {'meter cpu us/rec':>16} "
        f"{'redis us/rec':>12} {'machine us/rec':>14} {'ledger rows':>11} {'after replay':>12} "
        f"{'quarantined':>11}"
    )
    for r in results:
        per_record = 1e6 / r.events
        print(
            f"{r.redis:<13} {r.shards:>6} {r.meters:>6} {r.events:>10,} {r.fill_seconds:>7.1f}"
            f" {r.startup_seconds:>7.2f}"
            f" {r.drain_seconds:>8.1f} {r.records_per_second:>10,.0f}"
            f" {r.meter_cpu_seconds * per_record:>16.0f} {r.redis_cpu_seconds * per_record:>12.0f}"
            f" {r.busy_cpu_seconds * per_record:>14.0f} {r.rows:>11,} {r.rows_after_replay:>12,}"
            f" {r.quarantined:>11}"
        )
    for r in results:
        exact = r.rows == r.rows_after_replay == r.events and r.quarantined == 0
        verdict = "exactly" if exact else "NOT exactly"
        print(
            f"{r.meters} meter(s) on {r.redis}: the ledger holds {verdict} {r.events:,} rows "
            f"({r.rows_after_replay:,} after {min(REPLAYED, r.events):,} events were appended "
            f"again; {r.quarantined} quarantined)"
        )


if __name__ == "__main__":
    main()
