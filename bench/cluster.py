"""Beyond one Redis: the gateway and the meter on one redis-server and on Redis Clusters
(issue 21).

    python -m bench.cluster [--gateways 1 2] [--meters 1 2] [--primaries 1 3] [--replicas 1]
                            [--runs 3] [--seconds 3] [--concurrency 16] [--tokens 64]
                            [--events 100000] [--accounts 1000] [--batch-size N]
                            [--database tf_bench_cluster]

Redis of the bench's own, one after the other: one redis-server, then for each count in
--primaries a Redis Cluster of that many primaries with --replicas replicas each
(bench/redis_cluster.py: `redis-cli --cluster create`, or its steps by hand below three
primaries); every node with an append-only file fsynced every second. The usage stream and the
in-flight journal are in METERING_SHARDS shards: one on the single server, one per primary on
a cluster. On each:

1. Requests a second through the gateway, as bench/overhead.py measures them (its simulated
   backend, instant; its tenant, whose limits are all checked and never reached; its `hey` load,
   pinning and uvicorn): for each G in --gateways, G gateway worker processes and one meter;
   a warm-up of 1 s, then --runs runs of --seconds s at --concurrency, non-streamed chat
   completions of --tokens tokens; the median req/s, p50 and p99, the CPU per request of the
   gateway's processes and of every Redis node. Then the meter drains the streams, and the
   ledger must hold one row per request answered.
2. Records a second stored by meters, as bench/meter.py measures them (its backlog of --events
   usage events over --accounts accounts, each appended through inflight_settle.lua to the
   shard its request id picks): for each M in --meters, M `manage.py meter` processes (each one
   consumer per shard) timed from their first read until the ledger holds every record; then
   the first 10,000 events are appended again and the ledger must still hold each once.

Prints both tables, then ratios within this run: each cluster over the single server, and the
cluster of the most primaries over the one of the fewest (what more primaries buy). Needs the
PostgreSQL server of DATABASE_URL (the database --database is created for the run and dropped
after), redis-server, redis-cli and `hey` (apt-get install hey).
"""

import argparse
import os
import shutil
import statistics
import sys
from collections import Counter
from dataclasses import dataclass

import psutil

from bench.meter import (
    Result,
    Store,
    bench_database,
    ledger_rows,
    meter_spawn,
    print_results,
    reset,
    run,
    store,
    wait_drained,
)
from bench.meter import _cpu_seconds as cpu_seconds
from bench.overhead import (
    Run,
    Target,
    _body,
    _hey,
    _machine,
    _prepare_fleet,
    _simulator,
    _spawn,
    _uvicorn,
    _wait_ready,
)
from bench.ports import free_port


@dataclass
class Through:
    """The gateway's runs on one Redis with G workers."""

    redis: str
    shards: int
    gateways: int
    runs: list[Run]
    # CPU seconds every Redis node spent over the runs (the warm-up not counted).
    redis_cpu_seconds: float
    # Every request `hey` had answered, the warm-up included, and the ledger's rows after.
    answered: int
    rows: int

    def median(self, field: str) -> float:
        return float(statistics.median(getattr(run, field) for run in self.runs))

    @property
    def redis_cpu_us_per_request(self) -> float:
        return self.redis_cpu_seconds / sum(run.requests for run in self.runs) * 1e6

    @property
    def statuses(self) -> Counter[str]:
        return sum((run.statuses for run in self.runs), Counter[str]())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gateways", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--meters", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--primaries", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--replicas", type=int, default=1, help="replicas per primary")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--accounts", type=int, default=1_000)
    parser.add_argument("--batch-size", type=int, help="METERING_BATCH_SIZE (default: settings)")
    parser.add_argument("--database", default="tf_bench_cluster")
    args = parser.parse_args()
    if shutil.which("hey") is None:
        sys.exit("bench needs `hey` as its load generator: apt-get install hey")

    names: list[str] = []
    through: list[Through] = []
    stored: list[Result] = []
    with bench_database(args.database, args.batch_size):
        sim_port = free_port()
        key = _prepare_fleet(sim_port)
        simulator = _spawn(["1"], _simulator(sim_port), {**os.environ, "LOG_LEVEL": "WARNING"})
        try:
            _wait_ready(f"http://127.0.0.1:{sim_port}/health")
            print(_machine())
            print(
                f"gateway: {args.runs} runs of {args.seconds} s at concurrency "
                f"{args.concurrency}, {args.tokens} completion tokens, not streamed; meter: "
                f"{args.events:,} usage events over {args.accounts:,} accounts\n",
                flush=True,
            )
            for primaries in [0, *args.primaries]:
                with store(primaries, max(1, primaries), args.replicas) as redis_store:
                    names.append(redis_store.name)
                    for gateways in args.gateways:
                        through.append(_through(redis_store, gateways, key, args))
                        _print_through_line(through[-1])
                    stored += [run(redis_store, meters, args) for meters in args.meters]
        finally:
            simulator.terminate()
            simulator.wait(10)
    _print_through(through)
    print_results(stored)
    _print_ratios(names, through, stored)


