"""Direct identifiers: values that name a person on their own, wherever they appear in an output, its
captured stdout or its stderr.

Detected: NHS numbers (10 digits, plain or 3-3-4, with a valid modulus 11 check digit), Singapore
NRIC/FIN numbers (S, T, F, G or M, 7 digits and a valid check letter), email addresses, UK (+44 or
0-prefixed) and Singapore (+65 only, so that plain 8-digit numbers are not taken for phones) phone
numbers, full UK postcodes, and full dates of birth (a full date near "birth", "DOB" or "born", or
any full date in a column so named). Check digits are what keep ordinary numbers from being taken
for identifiers: a 10-digit number with a wrong check digit is not an NHS number.

What is around an identifier does not matter: a delimiter of any kind (comma, tab, semicolon, pipe,
the spaces of a fixed-width table), quotes, or a neighbouring number (`1,9434765919,3`). Only
digits joined to it (`19434765919`) or a decimal point with digits (`0.9434765919`,
`9434765919.5`) make it part of another number; a whole number written as a float
(`9434765919.0`, as pandas writes a column with gaps) is still the number, as is one in a Parquet
column of floats or decimals.

Text is read in large pieces that end at a line end (a line longer than a piece is cut with an
overlap, so an identifier across the cut is still found exactly once). A fast vectorised pre-filter
(RE2 through Arrow, on `checks.threads` threads, one piece each) finds the few lines that could
hold an identifier; only those are matched precisely and validated, in file order. CSV and TSV
are read the same way, with each hit placed in its data row (quoted line breaks accounted for)
and column. Parquet is read column by column. Once
`max_findings` hits are listed, what the pre-filter lets through is only counted, so a file full
of identifiers costs no more time than a clean one.

Excerpts are masked ("943 *** ****"): findings travel beyond the TRE and must not carry what they
report (RELIABILITY 28).

Settings (the rule's `config`, per TRE and per project):

==================  ===================  ======================================================
key                 default              meaning
==================  ===================  ======================================================
kinds               all on               {nhs_number, nric_fin, email, phone, postcode,
                                         date_of_birth: true/false}; kinds left out stay on
verdict             "fail"               verdict of a hit ("review" or "fail")
dob_window          40                   bytes between a birth word and a date for it to count
dob_column_words    dob, birth, born...  column names with one of these words hold birth dates
allow_email_domains []                   addresses at these domains (and subdomains) are allowed
max_findings        50                   hits listed one by one; the rest are counted per kind
==================  ===================  ======================================================
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import date
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fivesafes_tes.egress.checks._parallel import ordered
from fivesafes_tes.egress.checks._tables import (
    CSV,
    PARQUET,
    TSV,
    UnreadableTable,
    name_words,
    open_table,
    read_header,
    row_indices,
    settings_problem,
    table_format,
)
from fivesafes_tes.egress.checks.base import CheckContext, Finding, RuleResult, Verdict
from fivesafes_tes.egress.held import HeldFile

KINDS = ("nhs_number", "nric_fin", "email", "phone", "postcode", "date_of_birth")
DOB_COLUMN_WORDS = ["dob", "birth", "born", "birthdate", "birthday", "bdate"]

_PIECE_BYTES = 4 << 20
_SUB_BYTES = 64 << 10  # the pre-filter's unit: most are skipped whole
_OVERLAP = 512  # longer than any identifier: one cut across it is seen whole in the next piece
_LONG_LINE = 16 << 10  # longer lines are pre-filtered again in windows of _WINDOW bytes
_WINDOW = 4 << 10
_MAX_COLUMN_SCAN = 1 << 16  # beyond this offset into a line, a hit's column is not worked out
_LABELS = {
    "nhs_number": "NHS number (valid check digit)",
    "nric_fin": "Singapore NRIC/FIN (valid check letter)",
    "email": "email address",
    "phone": "phone number",
    "postcode": "full UK postcode",
    "date_of_birth": "full date of birth",
}

# RE2 (Arrow) pre-filters: cheap, generous, never missing what the precise patterns below find.
_PREFILTERS = {
    "nhs_number": r"(^|[^0-9.]|[^0-9][.])[0-9]{3}[ -]?[0-9]{3}[ -]?[0-9]{4}([^0-9]|$)",
    "nric_fin": r"[STFGMstfgm][0-9]{7}[A-Za-z]",
    "email": r"@",
    "phone": r"[+] ?(44|65)|(^|[^0-9])00(44|65)|(^|[^0-9+.])[(]?0[1237][0-9]",
    "postcode": r"[0-9A-Z] ?[0-9][A-Z]{2}",
    "date_of_birth": r"(?i)birth|d[.]?o[.]?b|born",
}
_DATE_PREFILTER = r"[0-9]{4}"  # every full date this rule knows has a 4-digit year

# A comma, unlike a decimal point, may be a delimiter: it never joins digits into another number.
_NHS = re.compile(rb"(?<![0-9])(?<![0-9][.])([0-9]{3})([ -]?)([0-9]{3})\2([0-9]{4})(?![0-9])(?![.]0*[1-9])")
_NRIC = re.compile(rb"(?<![A-Za-z0-9])([STFGMstfgm])([0-9]{7})([A-Za-z])(?![A-Za-z0-9])")
_EMAIL = re.compile(
    rb"(?<![A-Za-z0-9._%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@"
    rb"((?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){1,8}[A-Za-z]{2,24})(?![A-Za-z0-9-])"
)
_UK_PHONE = re.compile(
    rb"(?<![0-9+.])(?:(?:\+|00)44[ -]?(?:\(0\)[ -]?)?|\(?0)"
    rb"(7[0-9]{3}[ -]?[0-9]{3}[ -]?[0-9]{3}|[123][0-9]{1,4}\)?[ -]?[0-9]{3,4}[ -]?[0-9]{3,4})(?![0-9])"
)
_SG_PHONE = re.compile(rb"(?<![0-9+])(?:\+|00)65[ -]?([689][0-9]{3}[ -]?[0-9]{4})(?![0-9])")
_POSTCODE = re.compile(
    rb"(?<![A-Za-z0-9])(GIR ?0AA|[A-PR-UWYZ](?:[0-9][0-9]?|[A-HK-Y][0-9][0-9]?|[0-9][A-HJKPSTUW]"
    rb"|[A-HK-Y][0-9][ABEHMNPRVWXY]) ?[0-9][ABD-HJLNP-UW-Z]{2})(?![A-Za-z0-9])"
)
_BIRTH_WORD = re.compile(rb"(?i)birth|(?<![a-z])d\.?o\.?b(?![a-z])|(?<![a-z])born(?![a-z])")
_MONTH = rb"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]{0,6}\.?"
_YEAR = rb"(?:18|19|20)[0-9]{2}"
_DATE = re.compile(
    rb"(?i)(?<![0-9])(?:"
    rb"(?P<y1>" + _YEAR + rb")(?P<s1>[-/.])(?P<m1>[0-9]{1,2})(?P=s1)(?P<d1>[0-9]{1,2})"
    rb"|(?P<d2>[0-9]{1,2})(?P<s2>[-/.])(?P<m2>[0-9]{1,2})(?P=s2)(?P<y2>" + _YEAR + rb")"
    rb"|(?P<d3>[0-9]{1,2})(?:st|nd|rd|th)?[ -](?P<n3>" + _MONTH + rb"),?[ -](?P<y3>" + _YEAR + rb")"
    rb"|(?P<n4>" + _MONTH + rb") (?P<d4>[0-9]{1,2})(?:st|nd|rd|th)?,? (?P<y4>" + _YEAR + rb")"
    rb")(?![0-9])"
)
_MONTH_NAMES = (
    b"jan",
    b"feb",
    b"mar",
    b"apr",
    b"may",
    b"jun",
    b"jul",
    b"aug",
    b"sep",
    b"oct",
    b"nov",
    b"dec",
)
_MONTHS = {name: number for number, name in enumerate(_MONTH_NAMES, 1)}
_JSON_KEY = re.compile(rb'"([^"\\]{1,200})"\s*:')
_ST, _FG, _M = "JZIHGFEDCBA", "XWUTRQPNMLK", "XWUTRQPNJLK"


class IdentifiersSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timeout_s: float = Field(default=60.0, gt=0, description="Read by the runner.")
    kinds: dict[str, bool] = Field(default_factory=dict)
    verdict: Literal["review", "fail"] = "fail"
    dob_window: int = Field(default=40, ge=0, le=200)
    dob_column_words: list[str] = Field(default_factory=lambda: list(DOB_COLUMN_WORDS))
    allow_email_domains: list[str] = Field(default_factory=list)
    max_findings: int = Field(default=50, ge=1, le=500)

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, kinds: dict[str, bool]) -> dict[str, bool]:
        unknown = sorted(set(kinds) - set(KINDS))
        if unknown:
            raise ValueError(f"unknown kinds {unknown}; known: {', '.join(KINDS)}")
        return {kind: kinds.get(kind, True) for kind in KINDS}

    def enabled(self) -> list[str]:
        return [kind for kind in KINDS if self.kinds.get(kind, True)]


@dataclass(frozen=True)
class Hit:
    kind: str
    start: int  # byte offset in the line or value it was found in
    excerpt: str  # masked
    detail: str = ""


# Validation ------------------------------------------------------------------------------------------


def nhs_number_valid(digits: str) -> bool:
    """Modulus 11: weights 10..2 on the first nine digits; 11 - remainder is the check digit (11 -> 0,
    10 -> no valid number). Numbers of one repeated digit pass the sum but are never issued."""
    if len(digits) != 10 or not digits.isdigit() or len(set(digits)) == 1:
        return False
    check = 11 - sum(int(d) * w for d, w in zip(digits[:9], range(10, 1, -1), strict=True)) % 11
    return check != 10 and (check % 11) == int(digits[9])


def nric_valid(value: str) -> bool:
    """Weights 2,7,6,5,4,3,2 on the digits, plus 4 for T and G and 3 for M; the remainder mod 11
    picks the check letter from the series' table."""
    value = value.upper()
    if len(value) != 9 or value[0] not in "STFGM" or not value[1:8].isdigit():
        return False
    total = sum(int(d) * w for d, w in zip(value[1:8], (2, 7, 6, 5, 4, 3, 2), strict=True))
    total += {"T": 4, "G": 4, "M": 3}.get(value[0], 0)
    table = _ST if value[0] in "ST" else _FG if value[0] in "FG" else _M
    return table[total % 11] == value[8]


