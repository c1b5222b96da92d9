"""Properties of the identifier and small-cell rules over generated tables of any shape: any number
of rows and columns; comma, tab, semicolon or pipe delimited, quoted or not, fixed width or free
text; numeric and text neighbours; headers that are category labels. Valid identifiers (check digits
and letters computed) and small counts put at random positions are always found, at their row and
column; look-alikes with a wrong check digit or letter are never flagged; no finding carries what it
reports.

The profile is fixed for CI: derandomized (the same examples on every run) and bounded."""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fivesafes_tes.egress.checks.base import CheckContext, Finding, HeldFile, Verdict
from fivesafes_tes.egress.checks.identifiers import IdentifiersRule
from fivesafes_tes.egress.checks.small_cell import SmallCellRule
from fivesafes_tes.egress.held import parse

CI = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

DELIMITERS = [",", "\t", ";", "|"]
LABELS = [
    "stage I",
    "stage II",
    "stage III",
    "stage IV",
    "female",
    "male",
    "north east",
    "0-17",
    "18-64",
    "65+",
    "2019",
    "2020",
    "group A",
    "Q1",
    "yes",
    "no",
    "white",
    "mixed",
    "other",
    "missing",
    "a",
    "b",
]
NHS_LABEL = "NHS number (valid check digit)"
NRIC_LABEL = "Singapore NRIC/FIN (valid check letter)"
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]


def check(path: Path, name: str, rule: IdentifiersRule | SmallCellRule) -> list[Finding]:
    data = path.read_bytes()
    file = HeldFile(parse(name), len(data), hashlib.sha256(data).hexdigest(), path)
    result = rule.check(file, {}, CheckContext(files=(file,)))
    assert result.error is None
    return result.findings


# Identifiers ----------------------------------------------------------------------------------------


def nhs_check_digit(nine: str) -> int:
    """10 when no check digit makes the nine digits a valid NHS number."""
    return (11 - sum(int(d) * w for d, w in zip(nine, range(10, 1, -1), strict=True)) % 11) % 11


def nric_check_letter(prefix: str, seven: str) -> str:
    total = sum(int(d) * w for d, w in zip(seven, (2, 7, 6, 5, 4, 3, 2), strict=True))
    total += {"T": 4, "G": 4, "M": 3}.get(prefix, 0)
    table = "JZIHGFEDCBA" if prefix in "ST" else "XWUTRQPNMLK" if prefix in "FG" else "XWUTRQPNJLK"
    return table[total % 11]


@dataclass(frozen=True)
class Planted:
    """An identifier as written into a file: what must be reported, and what must never be shown."""

    label: str
    text: str
    secret: str
    birth_column: bool = False  # a bare date, found because its column is named like a birth date


NHS_FORMS = st.sampled_from(["plain", "spaced", "dashed", "float"])


def nhs_text(number: str, form: str) -> str:
    if form == "spaced":
        return f"{number[:3]} {number[3:6]} {number[6:]}"
    if form == "dashed":
        return f"{number[:3]}-{number[3:6]}-{number[6:]}"
    return number + ".0" if form == "float" else number


@st.composite
def nhs_numbers(draw: st.DrawFn, valid: bool = True) -> Planted:
    nine = draw(st.from_regex(r"[0-9]{9}", fullmatch=True))
    check_digit = nhs_check_digit(nine)
    if valid:
        if check_digit == 10 or len(set(nine + str(check_digit))) == 1:
            nine, check_digit = "943476591", 9  # no valid number: the NHS's own example instead
        last = check_digit
    else:
        last = draw(st.integers(0, 9).filter(lambda d: d != check_digit))
    number = nine + str(last)
    return Planted(NHS_LABEL, nhs_text(number, draw(NHS_FORMS)), number)


@st.composite
def nrics(draw: st.DrawFn, valid: bool = True) -> Planted:
    prefix = draw(st.sampled_from("STFGM"))
    seven = draw(st.from_regex(r"[0-9]{7}", fullmatch=True))
    right = nric_check_letter(prefix, seven)
    letter = right if valid else draw(st.sampled_from([c for c in "ABCDEFGHIJKLMNPQRTUWXZ" if c != right]))
    text = prefix + seven + letter
    if draw(st.booleans()):
        text = text.lower()
    return Planted(NRIC_LABEL, text, text)


