"""What an output checker sees of a held file before deciding: its first rows as a table with the cells,
rows and columns the rules flagged marked, its first lines as text with the flagged lines marked, a
small image shown as an image, or a description of anything else. Only the file's first bytes are ever
read, so a large file previews as fast as a small one; nothing in a file is ever run."""

from __future__ import annotations

import base64
import csv
import io
from dataclasses import dataclass, field
from typing import Any

HEAD_BYTES = 64 * 1024  # read of each file for its preview
ROWS = 50
COLUMNS = 40
CELL_CHARS = 120
_TABLES = {".csv": ",", ".tsv": "\t"}
_IMAGES = {
    b"\x89PNG\r\n\x1a\n": "image/png",
    b"\xff\xd8\xff": "image/jpeg",
    b"GIF87a": "image/gif",
    b"GIF89a": "image/gif",
}


@dataclass(frozen=True)
class Cell:
    text: str
    flagged: bool


@dataclass(frozen=True)
class Row:
    number: int  # 1-based data row (tables) or line (text), as the rules count them
    cells: list[Cell]
    flagged: bool


@dataclass(frozen=True)
class Preview:
    """`kind` is table, text, image or none; `note` says what is not shown and why."""

    kind: str
    header: list[Cell] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    image: str | None = None  # a data: URI
    note: str = ""


def preview(name: str, head: bytes, size: int, results: list[dict[str, Any]]) -> Preview:
    """The preview of held file `name` of `size` bytes from its first bytes `head`, marking where the
    rules' findings (`results`, as the rules recorded them) point."""
    whole = len(head) >= size
    for magic, media in _IMAGES.items():
        if head.startswith(magic):
            if not whole:
                return Preview("none", note=f"an image ({media}) of {size} bytes: too large to show here")
            return Preview("image", image=f"data:{media};base64,{base64.b64encode(head).decode('ascii')}")
    if b"\x00" in head[:8192]:
        return Preview("none", note=f"a binary file of {size} bytes: described, never shown or run")
    text = head.decode("utf-8", errors="replace").replace("\r\n", "\n")
    lines = text.split("\n")
    if not whole:
        lines = lines[:-1]  # the last line read may be cut short
    elif lines and lines[-1] == "":
        lines = lines[:-1]
    marks = _marks(results)
    more = "" if whole else f" (the first {len(head) // 1024} KiB of {size} bytes)"
    delimiter = next((d for suffix, d in _TABLES.items() if name.lower().endswith(suffix)), None)
    if delimiter is not None and lines:
        return _table(lines, delimiter, marks, whole, more)
    shown = lines[:ROWS]
    return Preview(
        "text",
        rows=[Row(n, [Cell(_cut(line), False)], n in marks.rows) for n, line in enumerate(shown, start=1)],
        note=_note(len(shown), len(lines), whole, "line", more),
    )


@dataclass
class _Marks:
    rows: set[int] = field(default_factory=set)
    columns: set[str] = field(default_factory=set)
    cells: set[tuple[int, str]] = field(default_factory=set)


def _marks(results: list[dict[str, Any]]) -> _Marks:
    """Where the findings that are not a pass point: a cell, a whole row (or line), or a whole column."""
    marks = _Marks()
    for result in results:
        for finding in result.get("findings") or []:
            if finding.get("verdict") == "pass":
                continue
            row, column = finding.get("row"), finding.get("column")
            if isinstance(row, int) and isinstance(column, str):
                marks.cells.add((row, column))
            elif isinstance(row, int):
                marks.rows.add(row)
            elif isinstance(column, str):
                marks.columns.add(column)
    return marks


def _table(lines: list[str], delimiter: str, marks: _Marks, whole: bool, more: str) -> Preview:
    records = list(csv.reader(io.StringIO("\n".join(lines[: ROWS + 1])), delimiter=delimiter))
    if not records:
        return Preview("none", note="an empty table")
    names = records[0][:COLUMNS]
    header = [Cell(_cut(n), n in marks.columns) for n in names]
    rows = [
        Row(
            number,
            [
                Cell(_cut(value), (number, names[i]) in marks.cells or names[i] in marks.columns)
                for i, value in enumerate(record[: len(names)])
            ],
            number in marks.rows,
        )
        for number, record in enumerate(records[1:], start=1)
    ]
    note = _note(len(rows), len(lines) - 1, whole, "row", more)
    if len(records[0]) > COLUMNS:
        note = f"{note} Only the first {COLUMNS} of {len(records[0])} columns are shown.".strip()
    return Preview("table", header=header, rows=rows, note=note)


def _note(shown: int, read: int, whole: bool, unit: str, more: str) -> str:
    if whole and shown == read:
        return ""
    return f"The first {shown} {unit}s{more}."


def _cut(text: str) -> str:
    return text if len(text) <= CELL_CHARS else text[:CELL_CHARS] + "…"