def _full_date(m: re.Match[bytes]) -> bool:
    """A real calendar date, not in the future; day/month/year is read either way round."""
    g = m.groupdict()
    if g["y1"]:
        readings = [(g["y1"], g["m1"], g["d1"])]
    elif g["y2"]:
        readings = [(g["y2"], g["m2"], g["d2"]), (g["y2"], g["d2"], g["m2"])]
    elif g["y3"]:
        readings = [(g["y3"], _MONTHS.get(g["n3"][:3].lower(), 0), g["d3"])]
    else:
        readings = [(g["y4"], _MONTHS.get(g["n4"][:3].lower(), 0), g["d4"])]
    for year, month, day in readings:
        try:
            if date(int(year), int(month), int(day)).year <= date.today().year:
                return True
        except ValueError:
            continue
    return False


# Masking ---------------------------------------------------------------------------------------------


def _mask(text: str, keep: int = 0, keep_end: int = 0) -> str:
    """Letters and digits after the first `keep` (and before the last `keep_end`) become '*'."""
    out, seen = [], 0
    total = sum(ch.isalnum() for ch in text)
    for ch in text:
        if ch.isalnum():
            seen += 1
            if seen > keep and seen <= total - keep_end:
                ch = "*"
        out.append(ch)
    return "".join(out)


