"""Billing at scale: usage records -> rollups, margins and invoices, each phase timed.

    python -m bench.billing [--records 10000000] [--accounts 10000] [--month 2026-10]
                            [--database tf_bench_billing] [--keep | --reuse] [--exports]

Creates the database `--database` on the server of DATABASE_URL (dropped first if it exists,
and after the run unless `--keep`), migrates it, and generates one month of usage in
PostgreSQL with generate_series: `--accounts` accounts (60% free, 30% interactive, 10%
premium; traffic skewed, the busiest 1% sending about a fifth of it), 1-3 keys each, four
models on six backends (and a spare backend that idles), tokens of every class, energy
attributed, one-minute energy intervals with idle energy, two price books (prices change
mid-month) with plan fees and included tokens, and cost models. Then it times the billing
jobs as they run once the month is over: the rollups of the whole month from nothing, one more
hour of arrivals (the watermarks set an hour back), margins, the close (invoices, included
tokens, plan fees, numbers: read from the rollups), the finance report; then checks: every
invoice computed again from the raw records (the same to the minor unit), and the rollups
rebuilt for a correction (the same rows as run by run). `--exports` also
times the month's usage export as CSV and Parquet. `--reuse` runs the jobs again on a database
kept by `--keep` (its billing tables emptied first), without generating anything.
"""

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import django
import psycopg
from psycopg import sql

from bench.overhead import _machine

MODELS = {
    # public model -> the backends serving it
    "llama-3.1-8b": ["gpu-a", "gpu-b"],
    "llama-3.1-70b": ["gpu-c", "gpu-d"],
    "qwen-2.5-72b": ["gpu-d", "gpu-e"],
    "deepseek-r1": ["gpu-e", "gpu-f"],
}
REASONING = {"deepseek-r1"}
SPARE_BACKEND = "gpu-spare"
# The share of records that reach the ledger late (a reaped lease, a spool replayed after an
# outage): up to two hours after they end; the others 1-5 s after.
LATE = 0.005


@dataclass
class Phase:
    name: str
    seconds: float
    rows_in: int
    rows_out: int


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=10_000_000)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument(
        "--session", type=int, default=20, help="requests per session (1: each on its own)"
    )
    parser.add_argument("--month", default=None, help="YYYY-MM (default: last month)")
    parser.add_argument("--database", default="tf_bench_billing")
    parser.add_argument("--keep", action="store_true", help="keep the database after the run")
    parser.add_argument("--reuse", action="store_true", help="the kept database, as it is")
    parser.add_argument("--exports", action="store_true", help="time the usage exports too")
    args = parser.parse_args()
    month = _month(args.month)

    server = _server_url()
    if not args.reuse:
        _recreate(server, args.database)
    os.environ["DATABASE_URL"] = f"{server}/{args.database}"
    os.environ.setdefault("TF_PROFILE", "local")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    django.setup()
    try:
        phases = _run(args, month)
    finally:
        from django.db import connections

        connections.close_all()
        if not (args.keep or args.reuse):
            _drop(server, args.database)
    print(_machine())
    print(f"{args.records:,} usage records, {args.accounts:,} accounts, month {month:%Y-%m}\n")
    _print(phases)


def _run(args: argparse.Namespace, month: datetime) -> list[Phase]:
    from django.core.management import call_command

    if args.reuse:
        _billing_reset()
        phases = []
    else:
        call_command("migrate", verbosity=0)
        phases = [_timed("generate usage", args.records, lambda: _generate(args, month))]
    phases += _jobs(args.records, month)
    if args.exports:
        phases += _exports(args.records, month)
    return phases