emails = st.builds(
    lambda local, domain, tld: Planted("email address", f"{local}@{domain}.{tld}", f"{local}@{domain}"),
    st.from_regex(r"[a-z][a-z0-9]{0,6}([._+-][a-z0-9]{1,5})?", fullmatch=True),
    st.from_regex(r"[a-z]{2,9}(\.[a-z]{2,9})?", fullmatch=True),
    st.sampled_from(["org", "com", "uk", "sg", "nhs.uk"]),
)

_AREA, _SECOND, _A9A, _AA9A = (
    "ABCDEFGHIJKLMNOPRSTUWYZ",
    "ABCDEFGHKLMNOPQRSTUVWXY",
    "ABCDEFGHJKPSTUW",
    "ABEHMNPRVWXY",
)
_INWARD = "ABDEFGHJLNPQRSTUWXYZ"


@st.composite
def postcodes(draw: st.DrawFn) -> Planted:
    area, second, digit = (
        draw(st.sampled_from(_AREA)),
        draw(st.sampled_from(_SECOND)),
        draw(st.integers(0, 9)),
    )
    outward = draw(
        st.sampled_from(
            [
                f"{area}{digit}",
                f"{area}{digit}{digit}",
                f"{area}{second}{digit}",
                f"{area}{second}{digit}{digit}",
                f"{area}{digit}{draw(st.sampled_from(_A9A))}",
                f"{area}{second}{digit}{draw(st.sampled_from(_AA9A))}",
            ]
        )
    )
    inward = f"{draw(st.integers(0, 9))}{draw(st.sampled_from(_INWARD))}{draw(st.sampled_from(_INWARD))}"
    text = f"{outward}{draw(st.sampled_from([' ', '']))}{inward}"
    return Planted("full UK postcode", text, text)


def date_text(day: date, form: str) -> str:
    if form == "iso":
        return day.isoformat()
    if form in "/.":
        return f"{day.day:02d}{form}{day.month:02d}{form}{day.year}"
    return f"{day.day} {MONTHS[day.month - 1]} {day.year}"


@st.composite
def births(draw: st.DrawFn, bare: bool, valid: bool = True) -> Planted:
    if valid:
        day = draw(st.dates(date(1900, 1, 1), date(2020, 12, 31)))
        text = date_text(day, draw(st.sampled_from(["iso", "/", ".", "words"])))
    else:  # a date that is on no calendar, however it is read
        year, month = draw(st.integers(1900, 2020)), draw(st.sampled_from([2, 4, 6, 9, 11]))
        text = f"{year}-{month:02d}-31" if draw(st.booleans()) else f"31/{month:02d}/{year}"
    word = draw(st.sampled_from(["born ", "DOB: ", "date of birth ", "birth date="]))
    return Planted("full date of birth", text if bare else word + text, text, birth_column=bare)


def identifiers(delimited: bool) -> st.SearchStrategy[Planted]:
    """Valid identifiers of every kind; bare dates of birth only where a column can be named so."""
    dates = st.booleans().flatmap(lambda bare: births(bare and delimited))
    return st.one_of(nhs_numbers(), nhs_numbers(), nrics(), emails, postcodes(), dates)


lookalikes = st.one_of(
    nhs_numbers(valid=False),
    nrics(valid=False),
    births(bare=False, valid=False),
    births(bare=True, valid=False),
)

words = st.from_regex(r"[a-z]{1,8}( [a-z]{1,8})?", fullmatch=True)
numbers = st.one_of(
    st.integers(0, 99).map(str),
    st.integers(10_000, 999_999).map(str),
    st.integers(-999, -1).map(str),
    st.builds(lambda whole, part: f"{whole}.{part}", st.integers(-99, 999), st.integers(0, 99)),
)
special_text = st.builds(
    lambda a, c, b: a + c + b, words, st.sampled_from([",", ";", "|", "\t", '"', "\n", ", "]), words
)


def neighbours(quoted: bool) -> st.SearchStrategy[str]:
    """What sits beside an identifier: numbers, words, nothing, and (quoted) delimiters, quotes and
    line breaks inside a value."""
    return st.one_of(numbers, numbers, words, st.just(""), *([special_text] if quoted else []))