def _text(value: bytes) -> str:
    return value.decode("utf-8", errors="replace")


# Detection -------------------------------------------------------------------------------------------


class Detector:
    """The precise patterns and checks, run only on what the pre-filter let through."""

    def __init__(self, settings: IdentifiersSettings) -> None:
        self.kinds = set(settings.enabled())
        self.window = settings.dob_window
        self.allowed = tuple(d.lower().lstrip("@.") for d in settings.allow_email_domains)
        self.prefilter = "|".join(f"(?:{_PREFILTERS[k]})" for k in KINDS if k in self.kinds)

    def find(self, line: bytes) -> list[Hit]:
        """Every identifier in a line (or a value) the pre-filter let through."""
        if len(line) <= _LONG_LINE:
            return self._find(line)
        # A long line (minified JSON, say) is pre-filtered again in windows, so that the precise
        # patterns read only the parts that may hold something. Windows overlap as pieces do.
        context = self.window + 32
        starts = range(0, len(line), _WINDOW)
        windows = [line[max(0, start - context) : start + _WINDOW + _OVERLAP] for start in starts]
        flagged = pc.match_substring_regex(pa.array(windows, pa.binary()), self.prefilter).to_pylist()
        hits = []
        for start, window, candidate in zip(starts, windows, flagged, strict=True):
            base = max(0, start - context)
            for hit in self._find(window) if candidate else ():
                if start <= base + hit.start < start + _WINDOW:
                    hits.append(replace(hit, start=base + hit.start))
        return hits

    def _find(self, line: bytes) -> list[Hit]:
        hits: list[Hit] = []
        if "nhs_number" in self.kinds:
            for m in _NHS.finditer(line):
                if nhs_number_valid((m[1] + m[3] + m[4]).decode()):
                    hits.append(Hit("nhs_number", m.start(), _mask(_text(m[0]), keep=3)))
        if "nric_fin" in self.kinds:
            for m in _NRIC.finditer(line):
                if nric_valid(_text(m[0])):
                    hits.append(Hit("nric_fin", m.start(), _mask(_text(m[0]).upper(), keep_end=4)))
        if "email" in self.kinds and b"@" in line:
            for m in _EMAIL.finditer(line):
                domain = _text(m[1]).lower()
                if any(domain == d or domain.endswith("." + d) for d in self.allowed):
                    continue
                local, _, _ = _text(m[0]).partition("@")
                tld = domain.rsplit(".", 1)[-1]
                excerpt = f"{local[0]}***@***.{tld}"
                hits.append(Hit("email", m.start(), excerpt))
        if "phone" in self.kinds:
            hits.extend(self._phones(line))
        if "postcode" in self.kinds:
            for m in _POSTCODE.finditer(line):
                code = _text(m[0])
                outward = code[:-3].rstrip()
                hits.append(Hit("postcode", m.start(), f"{outward} ***"))
        if "date_of_birth" in self.kinds:
            hits.extend(self._birth_dates(line))
        return hits

    def _phones(self, line: bytes) -> Iterator[Hit]:
        for m in _UK_PHONE.finditer(line):
            digits = re.sub(rb"[^0-9]", b"", m[1])
            if len(digits) != 10 or (digits[:1] == b"7" and digits[1:2] == b"0"):
                continue
            yield Hit("phone", m.start(), _mask(_text(m[0]), keep=3), "UK")
        for m in _SG_PHONE.finditer(line):
            yield Hit("phone", m.start(), _mask(_text(m[0]), keep=3), "Singapore")

    def _birth_dates(self, line: bytes) -> Iterator[Hit]:
        words = [(m.start(), m.end()) for m in _BIRTH_WORD.finditer(line)]
        if not words:
            return
        for m in _DATE.finditer(line):
            near = any(
                m.start() - end <= self.window and start - m.end() <= self.window for start, end in words
            )
            if near and _full_date(m):
                yield Hit("date_of_birth", m.start(), _mask(_text(m[0])))

    def dates(self, value: bytes) -> Iterator[Hit]:
        """Every full date in a value of a birth-date column."""
        for m in _DATE.finditer(value):
            if _full_date(m):
                yield Hit("date_of_birth", m.start(), _mask(_text(m[0])))


