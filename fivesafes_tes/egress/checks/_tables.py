"""Streaming readers for the tables the tabular rules judge: CSV, TSV, Parquet and JSON (an array of
objects, or one object per line).

Every reader yields Arrow record batches of bounded size, so a rule's memory stays flat however large
the file. Delimited text is read with every column as a string: a count column holding "<10" or
"NA" two million rows down must not break the read half way, and each rule decides itself what a
value means. Errors name the problem and its fix, never a value from the file: messages become
findings and findings are shown beyond the TRE (RELIABILITY 28).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from pydantic import ValidationError

from fivesafes_tes.egress.checks._parallel import ordered, threads
from fivesafes_tes.egress.checks.base import Finding, Verdict
from fivesafes_tes.egress.held import HeldFile

CSV, TSV, PARQUET, JSON = "csv", "tsv", "parquet", "json"
_SUFFIXES = {
    ".csv": CSV,
    ".tsv": TSV,
    ".tab": TSV,
    ".parquet": PARQUET,
    ".pq": PARQUET,
    ".json": JSON,
    ".jsonl": JSON,
    ".ndjson": JSON,
}
_DELIMITERS = (",", "\t", ";", "|")
_SAMPLE_BYTES = 64 * 1024
_MAX_HEADER_BYTES = 1 << 20
_CSV_BLOCK_BYTES = 1 << 20  # the parse unit and longest row; Arrow holds ~36 in read-ahead
_SEGMENT_BYTES = 8 << 20  # what one thread parses at a time, quote-free text only
_PARQUET_BATCH_ROWS = 65_536
_JSON_BATCH_ROWS = 8_192
_JSON_MAX_RECORD_CHARS = 16 << 20
_READ_BYTES = 1 << 20

Select = Callable[[str], bool]

#: Whole-value patterns (RE2 syntax, for pyarrow.compute) shared by the tabular rules.
NUMBER_RE = r"^\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\s*$"
DATE_RE = (
    r"^\s*([0-9]{4}[-/.][0-9]{1,2}[-/.][0-9]{1,2}|[0-9]{1,2}[-/.][0-9]{1,2}[-/.][0-9]{4})"
    r"([T ][0-9]{1,2}:[0-9]{2}(:[0-9]{2}([.][0-9]+)?)?(Z|[+-][0-9]{2}:?[0-9]{2})?)?\s*$"
)


class UnreadableTable(Exception):
    """The file claims to be a table but cannot be read as one. The message is safe to show."""


@dataclass
class Table:
    """An opened table: its format, the column names known before reading (none for JSON, whose
    records may each have other keys), and a way to stream its rows."""

    format: str
    columns: tuple[str, ...]
    read: Callable[[Select | None], Iterator[pa.RecordBatch]] = field(repr=False)
    head: Callable[[Select | None], pa.RecordBatch | None] | None = field(default=None, repr=False)

    def batches(self, select: Select | None = None) -> Iterator[pa.RecordBatch]:
        """Record batches of the columns `select` accepts (all when None), in file order. Raises
        `UnreadableTable` at the first row that cannot be read."""
        return self.read(select)

    def first_rows(self, select: Select | None = None) -> pa.RecordBatch | None:
        """A cheap look at the table's first rows (about 64 KiB of a delimited file, the first batch
        of others), so that a rule can tell which columns to read in full; None when there are none
        or they cannot be read (then `batches` says why)."""
        if self.head is not None:
            return self.head(select)
        batches = self.read(select)
        try:
            return next(batches, None)
        except UnreadableTable:
            return None


def table_format(file: HeldFile) -> str | None:
    """`csv`, `tsv`, `parquet` or `json` when an output's name says it is a table; None otherwise
    (captured stdout and stderr are text, whatever they look like)."""
    if file.kind != "output":
        return None
    return _SUFFIXES.get(PurePosixPath(file.name).suffix.lower())


def open_table(file: HeldFile) -> Table | None:
    """The table in `file`, or None when it is not one (not a table format, or JSON that is neither
    an array of objects nor one object per line)."""
    fmt = table_format(file)
    if fmt in (CSV, TSV):
        return _open_delimited(file.path, fmt)
    if fmt == PARQUET:
        return _open_parquet(file.path)
    if fmt == JSON:
        return _open_json(file.path)
    return None


def settings_problem(exc: ValidationError) -> Finding:
    """A FAIL finding for a rule whose TRE settings do not validate: nothing is judged under them."""
    problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors())
    return Finding(
        Verdict.FAIL, f"this rule's settings in the TRE policy are invalid ({problems}); fix the policy"
    )


def row_indices(mask: pa.Array | pa.ChunkedArray) -> list[int]:
    """0-based positions where a boolean mask is true (nulls count as false)."""
    indices: list[int] = pc.indices_nonzero(pc.fill_null(mask, False)).to_pylist()  # pyarrow is untyped
    return indices


def name_words(name: str) -> list[str]:
    """A column name as lower-case words: `nPatients`, `n_patients` and `N Patients` all give
    ["n", "patients"]."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", name)
    return [word for word in re.split(r"[^a-z0-9]+", spaced.lower()) if word]