def _jobs(records: int, month: datetime) -> list[Phase]:
    """The month's jobs as they run once it is over: the rollups of the whole month from
    nothing, then one more hour of arrivals, margins, the close and the finance report; then
    the checks (the close's invoices against the raw records, the rollups rebuilt)."""
    from billing.margins import margins_run
    from billing.models import Invoice, Margin, UsageRollup
    from billing.report_forms import report_render
    from billing.reports import ReportFormat
    from billing.rollups import rollups_rebuild, rollups_run
    from billing.services import invoices_close

    end = _month_after(month)
    now = end + timedelta(hours=2, minutes=5)  # the grace window over
    phases = [
        _timed("rollups, whole month", records, lambda: rollups_run(now=now), UsageRollup),
    ]
    whole = _fingerprint(UsageRollup)
    arrived = _watermarks_back(end - timedelta(hours=1))
    phases += [
        _timed("rollups, one hour", arrived, lambda: rollups_run(now=now), UsageRollup),
        _timed("margins", _count(UsageRollup, grain="day"), lambda: margins_run(now=now), Margin),
        _timed(
            "close (invoices)",
            records,
            lambda: invoices_close(period_start=month, now=now),
            Invoice,
        ),
    ]
    hour = _fingerprint(UsageRollup)
    days = _count(UsageRollup, grain="day")

    def report(fmt: ReportFormat) -> Callable[[], bytes]:
        return lambda: report_render(period_start=month, currency="USD", fmt=fmt, now=now)

    formats: tuple[ReportFormat, ...] = ("html", "csv")
    phases += [_timed(f"finance report, {fmt.upper()}", days, report(fmt)) for fmt in formats]
    phases.append(_timed("close, from the records", records, lambda: _invoices_check(month)))
    phases.append(
        _timed(
            "rollups, rebuilt",
            records,
            lambda: rollups_rebuild(since=month, until=end),
            UsageRollup,
        )
    )
    rebuilt = _fingerprint(UsageRollup)
    print(f"  rollups after one more hour: {_same(hour, whole)}; rebuilt: {_same(rebuilt, whole)}")
    return phases


def _watermarks_back(to: datetime) -> int:
    """Set the rollups' watermarks back to `to`, as if the last run had been then: the next run
    finds what arrived since (the records stored after it); returns how many arrived."""
    from django.db import connection

    from billing.models import JobRun

    for job in ("rollups", "rollups.arrivals", "rollups.attributions"):
        JobRun.objects.filter(job=job, scope="").update(watermark=to)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM metering_usagerecord WHERE stored_at > %s", [to])
        return int(cursor.fetchone()[0])


def _invoices_check(month: datetime) -> None:
    """Every invoice of the close, computed again from the raw records at its cutoff: the same
    total to the minor unit, account by account."""
    from billing.invoicing import Period
    from billing.jobs import month_close
    from billing.models import Invoice
    from billing.services import _drafts_compute

    end = _month_after(month)
    drafts = _drafts_compute(
        Period(month, end), until=end, arrived_by=month_close(month), late_since=None
    )
    expected = {d.account_id: d.total_minor for d in drafts if d.lines}
    billed = dict(
        Invoice.objects.filter(period_start=month).values_list("account_id", "total_minor")
    )
    differ = sum(1 for a in expected.keys() | billed.keys() if expected.get(a) != billed.get(a))
    print(
        f"  invoices from the rollups vs the raw records: {len(billed):,} invoices, {differ} differ"
    )


def _same(a: tuple[int, int], b: tuple[int, int]) -> str:
    return "identical" if a == b else "CHANGED"


def _exports(records: int, month: datetime) -> list[Phase]:
    """The month's usage, as the CLI and the management API stream it (to /dev/null)."""
    from billing.exports import Format, export_write

    def export(fmt: Format) -> None:
        with open(os.devnull, "wb") as out:
            size = export_write(
                kind="usage", fmt=fmt, since=month, until=_month_after(month), out=out
            )
        print(f"    {fmt}: {size / 1e6:,.0f} MB")

    return [
        _timed("export usage, CSV", records, lambda: export("csv")),
        _timed("export usage, Parquet", records, lambda: export("parquet")),
    ]


def _timed(name: str, rows_in: int, job: Callable[[], Any], output: Any = None) -> Phase:
    started = time.perf_counter()
    job()
    seconds = time.perf_counter() - started
    rows_out = output.objects.count() if output is not None else rows_in
    print(f"  {name}: {seconds:.1f} s", flush=True)
    return Phase(name, seconds, rows_in, rows_out)


def _count(model: Any, **filters: Any) -> int:
    return int(model.objects.filter(**filters).count())


def _fingerprint(model: Any) -> tuple[int, int]:
    """Rows and a sum of their hashes, ids and times of writing aside: equal when the rows are."""
    from django.db import connection

    fields = [
        f.column
        for f in model._meta.concrete_fields
        if f.column not in ("id", "invoice_id", "finished_at", "created_at")
    ]
    columns = ", ".join(fields)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT count(*), coalesce(sum(hashtext(row({columns})::text)), 0) "  # noqa: S608
            f"FROM {model._meta.db_table}"
        )
        count, total = cursor.fetchone()
    return int(count), int(total)


def _billing_reset() -> None:
    from django.db import connection

    from billing.seal import seal_lifted

    with seal_lifted(), connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE billing_usagerollup, billing_margin, billing_invoiceline, billing_invoice, "
            "billing_invoicenumber, billing_jobrun"
        )