# Reporting -------------------------------------------------------------------------------------------


class Report:
    """Findings up to the cap, then counts per kind."""

    def __init__(self, settings: IdentifiersSettings) -> None:
        self.verdict = Verdict(settings.verdict)
        self.room = settings.max_findings
        self.findings: list[Finding] = []
        self.unlisted: Counter[str] = Counter()
        self.unexamined = 0  # lines or values the pre-filter let through after the list was full
        self.listed = settings.max_findings

    @property
    def full(self) -> bool:
        return self.room <= 0

    def add(self, hit: Hit, row: int | None, column: str | None, where: str = "") -> None:
        if self.room <= 0:
            self.unlisted[hit.kind] += 1
            return
        self.room -= 1
        label = f"{hit.detail} {_LABELS[hit.kind]}" if hit.detail else _LABELS[hit.kind]
        self.findings.append(Finding(self.verdict, label + where, column, row, hit.excerpt))

    def add_rows(
        self, kind: str, indices: list[int], offset: int, column: str, excerpt: Callable[[int], str]
    ) -> None:
        """Hits of one kind at these positions of a column batch: listed while there is room, then counted."""
        room = max(self.room, 0)
        for index in indices[:room]:
            self.add(Hit(kind, 0, excerpt(index)), offset + index + 1, column)
        if len(indices) > room:
            self.unlisted[kind] += len(indices) - room

    def note(self, finding: Finding) -> None:
        self.findings.append(finding)

    def result(self, rule: IdentifiersRule, scanned: str) -> RuleResult:
        findings = list(self.findings)
        for kind, n in self.unlisted.items():
            findings.append(Finding(self.verdict, f"{n:,} more of kind {_LABELS[kind]} not listed"))
        if self.unexamined:
            message = (
                f"{self.unexamined:,} more lines or values may hold identifiers; once {self.listed} "
                "were listed the rest were only counted"
            )
            findings.append(Finding(self.verdict, message))
        if not findings:
            findings.append(Finding(Verdict.PASS, f"no direct identifiers found in {scanned}"))
        verdict = Verdict.worst([f.verdict for f in findings])
        return RuleResult(rule=rule.name, version=rule.version, verdict=verdict, findings=findings)