@st.composite
def planted_table(draw: st.DrawFn, kinds: st.SearchStrategy[Planted], layout: str) -> dict:
    quoting = draw(st.sampled_from(["none", "all", "minimal"])) if layout == "delimited" else "none"
    n_rows, n_cols = draw(st.integers(1, 6)), draw(st.integers(1, 5))
    header = draw(st.lists(st.sampled_from(LABELS), min_size=n_cols, max_size=n_cols, unique=True))
    style = draw(st.sampled_from(["numbers", "mixed"]))  # a table of numbers is where guards misfire
    values = numbers if style == "numbers" else neighbours(quoting != "none")
    cells = [[draw(values) for _ in range(n_cols)] for _ in range(n_rows)]
    positions = draw(
        st.lists(
            st.tuples(st.integers(0, n_rows - 1), st.integers(0, n_cols - 1)),
            min_size=1,
            max_size=3,
            unique=True,
        )
    )
    planted = []
    for row, col in positions:
        item = draw(kinds)
        cells[row][col] = item.text
        if item.birth_column:
            header[col] = f"dob {col}"
        planted.append((item, row, col))
    return {"layout": layout, "quoting": quoting, "header": header, "cells": cells, "planted": planted}


def write_delimited(path: Path, rows: list[list[str]], delimiter: str, quoting: str) -> None:
    def field(value: str) -> str:
        special = any(c in value for c in (delimiter, '"', "\n")) or value != value.strip()
        if quoting == "all" or (quoting == "minimal" and special):
            return '"' + value.replace('"', '""') + '"'
        return value

    path.write_text("".join(delimiter.join(field(v) for v in row) + "\n" for row in rows))


def write_fixed_width(path: Path, rows: list[list[str]], gap: str) -> None:
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]

    def field(value: str, width: int) -> str:
        return value.rjust(width) if value.lstrip("-").replace(".", "", 1).isdigit() else value.ljust(width)

    path.write_text(
        "".join(
            gap.join(field(v, w) for v, w in zip(row, widths, strict=True)).rstrip() + "\n" for row in rows
        )
    )


@st.composite
def free_text(draw: st.DrawFn, kinds: st.SearchStrategy[Planted]) -> dict:
    """Lines of words and numbers joined by punctuation, with identifiers among them."""
    separators = st.sampled_from(
        [" ", ", ", ",", ";", "; ", "|", " | ", "\t", ": ", " (", ") ", ". ", "=", " - "]
    )
    lines = [
        draw(st.lists(st.one_of(numbers, numbers, words), max_size=6)) for _ in range(draw(st.integers(1, 8)))
    ]
    planted = []
    for _ in range(draw(st.integers(1, 3))):
        item, line = draw(kinds), draw(st.integers(0, len(lines) - 1))
        lines[line].insert(draw(st.integers(0, len(lines[line]))), item.text)
        planted.append((item, line))
    text = ""
    for tokens in lines:
        for i, token in enumerate(tokens):
            text += token + (
                draw(separators) if i < len(tokens) - 1 else draw(st.sampled_from(["", ".", ";"]))
            )
        text += "\n"
    return {"text": text, "planted": planted}


def written(table: dict, delimiter: str, folder: Path) -> tuple[Path, str]:
    rows = [table["header"], *table["cells"]]
    if table["layout"] == "fixed":
        path = folder / "table.txt"
        write_fixed_width(path, rows, " " if delimiter in ",;" else "  ")
        return path, "/outputs/table.txt"
    suffix = ".tsv" if delimiter == "\t" and len(table["header"]) % 2 else ".csv"
    path = folder / f"table{suffix}"
    write_delimited(path, rows, delimiter, table["quoting"])
    return path, f"/outputs/table{suffix}"


def reported(findings: list[Finding]) -> set[tuple[str, str | None, int | None]]:
    return {(f.message, f.column, f.row) for f in findings if f.verdict is not Verdict.PASS}


def assert_masked(findings: list[Finding], planted: list[Planted]) -> None:
    shown = json.dumps([[f.message, f.column, f.excerpt, f.threshold] for f in findings]).lower()
    for item in planted:
        assert item.secret.lower() not in shown
        assert item.text.lower() not in shown