# Delimited text ------------------------------------------------------------------------------------


def sniff_delimiter(sample: str, default: str) -> str:
    """The delimiter that splits the sample's first lines into the same number (more than one) of
    fields, preferring `default` and then the one giving most fields."""
    lines = sample.splitlines()[:20]
    if len(lines) > 1 and not sample.endswith(("\n", "\r")):
        lines = lines[:-1]  # the last line of a sample may be cut short
    best, best_fields = default, 1
    for delimiter in (default, *(d for d in _DELIMITERS if d != default)):
        try:
            counts = {len(row) for row in csv.reader(lines, delimiter=delimiter)}
        except csv.Error:
            continue
        if len(counts) == 1 and (fields := counts.pop()) > best_fields:
            if delimiter == default:
                return default
            best, best_fields = delimiter, fields
    return best


def read_header(path: Path, fmt: str) -> tuple[str, list[str]]:
    """(delimiter, column names) of a CSV or TSV file: names as written, a leading BOM removed."""
    with path.open("rb") as stream:
        sample = stream.read(_SAMPLE_BYTES)
        while b"\n" not in sample and len(sample) < _MAX_HEADER_BYTES:
            more = stream.read(_SAMPLE_BYTES)
            if not more:
                break
            sample += more
    text = sample.decode("utf-8", errors="replace").removeprefix("\ufeff")
    delimiter = sniff_delimiter(text, "\t" if fmt == TSV else ",")
    header = next(csv.reader(io.StringIO(text), delimiter=delimiter), [])
    return delimiter, header


def _open_delimited(path: Path, fmt: str) -> Table:
    delimiter, header = read_header(path, fmt)
    internal = [f"c{i}" for i in range(len(header))]  # names may repeat or be empty

    def reader(select: Select | None) -> Iterator[pa.RecordBatch]:
        if not header:
            return
        wanted = [i for i, name in enumerate(header) if select is None or select(name)]
        if not wanted:
            return
        names = [header[i] for i in wanted]
        batches = _delimited_batches(path, delimiter, internal, [internal[i] for i in wanted])
        rows = 0
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except pa.ArrowInvalid as exc:
                raise UnreadableTable(_csv_problem(exc, rows, fmt)) from None
            rows += batch.num_rows
            yield pa.RecordBatch.from_arrays(batch.columns, names=names)

    def head(select: Select | None) -> pa.RecordBatch | None:
        wanted = [i for i, name in enumerate(header) if select is None or select(name)]
        if not wanted:
            return None
        parse = pa_csv.ParseOptions(delimiter=delimiter, newlines_in_values=True)
        convert = _as_strings(internal, [internal[i] for i in wanted])
        options = pa_csv.ReadOptions(
            column_names=internal, skip_rows=1, block_size=_SAMPLE_BYTES, use_threads=False
        )
        try:
            batch = pa_csv.open_csv(
                str(path), read_options=options, parse_options=parse, convert_options=convert
            ).read_next_batch()
        except (pa.ArrowInvalid, StopIteration):
            return None
        return pa.RecordBatch.from_arrays(batch.columns, names=[header[i] for i in wanted])

    return Table(fmt, tuple(header), reader, head)


def _as_strings(internal: list[str], include: list[str]) -> pa_csv.ConvertOptions:
    return pa_csv.ConvertOptions(
        column_types=dict.fromkeys(internal, pa.string()),
        include_columns=include,
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
    )