# Text ------------------------------------------------------------------------------------------------


@dataclass
class Delimited:
    """What a text scan needs to place a hit in a CSV or TSV table's data row and column."""

    delimiter: bytes
    header: list[str]
    records: int = 0  # records started so far, the header's included
    in_quote: bool = False  # inside a quoted value at the end of what was read
    lost: bool = False  # a line longer than a piece: rows can no longer be told


def scan_text(
    path: Path,
    detector: Detector,
    report: Report,
    table: Delimited | None = None,
    piece_bytes: int = _PIECE_BYTES,
) -> int:
    """Report every identifier in a text file; returns the number of lines read."""
    context = detector.window + 32  # what a hit looks back at: a birth word, the byte before a number
    lines = 0
    with path.open("rb") as stream:
        for screened in ordered(partial(_screen, detector.prefilter), _pieces(stream, piece_bytes, context)):
            piece, lo, hi = screened.piece, screened.lo, screened.hi
            if table is not None and (lo > 0 or hi < len(piece)):
                table.lost = True
            lines += _scan_piece(screened, lines, detector, report, table)
            lines += hi == len(piece) and not piece.endswith(b"\n")  # the last line, unterminated
    return lines


def _pieces(stream: Any, piece_bytes: int, context: int) -> Iterator[tuple[bytearray, int, int]]:
    """(piece, lo, hi): pieces ending at a line end, whose hits count when they start in [lo, hi).
    A line longer than a piece is cut; the next piece repeats the last `_OVERLAP + context` bytes so
    that an identifier across the cut is found there, whole, and only there. Each piece is read
    into its own buffer once and never copied."""
    carry, lo = b"", 0
    while True:
        buffer = bytearray(len(carry) + piece_bytes)
        buffer[: len(carry)] = carry
        read = stream.readinto(memoryview(buffer)[len(carry) :])
        if not read:
            if carry:
                yield bytearray(carry), lo, len(carry)
            return
        del buffer[len(carry) + read :]
        cut = buffer.rfind(b"\n")
        if cut >= 0:
            piece_lo, carry, lo = lo, bytes(buffer[cut + 1 :]), 0
            del buffer[cut + 1 :]
            yield buffer, piece_lo, cut + 1
        elif len(buffer) >= piece_bytes + _OVERLAP + context:
            hi = len(buffer) - _OVERLAP
            piece_lo, carry, lo = lo, bytes(buffer[hi - context :]), context
            yield buffer, piece_lo, hi
        else:
            carry = bytes(buffer)