@CI
@given(
    layout=st.sampled_from(["delimited", "fixed"]),
    delimiter=st.sampled_from(DELIMITERS),
    data=st.data(),
)
def test_valid_identifiers_in_any_table_are_found_at_their_row_and_column(
    layout: str, delimiter: str, data: st.DataObject
) -> None:
    table = data.draw(planted_table(identifiers(layout == "delimited"), layout))
    with tempfile.TemporaryDirectory() as folder:
        path, name = written(table, delimiter, Path(folder))
        findings = check(path, name, IdentifiersRule())
    found = reported(findings)
    allowed = set()
    for item, row, col in table["planted"]:
        if layout == "fixed":
            assert (item.label, None, row + 2) in found  # the header is line 1
            allowed.add((item.label, None, row + 2))
            continue
        after_a_line_break = any("\n" in value for value in table["cells"][row][:col])
        # A hit on the second line of a quoted value keeps its row; its column is not worked out.
        columns = {table["header"][col], None} if after_a_line_break else {table["header"][col]}
        assert any((item.label, column, row + 1) in found for column in columns), (item, row, col)
        allowed |= {(item.label, column, row + 1) for column in columns}
    assert found <= allowed  # nothing else is taken for an identifier
    assert_masked(findings, [item for item, _, _ in table["planted"]])


@CI
@given(
    item=identifiers(delimited=False),
    before=st.one_of(numbers, words, st.just("")),
    after=st.one_of(numbers, words, st.just("")),
    delimiter=st.sampled_from([*DELIMITERS, " ", "  "]),
    quoted=st.booleans(),
)
def test_an_identifier_between_any_two_fields_is_found(
    item: Planted, before: str, after: str, delimiter: str, quoted: bool
) -> None:
    field = f'"{item.text}"' if quoted else item.text
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "step-1.stdout"
        path.write_text(f"{before}{delimiter}{field}{delimiter}{after}\n")
        findings = check(path, "step-1.stdout", IdentifiersRule())
    assert reported(findings) == {(item.label, None, 1)}
    assert_masked(findings, [item])


@CI
@given(data=st.data())
def test_valid_identifiers_in_free_text_are_found_on_their_line(data: st.DataObject) -> None:
    text = data.draw(free_text(identifiers(delimited=False)))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "step-1.stdout"
        path.write_text(text["text"])
        findings = check(path, "step-1.stdout", IdentifiersRule())
    found = reported(findings)
    assert found == {(item.label, None, line + 1) for item, line in text["planted"]}
    assert_masked(findings, [item for item, _ in text["planted"]])


