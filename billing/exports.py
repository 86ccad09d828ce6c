"""Usage and invoice exports as CSV and Parquet, streamed (docs/billing.md, "Exports and reports").

Rows leave PostgreSQL by `COPY (SELECT ...) TO STDOUT` in CSV, usage one day at a time, and go
out as they come: CSV as PostgreSQL formats it, Parquet through pyarrow's streaming CSV reader,
a row group at a time. Neither holds more than a block of rows, whatever the range, so a year
of usage exports in the memory of a day's sort on the server and a row group here.

Every surface (the API, the console, the command) starts an export with `export_started`: its
first piece is made before anything is sent, so an export that cannot start (the query, the
first row group) is an error its caller can answer, not an empty 200; one that fails later is
logged and cut short (a truncated transfer, never a complete-looking file).
"""

import io
import logging
from collections.abc import Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Literal

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from django.db import connection

Kind = Literal["usage", "invoices"]
Format = Literal["csv", "parquet"]
KINDS: tuple[Kind, ...] = ("usage", "invoices")
FORMATS: tuple[Format, ...] = ("csv", "parquet")
CONTENT_TYPES: dict[Format, str] = {
    "csv": "text/csv; charset=utf-8",
    "parquet": "application/vnd.apache.parquet",
}

log = logging.getLogger(__name__)

_SQL = Path(__file__).parent / "sql"
# What is handed on at once: CSV text, and rows per Parquet row group.
CHUNK_BYTES = 256 * 1024
ROW_GROUP_ROWS = 128 * 1024
_TIME = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class _Export:
    sql: str
    schema: pa.Schema
    # The range is read in windows this long (one sort each on the server); None: at once.
    window: timedelta | None


_EXPORTS: dict[Kind, _Export] = {
    "usage": _Export(
        sql=(_SQL / "export_usage.sql").read_text(),
        schema=pa.schema(
            [
                ("request_id", pa.string()),
                ("account_id", pa.int64()),
                ("project_id", pa.int64()),
                ("project_name", pa.string()),
                ("api_key_id", pa.int64()),
                ("tier", pa.string()),
                ("model", pa.string()),
                ("backend", pa.string()),
                ("endpoint", pa.string()),
                ("prompt_tokens", pa.int64()),
                ("cached_prompt_tokens", pa.int64()),
                ("completion_tokens", pa.int64()),
                ("reasoning_tokens", pa.int64()),
                ("tokens_estimated", pa.bool_()),
                ("queue_wait_ms", pa.float64()),
                ("ttft_ms", pa.float64()),
                ("latency_ms", pa.float64()),
                ("status_code", pa.int32()),
                ("outcome", pa.string()),
                ("streamed", pa.bool_()),
                ("started_at", _TIME),
                ("ended_at", _TIME),
                ("energy_joules", pa.float64()),
            ]
        ),
        window=timedelta(days=1),
    ),
    "invoices": _Export(
        sql=(_SQL / "export_invoices.sql").read_text(),
        schema=pa.schema(
            [
                ("invoice_id", pa.int64()),
                ("number", pa.string()),
                ("kind", pa.string()),
                ("status", pa.string()),
                ("account_id", pa.int64()),
                ("account_name", pa.string()),
                ("corrects", pa.string()),
                ("period_start", _TIME),
                ("period_end", _TIME),
                ("currency", pa.string()),
                ("invoice_amount", pa.decimal128(28, 12)),
                ("total_minor", pa.int64()),
                ("finalised_at", _TIME),
                ("payment", pa.string()),
                ("line_id", pa.int64()),
                ("project_id", pa.int64()),
                ("project_name", pa.string()),
                ("item", pa.string()),
                ("tier", pa.string()),
                ("model", pa.string()),
                ("price_book_id", pa.int64()),
                ("quantity", pa.int64()),
                ("unit_price", pa.decimal128(18, 6)),
                ("amount", pa.decimal128(28, 12)),
                ("amount_minor", pa.int64()),
                ("usage_from", _TIME),
                ("usage_to", _TIME),
            ]
        ),
        window=None,
    ),
}


@dataclass(frozen=True, slots=True)
class _Scope:
    """Whose rows: one account's or all (None), one project's or all (None)."""

    account_id: int | None
    project_id: int | None


class ExportFailed(Exception):
    """An export failed before any of it was handed on; the cause is logged and chained."""


def export_started(
    *,
    kind: Kind,
    fmt: Format,
    since: datetime,
    until: datetime,
    account_id: int | None = None,
    project_id: int | None = None,
) -> Iterator[bytes]:
    """The export's pieces, the first one already made: a failure to start raises
    ExportFailed here, a later one is logged and raised to whoever pulls the pieces."""
    about = {
        "kind": kind,
        "format": fmt,
        "since": since.isoformat(),
        "until": until.isoformat(),
        "account_id": account_id,
        "project_id": project_id,
    }
    pieces = export_stream(
        kind=kind,
        fmt=fmt,
        since=since,
        until=until,
        account_id=account_id,
        project_id=project_id,
    )
    try:
        first = next(pieces)
    except Exception as error:
        log.exception("export failed before it started", extra=about)
        raise ExportFailed(
            f"The {kind} export failed before any of it was sent: {error}"
        ) from error
    return _logged(first, pieces, about)