@dataclass(frozen=True)
class _Screened:
    """A piece cut into sub-pieces of whole lines, each with whether the pre-filter flagged it, and
    the piece's line ends: the part of a piece's scan that can run on another thread."""

    piece: bytearray
    lo: int
    hi: int
    bounds: list[int]
    subs: pa.Array
    flagged: list[bool]
    ends: int


def _screen(prefilter: str, item: tuple[bytearray, int, int]) -> _Screened:
    piece, lo, hi = item
    bounds = [0]
    while bounds[-1] < len(piece):
        end = piece.find(b"\n", bounds[-1] + _SUB_BYTES)
        bounds.append(len(piece) if end < 0 else end + 1)
    offsets = pa.array(bounds, pa.int32()).buffers()[1]
    subs = pa.Array.from_buffers(pa.binary(), len(bounds) - 1, [None, offsets, pa.py_buffer(piece)])
    flagged = pc.match_substring_regex(subs, prefilter).to_pylist()
    return _Screened(piece, lo, hi, bounds, subs, flagged, piece.count(b"\n"))


def _scan_piece(
    screened: _Screened, lines: int, detector: Detector, report: Report, table: Delimited | None
) -> int:
    """Scan one screened piece; returns the line ends in it."""
    piece, bounds, subs = screened.piece, screened.bounds, screened.subs
    rows = _Rows(piece, screened.ends, table) if table is not None and not table.lost else None
    counted = lines_into = 0
    for index, candidate in enumerate(screened.flagged):
        if candidate:
            start, end = bounds[index], bounds[index + 1]
            lines_into += piece.count(b"\n", counted, start)
            counted = start
            part = _Part(piece, start, end, screened.lo, screened.hi, lines, lines_into)
            _scan_lines(part, subs.slice(index, 1), detector, report, table, rows)
    return screened.ends


class _Rows:
    """Which data row each line of a piece of a CSV or TSV table belongs to, and whether the row
    starts on it. A line continues a row when the quotes before it leave a value open; without
    quotes every line is a row."""

    def __init__(self, piece: bytearray, ends: int, table: Delimited) -> None:
        self.before = table.records
        self.starts: pa.Array | None = None
        self.numbers: pa.Array | None = None
        if table.in_quote or b'"' in piece:
            lines = _lines(pa.array([piece], pa.binary()), piece)
            odd = pc.bit_wise_and(pc.count_substring(lines, b'"'), 1)
            flips = pc.cumulative_sum(odd)
            open_before = pc.bit_wise_and(pc.add(pc.subtract(flips, odd), int(table.in_quote)), 1)
            self.starts = pc.equal(open_before, 0)
            self.numbers = pc.add(pc.cumulative_sum(pc.cast(self.starts, pa.int64())), self.before)
            if len(lines):
                table.records = self.numbers[-1].as_py()
                table.in_quote = bool((flips[-1].as_py() + table.in_quote) & 1)
        else:
            table.records += ends + (not piece.endswith(b"\n"))

    def record(self, line: int) -> tuple[int, bool]:
        """(record number, the header's being 1; whether it starts here) of the piece's `line`."""
        if self.numbers is None or self.starts is None:
            return self.before + line + 1, True
        return self.numbers[line].as_py(), self.starts[line].as_py()


@dataclass(frozen=True)
class _Part:
    """A run of whole lines of a piece: the piece, the run's span, the span of the piece whose hits
    count here, the lines before the piece and the lines of the piece before the run."""

    piece: bytearray
    start: int
    end: int
    lo: int
    hi: int
    lines_before: int
    lines_into: int


def _lines(array: pa.Array, text: bytes | bytearray) -> pa.Array:
    lines = pc.list_flatten(pc.split_pattern(array, b"\n"))
    return lines.slice(0, len(lines) - 1) if text.endswith(b"\n") else lines


