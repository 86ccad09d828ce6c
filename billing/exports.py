"""Usage and invoice exports as CSV and Parquet, streamed (docs/billing.md, "Exports and reports").

`sql/export_*.sql` select the rows with their columns as stored; `_select` puts each format's
columns and the export's order around that query (one plan in PostgreSQL), and the rows leave
PostgreSQL by `COPY (SELECT ...) TO STDOUT`, usage one day at a time:

- CSV is PostgreSQL's own (`FORMAT csv`), times ISO 8601 in UTC with 'Z', booleans true/false,
  handed on in pieces of CHUNK_BYTES as the rows arrive.
- Parquet is read in PostgreSQL's binary form (`FORMAT binary`: nothing is written as text to
  be parsed back), decoded into Arrow columns with numpy DECODE_ROWS rows at a time, and
  written a row group at a time, each handed on when full, the footer last.

Neither holds more than a piece, or a block of rows and a row group, whatever the range, so a
year of usage exports in the memory of a day's sort on the server and a row group here.

Every surface (the API, the console, the command) starts an export with `export_started`: its
first piece is made before anything is sent, so an export that cannot start (the query, the
first row group) is an error its caller can answer, not an empty 200; one that fails later is
logged and cut short (a truncated transfer, never a complete-looking file).

Exports read the replica where there is one (config/db_routing.py): the database is chosen
when the export starts, and its pieces, pulled later, all come from it.
"""

import io
import logging
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import chain
from pathlib import Path
from typing import IO, Literal

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
from django.db import connections

from config.db_routing import read_alias, replica_reads

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
# Binary rows read before they are decoded into Arrow columns.
DECODE_ROWS = 8 * 1024
_TIME = pa.timestamp("us", tz="UTC")
_ISO_8601 = 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'

# PostgreSQL's binary COPY: a 19-byte header, the rows, an int16 -1. Each Arrow type's column
# is sent as a PostgreSQL type and read as a numpy type (big-endian; text by its own length);
# times are microseconds since 2000-01-01 UTC.
_HEADER_BYTES = 19
_POSTGRES_EPOCH_US = 946_684_800_000_000
_WIRE = {
    pa.int64().id: ("int8", ">i8"),
    pa.int32().id: ("int4", ">i4"),
    pa.float64().id: ("float8", ">f8"),
    pa.bool_().id: ("bool", "?"),
    pa.string().id: ("text", ""),
    _TIME.id: ("timestamptz", ">i8"),
}


@dataclass(frozen=True)
class _Export:
    # The rows, their columns as stored (billing/sql/export_*.sql), and their order.
    sql: str
    order: tuple[str, ...]
    schema: pa.Schema
    # The range is read in windows this long (one sort each on the server); None: at once.
    window: timedelta | None


