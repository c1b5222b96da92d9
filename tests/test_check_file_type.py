"""The file-type rule on real files: what a file is comes from its content, and the name must agree."""

from __future__ import annotations

import gzip
import json
import shutil
import sqlite3
import struct
import zipfile
import zlib
from pathlib import Path

import pytest

from fivesafes_tes.egress.checks import ChecksConfig, Verdict
from fivesafes_tes.egress.checks.base import CheckContext
from fivesafes_tes.egress.checks.file_type import FileTypeRule, detect_type
from tests.held_files import held


def judge(path: Path, name: str | None = None, **overrides: object):
    cfg = ChecksConfig.model_validate({"file_type": overrides}).rule_config("file_type")
    file = held(path, name)
    result = FileTypeRule().check(file, cfg, CheckContext(files=(file,)))
    assert result.rule == "file_type"
    assert result.version == "1"
    return result


def png_bytes(width: int = 2, height: int = 2) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def gif_bytes() -> bytes:
    return (
        b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff"
        b"!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
    )


def pdf_bytes() -> bytes:
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >>",
    ]
    body, offsets = b"%PDF-1.4\n", []
    for number, obj in enumerate(objects, start=1):
        offsets.append(len(body))
        body += b"%d 0 obj\n" % number + obj + b"\nendobj\n"
    xref = len(body)
    body += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    body += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    return body + b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)


def pe_bytes() -> bytes:
    dos = bytearray(b"MZ" + bytes(0x3A) + struct.pack("<I", 0x40))
    return bytes(dos) + b"PE\x00\x00" + struct.pack("<HH", 0x8664, 0) + bytes(200)


def write(tmp_path: Path, name: str, data: bytes | str) -> Path:
    path = tmp_path / name
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    made = {
        "png": write(tmp_path, "plot.png", png_bytes()),
        "gif": write(tmp_path, "anim.gif", gif_bytes()),
        "pdf": write(tmp_path, "report.pdf", pdf_bytes()),
        "pe": write(tmp_path, "tool.exe", pe_bytes()),
        "gzip": write(tmp_path, "table.csv.gz", gzip.compress(b"a,b\n1,2\n")),
    }
    with zipfile.ZipFile(tmp_path / "bundle.zip", "w") as archive:
        archive.writestr("table.csv", "a,b\n1,2\n")
    made["zip"] = tmp_path / "bundle.zip"
    with zipfile.ZipFile(tmp_path / "letter.docx", "w") as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("word/document.xml", "<w:document/>")
    made["docx"] = tmp_path / "letter.docx"
    database = sqlite3.connect(tmp_path / "cohort.sqlite")
    database.execute("create table person (id integer, dob text)")
    database.execute("insert into person values (1, '1970-01-01')")
    database.commit()
    database.close()
    made["sqlite"] = tmp_path / "cohort.sqlite"
    shutil.copy("/bin/true", tmp_path / "true")
    made["elf"] = tmp_path / "true"
    return made


@pytest.mark.parametrize(
    ("key", "media_type", "verdict"),
    [
        ("png", "image/png", Verdict.REVIEW),
        ("gif", "image/gif", Verdict.REVIEW),
        ("pdf", "application/pdf", Verdict.REVIEW),
        ("docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document", Verdict.REVIEW),
        ("zip", "application/zip", Verdict.FAIL),
        ("gzip", "application/gzip", Verdict.FAIL),
        ("sqlite", "application/vnd.sqlite3", Verdict.FAIL),
        ("elf", "application/x-elf", Verdict.FAIL),
        ("pe", "application/vnd.microsoft.portable-executable", Verdict.FAIL),
    ],
)
def test_binary_files_are_known_by_their_magic(files, key, media_type, verdict):
    assert detect_type(files[key]).media_type == media_type
    result = judge(files[key])
    assert result.verdict is verdict
    [finding] = result.findings
    assert finding.verdict is verdict
    assert media_type in finding.message
    assert files[key].name in finding.message
    assert finding.message.startswith("file_type v1: /outputs/")
    if verdict is Verdict.FAIL:
        assert "export results as one of text/plain" in finding.message
        assert finding.threshold.startswith("allowed_types=")
    else:
        assert "a person must" in finding.message


def test_real_jpeg_and_xlsx_need_review(tmp_path):
    image = pytest.importorskip("PIL.Image")
    openpyxl = pytest.importorskip("openpyxl")
    image.new("RGB", (4, 4), "red").save(tmp_path / "photo.jpg", "JPEG")
    workbook = openpyxl.Workbook()
    workbook.active.append(["age band", "count"])
    workbook.save(tmp_path / "counts.xlsx")
    for name, media_type in (("photo.jpg", "image/jpeg"), ("counts.xlsx", "spreadsheetml.sheet")):
        result = judge(tmp_path / name)
        assert result.verdict is Verdict.REVIEW
        assert media_type in result.findings[0].message
        assert len(result.findings) == 1  # the extension agrees


def test_parquet_is_record_level_data_unless_the_tre_allows_it(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"person_id": [1, 2, 3], "age": [40, 51, 62]}), tmp_path / "cohort.parquet")
    result = judge(tmp_path / "cohort.parquet")
    assert result.verdict is Verdict.FAIL
    assert "Parquet table" in result.findings[0].message
    allowed = [*ChecksConfig().file_type.allowed_types, "application/vnd.apache.parquet"]
    assert judge(tmp_path / "cohort.parquet", allowed_types=allowed).verdict is Verdict.PASS