def _scan_lines(
    part: _Part,
    sub: pa.Array,
    detector: Detector,
    report: Report,
    table: Delimited | None,
    rows: _Rows | None,
) -> None:
    lines = _lines(sub, part.piece[part.start : part.end])
    cut = part.lo > 0 or part.hi < len(part.piece)  # some hits belong to the piece before or after
    candidates = row_indices(pc.match_substring_regex(lines, detector.prefilter))
    for n, index in enumerate(candidates):
        if report.full:
            report.unexamined += len(candidates) - n
            return
        line = lines[index].as_py()
        at = part.start  # the line's offset in the piece, needed only where hits may belong elsewhere
        if cut and index:
            at += pc.sum(pc.binary_length(lines.slice(0, index))).as_py() + index
        for hit in detector.find(line):
            if cut and not part.lo <= at + hit.start < part.hi:
                continue
            if table is None:
                report.add(hit, part.lines_before + part.lines_into + index + 1, _json_key(line, hit.start))
            elif rows is None:
                report.add(hit, None, None, " (row unknown: the table has a line longer than 4 MiB)")
            else:
                number, starts = rows.record(part.lines_into + index)
                if number == 1:
                    report.add(hit, None, None, " in the header")
                else:
                    report.add(hit, number - 1, _csv_column(line, hit.start, table) if starts else None)


def _csv_column(line: bytes, offset: int, table: Delimited) -> str | None:
    if offset > _MAX_COLUMN_SCAN:
        return None
    field, in_quote = 0, False
    delimiter = table.delimiter[0]
    for byte in line[:offset]:
        if byte == 0x22:
            in_quote = not in_quote
        elif byte == delimiter and not in_quote:
            field += 1
    return table.header[field] if field < len(table.header) else None


def _json_key(line: bytes, offset: int) -> str | None:
    """The key of the `"key": value` pair a hit is in (JSON records); None for other text."""
    key = None
    for m in _JSON_KEY.finditer(line, 0, offset):
        key = m[1]
    return _text(key) if key is not None else None


# Columns ---------------------------------------------------------------------------------------------


def is_birth_column(name: str, words: set[str]) -> bool:
    return bool(set(name_words(name)) & words) or "birth" in name.lower()


def scan_columns(
    batches: Iterator[pa.RecordBatch], detector: Detector, report: Report, birth_words: set[str]
) -> int:
    """Report identifiers in every column of a table read as Arrow batches; returns rows read."""
    rows = 0
    nested: set[str] = set()
    births = "date_of_birth" in detector.kinds
    for batch in batches:
        for name, array in zip(batch.schema.names, batch.columns, strict=True):
            kind = array.type
            birth = births and is_birth_column(name, birth_words)
            if pa.types.is_nested(kind) or pa.types.is_dictionary(kind):
                if name not in nested:
                    nested.add(name)
                    report.note(Finding(Verdict.REVIEW, "nested values, which this rule does not read", name))
            elif pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind):
                if birth:
                    scan_birth_dates(array, name, rows, detector, report)
                candidates = row_indices(pc.match_substring_regex(array, detector.prefilter))
                for n, index in enumerate(candidates):
                    if report.full:
                        report.unexamined += len(candidates) - n
                        break
                    for hit in detector.find(_bytes(array[index].as_py())):
                        if not (birth and hit.kind == "date_of_birth"):
                            report.add(hit, rows + index + 1, name)
            elif _numeric(kind) and "nhs_number" in detector.kinds:
                whole = _whole_numbers(array)
                found = row_indices(_nhs_numbers(whole))
                report.add_rows("nhs_number", found, rows, name, partial(_integer_excerpt, whole))
            elif birth and (pa.types.is_date(kind) or pa.types.is_timestamp(kind)):
                found = row_indices(pc.is_valid(array))
                report.add_rows("date_of_birth", found, rows, name, lambda _: "****-**-**")
        rows += batch.num_rows
    return rows