def _delimited_batches(
    path: Path, delimiter: str, internal: list[str], include: list[str]
) -> Iterator[pa.RecordBatch]:
    """The data rows of a delimited file as string batches, in file order.

    While the text holds no quote character every line end ends a row, so the file is cut into
    segments at line ends and the segments are parsed on several threads. From the first segment
    holding a quote on (a quoted value may span lines, and only a parse from the start of a row
    tells which line ends end rows), Arrow's streaming reader goes on alone from that segment's
    first row. Segments are parsed with quoting off, which reads them exactly as the streaming
    reader would because they hold no quote, so a file reads the same either way."""
    parse = pa_csv.ParseOptions(delimiter=delimiter, newlines_in_values=True)
    # A segment holds no quote, so no value in it can span lines: told so, Arrow cuts it at every line
    # end without looking for quotes (a lone segment parses ~25% faster; end to end, within noise).
    parse_unquoted = pa_csv.ParseOptions(delimiter=delimiter, quote_char=False, newlines_in_values=False)
    convert = _as_strings(internal, include)
    read = pa_csv.ReadOptions(column_names=internal, block_size=_CSV_BLOCK_BYTES, use_threads=False)
    serial_from: int | None = 0
    count = threads()  # once: the ring below must outnumber what `ordered` keeps in flight

    def segments() -> Iterator[memoryview]:
        nonlocal serial_from
        if count == 1 or path.stat().st_size <= _SEGMENT_BYTES:
            return  # no threads to share the work, or nothing to share: the streaming reader is quicker
        # A ring of buffers, each reused once the segment in it is parsed: fresh 8 MiB buffers
        # would cost a page fault every 4 KiB. `ordered` holds at most count + 1 in flight.
        ring = [bytearray(_SEGMENT_BYTES + _CSV_BLOCK_BYTES) for _ in range(count + 2)]
        with path.open("rb") as stream:
            first = stream.readline(_MAX_HEADER_BYTES)
            if not first.endswith(b"\n") or b'"' in first or b"\r" in first[:-2]:
                return  # the header may not end where a line does: read it all serially
            offset, carry, turn = len(first), b"", 0
            while True:
                buffer = ring[turn % len(ring)]  # the next slot only once this one was handed out
                buffer[: len(carry)] = carry
                view = memoryview(buffer)
                end = len(carry) + stream.readinto(view[len(carry) : len(carry) + _SEGMENT_BYTES])
                if end == len(carry):
                    break
                if buffer.find(b'"', len(carry), end) >= 0:
                    serial_from = offset
                    return
                cut = buffer.rfind(b"\n", 0, end) + 1
                carry = bytes(buffer[cut:end])
                if cut:
                    turn += 1
                    yield view[:cut]
                    offset += cut
                if len(carry) > _CSV_BLOCK_BYTES:
                    serial_from = offset  # a row longer than Arrow reads: let the serial reader say so
                    return
        if carry:
            yield memoryview(carry)
        serial_from = None

    def parse_segment(data: memoryview) -> list[pa.RecordBatch]:
        source = pa.BufferReader(pa.py_buffer(data))
        table = pa_csv.read_csv(
            source, read_options=read, parse_options=parse_unquoted, convert_options=convert
        )
        batches: list[pa.RecordBatch] = table.to_batches()  # pyarrow is untyped
        return batches

    for batches in ordered(parse_segment, segments(), count):
        yield from batches
    if serial_from is None:
        return
    with pa.OSFile(str(path)) as source:
        source.seek(serial_from)
        options = pa_csv.ReadOptions(
            column_names=internal, skip_rows=1 if serial_from == 0 else 0, block_size=_CSV_BLOCK_BYTES
        )
        try:
            stream = pa_csv.open_csv(
                source, read_options=options, parse_options=parse, convert_options=convert
            )
        except pa.ArrowInvalid as exc:
            if "Empty CSV file" in str(exc):
                return
            if "Could not skip initial" in str(exc) and path.stat().st_size <= _CSV_BLOCK_BYTES:
                return  # a header and nothing after it, not even a line end
            raise
        while True:
            try:
                yield stream.read_next_batch()
            except StopIteration:
                return


def _csv_problem(exc: Exception, rows_read: int, fmt: str) -> str:
    text = str(exc)
    where = f"after data row {rows_read:,}" if rows_read else "in its first rows"
    if m := re.search(r"Expected (\d+) columns, got (\d+)", text):
        return (
            f"the {fmt.upper()} table cannot be read {where}: a row has {m[2]} field(s) where the header "
            f"has {m[1]}; quote values that contain the delimiter and write every row in full"
        )
    if "UTF8" in text or "UTF-8" in text:
        return f"the {fmt.upper()} table cannot be read {where}: it is not UTF-8 text; save it as UTF-8"
    if "straddling" in text or "block size" in text:
        return (
            f"the {fmt.upper()} table cannot be read {where}: a row is longer than "
            f"{_CSV_BLOCK_BYTES >> 20} MiB; split long values into separate files"
        )
    return f"the {fmt.upper()} table cannot be read {where}; check that it is well-formed"


# Parquet ---------------------------------------------------------------------------------------------


def _open_parquet(path: Path) -> Table:
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError):
        raise UnreadableTable("the Parquet file cannot be opened: it is damaged or not Parquet") from None
    names = tuple(parquet.schema_arrow.names)

    def reader(select: Select | None) -> Iterator[pa.RecordBatch]:
        wanted = [name for name in names if select is None or select(name)]
        if not wanted:
            return
        batches = parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=wanted)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except (pa.ArrowException, OSError):
                raise UnreadableTable("the Parquet file cannot be read to its end: it is damaged") from None
            yield batch

    return Table(PARQUET, names, reader)


# JSON ------------------------------------------------------------------------------------------------