@pytest.mark.parametrize(
    ("name", "content", "media_type"),
    [
        ("counts.csv", "age band,count\n40-49,12\n50-59,31\n", "text/csv"),
        ("counts.csv", 'region;"mean, adjusted"\nnorth;1,5\n', "text/csv"),
        ("counts.tsv", "age band\tcount\n40-49\t12\n", "text/tab-separated-values"),
        ("model.json", json.dumps({"coef": [0.1, 0.2], "n": 1200}, indent=2), "application/json"),
        ("rows.jsonl", '{"a": 1}\n{"a": 2}\n', "application/x-ndjson"),
        ("notes.txt", "The model converged after 12 iterations.\nNo warnings.\n", "text/plain"),
        ("notes.md", "\ufeff# Résumé — naïve ✓\n", "text/plain"),
        ("one.csv", "count\n12\n31\n", "text/plain"),
    ],
)
def test_text_passes_and_is_sniffed(tmp_path, name, content, media_type):
    path = write(tmp_path, name, content)
    assert detect_type(path).media_type == media_type
    result = judge(path)
    assert result.verdict is Verdict.PASS, result.findings
    assert result.findings[0].message.endswith(f"({media_type})")


def test_large_text_is_read_to_the_end(tmp_path):
    rows = "".join(f"{i},{i * 2}\n" for i in range(200_000))
    path = write(tmp_path, "big.csv", "a,b\n" + rows)
    assert detect_type(path).media_type == "text/csv"
    path.write_bytes(path.read_bytes() + b"7,\xff\n")
    result = judge(path)
    assert result.verdict is Verdict.FAIL
    assert f"not valid UTF-8 at byte {path.stat().st_size - 2}, line 200002" in result.findings[0].message
    big_json = write(tmp_path, "big.json", json.dumps([{"i": i} for i in range(100_000)]))
    assert detect_type(big_json).media_type == "application/json"


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (
            "naïve,count\n".encode("latin-1"),
            "not valid UTF-8 at byte 2, line 1; if it is text, save it as UTF-8",
        ),
        (b"a,b\n1,2\n3\x00,4\n", "a NUL byte at byte 9, line 3"),
        ("a,b\n".encode("utf-16"), "the file is UTF-16 text; save it as UTF-8"),
    ],
)
def test_text_the_other_rules_cannot_read_fails_with_where_and_the_fix(tmp_path, content, why):
    result = judge(write(tmp_path, "table.csv", content))
    assert result.verdict is Verdict.FAIL
    assert why in result.findings[0].message


@pytest.mark.parametrize(
    ("content", "media_type"),
    [
        ("<!DOCTYPE html><html><script>x</script></html>", "text/html"),
        ('<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', "image/svg+xml"),
        ('<?xml version="1.0"?><data/>', "application/xml"),
    ],
)
def test_markup_is_not_let_out_by_default(tmp_path, content, media_type):
    path = write(tmp_path, "page.txt", content)
    result = judge(path)
    assert detect_type(path).media_type == media_type
    assert result.verdict is Verdict.FAIL


def test_a_name_that_lies_about_the_content(files, tmp_path):
    disguised = tmp_path / "summary.csv"
    shutil.copy(files["png"], disguised)
    result = judge(disguised)
    assert result.verdict is Verdict.REVIEW
    mismatch = result.findings[1]
    assert mismatch.message == (
        "file_type v1: /outputs/summary.csv: the extension .csv says text/csv or text/plain or "
        "text/tab-separated-values but the content is PNG image"
    )
    assert mismatch.threshold == "extension_mismatch=review"
    assert judge(disguised, extension_mismatch="fail").verdict is Verdict.FAIL

    shutil.copy(files["elf"], tmp_path / "results.txt")
    elf = judge(tmp_path / "results.txt")
    assert elf.verdict is Verdict.FAIL
    assert len(elf.findings) == 2

    not_json = write(tmp_path, "model.json", "a,b\n1,2\n")
    result = judge(not_json)
    assert result.verdict is Verdict.REVIEW
    assert "the extension .json says application/json" in result.findings[1].message


def test_names_without_a_known_extension_are_judged_by_content_alone(tmp_path, files):
    assert judge(write(tmp_path, "Rplots", "a,b\n1,2\n")).findings[0].verdict is Verdict.PASS
    shutil.copy(files["gzip"], tmp_path / "model.rds")
    result = judge(tmp_path / "model.rds")
    assert result.verdict is Verdict.FAIL
    assert len(result.findings) == 1


def test_size_limit_and_empty_files(tmp_path):
    path = write(tmp_path, "counts.csv", "a,b\n" + "1,2\n" * 300)
    result = judge(path, max_bytes=1000)
    assert result.verdict is Verdict.FAIL
    [finding] = result.findings
    assert finding.threshold == "max_bytes=1000"
    assert f"is {path.stat().st_size} bytes, over this TRE's limit of 1000 bytes" in finding.message
    assert judge(path).verdict is Verdict.PASS
    empty = judge(write(tmp_path, "empty.csv", b""))
    assert empty.verdict is Verdict.PASS
    assert empty.findings[0].message.endswith("is empty")


def test_captured_output_must_be_text(tmp_path, files):
    log = write(tmp_path, "step-0.stdout", "iteration 1\x1b[2K\riteration 2\n")
    assert judge(log, "step-0.stdout").verdict is Verdict.PASS
    shutil.copy(files["sqlite"], tmp_path / "step-1.stderr")
    result = judge(tmp_path / "step-1.stderr", "step-1.stderr")
    assert result.verdict is Verdict.FAIL
    assert "captured stderr says" in result.findings[1].message
