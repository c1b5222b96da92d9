"""Reading delimited tables on several threads gives exactly what one serial parse gives.

Quote-free stretches of a CSV are cut at line ends and parsed on threads; from the first quote on,
Arrow's streaming reader goes on alone. These tests shrink the segments to a few bytes so that
every file is cut many times, and compare with Arrow parsing the whole file in one go."""

from __future__ import annotations

import csv
import io
import re
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fivesafes_tes.egress.checks import _parallel, _tables
from fivesafes_tes.egress.checks.base import CheckContext, Verdict
from fivesafes_tes.egress.checks.small_cell import SmallCellRule
from tests.held_files import held


@pytest.fixture(autouse=True)
def tiny_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_tables, "_SEGMENT_BYTES", 48)
    monkeypatch.setattr(_tables, "_CSV_BLOCK_BYTES", 4096)
    monkeypatch.setattr(_parallel, "_threads", 2)


def whole_file_parse(path: Path, columns: int) -> dict[str, list[str | None]]:
    delimiter, _ = _tables.read_header(path, _tables.CSV)
    names = [f"c{i}" for i in range(columns)]
    if b"\n" not in path.read_bytes().rstrip(b"\r\n"):
        return {name: [] for name in names}  # a header alone: Arrow cannot skip it, there are no rows
    table = pa_csv.read_csv(
        path,
        read_options=pa_csv.ReadOptions(column_names=names, skip_rows=1),
        parse_options=pa_csv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
        convert_options=pa_csv.ConvertOptions(
            column_types=dict.fromkeys(names, pa.string()),
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        ),
    )
    return table.to_pydict()


def threaded_parse(path: Path) -> tuple[list[str], dict[str, list[str | None]]]:
    table = _tables.open_table(held(path))
    assert table is not None
    batches = list(table.batches())  # all kept before reading any: no batch may alias a reused buffer
    columns = {f"c{i}": [] for i in range(len(table.columns))}
    for batch in batches:
        for i, array in enumerate(batch.columns):
            columns[f"c{i}"].extend(array.to_pylist())
    return list(table.columns), columns


plain = st.text(alphabet="abcxyz0123456789 -.", max_size=12)
awkward = st.text(alphabet='ab1 ,"\n\r', max_size=8)  # needs quoting: commas, quotes, line breaks


@st.composite
def tables(draw: st.DrawFn) -> tuple[str, int]:
    width = draw(st.integers(1, 4))
    rows = draw(st.lists(st.lists(plain, min_size=width, max_size=width), max_size=60))
    if rows and draw(st.booleans()):  # from some row on, values that must be quoted
        start = draw(st.integers(0, len(rows) - 1))
        for row in rows[start:]:
            column = draw(st.integers(0, width - 1))
            row[column] = draw(awkward)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=draw(st.sampled_from(["\n", "\r\n"])))
    writer.writerow([f"h{i}" for i in range(width)])
    for row in rows:
        if width == 1 and row == [""]:
            row = ["x"]  # a lone empty field is an empty line, which Arrow skips
        writer.writerow(row)
    text = out.getvalue()
    if draw(st.booleans()):
        text = text.rstrip("\r\n")  # no line end after the last row
    return text, width


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(table=tables())
def test_threaded_segments_read_exactly_what_one_parse_reads(tmp_path: Path, table: tuple[str, int]) -> None:
    text, width = table
    path = tmp_path / "t.csv"
    path.write_bytes(text.encode())
    try:
        expected = whole_file_parse(path, width)
    except pa.ArrowInvalid:  # Python's csv leaves a lone \r unquoted: Arrow ends a row there
        with pytest.raises(_tables.UnreadableTable):
            threaded_parse(path)
        return
    header, columns = threaded_parse(path)
    assert header == [f"h{i}" for i in range(width)]
    assert columns == expected


def test_a_quote_free_file_larger_than_a_segment_is_parsed_in_segments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The threaded path is the one taken (the property above holds either way)."""
    path = tmp_path / "t.csv"
    path.write_text("group,n\n" + "".join(f"g{i},{100 + i}\n" for i in range(200)))
    real, segments = pa_csv.read_csv, []

    def counted(*args, **kwargs):
        segments.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(pa_csv, "read_csv", counted)
    assert threaded_parse(path)[1] == whole_file_parse(path, 2)
    assert len(segments) > 10  # one is the whole-file parse; ~2 KB in 48-byte segments make dozens


def test_a_small_count_after_a_quoted_line_break_far_down_is_found_in_its_row(tmp_path: Path) -> None:
    rows = [["north", str(100 + i)] for i in range(500)]
    rows.append(['a note, "quoted",\nover two lines', "250"])
    rows += [["south", str(200 + i)] for i in range(300)]
    rows.append(["east", "3"])
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([["region", "n_patients"], *rows])
    path = tmp_path / "counts.csv"
    path.write_text(out.getvalue())
    file = held(path)
    result = SmallCellRule().check(file, {}, CheckContext(files=(file,)))
    assert [(f.column, f.row) for f in result.findings if f.verdict is Verdict.FAIL] == [("n_patients", 802)]


def test_a_ragged_row_in_a_later_segment_fails_with_where_it_was(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("group,n\n" + "".join(f"g{i},{100 + i}\n" for i in range(200)) + "secret-only\n")
    file = held(path)
    result = SmallCellRule().check(file, {}, CheckContext(files=(file,)))
    assert result.verdict is Verdict.FAIL
    (finding,) = result.findings
    assert "1 field(s) where the header has 2" in finding.message
    after = re.search(r"after data row ([\d,]+)", finding.message)
    assert after is not None, finding.message
    assert 0 < int(after[1].replace(",", "")) <= 200, finding.message
    assert "secret" not in finding.message


def test_a_row_longer_than_a_block_in_quote_free_text_fails_with_the_fix_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Segments parse late, so that a buffer reused while its segment is still in flight would be
    # read after it was overwritten: the long row is read in many turns that hand out nothing.
    real = pa_csv.read_csv

    def late(*args: object, **kwargs: object) -> pa.Table:
        time.sleep(0.02)
        return real(*args, **kwargs)

    monkeypatch.setattr(pa_csv, "read_csv", late)
    path = tmp_path / "t.csv"
    path.write_text("note,n\n" + "a,20\n" * 50 + "x" * 10_000 + ",5\n")
    file = held(path)
    result = SmallCellRule().check(file, {}, CheckContext(files=(file,)))
    assert result.verdict is Verdict.FAIL
    assert "longer than" in result.findings[0].message


def test_threads_are_used_only_while_the_memory_limit_leaves_room(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under checks.worker_memory_bytes a rule works serially once the limit leaves less than a
    thread's room for each thread and one more (a thread that cannot get memory hangs its start)."""
    status = Path("/proc/self/status").read_text()
    used = int(re.search(r"VmSize:\s+(\d+) kB", status)[1]) * 1024  # type: ignore[index]
    room = _parallel._ROOM_PER_THREAD
    monkeypatch.setattr(_parallel.resource, "getrlimit", lambda _: (used + 2 * room, -1))
    assert _parallel.threads() == 1
    monkeypatch.setattr(_parallel.resource, "getrlimit", lambda _: (used + 4 * room, -1))
    assert _parallel.threads() == 2
