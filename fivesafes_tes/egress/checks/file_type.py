"""Which kinds of file may leave, judged by their content (magic bytes, text decoding), not their name.

A file's extension is compared with what its content is, because a renamed database or archive is
the easiest way to carry record-level data past rules that only read text.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

from fivesafes_tes.egress.checks.base import CheckContext, Finding, RuleResult, Verdict
from fivesafes_tes.egress.checks.config import DOCX, XLSX
from fivesafes_tes.egress.held import HeldFile

PPTX = "application/vnd.openxmlformats-officedocument.presentationml.presentation"
ELF = "application/x-elf"
PE = "application/vnd.microsoft.portable-executable"
OCTET = "application/octet-stream"
TEXT, CSV, TSV, JSON, NDJSON = (
    "text/plain",
    "text/csv",
    "text/tab-separated-values",
    "application/json",
    "application/x-ndjson",
)

_CHUNK = 1 << 20
_NL = b"\n"
_SAMPLE_CHARS = 64 * 1024
_JSON_PARSE_MAX_BYTES = 32 << 20
_SNIFF_LINES = 100

# (offset, magic, media type, what a person calls it); first match wins.
_MAGIC: list[tuple[int, bytes, str, str]] = [
    (0, b"\x89PNG\r\n\x1a\n", "image/png", "PNG image"),
    (0, b"\xff\xd8\xff", "image/jpeg", "JPEG image"),
    (0, b"GIF87a", "image/gif", "GIF image"),
    (0, b"GIF89a", "image/gif", "GIF image"),
    (0, b"%PDF-", "application/pdf", "PDF document"),
    (0, b"PK\x03\x04", "application/zip", "ZIP archive"),
    (0, b"PK\x05\x06", "application/zip", "ZIP archive (empty)"),
    (0, b"\x1f\x8b", "application/gzip", "gzip-compressed file"),
    (0, b"BZh", "application/x-bzip2", "bzip2-compressed file"),
    (0, b"\xfd7zXZ\x00", "application/x-xz", "xz-compressed file"),
    (0, b"7z\xbc\xaf\x27\x1c", "application/x-7z-compressed", "7-Zip archive"),
    (0, b"(\xb5/\xfd", "application/zstd", "zstd-compressed file"),
    (257, b"ustar", "application/x-tar", "tar archive"),
    (0, b"PAR1", "application/vnd.apache.parquet", "Parquet table"),
    (0, b"SQLite format 3\x00", "application/vnd.sqlite3", "SQLite database"),
    (0, b"ARROW1", "application/vnd.apache.arrow.file", "Arrow/Feather table"),
    (0, b"\x89HDF\r\n\x1a\n", "application/x-hdf5", "HDF5 file"),
    (0, b"\x93NUMPY", "application/x-npy", "NumPy array"),
    (0, b"<stata_dta>", "application/x-stata-dta", "Stata dataset"),
    (0, b"RDX2\n", "application/x-rdata", "R workspace"),
    (0, b"RDX3\n", "application/x-rdata", "R workspace"),
    (0, b"\x7fELF", ELF, "ELF executable or library"),
    (0, b"\xcf\xfa\xed\xfe", "application/x-mach-binary", "Mach-O executable"),
    (0, b"\xce\xfa\xed\xfe", "application/x-mach-binary", "Mach-O executable"),
    (0, b"\xca\xfe\xba\xbe", "application/x-mach-binary", "Mach-O universal binary or Java class"),
]

_TEXTUAL = frozenset({TEXT, CSV, TSV, JSON, NDJSON})
_DELIMITED = frozenset({CSV, TSV, TEXT})
# Extension -> the content types it may hold.
_EXTENSION_TYPES: list[tuple[tuple[str, ...], frozenset[str]]] = [
    ((".png",), frozenset({"image/png"})),
    ((".jpg", ".jpeg"), frozenset({"image/jpeg"})),
    ((".gif",), frozenset({"image/gif"})),
    ((".pdf",), frozenset({"application/pdf"})),
    ((".zip",), frozenset({"application/zip", XLSX, DOCX, PPTX})),
    ((".xlsx",), frozenset({XLSX})),
    ((".docx",), frozenset({DOCX})),
    ((".pptx",), frozenset({PPTX})),
    ((".gz", ".tgz"), frozenset({"application/gzip"})),
    ((".rds", ".rdata", ".rda"), frozenset({"application/gzip", "application/x-rdata"})),
    ((".bz2",), frozenset({"application/x-bzip2"})),
    ((".xz",), frozenset({"application/x-xz"})),
    ((".7z",), frozenset({"application/x-7z-compressed"})),
    ((".tar",), frozenset({"application/x-tar"})),
    ((".parquet",), frozenset({"application/vnd.apache.parquet"})),
    ((".sqlite", ".sqlite3", ".db"), frozenset({"application/vnd.sqlite3"})),
    ((".feather", ".arrow"), frozenset({"application/vnd.apache.arrow.file"})),
    ((".h5", ".hdf5"), frozenset({"application/x-hdf5"})),
    ((".npy",), frozenset({"application/x-npy"})),
    ((".dta",), frozenset({"application/x-stata-dta"})),
    ((".csv", ".tsv", ".tab"), _DELIMITED),
    ((".json", ".geojson", ".ipynb"), frozenset({JSON})),
    ((".jsonl", ".ndjson"), frozenset({NDJSON, JSON})),
    ((".html", ".htm"), frozenset({"text/html"})),
    ((".xml",), frozenset({"application/xml"})),
    ((".svg",), frozenset({"image/svg+xml"})),
    ((".txt", ".text", ".log", ".md", ".out", ".err", ".stdout", ".stderr"), _TEXTUAL),
    ((".r", ".py", ".do", ".sas", ".sql"), _TEXTUAL),
]
_EXTENSIONS = {ext: types for exts, types in _EXTENSION_TYPES for ext in exts}


@dataclass(frozen=True)
class Detected:
    media_type: str
    description: str
    note: str = ""  # why a text-looking file was not accepted as text, with where


def detect_type(path: Path) -> Detected:
    """What a file is by its content. Reads the head for magic bytes; text is decoded to the end."""
    with path.open("rb") as handle:
        head = handle.read(4096)
    if not head:
        return Detected(TEXT, "empty file")
    for offset, magic, media_type, description in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            if media_type == "application/zip":
                return _zip_kind(path, description)
            return Detected(media_type, description)
    if _is_pe(head):
        return Detected(PE, "Windows executable or library")
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return Detected(OCTET, "UTF-16 text", note="the file is UTF-16 text; save it as UTF-8")
    return _text_kind(path)


def _zip_kind(path: Path, description: str) -> Detected:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return Detected("application/zip", "ZIP archive (damaged)")
    if "[Content_Types].xml" in names:
        for prefix, media_type, what in (
            ("xl/", XLSX, "Excel workbook (.xlsx)"),
            ("word/", DOCX, "Word document (.docx)"),
            ("ppt/", PPTX, "PowerPoint presentation (.pptx)"),
        ):
            if any(name.startswith(prefix) for name in names):
                return Detected(media_type, what)
    return Detected("application/zip", description)


def _is_pe(head: bytes) -> bool:
    if not head.startswith(b"MZ") or len(head) < 0x40:
        return False
    (offset,) = struct.unpack_from("<I", head, 0x3C)
    return head[offset : offset + 4] == b"PE\x00\x00" or b"\x00" in head[:0x40]


def _text_kind(path: Path) -> Detected:
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    sample: list[str] = []
    sampled = decoded = 0
    line, offset = 1, 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            nul = chunk.find(b"\x00")
            if nul >= 0:
                where = f"byte {offset + nul}, line {line + chunk.count(_NL, 0, nul)}"
                return Detected(OCTET, "binary data", note=f"a NUL byte at {where}")
            try:
                text = decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                where = f"byte {offset + exc.start}, line {line + chunk.count(_NL, 0, max(exc.start, 0))}"
                note = f"not valid UTF-8 at {where}; if it is text, save it as UTF-8"
                return Detected(OCTET, "text that is not UTF-8", note=note)
            decoded += len(text)
            if sampled < _SAMPLE_CHARS:
                sample.append(text)
                sampled += len(text)
            line += chunk.count(_NL)
            offset += len(chunk)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return Detected(OCTET, "text that is not UTF-8", note="the file ends inside a UTF-8 character")
    text = "".join(sample)
    complete = decoded == sampled and len(text) <= _SAMPLE_CHARS
    return _sniff_text(path, text[:_SAMPLE_CHARS].removeprefix("\ufeff"), complete, offset)


def _sniff_text(path: Path, text: str, complete: bool, size: int) -> Detected:
    stripped = text.lstrip()
    lowered = stripped[:4096].lower()
    if lowered.startswith("<?xml"):
        if "<svg" in lowered:
            return Detected("image/svg+xml", "SVG image")
        return Detected("application/xml", "XML document")
    if lowered.startswith("<svg"):
        return Detected("image/svg+xml", "SVG image")
    if lowered.startswith(("<!doctype html", "<html")):
        return Detected("text/html", "HTML page")
    lines = text.splitlines(keepends=True)
    if not complete and lines and not lines[-1].endswith(("\n", "\r")):
        lines = lines[:-1]
    lines = [ln for ln in lines[:_SNIFF_LINES] if ln.strip()]
    if stripped[:1] in ("{", "["):
        json_kind = _json_kind(path, lines, size)
        if json_kind is not None:
            return json_kind
    return _delimited_kind(lines) or Detected(TEXT, "plain text")


def _json_kind(path: Path, lines: list[str], size: int) -> Detected | None:
    if size <= _JSON_PARSE_MAX_BYTES:
        try:
            with path.open("rb") as handle:
                json.load(handle)
            return Detected(JSON, "JSON document")
        except (ValueError, RecursionError):
            pass
    if len(lines) >= 2:
        try:
            for ln in lines:
                json.loads(ln)
            return Detected(NDJSON, "JSON lines")
        except (ValueError, RecursionError):
            return None
    if size > _JSON_PARSE_MAX_BYTES:
        return Detected(JSON, "JSON document (too large to parse whole; judged by its start)")
    return None


def _delimited_kind(lines: list[str]) -> Detected | None:
    if not lines:
        return None
    body = "".join(lines)
    for delimiter, media_type, what in (
        ("\t", TSV, "tab-separated table"),
        (",", CSV, "comma-separated table"),
        (";", CSV, "semicolon-separated table"),
        ("|", CSV, "pipe-separated table"),
    ):
        if delimiter not in lines[0]:
            continue
        try:
            widths = {len(row) for row in csv.reader(io.StringIO(body), delimiter=delimiter) if row}
        except csv.Error:
            continue
        if len(widths) == 1 and widths.pop() >= 2:
            return Detected(media_type, what)
    return None


class FileTypeRule:
    name: ClassVar[str] = "file_type"
    version: ClassVar[str] = "1"

    def check(self, file: HeldFile, config: dict[str, Any], context: CheckContext) -> RuleResult:
        findings = self._judge(file, config)
        verdict = Verdict.worst([f.verdict for f in findings])
        return RuleResult(rule=self.name, version=self.version, verdict=verdict, findings=findings)

    def _judge(self, file: HeldFile, config: dict[str, Any]) -> list[Finding]:
        label = f"{self.name} v{self.version}: {file.name}"
        size = file.path.stat().st_size
        max_bytes = int(config["max_bytes"])
        if size > max_bytes:
            return [
                Finding(
                    Verdict.FAIL,
                    f"{label} is {size} bytes, over this TRE's limit of {max_bytes} bytes; "
                    "release a smaller summary instead",
                    threshold=f"max_bytes={max_bytes}",
                )
            ]
        if size == 0:
            return [Finding(Verdict.PASS, f"{label} is empty")]
        detected = detect_type(file.path)
        allowed, review = list(config["allowed_types"]), list(config["review_types"])
        what = f"{detected.description} ({detected.media_type})"
        if detected.media_type in allowed:
            findings = [Finding(Verdict.PASS, f"{label} is {what}")]
        elif detected.media_type in review:
            findings = [
                Finding(
                    Verdict.REVIEW,
                    f"{label} is {what}: no automated rule reads inside this type, so a person must",
                    threshold=f"review_types={review}",
                )
            ]
        else:
            because = f" ({detected.note})" if detected.note else ""
            findings = [
                Finding(
                    Verdict.FAIL,
                    f"{label} is {what}{because}, which this TRE does not let out; "
                    f"export results as one of {', '.join(allowed + review)}",
                    threshold=f"allowed_types={allowed}",
                )
            ]
        mismatch = self._extension_mismatch(file, detected)
        if mismatch is not None:
            findings.append(
                Finding(
                    Verdict(config["extension_mismatch"]),
                    f"{label}: {mismatch}",
                    threshold=f"extension_mismatch={config['extension_mismatch']}",
                )
            )
        return findings

    @staticmethod
    def _extension_mismatch(file: HeldFile, detected: Detected) -> str | None:
        suffix = PurePosixPath(file.name).suffix.lower()
        if file.kind in ("stdout", "stderr"):
            expected, said = _TEXTUAL, f"captured {file.kind}"
        elif suffix in _EXTENSIONS:
            expected, said = _EXTENSIONS[suffix], f"the extension {suffix}"
        else:
            return None
        if detected.media_type in expected:
            return None
        return f"{said} says {' or '.join(sorted(expected))} but the content is {detected.description}"