def _print(phases: list[Phase]) -> None:
    print(f"{'phase':<22}{'seconds':>9}{'rows in':>13}{'rows in/s':>13}{'rows out':>12}")
    for phase in phases:
        rate = phase.rows_in / phase.seconds if phase.seconds else 0
        print(
            f"{phase.name:<22}{phase.seconds:>9.1f}{phase.rows_in:>13,}{rate:>13,.0f}"
            f"{phase.rows_out:>12,}"
        )
    jobs = [p for p in phases if p.name in ("rollups, whole month", "margins", "close (invoices)")]
    print(f"{'the month from nothing':<22}{sum(p.seconds for p in jobs):>9.1f}")


# Data -----------------------------------------------------------------------------------------


def _generate(args: argparse.Namespace, month: datetime) -> None:
    from django.db import connection, transaction

    from customers.services import tiers_ensure_defaults

    tiers_ensure_defaults()
    end = _month_after(month)
    params = {
        "accounts": args.accounts,
        "records": args.records,
        "month": month,
        "end": end,
        "mid": month + (end - month) / 2,
        "session": args.session,
        "before": month - timedelta(days=31),
        "models": list(MODELS),
        "backends": sorted({b for backends in MODELS.values() for b in backends}),
        "spare": SPARE_BACKEND,
        "late": LATE,
    }
    with transaction.atomic(), connection.cursor() as cursor:
        for statement in _GENERATE:
            cursor.execute(statement, params)
        for n, (model, backends) in enumerate(MODELS.items(), start=1):
            cursor.execute(
                "INSERT INTO bench_model VALUES (%s, %s, %s, %s)",
                [n, model, backends, model in REASONING],
            )
        cursor.execute(_SESSIONS, params)
        for table in ("bench_account", "bench_model", "bench_session"):
            cursor.execute(f"ANALYZE {table}")
        _usage_load(cursor, params)
        cursor.execute(_INTERVALS, params)
    # As autovacuum would have long done to a month-old ledger: hint bits set, statistics in.
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")


def _usage_load(cursor: Any, params: dict[str, Any]) -> None:
    """The month's records into a table of their own, then attached as the ledger's partition
    for the month: PostgreSQL builds its indexes once, in bulk, rather than row by row (a
    third of the time)."""
    partition = f"metering_usagerecord_y{params['month']:%Y}m{params['month']:%m}"
    bounds = {"since": params["month"].isoformat(), "until": params["end"].isoformat()}
    cursor.execute(f"DROP TABLE IF EXISTS {partition}")
    cursor.execute(
        f"CREATE TABLE {partition} (LIKE metering_usagerecord INCLUDING DEFAULTS "
        "INCLUDING CONSTRAINTS)"
    )
    cursor.execute(_USAGE.replace("metering_usagerecord", partition), params)
    # A constraint that already proves the bounds spares ATTACH a scan of the rows.
    cursor.execute(
        f"ALTER TABLE {partition} ADD CONSTRAINT bench_bounds CHECK "
        f"(started_at >= '{bounds['since']}' AND started_at < '{bounds['until']}')"
    )
    cursor.execute(
        f"ALTER TABLE metering_usagerecord ATTACH PARTITION {partition} "
        f"FOR VALUES FROM ('{bounds['since']}') TO ('{bounds['until']}')"
    )
    cursor.execute(f"ALTER TABLE {partition} DROP CONSTRAINT bench_bounds")