@CI
@given(
    layout=st.sampled_from(["delimited", "fixed", "free"]),
    delimiter=st.sampled_from(DELIMITERS),
    data=st.data(),
)
def test_lookalikes_with_a_wrong_check_digit_or_letter_are_never_flagged(
    layout: str, delimiter: str, data: st.DataObject
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        if layout == "free":
            path, name = Path(folder) / "step-1.stdout", "step-1.stdout"
            path.write_text(data.draw(free_text(lookalikes))["text"])
        else:
            path, name = written(data.draw(planted_table(lookalikes, layout)), delimiter, Path(folder))
        findings = check(path, name, IdentifiersRule())
    assert reported(findings) == set()


# Small cells ----------------------------------------------------------------------------------------

THRESHOLD = 10


@dataclass(frozen=True)
class CrossTab:
    header: list[str]
    rows: list[list[str | int]]
    small: set[tuple[str, int]]  # (column, data row) of each count 0 < n < 10
    zeros: set[tuple[str, int]]


@st.composite
def cross_tabs(draw: st.DrawFn, quoted: bool, with_small: bool = True) -> CrossTab:
    """Label columns of text, then count columns named by category labels; small counts and zeros at
    random cells. Without small cells, columns that are not counts join them: an id, an age, a year,
    a rate, a mean, a code, and row numbers written first."""
    n_rows = draw(st.integers(1, 8))
    n_labels, n_counts = draw(st.integers(1, 2)), draw(st.integers(1, 5))
    names = draw(
        st.lists(
            st.sampled_from(LABELS), min_size=n_labels + n_counts, max_size=n_labels + n_counts, unique=True
        )
    )
    label_text = st.one_of(words, special_text) if quoted else words
    rows: list[list[str | int]] = [
        [draw(label_text) for _ in range(n_labels)]
        + [draw(st.integers(THRESHOLD, 5000)) for _ in range(n_counts)]
        for _ in range(n_rows)
    ]
    small, zeros = set(), set()
    if with_small:
        cells = st.tuples(st.integers(0, n_rows - 1), st.integers(n_labels, n_labels + n_counts - 1))
        for row, col in draw(st.lists(cells, min_size=1, max_size=6, unique=True)):
            value = draw(st.integers(0, THRESHOLD - 1))
            rows[row][col] = value
            (zeros if value == 0 else small).add((names[col], row + 1))
    header = list(names)
    if not with_small:
        others = {
            "id": st.integers(1, 20),
            "age": st.integers(0, 20),
            "year": st.integers(1990, 2030),
            "rate per 1000": st.integers(0, 99).map(lambda n: n + 0.5),
            "mean age": st.integers(0, 99).map(lambda n: n + 0.25),
            "icd code": st.integers(1, 20),
            "change since 2019": st.integers(-20, 20),
        }
        for name in draw(st.lists(st.sampled_from(sorted(others)), min_size=1, unique=True)):
            header.append(name)
            for row in rows:
                row.append(draw(others[name]))
            if name == "change since 2019":
                rows[draw(st.integers(0, n_rows - 1))][-1] = draw(st.integers(-20, -1))  # one fall at least
        numbering = draw(st.sampled_from([None, ("", 0), ("No.", 1)]))
        if numbering and (n_rows > 1 or numbering[0] == ""):
            header.insert(0, numbering[0])
            for i, row in enumerate(rows):
                row.insert(0, i + numbering[1])
    return CrossTab(header, rows, small, zeros)


def write_cross_tab(path: Path, tab: CrossTab, fmt: str, delimiter: str, quoting: str) -> None:
    if fmt == "parquet":
        columns = {name: [row[i] for row in tab.rows] for i, name in enumerate(tab.header)}
        pq.write_table(pa.table(columns), path)
    elif fmt == "jsonl":
        path.write_text(
            "".join(json.dumps(dict(zip(tab.header, row, strict=True))) + "\n" for row in tab.rows)
        )
    else:
        write_delimited(path, [tab.header, *[[str(v) for v in row] for row in tab.rows]], delimiter, quoting)


def judge_cross_tab(tab: CrossTab, fmt: str, delimiter: str, quoting: str) -> list[Finding]:
    suffix = {"parquet": ".parquet", "jsonl": ".jsonl"}.get(fmt, ".tsv" if delimiter == "\t" else ".csv")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"crosstab{suffix}"
        write_cross_tab(path, tab, fmt, delimiter, quoting)
        return check(path, f"/outputs/crosstab{suffix}", SmallCellRule())


def cells(findings: list[Finding], verdict: Verdict) -> set[tuple[str | None, int | None]]:
    return {(f.column, f.row) for f in findings if f.verdict is verdict and f.row is not None}


formats = st.sampled_from(["delimited", "delimited", "delimited", "parquet", "jsonl"])


@CI
@given(
    fmt=formats,
    delimiter=st.sampled_from(DELIMITERS),
    quoting=st.sampled_from(["none", "all", "minimal"]),
    data=st.data(),
)
def test_small_cells_anywhere_in_a_cross_tabulation_are_found(
    fmt: str, delimiter: str, quoting: str, data: st.DataObject
) -> None:
    tab = data.draw(cross_tabs(quoted=fmt != "delimited" or quoting != "none"))
    findings = judge_cross_tab(tab, fmt, delimiter, quoting)
    assert cells(findings, Verdict.FAIL) == tab.small
    assert cells(findings, Verdict.REVIEW) == tab.zeros
    for finding in findings:  # the count itself is never shown
        assert finding.excerpt in (None, "<10", "0")


@CI
@given(
    fmt=formats,
    delimiter=st.sampled_from(DELIMITERS),
    quoting=st.sampled_from(["none", "all", "minimal"]),
    data=st.data(),
)
def test_ids_ages_years_rates_codes_and_row_numbers_are_not_counts(
    fmt: str, delimiter: str, quoting: str, data: st.DataObject
) -> None:
    tab = data.draw(cross_tabs(quoted=fmt != "delimited" or quoting != "none", with_small=False))
    findings = judge_cross_tab(tab, fmt, delimiter, quoting)
    assert [f for f in findings if f.verdict is not Verdict.PASS] == []
