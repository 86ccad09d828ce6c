"""Usage and invoice exports: what finance loads elsewhere must be the ledger, row for row."""

import csv
import io
import tracemalloc
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from billing import exports
from billing.exports import CHUNK_BYTES, export_stream
from billing.models import Invoice, InvoiceLine
from customers.models import Account, Project
from customers.services import account_create, project_create, tiers_ensure_defaults
from metering.events import COLUMNS
from metering.models import UsageRecord
from metering.services import usage_records_write

# The usage export's columns: the ledger's, with the project's id and name after the account.
EXPORTED = (
    "request_id",
    "account_id",
    "project_id",
    "project_name",
    *(c for c in COLUMNS if c not in ("request_id", "account_id", "project_id")),
)
SINCE = datetime(2026, 3, 1, tzinfo=UTC)
UNTIL = datetime(2026, 3, 4, tzinfo=UTC)
pytestmark = pytest.mark.django_db


def usage(n: int, *, account_id: int, started_at: datetime, **overrides: Any) -> dict[str, Any]:
    return {
        "request_id": uuid.uuid4(),
        "account_id": account_id,
        "api_key_id": account_id * 10 + n % 2,
        "tier": ("free", "interactive", "premium")[n % 3],
        "model": 'llama "8b", chat' if n % 4 == 0 else "qwen-72b",
        "backend": f"gpu-{n % 3}",
        "endpoint": "chat.completions",
        "prompt_tokens": 100 + n,
        "cached_prompt_tokens": n % 50,
        "completion_tokens": 7 * n,
        "reasoning_tokens": n % 11,
        "tokens_estimated": n % 5 == 0,
        "queue_wait_ms": n / 3,
        "ttft_ms": None if n % 6 == 0 else 12.5 + n,
        "latency_ms": 40.0 + n / 7,
        "status_code": 200,
        "outcome": "ok",
        "streamed": n % 2 == 0,
        "started_at": started_at,
        "ended_at": started_at + timedelta(milliseconds=40 + n),
        "energy_joules": None if n % 7 == 0 else n * 1.37,
        **overrides,
    }


@pytest.fixture
def ledger() -> None:
    """Three accounts over three days, plus records just outside [SINCE, UNTIL)."""
    records = [
        usage(n, account_id=1 + n % 3, started_at=SINCE + timedelta(minutes=7 * n))
        for n in range(600)
    ]
    records += [
        usage(1, account_id=1, started_at=SINCE - timedelta(microseconds=1)),
        usage(2, account_id=2, started_at=UNTIL),
        usage(3, account_id=2, started_at=SINCE),
        usage(4, account_id=3, started_at=UNTIL - timedelta(microseconds=1)),
    ]
    usage_records_write(records=records)


def ledger_rows(
    account_id: int | None = None, project_id: int | None = None
) -> list[dict[str, Any]]:
    records = UsageRecord.objects.filter(started_at__gte=SINCE, started_at__lt=UNTIL)
    if account_id is not None:
        records = records.filter(account_id=account_id)
    if project_id is not None:
        records = records.filter(project_id=project_id)
    names = dict(Project.objects.values_list("pk", "name"))
    rows = records.order_by("started_at", "request_id").values(*EXPORTED[:3], *EXPORTED[4:])
    return [
        {column: row.get(column, names.get(row["project_id"])) for column in EXPORTED}
        for row in rows
    ]


def csv_rows(data: bytes) -> list[dict[str, Any]]:
    """The CSV's rows, each value read back as the ledger's type."""
    ints = {
        "account_id",
        "project_id",
        "api_key_id",
        "status_code",
        *(c for c in COLUMNS if "tokens" in c),
    }
    reader = csv.DictReader(io.StringIO(data.decode()))
    assert tuple(reader.fieldnames or ()) == EXPORTED
    return [{k: _typed(k, v, ints) for k, v in row.items()} for row in reader]


def _typed(column: str, value: str, ints: set[str]) -> Any:
    if value == "":
        return None
    if column == "request_id":
        return uuid.UUID(value)
    if column in ("tokens_estimated", "streamed"):
        return {"true": True, "false": False}[value]
    if column.endswith("_at"):
        return datetime.fromisoformat(value)
    if column in ints:
        return int(value)
    if column.endswith(("_ms", "_joules")):
        return float(value)
    return value