_GENERATE = [
    "SELECT setseed(0.42)",
    # Accounts: 60% free, 30% interactive, 10% premium; 1-3 keys each.
    """
    INSERT INTO customers_account (name, status, tier_id, stripe_customer_id, created_at)
    SELECT 'bench-' || g, 'active',
           (SELECT id FROM customers_tier WHERE slug = CASE WHEN g %% 10 < 6 THEN 'free'
                                                          WHEN g %% 10 < 9 THEN 'interactive'
                                                          ELSE 'premium' END),
           '', %(before)s
    FROM generate_series(1, %(accounts)s) g
    """,
    # A default project each; accounts with three keys put the third in a second project.
    """
    INSERT INTO customers_project (account_id, name, is_default, budget_hard_cap, created_at,
        requests_per_minute, tokens_per_minute, tokens_per_day, tokens_per_month,
        max_concurrent_requests, max_tokens_per_request, max_context_tokens)
    SELECT a.id, p.name, p.name = 'Default', false, %(before)s, NULL, NULL, NULL, NULL, NULL,
           NULL, NULL
    FROM customers_account a
    CROSS JOIN LATERAL (VALUES ('Default'), ('batch')) p (name)
    WHERE p.name = 'Default' OR a.id %% 3 = 2
    """,
    """
    INSERT INTO customers_apikey (account_id, project_id, name, key_id, secret_hash, created_at)
    SELECT a.id, p.id, 'bench', substr(md5(a.id || '-' || k), 1, 12),
           md5(a.id || '-' || k) || md5(k || '-' || a.id), %(before)s
    FROM customers_account a
    CROSS JOIN LATERAL generate_series(0, a.id %% 3) k
    JOIN customers_project p ON p.account_id = a.id
         AND p.name = CASE WHEN k = 2 THEN 'batch' ELSE 'Default' END
    """,
    """
    CREATE TEMP TABLE bench_account ON COMMIT DROP AS
    SELECT row_number() OVER (ORDER BY a.id)::int AS n, a.id, t.slug AS tier,
           array_agg(k.id ORDER BY k.id) AS keys,
           array_agg(k.project_id ORDER BY k.id) AS projects, 1 + a.id %% 4 AS model_n
    FROM customers_account a
    JOIN customers_tier t ON t.id = a.tier_id
    JOIN customers_apikey k ON k.account_id = a.id
    GROUP BY a.id, t.slug
    """,
    "CREATE UNIQUE INDEX ON bench_account (n)",
    """
    CREATE TEMP TABLE bench_model (n int PRIMARY KEY, model text, backends text[],
                                   reasoning bool) ON COMMIT DROP
    """,
    # Backends, prices (changed mid-month), plans and cost models.
    """
    INSERT INTO fleet_backend (name, base_url, upstream_model, public_models,
        max_concurrent_sequences, supports_priority, telemetry_url, enabled, health)
    SELECT b, 'http://' || b || ':8000', b, %(models)s::text[], 256, true, '', true, 'healthy'
    FROM unnest(%(backends)s::text[] || %(spare)s::text) b
    """,
    """
    INSERT INTO catalogue_pricebook (name, currency, effective_from, created_at)
    VALUES ('bench list', 'USD', %(before)s, now()), ('bench raise', 'USD', %(mid)s, now())
    """,
    """
    INSERT INTO catalogue_price (price_book_id, tier, model, input_per_million,
        cached_input_per_million, output_per_million, reasoning_per_million, request_fee)
    SELECT b.id, t.tier, m.model,
           t.input * m.factor * b.factor, t.input * m.factor * b.factor / 4,
           t.input * m.factor * b.factor * 4,
           CASE WHEN m.model = 'deepseek-r1' THEN t.input * m.factor * b.factor * 3 END,
           t.fee
    FROM (SELECT id, CASE WHEN name = 'bench list' THEN 1.0 ELSE 1.2 END AS factor
          FROM catalogue_pricebook) b
    CROSS JOIN (VALUES ('free', 0.05, 0), ('interactive', 0.20, 0),
                       ('premium', 0.60, 0.0005)) AS t (tier, input, fee)
    CROSS JOIN (VALUES ('*', 1.0), ('llama-3.1-70b', 3.0), ('deepseek-r1', 4.0))
        AS m (model, factor)
    """,
    """
    INSERT INTO catalogue_planprice (price_book_id, tier, monthly_fee, included_tokens)
    SELECT b.id, p.tier, p.fee, p.included
    FROM catalogue_pricebook b
    CROSS JOIN (VALUES ('free', 0, 100000), ('interactive', 20, 1000000),
                       ('premium', 200, 10000000)) AS p (tier, fee, included)
    """,
    """
    INSERT INTO billing_costmodel (backend, effective_from, currency, electricity_per_kwh, pue,
        gpu_cost_per_hour)
    SELECT b, %(month)s, 'USD', 0.12, 1.3, 8 * 2.5
    FROM unnest(%(backends)s::text[] || %(spare)s::text) b
    """,
]