_EXPORTS: dict[Kind, _Export] = {
    "usage": _Export(
        sql=(_SQL / "export_usage.sql").read_text(),
        order=("started_at", "request_id"),
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
        order=("period_start", "account_id", "invoice_id", "line_id"),
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
    """Whose rows: one account's or all (None), one project's or all (None); and the database
    they are read from."""

    account_id: int | None
    project_id: int | None
    database: str


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
    with replica_reads():
        scope = _Scope(account_id, project_id, read_alias())
    if fmt == "csv":
        return _csv_pieces(export, since, until, scope)
    return _parquet_stream(_batches(export, since, until, scope), export.schema, row_group_rows)


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
    export: _Export, since: datetime, until: datetime, scope: _Scope
) -> Generator[bytes, None, None]:
    """CSV with a header in pieces of about CHUNK_BYTES, window after window. COPY sends one
    message per row, so every piece ends at the end of a row."""
    select = _select(export, _csv_column)
    options = "FORMAT csv, HEADER true"
    pending = bytearray()
    for params in _windows(since, until, export.window, scope):
        with _copy(select, options, params, scope.database) as copy:
            for row in copy:
                pending += row
                if len(pending) >= CHUNK_BYTES:
                    yield bytes(pending)
                    pending.clear()
        options = "FORMAT csv"
    if pending:
        yield bytes(pending)


def _csv_column(field: pa.Field) -> str:
    """A column as CSV text: PostgreSQL's, but times in ISO 8601 and booleans true/false."""
    if pa.types.is_timestamp(field.type):
        return f"to_char(e.{field.name} AT TIME ZONE 'UTC', '{_ISO_8601}') AS {field.name}"
    if pa.types.is_boolean(field.type):
        return f"e.{field.name}::text AS {field.name}"
    return f"e.{field.name}"


def _batches(
    export: _Export, since: datetime, until: datetime, scope: _Scope
) -> Generator[pa.RecordBatch, None, None]:
    """The rows as record batches, read in PostgreSQL's binary form and decoded DECODE_ROWS
    at a time."""
    select = _select(export, _binary_column)
    data = bytearray()
    lengths: list[int] = []
    for params in _windows(since, until, export.window, scope):
        with _copy(select, "FORMAT binary", params, scope.database) as copy:
            rows = iter(copy)
            # One message per row; the stream's header opens the first, its trailer is the last.
            for row in chain([next(rows)[_HEADER_BYTES:]], rows):
                data += row
                lengths.append(len(row))
                if len(lengths) == DECODE_ROWS:
                    yield _decoded(data, lengths, export.schema)
                    data, lengths = bytearray(), []
    yield _decoded(data, lengths, export.schema)


def _binary_column(field: pa.Field) -> str:
    """A column as the PostgreSQL type `_decoded` reads for its Arrow type (decimals as text,
    cast by Arrow)."""
    if pa.types.is_decimal(field.type):
        return f"e.{field.name}::text"
    return f"e.{field.name}::{_WIRE[field.type.id][0]}"


def _select(export: _Export, column: Callable[[pa.Field], str]) -> str:
    """The export's query, each column as `column` writes it, in the export's order.
    PostgreSQL flattens the subquery: one plan, the columns made before the sort."""
    columns = ", ".join(column(field) for field in export.schema)
    order = ", ".join(f"e.{name}" for name in export.order)
    return f"SELECT {columns} FROM ({export.sql}) e ORDER BY {order}"  # noqa: S608 (names)


@contextmanager
def _copy(
    select: str, options: str, params: Mapping[str, object], database: str
) -> Iterator[psycopg.Copy]:
    # psycopg's own cursor: Django's debug wrapper (DEBUG=true) takes no COPY params.
    with (
        connections[database].cursor() as wrapper,
        wrapper.cursor.copy(f"COPY ({select}) TO STDOUT WITH ({options})", params) as copy,
    ):
        yield copy


def _windows(
    since: datetime, until: datetime, window: timedelta | None, scope: _Scope
) -> Iterator[dict[str, object]]:
    """The query's parameters for each window of [since, until); the first one even when the
    range is empty, so the header is always written."""
    start = since
    while True:
        end = until if window is None else min(until, start + window)
        yield {
            "since": start,
            "until": end,
            "account_id": scope.account_id,
            "project_id": scope.project_id,
        }
        start = end
        if start >= until:
            return


def _decoded(data: bytearray, lengths: list[int], schema: pa.Schema) -> pa.RecordBatch:
    """Messages of binary COPY, one after another (a trailer among them, perhaps), as a record
    batch. A row: an int16 count of fields, then each field's int32 length (-1: null) and its
    bytes, big-endian; a trailer: an int16 -1."""
    sizes = np.array(lengths, dtype=np.int64)
    ends = np.cumsum(sizes)
    at = ends - sizes
    fields = _big_endian(data, at, ">i2")
    rows = fields != -1
    at, ends = at[rows] + 2, ends[rows]
    columns = []
    for field in schema:
        length = _big_endian(data, at, ">i4").astype(np.int64)
        at += 4
        valid = length >= 0
        length[~valid] = 0
        columns.append(_column(field.type, data, at, length, valid))
        at += length
    if (fields[rows] != len(schema)).any() or (at != ends).any():
        raise ValueError("the binary COPY's rows are not the export's columns")
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _column(
    kind: pa.DataType, data: bytearray, at: np.ndarray, length: np.ndarray, valid: np.ndarray
) -> pa.Array:
    """One column's values (`length` bytes at `at`, where `valid`) as an Arrow array."""
    nulls = None if valid.all() else ~valid
    if pa.types.is_string(kind) or pa.types.is_decimal(kind):
        strings = _strings(data, at, length, nulls)
        return strings if pa.types.is_string(kind) else strings.cast(kind)
    values = _big_endian(data, np.where(valid, at, 0), _WIRE[kind.id][1])
    if pa.types.is_timestamp(kind):
        values += _POSTGRES_EPOCH_US
    return pa.array(values, type=kind, mask=nulls)


def _big_endian(data: bytearray, at: np.ndarray, dtype: str) -> np.ndarray:
    """The values of `dtype` (big-endian) at the offsets `at` of `data`, in native order."""
    kind = np.dtype(dtype)
    # Item i of `every` is the value whose bytes start at offset i.
    size = max(len(data) - kind.itemsize + 1, 0)
    every: np.ndarray = np.ndarray((size,), dtype=kind, buffer=data, strides=(1,))
    values: np.ndarray = every[at]
    return values.astype(kind.newbyteorder("="))


def _strings(
    data: bytearray, at: np.ndarray, length: np.ndarray, nulls: np.ndarray | None
) -> pa.Array:
    """The strings of `length` bytes at `at`, gathered end to end."""
    offsets = np.zeros(len(at) + 1, dtype=np.int32)
    np.cumsum(length, out=offsets[1:])
    index = np.repeat(at - offsets[:-1], length) + np.arange(offsets[-1])
    values = np.frombuffer(data, dtype=np.uint8)[index]
    bitmap = None if nulls is None else pa.py_buffer(np.packbits(~nulls, bitorder="little"))
    return pa.StringArray.from_buffers(len(at), pa.py_buffer(offsets), pa.py_buffer(values), bitmap)


def _parquet_stream(
    batches: Iterator[pa.RecordBatch], schema: pa.Schema, row_group_rows: int
) -> Generator[bytes, None, None]:
    """Parquet from record batches: a row group written and handed on every `row_group_rows`
    rows, the footer last."""
    sink = _Sink()
    # A column with many distinct values (ids, times) gives up dictionary encoding after
    # 64 KiB, not 1 MiB, and zstd: against pyarrow's defaults (snappy), a month of 2M records
    # in 99 MB instead of 156, written in 1.1 CPU-seconds instead of 1.6.
    with pq.ParquetWriter(
        sink, schema, compression="zstd", dictionary_pagesize_limit=64 * 1024
    ) as writer:
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
