"""Previews of held files for their checkers: a table's first rows with the flagged cells, rows and
columns marked, text with the flagged lines marked, small images shown, binaries described and never
shown; only a file's first bytes are read (a ranged GET), so a 50 MB table's review page renders in
under 300 ms at the server."""

from __future__ import annotations

import hashlib
import threading

import pytest

from fivesafes_tes.agent import previews
from fivesafes_tes.agent.tables import HeldFileRecord
from tests.web import TABLE, hold_child, sign_in, tre_site

SMALL_CELL = [{"findings": [{"verdict": "fail", "message": "small", "row": 2, "column": "n"}]}]


def test_a_table_marks_the_flagged_cell_only():
    shown = previews.preview("/out/table.csv", TABLE, len(TABLE), SMALL_CELL)
    assert shown.kind == "table"
    assert [c.text for c in shown.header] == ["region", "n"]
    flagged = [(row.number, cell.text) for row in shown.rows for cell in row.cells if cell.flagged]
    assert flagged == [(2, "3")]
    assert shown.note == ""


def test_whole_rows_and_columns_are_marked_and_passes_are_not():
    results = [
        {
            "findings": [
                {"verdict": "review", "message": "a record-level row", "row": 3},
                {"verdict": "fail", "message": "an identifier column", "column": "region"},
                {"verdict": "pass", "message": "fine", "row": 1, "column": "n"},
            ]
        }
    ]
    shown = previews.preview("t.tsv", b"region\tn\nnorth\t1\nsouth\t2\neast\t3\n", 32, results)
    assert [row.number for row in shown.rows if row.flagged] == [3]
    assert [c.text for c in shown.header if c.flagged] == ["region"]
    assert [row.cells[0].flagged for row in shown.rows] == [True, True, True]
    assert not any(row.cells[1].flagged for row in shown.rows)


def test_a_large_table_shows_its_first_rows_from_its_first_bytes_only():
    head = b"a,b\n" + b"".join(b"%d,%d\n" % (n, n) for n in range(100_000))
    shown = previews.preview("big.csv", head[: previews.HEAD_BYTES], 50 * 1024 * 1024, [])
    assert len(shown.rows) == previews.ROWS
    assert shown.note == f"The first {previews.ROWS} rows (the first 64 KiB of {50 * 1024 * 1024} bytes)."


def test_text_marks_flagged_lines_and_binaries_and_images_are_never_shown_as_text():
    text = previews.preview(
        "log.txt", b"one\ntwo\nthree\n", 14, [{"findings": [{"verdict": "fail", "row": 2}]}]
    )
    assert [(row.number, row.flagged) for row in text.rows] == [(1, False), (2, True), (3, False)]
    binary = previews.preview("tool", b"\x7fELF\x00\x00", 6, [])
    assert (binary.kind, binary.rows) == ("none", [])
    assert "never shown or run" in binary.note
    png = b"\x89PNG\r\n\x1a\n" + bytes(20)
    assert previews.preview("plot.png", png, len(png), []).image.startswith("data:image/png;base64,")
    assert previews.preview("plot.png", png, 10**7, []).kind == "none"
    svg = previews.preview("x.svg", b"<svg onload='alert(1)'/>", 24, [])
    assert svg.kind == "text"  # shown as escaped text, never as an image


@pytest.fixture
def site(tmp_path, s3_store):
    with tre_site(tmp_path, store=s3_store) as site:
        yield site


def test_the_review_page_highlights_the_flagged_cell_in_the_table(site, s3_store):
    hold_child(site.db, store=s3_store)
    page = sign_in(site, "uk-tre-checker").get("/review/child-1")
    assert page.status_code == 200
    assert '<td class="flagged"><mark>⚑ 3</mark></td>' in page.text
    assert "<td>120</td>" in page.text
    assert "never shown or run" in page.text
    assert "<code>done</code>" in page.text


def test_a_50_mb_tables_review_page_reads_only_its_first_64_kib(site, s3_store, monkeypatch):
    """The page of a child holding a 50 MB table reads the table's first 64 KiB only, by a ranged GET;
    how fast that renders is `make bench`'s (the pages section)."""
    hold_child(site.db, store=s3_store)
    rows = b"region,n\n" + b"north,120\n" * (50 * 1024 * 1024 // 10)
    s3_store.put_bytes("child-1/big.csv", rows)
    with site.db.write() as session:
        session.add(
            HeldFileRecord(
                child_id="child-1",
                key="child-1/big.csv",
                name="/out/big.csv",
                kind="file",
                size=len(rows),
                sha256=hashlib.sha256(rows).hexdigest(),
                verdict="pass",
                results=[],
            )
        )
    reads: list[tuple[str, str]] = []
    get_object = s3_store._client.get_object

    def recorded(**kwargs):
        reads.append((kwargs["Key"], kwargs.get("Range", "")))
        return get_object(**kwargs)

    monkeypatch.setattr(s3_store._client, "get_object", recorded)
    page = sign_in(site, "uk-tre-checker").get("/review/child-1")
    assert page.status_code == 200
    assert "The first 50 rows (the first 64 KiB of" in page.text
    assert [r for k, r in reads if k == "child-1/big.csv"] == [f"bytes=0-{64 * 1024 - 1}"]


def test_a_review_pages_previews_are_read_from_the_airlock_at_once_not_one_after_another(
    site, s3_store, monkeypatch
):
    """Each of the child's three files is read while the others are: every read waits until all
    three have begun, which reads one after another never reach."""
    hold_child(site.db, store=s3_store)
    all_begun = threading.Barrier(3, timeout=10)
    get_head = s3_store.get_head

    def together(key: str, max_bytes: int) -> bytes:
        all_begun.wait()
        return get_head(key, max_bytes)

    monkeypatch.setattr(s3_store, "get_head", together)
    page = sign_in(site, "uk-tre-checker").get("/review/child-1")
    assert page.status_code == 200
    assert "could not be read" not in page.text
    assert '<td class="flagged"><mark>⚑ 3</mark></td>' in page.text