# Sessions: an account's (skewed: n = M * u^3, traffic ~ rank^-2/3) run of requests through
# one key, on its usual model 80% of the time, `session` requests 30 s apart from a random
# start in the month. Each request draws its tokens and energy and alternates between its
# model's two backends. Stored in start order, as the meter writes them; each arrives
# (stored_at) 1-5 s after it ends, or, LATE of them, up to two hours after. Each one-minute
# energy interval is attributed three minutes after it starts.
_SESSIONS = """
CREATE TEMP TABLE bench_session ON COMMIT DROP AS
SELECT s, 1 + floor(%(accounts)s * random() ^ 3)::int AS n, random() AS u_key,
       random() AS u_model, random() AS u_other,
       %(month)s::timestamptz + random() * (%(end)s::timestamptz - %(month)s::timestamptz
                                            - %(session)s * interval '30 seconds') AS start
FROM generate_series(0, (%(records)s - 1) / %(session)s) s
"""
_USAGE = """
INSERT INTO metering_usagerecord (request_id, account_id, api_key_id, project_id, tier, model,
    backend, endpoint, prompt_tokens, cached_prompt_tokens, completion_tokens, reasoning_tokens,
    tokens_estimated, queue_wait_ms, ttft_ms, latency_ms, status_code, outcome, streamed,
    started_at, ended_at, energy_joules, stored_at)
SELECT md5(r.g::text)::uuid, a.id, a.keys[1 + floor(ss.u_key * cardinality(a.keys))::int],
       a.projects[1 + floor(ss.u_key * cardinality(a.keys))::int],
       a.tier, m.model, m.backends[1 + r.g %% 2], 'chat.completions',
       r.prompt, r.cached, r.completion,
       CASE WHEN m.reasoning THEN r.completion * 3 / 5 ELSE 0 END,
       false, r.u4 * 50, 80 + r.prompt / 20.0, r.latency, 200, 'ok', r.g %% 2 = 0,
       ss.start + ((r.g - 1) %% %(session)s) * interval '30 seconds',
       ss.start + ((r.g - 1) %% %(session)s) * interval '30 seconds'
           + r.latency * interval '1 millisecond',
       5 + 0.3 * (r.prompt - r.cached) + 2.0 * r.completion,
       ss.start + ((r.g - 1) %% %(session)s) * interval '30 seconds'
           + r.latency * interval '1 millisecond' + r.delay * interval '1 second'
FROM (
    SELECT g, u4, prompt, CASE WHEN u5 < %(late)s THEN 7200 * u5 / %(late)s ELSE 1 + 4 * u5 END
           AS delay, CASE WHEN u3 < 0.3 THEN floor(prompt * u3 * 2)::int ELSE 0 END AS cached,
           completion, 100 + completion * 20.0 AS latency
    FROM (SELECT g, u3, u4, u5, 50 + floor(u2 ^ 2 * 4000)::int AS prompt,
                 10 + floor(u4 ^ 2 * 1500)::int AS completion
          FROM (SELECT g, random() AS u2, random() AS u3, random() AS u4, random() AS u5
                FROM generate_series(1, %(records)s) g) u) t
) r
JOIN bench_session ss ON ss.s = (r.g - 1) / %(session)s
JOIN bench_account a ON a.n = ss.n
JOIN bench_model m
  ON m.n = CASE WHEN ss.u_model < 0.8 THEN a.model_n ELSE 1 + floor(ss.u_other * 4)::int END
ORDER BY 20
"""

# One-minute energy intervals per backend: what the requests of the minute were attributed
# plus 40 kJ idle (about 670 W); the spare backend only idles.
_INTERVALS = """
INSERT INTO metering_energyinterval (backend, started_at, ended_at, energy_j, gpus,
    prompt_tokens, generation_tokens, counter_reset, idle_j, attributed_j, requests,
    attributed_at)
SELECT b.backend, t, t + interval '1 minute', 40000 + coalesce(u.joules, 0), 8,
       coalesce(u.prompt, 0), coalesce(u.completion, 0), false, 40000,
       coalesce(u.joules, 0), coalesce(u.requests, 0), t + interval '3 minutes'
FROM unnest(%(backends)s::text[] || %(spare)s::text) AS b (backend)
CROSS JOIN generate_series(%(month)s::timestamptz, %(end)s::timestamptz - interval '1 minute',
                           interval '1 minute') t
LEFT JOIN (
    SELECT backend, date_trunc('minute', started_at) AS minute, count(*) AS requests,
           sum(prompt_tokens) AS prompt, sum(completion_tokens) AS completion,
           sum(energy_joules) AS joules
    FROM metering_usagerecord
    WHERE started_at >= %(month)s AND started_at < %(end)s
    GROUP BY 1, 2
) u ON u.backend = b.backend AND u.minute = t
"""


# Databases ------------------------------------------------------------------------------------


def _server_url() -> str:
    url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    return url.rsplit("/", 1)[0]


def _recreate(server: str, name: str) -> None:
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def _drop(server: str, name: str) -> None:
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def _month(text: str | None) -> datetime:
    if text:
        return datetime.strptime(text, "%Y-%m").replace(tzinfo=UTC)
    first = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (first - timedelta(days=1)).replace(day=1)


def _month_after(start: datetime) -> datetime:
    return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)


if __name__ == "__main__":
    main()