def read(kind: str, fmt: str, **options: Any) -> bytes:
    return b"".join(
        export_stream(kind=kind, fmt=fmt, since=SINCE, until=UNTIL, **options)  # type: ignore[arg-type]
    )


def test_the_csv_is_the_ledger_row_for_row(ledger: None) -> None:
    rows = csv_rows(read("usage", "csv"))
    assert len(rows) == 602
    assert rows == ledger_rows()


def test_the_parquet_is_the_ledger_row_for_row(ledger: None) -> None:
    assert parquet_rows(read("usage", "parquet")) == ledger_rows()


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_an_accounts_export_holds_its_records_and_no_one_elses(ledger: None, fmt: str) -> None:
    data = read("usage", fmt, account_id=2)
    rows = csv_rows(data) if fmt == "csv" else pq.read_table(io.BytesIO(data)).to_pylist()
    assert {row["account_id"] for row in rows} == {2}
    assert [str(row["request_id"]) for row in rows] == [
        str(row["request_id"]) for row in ledger_rows(account_id=2)
    ]


def parquet_rows(data: bytes) -> list[dict[str, Any]]:
    table = pq.read_table(io.BytesIO(data))
    assert table.column_names == list(EXPORTED)
    return [{**row, "request_id": uuid.UUID(row["request_id"])} for row in table.to_pylist()]


def test_rows_come_in_start_order_across_days_whatever_order_they_were_stored() -> None:
    """Stored newest first, some starting at the same instant, over days with a day of none
    between: both files list them by start, then request id, as the ledger sorts them."""
    starts = [SINCE + timedelta(hours=3 * n, microseconds=n % 3) for n in range(6)]
    starts += [UNTIL - timedelta(microseconds=1)] * 3  # after a day without records
    records = [usage(n, account_id=1, started_at=start) for n, start in enumerate(starts)]
    usage_records_write(records=records[::-1])
    ordered = [
        r["request_id"] for r in sorted(records, key=lambda r: (r["started_at"], r["request_id"]))
    ]
    assert [row["request_id"] for row in ledger_rows()] == ordered
    assert [row["request_id"] for row in csv_rows(read("usage", "csv"))] == ordered
    assert [row["request_id"] for row in parquet_rows(read("usage", "parquet"))] == ordered


def test_times_are_utc_iso_8601_with_z_whatever_the_sessions_time_zone(ledger: None) -> None:
    stored = ledger_rows()  # read first: Django reads times as if the session were in UTC
    with connection.cursor() as cursor:  # undone with the test's transaction
        cursor.execute("SET LOCAL TIME ZONE 'America/St_Johns'")
    text = list(csv.DictReader(io.StringIO(read("usage", "csv").decode())))
    for column in ("started_at", "ended_at"):
        assert [row[column] for row in text] == [
            f"{row[column].astimezone(UTC):%Y-%m-%dT%H:%M:%S.%f}Z" for row in stored
        ]
    assert {row["streamed"] for row in text} == {"true", "false"}
    table = pq.read_table(io.BytesIO(read("usage", "parquet")))
    assert table.schema.field("started_at").type == pa.timestamp("us", tz="UTC")
    assert table.column("started_at").to_pylist() == [row["started_at"] for row in stored]