def _logged(
    first: bytes, rest: Generator[bytes, None, None], about: Mapping[str, object]
) -> Iterator[bytes]:
    sent = 0
    try:
        yield first
        sent += len(first)
        for piece in rest:
            yield piece
            sent += len(piece)
    except Exception:
        log.exception("export failed after it started; cut short", extra={**about, "sent": sent})
        raise
    finally:
        # A reader that stops early (a closed connection) ends the COPY in progress.
        rest.close()


def export_stream(
    *,
    kind: Kind,
    fmt: Format,
    since: datetime,
    until: datetime,
    account_id: int | None = None,
    project_id: int | None = None,
    row_group_rows: int = ROW_GROUP_ROWS,
) -> Generator[bytes, None, None]:
    """The export of [since, until), of one account or all and one project or all, as
    successive pieces of the file."""
    export = _EXPORTS[kind]
    scope = _Scope(account_id, project_id)
    if fmt == "csv":
        return _csv_pieces(export, since, until, scope, header=True, size=CHUNK_BYTES)
    pieces = _csv_pieces(export, since, until, scope, header=False, size=4 * CHUNK_BYTES)
    return _parquet_stream(pieces, export.schema, row_group_rows)


def export_write(
    *,
    kind: Kind,
    fmt: Format,
    since: datetime,
    until: datetime,
    out: IO[bytes],
    account_id: int | None = None,
    project_id: int | None = None,
) -> int:
    """Write the export to `out` as it is produced; returns the bytes written."""
    written = 0
    for piece in export_started(
        kind=kind,
        fmt=fmt,
        since=since,
        until=until,
        account_id=account_id,
        project_id=project_id,
    ):
        out.write(piece)
        written += len(piece)
    return written


def _csv_pieces(
    export: _Export,
    since: datetime,
    until: datetime,
    scope: "_Scope",
    *,
    header: bool,
    size: int,
) -> Generator[bytes, None, None]:
    """CSV in pieces of about `size` bytes, window after window. COPY sends one message per
    row, so every piece ends at the end of a row."""
    pending = bytearray()
    for start, end in _windows(since, until, export.window):
        params = {
            "since": start,
            "until": end,
            "account_id": scope.account_id,
            "project_id": scope.project_id,
        }
        options = "FORMAT csv, HEADER true" if header else "FORMAT csv"
        header = False
        with (
            connection.cursor() as wrapper,
            # psycopg's own cursor: Django's debug wrapper (DEBUG=true) takes no COPY params.
            wrapper.cursor.copy(f"COPY ({export.sql}) TO STDOUT WITH ({options})", params) as copy,
        ):
            for row in copy:
                pending += row
                if len(pending) >= size:
                    yield bytes(pending)
                    pending.clear()
    if pending:
        yield bytes(pending)


def _windows(
    since: datetime, until: datetime, window: timedelta | None
) -> Iterator[tuple[datetime, datetime]]:
    """[since, until) cut into windows; the first one even when the range is empty, so the
    header is always written."""
    start = since
    while True:
        end = until if window is None else min(until, start + window)
        yield start, end
        start = end
        if start >= until:
            return


def _parquet_stream(
    pieces: Iterator[bytes], schema: pa.Schema, row_group_rows: int
) -> Generator[bytes, None, None]:
    """Parquet from CSV pieces (whole rows, no header): each parsed by pyarrow as it comes, a
    row group written and handed on every `row_group_rows` rows, the footer last.

    Pieces are pushed to pyarrow from this thread: its streaming reader would pull from a
    thread of its own, where Django's connection (thread-local) is another one."""
    read_options = pacsv.ReadOptions(column_names=schema.names, use_threads=False)
    convert_options = pacsv.ConvertOptions(
        column_types=schema, strings_can_be_null=True, quoted_strings_can_be_null=False
    )
    batches = (
        batch
        for piece in pieces
        for batch in pacsv.read_csv(
            pa.py_buffer(piece), read_options=read_options, convert_options=convert_options
        ).to_batches()
    )
    sink = _Sink()
    with pq.ParquetWriter(sink, schema) as writer:
        for group in _row_groups(batches, row_group_rows):
            writer.write_table(pa.Table.from_batches(group, schema=schema))
            yield sink.drain()
    yield sink.drain()


def _row_groups(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[list[pa.RecordBatch]]:
    group: list[pa.RecordBatch] = []
    size = 0
    for batch in batches:
        while batch.num_rows:
            part = batch.slice(0, rows - size)
            group.append(part)
            size += part.num_rows
            batch = batch.slice(part.num_rows)
            if size == rows:
                yield group
                group, size = [], 0
    if size:
        yield group


class _Sink(io.RawIOBase):
    """A writable file that keeps what is written until drained (the Parquet writer's output)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: "bytes | bytearray | memoryview") -> int:  # type: ignore[override]
        self._parts.append(bytes(data))
        self._position += len(data)
        return len(data)

    def tell(self) -> int:
        return self._position

    def drain(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data