def scan_birth_dates(array: pa.Array, name: str, offset: int, detector: Detector, report: Report) -> None:
    """Every full date in a string column named like a date of birth."""
    candidates = row_indices(pc.match_substring_regex(array, _DATE_PREFILTER))
    for n, index in enumerate(candidates):
        if report.full:
            report.unexamined += len(candidates) - n
            return
        for hit in detector.dates(_bytes(array[index].as_py())):
            report.add(hit, offset + index + 1, name)


def _nhs_numbers(values: pa.Array) -> pa.Array:
    """Which integers are NHS numbers: `nhs_number_valid` done with Arrow arithmetic, so that a
    column of millions is judged at Arrow's speed."""

    def remainder(a: pa.Array, b: int) -> pa.Array:
        return pc.subtract(a, pc.multiply(pc.divide(a, b), b))

    digits = [remainder(pc.divide(values, 10 ** (9 - i)), 10) for i in range(10)]
    total = pc.multiply(digits[0], 10)
    for i in range(1, 9):
        total = pc.add(total, pc.multiply(digits[i], 10 - i))
    check = remainder(pc.subtract(11, remainder(total, 11)), 11)
    in_range = pc.and_(pc.greater_equal(values, 10**9), pc.less(values, 10**10))
    repeated = pc.equal(remainder(values, 1_111_111_111), 0)  # 1111111111, 2222222222, ...
    return pc.and_(pc.and_(in_range, pc.invert(repeated)), pc.equal(check, digits[9]))


def _numeric(kind: pa.DataType) -> bool:
    return bool(pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind))


def _whole_numbers(values: pa.Array) -> pa.Array:
    """A numeric column as int64, null where a value is not a whole number of at most ten digits: a
    column of NHS numbers with gaps is often stored as floats."""
    if pa.types.is_integer(values.type):
        return values
    floats = pc.cast(values, pa.float64())
    whole = pc.and_(pc.equal(floats, pc.floor(floats)), pc.less(pc.abs(floats), 1e10))
    return pc.cast(pc.if_else(whole, floats, None), pa.int64())


def _integer_excerpt(array: pa.Array, index: int) -> str:
    return _mask(str(array[index].as_py()), keep=3)


def _bytes(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


# The rule --------------------------------------------------------------------------------------------


class IdentifiersRule:
    name: ClassVar[str] = "identifiers"
    version: ClassVar[str] = "2"

    def check(self, file: HeldFile, config: dict[str, Any], context: CheckContext) -> RuleResult:
        try:
            settings = IdentifiersSettings.model_validate(config)
        except ValidationError as exc:
            return RuleResult(self.name, self.version, Verdict.FAIL, [settings_problem(exc)])
        detector = Detector(settings)
        report = Report(settings)
        if not detector.kinds:
            return report.result(self, "nothing: every kind of identifier is switched off")
        try:
            scanned = self._scan(file, detector, report, {w.lower() for w in settings.dob_column_words})
        except UnreadableTable as exc:
            report.note(Finding(Verdict.FAIL, str(exc)))
            scanned = "an unreadable table"
        return report.result(self, scanned)

    @staticmethod
    def _scan(file: HeldFile, detector: Detector, report: Report, birth_words: set[str]) -> str:
        fmt = table_format(file)
        if fmt == PARQUET:
            table = open_table(file)
            rows = scan_columns(table.batches(), detector, report, birth_words) if table else 0
            return f"{rows:,} rows"
        if fmt not in (CSV, TSV):
            return f"{scan_text(file.path, detector, report):,} lines"
        delimiter, header = read_header(file.path, fmt)
        delimited = Delimited(delimiter.encode(), header)
        scan_text(file.path, detector, report, delimited)
        births = {n for n in header if "date_of_birth" in detector.kinds and is_birth_column(n, birth_words)}
        if births and (table := open_table(file)) is not None:
            rows = 0
            for batch in table.batches(lambda name: name in births):
                for name, array in zip(batch.schema.names, batch.columns, strict=True):
                    scan_birth_dates(array, name, rows, detector, report)
                rows += batch.num_rows
        return f"{max(delimited.records - 1, 0):,} rows"