@pytest.mark.parametrize("decode_rows", [1, 3, exports.DECODE_ROWS])
def test_the_parquet_keeps_nulls_empty_and_non_ascii_text_however_it_is_read(
    decode_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decoded a message at a time, three at a time (a day's four rows and its trailer cut
    inside the day and across days) or all at once: the same table."""
    monkeypatch.setattr(exports, "DECODE_ROWS", decode_rows)
    tiers_ensure_defaults()
    account = account_create(name=f"ünï-{uuid.uuid4().hex[:6]}", tier_slug="free")
    project = project_create(account=account, name='Ünïcode 数据 "quoted", comma')
    records = [
        usage(
            n,
            account_id=account.pk,
            started_at=SINCE + timedelta(hours=6 * n, microseconds=n),
            project_id=project.pk if n % 2 else None,
            model=("", "modèle-é", "m" * 128)[n % 3],
            prompt_tokens=2**31 - 1 if n == 3 else n,
        )
        for n in range(12)
    ]
    records[-1] |= {"ttft_ms": None, "energy_joules": None}  # the last field of the last row
    usage_records_write(records=records)
    rows = parquet_rows(read("usage", "parquet"))
    assert rows == ledger_rows()
    assert {row["project_name"] for row in rows} == {None, project.name}
    assert {row["model"] for row in rows} == {"", "modèle-é", "m" * 128}


def test_an_empty_range_is_a_header_or_an_empty_table() -> None:
    assert read("usage", "csv").decode().strip() == ",".join(EXPORTED)
    assert pq.read_table(io.BytesIO(read("usage", "parquet"))).num_rows == 0


def test_a_large_csv_export_is_handed_on_in_pieces_without_holding_the_range() -> None:
    usage_records_write(
        records=[
            usage(n, account_id=1, started_at=SINCE + timedelta(seconds=15 * n))
            for n in range(16_000)
        ]
    )
    tracemalloc.start()
    try:
        sizes = [
            len(piece) for piece in export_stream(kind="usage", fmt="csv", since=SINCE, until=UNTIL)
        ]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sum(sizes) > 10 * CHUNK_BYTES
    assert len(sizes) > 10
    assert max(sizes) < CHUNK_BYTES + 1024
    # A handful of pieces alive at once, never the whole export.
    assert peak < sum(sizes) / 3


def test_a_large_parquet_export_is_written_a_row_group_at_a_time(ledger: None) -> None:
    pieces = list(
        export_stream(kind="usage", fmt="parquet", since=SINCE, until=UNTIL, row_group_rows=100)
    )
    parquet = pq.ParquetFile(io.BytesIO(b"".join(pieces)))
    groups = [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)]
    assert groups == [100] * 6 + [2]
    # One piece per row group, handed on as written, then the footer.
    assert len(pieces) == len(groups) + 1
    assert pieces[0].startswith(b"PAR1")


def test_a_large_parquet_export_holds_a_block_and_a_row_group_whatever_the_range(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(exports, "DECODE_ROWS", 1000)
    usage_records_write(
        records=[
            usage(n, account_id=1, started_at=SINCE + timedelta(seconds=10 * n))
            for n in range(16_000)  # not quite two days
        ]
    )

    def peak(days: int) -> int:
        tracemalloc.start()
        try:
            for _ in export_stream(
                kind="usage",
                fmt="parquet",
                since=SINCE,
                until=SINCE + timedelta(days=days),
                row_group_rows=1000,
            ):
                pass
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    peak(1)  # pyarrow's and numpy's first-use allocations
    assert peak(2) < 1.2 * peak(1)


@pytest.fixture
def invoices() -> dict[str, Account]:
    tiers_ensure_defaults()
    alice = account_create(name=f"alice-{uuid.uuid4().hex[:6]}", tier_slug="premium")
    bob = account_create(name=f"bob-{uuid.uuid4().hex[:6]}", tier_slug="free")
    march = {"period_start": SINCE, "period_end": datetime(2026, 4, 1, tzinfo=UTC)}
    first = _invoice(alice, number="TF-000001", lines=[("output", "12.345678901234", 1235)])
    _invoice(
        alice,
        number="TF-000002",
        kind=Invoice.Kind.CREDIT_NOTE,
        corrects=first,
        lines=[("credit", "-2.5", -250)],
    )
    _invoice(bob, number=None, lines=[("input", "0.004", 0), ("plan_fee", "9", 900)])
    _invoice(
        bob,
        number="TF-000003",
        lines=[("input", "1", 100)],
        **{**march, "period_start": UNTIL + timedelta(days=1)},
    )
    return {"alice": alice, "bob": bob}


def _invoice(
    account: Account,
    *,
    number: str | None,
    lines: list[tuple[str, str, int]],
    **fields: Any,
) -> Invoice:
    amount = sum((Decimal(a) for _, a, _ in lines), Decimal(0))
    invoice = Invoice.objects.create(
        account=account,
        period_start=fields.pop("period_start", SINCE),
        period_end=fields.pop("period_end", datetime(2026, 4, 1, tzinfo=UTC)),
        amount=amount,
        total_minor=sum(minor for _, _, minor in lines),
        **fields,
    )
    for item, line_amount, minor in lines:
        InvoiceLine.objects.create(
            invoice=invoice,
            item=item,
            tier=account.tier.slug,
            model="qwen-72b",
            quantity=1000,
            unit_price=Decimal("1.5"),
            amount=Decimal(line_amount),
            amount_minor=minor,
            usage_from=invoice.period_start,
            usage_to=invoice.period_end,
        )
    if number:  # as billing does: a draft and its lines, then finalised
        Invoice.objects.filter(pk=invoice.pk).update(
            number=number,
            status=Invoice.Status.FINALISED,
            finalised_at=SINCE + timedelta(days=31, hours=3),
        )
        invoice.refresh_from_db()
    return invoice


def test_the_invoice_export_has_a_row_per_line_with_its_invoice(
    invoices: dict[str, Account],
) -> None:
    rows = list(csv.DictReader(io.StringIO(read("invoices", "csv").decode())))
    assert [(r["number"], r["kind"], r["item"], r["amount_minor"]) for r in rows] == [
        ("TF-000001", "invoice", "output", "1235"),
        ("TF-000002", "credit_note", "credit", "-250"),
        ("", "invoice", "input", "0"),
        ("", "invoice", "plan_fee", "900"),
    ]
    credit = rows[1]
    assert (credit["corrects"], credit["total_minor"]) == ("TF-000001", "-250")
    assert Decimal(rows[0]["amount"]) == Decimal("12.345678901234")
    assert rows[0]["finalised_at"] == "2026-04-01T03:00:00.000000Z"


def test_the_invoice_parquet_keeps_exact_amounts_and_the_tenant_filter(
    invoices: dict[str, Account],
) -> None:
    table = pq.read_table(io.BytesIO(read("invoices", "parquet", account_id=invoices["alice"].pk)))
    rows = table.to_pylist()
    assert {row["account_name"] for row in rows} == {invoices["alice"].name}
    assert [row["amount"] for row in rows] == [Decimal("12.345678901234"), Decimal("-2.5")]
    assert sum(row["amount_minor"] for row in rows) == 985


def test_the_command_writes_an_accounts_usage_to_stdout(
    ledger: None, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    call_command(
        "export",
        "usage",
        "--from",
        "2026-03-01",
        "--to",
        "2026-03-04T00:00:00Z",
        "--account",
        "2",
        "--output",
        "-",
    )
    assert csv_rows(capsysbinary.readouterr().out) == ledger_rows(account_id=2)


def test_the_command_writes_parquet_to_a_file(ledger: None, tmp_path: Path) -> None:
    out = tmp_path / "usage.parquet"
    call_command(
        "export",
        "usage",
        "--from",
        "2026-03-01",
        "--to",
        "2026-03-04",
        "--format",
        "parquet",
        "--output",
        str(out),
    )
    assert pq.read_table(out).num_rows == len(ledger_rows())


def test_the_command_works_with_debug_on(ledger: None, tmp_path: Path, settings: Any) -> None:
    settings.DEBUG = True  # Django's debug cursor wrapper takes no COPY parameters
    out = tmp_path / "usage.csv"
    call_command(
        "export", "usage", "--from", "2026-03-01", "--to", "2026-03-04", "--output", str(out)
    )
    assert csv_rows(out.read_bytes()) == ledger_rows()


def test_a_failed_export_leaves_no_file_and_says_why(ledger: None, tmp_path: Path) -> None:
    out = tmp_path / "usage.parquet"
    with connection.cursor() as cursor:  # undone with the test's transaction
        cursor.execute("ALTER TABLE metering_usagerecord RENAME COLUMN outcome TO outcome_gone")
    with pytest.raises(CommandError, match=r"failed before any of it was sent.*outcome"):
        call_command(
            "export",
            *("usage", "--from", "2026-03-01", "--to", "2026-03-04", "--format", "parquet"),
            *("--output", str(out)),
        )
    assert not out.exists()