def _through(redis_store: Store, gateways: int, key: str, args: argparse.Namespace) -> Through:
    """The load through `gateways` gateway workers on the store, then the ledger's check."""
    reset(redis_store)
    port = free_port()
    cpus = [str(cpu) for cpu in range(min(gateways, os.cpu_count() or 1))]
    server = _spawn(cpus, _uvicorn("config.asgi:application", port, gateways), redis_store.env())
    meter = meter_spawn(redis_store, "1")
    try:
        _wait_ready(f"http://127.0.0.1:{port}/readyz")
        target = Target(f"http://127.0.0.1:{port}", key, psutil.Process(server.pid))
        body = _body(False, args.tokens)
        warm_up = _hey(target, body, args.concurrency, ["-z", "1s"])
        redis_cpu = cpu_seconds(redis_store.processes)
        runs = [
            _hey(target, body, args.concurrency, ["-z", f"{args.seconds}s"])
            for _ in range(args.runs)
        ]
        redis_cpu = cpu_seconds(redis_store.processes) - redis_cpu
        answered = sum(each.requests for each in [warm_up, *runs])
        # A request refused before admission has no row: wait for those that were served.
        served = answered - sum(each.errors for each in [warm_up, *runs])
        wait_drained(redis_store, [meter], served, timeout=60)
        rows = ledger_rows()
    finally:
        for child in (server, meter):
            child.terminate()
        for child in (server, meter):
            child.wait(30)
    name, shards = redis_store.name, len(redis_store.shards)
    return Through(name, shards, gateways, runs, redis_cpu, answered, rows)


def _print_through_line(t: Through) -> None:
    print(
        f"{t.gateways} gateway worker(s) on {t.redis}: {t.median('rps'):,.0f} req/s, "
        f"the ledger holds {t.rows:,} rows for {t.answered:,} requests answered",
        flush=True,
    )


def _print_through(results: list[Through]) -> None:
    print(
        f"\n{'redis':<13} {'shards':>6} {'gateways':>8} {'req/s':>7} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'gateway cpu us/req':>18} {'redis cpu us/req':>16} {'errors':>6} "
        f"{'answered':>9} {'ledger rows':>11}"
    )
    for t in results:
        errors = sum(run.errors for run in t.runs)
        print(
            f"{t.redis:<13} {t.shards:>6} {t.gateways:>8} {t.median('rps'):>7,.0f}"
            f" {t.median('p50_ms'):>7.2f} {t.median('p99_ms'):>7.2f}"
            f" {t.median('cpu_us_per_request'):>18.0f} {t.redis_cpu_us_per_request:>16.0f}"
            f" {errors:>6} {t.answered:>9,} {t.rows:>11,}"
            + (f" {dict(t.statuses)}" if t.statuses else "")
        )
    for t in results:
        verdict = "exactly" if t.rows == t.answered else "NOT exactly"
        print(
            f"{t.gateways} gateway worker(s) on {t.redis}: the ledger holds {verdict} one row "
            f"per request answered ({t.rows:,} rows, {t.answered:,} answered)"
        )


def _print_ratios(names: list[str], through: list[Through], stored: list[Result]) -> None:
    """Each Redis over the first (the single server), and the cluster of the most primaries
    over the one of the fewest, each for the same number of processes."""
    pairs = [(name, names[0]) for name in names[1:]]
    if len(names) > 2:
        pairs.append((names[-1], names[1]))
    print("\nratios within this run:")
    for over, base in pairs:
        for count in dict.fromkeys(t.gateways for t in through):
            a, b = (
                next(t for t in through if (t.redis, t.gateways) == (n, count))
                for n in (over, base)
            )
            print(
                f"  {over} / {base}, {count} gateway worker(s): req/s "
                f"{a.median('rps') / b.median('rps'):.2f}, p50 "
                f"{a.median('p50_ms') / b.median('p50_ms'):.2f}, p99 "
                f"{a.median('p99_ms') / b.median('p99_ms'):.2f}"
            )
        for count in dict.fromkeys(r.meters for r in stored):
            c, d = (
                next(r for r in stored if (r.redis, r.meters) == (n, count)) for n in (over, base)
            )
            print(
                f"  {over} / {base}, {count} meter(s): records/s "
                f"{c.records_per_second / d.records_per_second:.2f}"
            )


if __name__ == "__main__":
    main()