def _open_json(path: Path) -> Table | None:
    with path.open("rb") as stream:
        head = stream.read(_SAMPLE_BYTES)
    text = head.decode("utf-8", errors="replace").removeprefix("\ufeff").lstrip()
    if text.startswith("["):
        if text[1:].lstrip()[:1] not in ("{", "]"):
            return None
        records = _json_array
    elif text.startswith("{"):
        first_line = text.split("\n", 1)[0]
        try:
            if not isinstance(json.loads(first_line), dict):
                return None
        except ValueError:
            return None  # one object spread over lines: a document, not a table
        records = _json_lines
    else:
        return None

    def reader(select: Select | None) -> Iterator[pa.RecordBatch]:
        chunk: list[dict[str, object]] = []
        for record in records(path):
            chunk.append(record)
            if len(chunk) == _JSON_BATCH_ROWS:
                yield _records_batch(chunk, select)
                chunk = []
        if chunk:
            yield _records_batch(chunk, select)

    return Table(JSON, (), reader)


def _text_chunks(path: Path) -> Iterator[str]:
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    with path.open("rb") as stream:
        try:
            while data := stream.read(_READ_BYTES):
                yield decoder.decode(data)
            yield decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise UnreadableTable("the JSON table is not UTF-8 text; save it as UTF-8") from None


def _json_lines(path: Path) -> Iterator[dict[str, object]]:
    pending = ""
    line_no = 0
    for chunk in _text_chunks(path):
        pending += chunk
        *lines, pending = pending.split("\n")
        if len(pending) > _JSON_MAX_RECORD_CHARS:
            raise UnreadableTable(f"a JSON line after line {line_no:,} is longer than 16 MiB")
        for line in lines:
            line_no += 1
            yield from _json_line(line, line_no)
    yield from _json_line(pending, line_no + 1)


def _json_line(line: str, line_no: int) -> Iterator[dict[str, object]]:
    if not line.strip():
        return
    try:
        record = json.loads(line)
    except ValueError:
        raise UnreadableTable(f"line {line_no:,} of the JSON lines table is not valid JSON") from None
    if not isinstance(record, dict):
        raise UnreadableTable(f"line {line_no:,} of the JSON lines table is not an object")
    yield record


def _json_array(path: Path) -> Iterator[dict[str, object]]:
    decoder = json.JSONDecoder()
    chunks = _text_chunks(path)
    buffer, pos, count = "", 0, 0

    def next_char() -> str:
        """The next non-blank character (not consumed), reading on as needed; "" at the end."""
        nonlocal buffer, pos
        while True:
            while pos < len(buffer) and buffer[pos] in " \t\r\n":
                pos += 1
            if pos < len(buffer):
                return buffer[pos]
            chunk = next(chunks, None)
            if chunk is None:
                return ""
            buffer, pos = buffer[pos:] + chunk, 0

    if next_char() != "[":
        raise UnreadableTable("the JSON table is not an array of objects")
    pos += 1
    if next_char() == "]":
        return
    while True:
        if next_char() != "{":
            raise UnreadableTable(f"record {count + 1:,} of the JSON array is not an object")
        while True:
            try:
                record, pos = decoder.raw_decode(buffer, pos)
                break
            except ValueError:
                chunk = next(chunks, None)
                if chunk is None or len(buffer) - pos > _JSON_MAX_RECORD_CHARS:
                    raise UnreadableTable(
                        f"record {count + 1:,} of the JSON array is not valid JSON"
                    ) from None
                buffer, pos = buffer[pos:] + chunk, 0
        count += 1
        yield record
        separator = next_char()
        if separator == "]":
            return
        if separator != ",":
            raise UnreadableTable(f"the JSON array is cut short or malformed after record {count:,}")
        pos += 1


def _records_batch(records: list[dict[str, object]], select: Select | None) -> pa.RecordBatch:
    names: dict[str, None] = {}
    for record in records:
        names.update(dict.fromkeys(record))
    columns = [name for name in names if select is None or select(name)]
    arrays = [_json_column([record.get(name) for record in records]) for name in columns]
    if not columns:
        return pa.RecordBatch.from_arrays([pa.nulls(len(records))], names=[""]).select([])
    return pa.RecordBatch.from_arrays(arrays, names=columns)


def _json_column(values: list[object]) -> pa.Array:
    """Scalars keep their type when a column agrees on one; nested values and mixed columns become
    JSON text, so every value can still be read by the rules."""
    if any(isinstance(v, (dict, list)) for v in values):
        values = [None if v is None else json.dumps(v) for v in values]
    try:
        return pa.array(values)
    except (pa.ArrowException, OverflowError, TypeError, ValueError):
        return pa.array([None if v is None else _json_text(v) for v in values], pa.string())


def _json_text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)
