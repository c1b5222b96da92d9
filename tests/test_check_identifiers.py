"""The direct-identifier rule on real files made here: logs, CSV, TSV, Parquet, JSON. Valid check
digits and letters are found wherever they are, across read boundaries too; numbers that only look
like identifiers are not; excerpts never carry what they report."""

from __future__ import annotations

import datetime
import json
import random
import string
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fivesafes_tes.egress.checks import ChecksConfig, Verdict
from fivesafes_tes.egress.checks.base import CheckContext, RuleResult
from fivesafes_tes.egress.checks.identifiers import (
    Delimited,
    Detector,
    IdentifiersRule,
    IdentifiersSettings,
    Report,
    nhs_number_valid,
    nric_valid,
    scan_text,
)
from tests.held_files import held

NHS = "943 476 5919"  # the NHS's own example of a valid number
NRIC = "S1234567D"


def judge(path: Path, name: str | None = None, **config: object) -> RuleResult:
    section = ChecksConfig.model_validate({"identifiers": config}).rule_config("identifiers")
    file = held(path, name)
    result = IdentifiersRule().check(file, section, CheckContext(files=(file,)))
    assert result.rule == "identifiers"
    assert result.version == "2"
    return result


def log(tmp_path: Path, text: str, name: str = "step-1.stdout") -> RuleResult:
    path = tmp_path / name
    path.write_text(text)
    return judge(path, name=name)


def hits(result: RuleResult) -> list[tuple[str, str | None, int | None, str | None]]:
    return [(f.message, f.column, f.row, f.excerpt) for f in result.findings if f.verdict is not Verdict.PASS]


def nhs_number(nine: str) -> str | None:
    check = 11 - sum(int(d) * w for d, w in zip(nine, range(10, 1, -1), strict=True)) % 11
    return None if check == 10 else nine + str(check % 11)


def nric(prefix: str, seven: str) -> str:
    total = sum(int(d) * w for d, w in zip(seven, (2, 7, 6, 5, 4, 3, 2), strict=True))
    total += {"T": 4, "G": 4, "M": 3}.get(prefix, 0)
    table = "JZIHGFEDCBA" if prefix in "ST" else "XWUTRQPNMLK" if prefix in "FG" else "XWUTRQPNJLK"
    return prefix + seven + table[total % 11]


# Check digits -----------------------------------------------------------------------------------------


def test_nhs_check_digit() -> None:
    assert nhs_number_valid("9434765919")
    assert not nhs_number_valid("9434765918")
    assert not nhs_number_valid("1111111111")  # passes the sum, never issued
    assert not nhs_number_valid("943476591")


@pytest.mark.parametrize("value", ["S1234567D", "T0123456G", "F1234567N", "G1234567X", "M1234567K"])
def test_nric_check_letters_of_every_series(value: str) -> None:
    assert nric_valid(value)
    assert not nric_valid(value[:-1] + ("A" if value[-1] != "A" else "B"))


# Text -------------------------------------------------------------------------------------------------


def test_every_kind_in_a_log_is_found_and_masked(tmp_path: Path) -> None:
    text = (
        "starting\n"
        f"patient {NHS} seen\n"
        "contact jane.doe@example.org or +44 20 7946 0958\n"
        "mobile 07700 900123, SG +65 9123 4567\n"
        "lives at SW1A 1AA\n"
        "DOB: 12/03/1980, born on 3 March 1975\n"
        f"nric {NRIC} and fin M1234567K\n"
    )
    result = log(tmp_path, text)
    assert result.verdict is Verdict.FAIL
    assert hits(result) == [
        ("NHS number (valid check digit)", None, 2, "943 *** ****"),
        ("email address", None, 3, "j***@***.org"),
        ("UK phone number", None, 3, "+44 2* **** ****"),
        ("UK phone number", None, 4, "077** ******"),
        ("Singapore phone number", None, 4, "+65 9*** ****"),
        ("full UK postcode", None, 5, "SW1A ***"),
        ("full date of birth", None, 6, "**/**/****"),
        ("full date of birth", None, 6, "* ***** ****"),
        ("Singapore NRIC/FIN (valid check letter)", None, 7, "*****567D"),
        ("Singapore NRIC/FIN (valid check letter)", None, 7, "*****567K"),
    ]
    shown = json.dumps([f.__dict__ for f in result.findings], default=str)
    for secret in ("9434765919", "943 476 5919", "jane.doe", "7946 0958", "900123", "1AA", "1980", NRIC):
        assert secret not in shown


def test_lookalikes_are_not_identifiers(tmp_path: Path) -> None:
    text = (
        "wrong check digit 943 476 5918 and 9434765918\n"
        "part of a longer number 19434765919 and 94347659190\n"
        "decimals 0.9434765919 and 9434765919.5\n"
        "repeated 1111111111\n"
        "nric with wrong letter S1234567A and embedded XS1234567D\n"
        "plain eight digits 91234567 and 81234567 (no +65)\n"
        "a date on its own: 12/03/1980, admitted 1980-03-12\n"
        "postcode-like codes: E11.9, C50 and lowercase sw1a 1aa\n"
        "ages 0 1 2 3 4 5 6 7 8 9 10 and counts 01234 5678\n"
        "not an email: user@localhost, @mention\n"
        "born in 1980 (a year only), birth_year=1980\n"
    )
    result = log(tmp_path, text)
    assert hits(result) == []
    assert result.verdict is Verdict.PASS
    assert "11 lines" in result.findings[0].message


def test_a_birth_word_must_be_near_the_date(tmp_path: Path) -> None:
    far = "date of birth recorded elsewhere" + " " * 60 + "1980-03-12\n"
    assert hits(judge_text(tmp_path, far)) == []
    assert len(hits(judge_text(tmp_path, far, dob_window=100))) == 1


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("B33 8TH", "full UK postcode"),
        ("EC1A 1BB", "full UK postcode"),
        ("M1 1AE", "full UK postcode"),
        ("CR2 6XH", "full UK postcode"),
        ("DN55 1PT", "full UK postcode"),
        ("W1A0AX", "full UK postcode"),
        ("(020) 7946 0958", "UK phone number"),
        ("0161 496 0000", "UK phone number"),
        ("+44 (0) 7700 900123", "UK phone number"),
        ("0044 20 7946 0958", "UK phone number"),
        ("07700900123", "UK phone number"),
        ("+6561234567", "Singapore phone number"),
        ("0065 8123-4567", "Singapore phone number"),
        ("first.last+tag@mail.example.co.uk", "email address"),
        ("DOB 1980/03/12", "full date of birth"),
        ("born 3rd Mar. 1975", "full date of birth"),
        ("date_of_birth=March 12, 1980", "full date of birth"),
        ("BirthDate: 12.03.1980", "full date of birth"),
        ("943-476-5919", "NHS number (valid check digit)"),
        ("g1234567x", "Singapore NRIC/FIN (valid check letter)"),
    ],
)
def test_each_written_form_is_found(tmp_path: Path, text: str, label: str) -> None:
    assert [message for message, *_ in hits(judge_text(tmp_path, f"x: {text};\n"))] == [label]


def judge_text(tmp_path: Path, text: str, **config: object) -> RuleResult:
    path = tmp_path / "step-2.stderr"
    path.write_text(text)
    return judge(path, name="step-2.stderr", **config)


def test_kinds_can_be_switched_off_and_unknown_kinds_are_refused(tmp_path: Path) -> None:
    text = "mail a@example.org\n"
    assert judge_text(tmp_path, text, kinds={"email": False}).verdict is Verdict.PASS
    assert judge_text(tmp_path, text, kinds={"nhs_number": False}).verdict is Verdict.FAIL
    path = tmp_path / "x.stdout"
    path.write_text(text)
    file = held(path, "step-0.stdout")
    result = IdentifiersRule().check(file, {"kinds": {"passport": True}}, CheckContext(files=(file,)))
    assert result.verdict is Verdict.FAIL
    assert "passport" in result.findings[0].message


def test_allowed_email_domains(tmp_path: Path) -> None:
    text = "ask support@tre.example.ac.uk or help@example.ac.uk\n"
    result = judge_text(tmp_path, text, allow_email_domains=["example.ac.uk"])
    assert result.verdict is Verdict.PASS


def test_the_review_verdict(tmp_path: Path) -> None:
    assert judge_text(tmp_path, f"{NHS}\n", verdict="review").verdict is Verdict.REVIEW


def test_findings_are_capped_and_the_rest_counted(tmp_path: Path) -> None:
    result = judge_text(tmp_path, f"{NHS} {NHS}\n" * 30 + "a@example.org\n", max_findings=9)
    assert len(hits(result)) == 11
    messages = [f.message for f in result.findings]
    assert "1 more of kind NHS number (valid check digit) not listed" in messages  # the 10th, on line 5
    assert (
        "26 more lines or values may hold identifiers; once 9 were listed the rest were only counted"
        in messages
    )


def test_a_parquet_column_of_nhs_numbers_is_checked_at_arrow_speed(tmp_path: Path) -> None:
    rng = random.Random(5)
    numbers = [int(n) for n in (nhs_number(f"{rng.randrange(10**8, 10**9)}") for _ in range(5_000)) if n]
    wrong = [n + 1 if n % 10 != 9 else n - 1 for n in numbers[:100]]
    assert not any(nhs_number_valid(str(n)) for n in wrong)
    path = tmp_path / "ids.parquet"
    pq.write_table(
        pa.table({"nhs": pa.array(wrong + numbers + [1111111111, 12, -9434765919], pa.int64())}), path
    )
    result = judge(path, max_findings=3)
    assert [(f.row, f.excerpt) for f in result.findings[:3]] == [
        (101, f"{str(numbers[0])[:3]}*******"),
        (102, f"{str(numbers[1])[:3]}*******"),
        (103, f"{str(numbers[2])[:3]}*******"),
    ]
    assert (
        result.findings[3].message
        == f"{len(numbers) - 3:,} more of kind NHS number (valid check digit) not listed"
    )


# Read boundaries ----------------------------------------------------------------------------------------


def scan(text: bytes, piece_bytes: int, **config: object) -> list[tuple[str, int | None, str | None]]:
    """Scan `text` as a log read `piece_bytes` at a time: (message, line, excerpt) of each hit."""
    settings_ = IdentifiersSettings.model_validate(config)
    report = Report(settings_)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "log.txt"
        path.write_bytes(text)
        scan_text(path, Detector(settings_), report, piece_bytes=piece_bytes)
    return [(f.message, f.row, f.excerpt) for f in report.findings]


@pytest.mark.parametrize("piece_bytes", [16, 50, 1000, 1 << 20])
def test_identifiers_across_piece_boundaries_are_found_once(piece_bytes: int) -> None:
    lines = [f"row {i} {'x' * (i % 37)} {NHS} {NRIC} tail" for i in range(60)]
    found = scan(("\n".join(lines) + "\n").encode(), piece_bytes, max_findings=500)
    assert [(row, excerpt) for _, row, excerpt in found] == [
        (row, excerpt) for row in range(1, 61) for excerpt in ("943 *** ****", "*****567D")
    ]


@pytest.mark.parametrize("piece_bytes", [64, 333, 4096])
def test_a_line_longer_than_a_piece_is_cut_with_an_overlap(piece_bytes: int) -> None:
    rng = random.Random(piece_bytes)
    parts, expected = [], 0
    for _ in range(200):
        parts.append("".join(rng.choices(string.ascii_lowercase + " ,;", k=rng.randrange(0, 90))))
        parts.append(f" {NHS} ")
        expected += 1
    text = ("first line\n" + "".join(parts) + "\nlast line " + NRIC + "\n").encode()
    found = scan(text, piece_bytes, max_findings=500)
    assert [row for _, row, _ in found] == [2] * expected + [3]


valid_nhs = (
    st.from_regex(r"[0-9]{9}", fullmatch=True)
    .map(nhs_number)
    .filter(lambda n: n is not None and len(set(n)) > 1)
)
valid_nric = st.builds(nric, st.sampled_from("STFGM"), st.from_regex(r"[0-9]{7}", fullmatch=True))
filler = st.text(alphabet=string.ascii_letters + " \n\t,.;:!?()-_'\"", max_size=3000)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    before=filler,
    after=filler,
    number=valid_nhs,
    spaced=st.booleans(),
    card=valid_nric,
    piece_bytes=st.integers(min_value=8, max_value=2048),
)
def test_any_valid_nhs_number_or_nric_anywhere_in_text_is_found(
    before: str, after: str, number: str, spaced: bool, card: str, piece_bytes: int
) -> None:
    shown = f"{number[:3]} {number[3:6]} {number[6:]}" if spaced else number
    text = f"{before} {shown} {after[: len(after) // 2]} {card} {after[len(after) // 2 :]}"
    found = scan(text.encode(), piece_bytes, kinds={"email": False, "phone": False, "postcode": False})
    kinds = [message for message, _, _ in found]
    assert kinds.count("NHS number (valid check digit)") == 1
    assert kinds.count("Singapore NRIC/FIN (valid check letter)") == 1
    line_of_number = before.count("\n") + 1
    assert found[0][1] == line_of_number


@settings(max_examples=100, deadline=None)
@given(number=st.from_regex(r"[0-9]{10}", fullmatch=True))
def test_ten_digit_numbers_are_flagged_exactly_when_their_check_digit_is_valid(number: str) -> None:
    found = scan(f"value {number} end\n".encode(), 1 << 20, kinds={"phone": False})
    assert bool(found) is nhs_number_valid(number)


# Tables ---------------------------------------------------------------------------------------------


def test_csv_hits_name_their_data_row_and_column(tmp_path: Path) -> None:
    path = tmp_path / "cohort.csv"
    path.write_text(
        "id,note,contact\n"
        '1,"a note\nover two lines",none\n'
        f'2,"said ""{NHS}"", twice",x\n'
        "3,fine,bob@example.com\n"
    )
    assert hits(judge(path)) == [
        ("NHS number (valid check digit)", "note", 2, "943 *** ****"),
        ("email address", "contact", 3, "b***@***.com"),
    ]


def test_a_hit_in_a_quoted_continuation_line_keeps_its_row(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(f'id,note\n1,"first line\nsecond {NRIC}"\n2,plain\n')
    assert hits(judge(path)) == [("Singapore NRIC/FIN (valid check letter)", None, 1, "*****567D")]


def test_a_tsv_and_its_header(tmp_path: Path) -> None:
    path = tmp_path / "t.tsv"
    path.write_text(f"group\t{NHS}\na, b\t12\n")
    assert hits(judge(path)) == [("NHS number (valid check digit) in the header", None, None, "943 *** ****")]


def test_birth_date_columns_flag_every_full_date(tmp_path: Path) -> None:
    path = tmp_path / "cohort.csv"
    path.write_text(
        "id,date_of_birth,birth_year,admitted\n1,1980-03-12,1980,2020-01-01\n2,,1975,2021-02-02\n3,12/03/1975,1975,\n"
    )
    assert hits(judge(path)) == [
        ("full date of birth", "date_of_birth", 1, "****-**-**"),
        ("full date of birth", "date_of_birth", 3, "**/**/****"),
    ]
    assert judge(path, kinds={"date_of_birth": False}).verdict is Verdict.PASS


def test_parquet_columns_of_each_type(tmp_path: Path) -> None:
    path = tmp_path / "cohort.parquet"
    table = pa.table(
        {
            "note": ["ok", f"nhs {NHS}", None],
            "nhs": pa.array([9434765919, 9434765918, 123], pa.int64()),
            "dob": [datetime.date(1980, 3, 12), None, datetime.date(1990, 1, 1)],
            "tags": [["a"], [], ["b"]],
            "value": [1.5, 2.5, 3.5],
        }
    )
    pq.write_table(table, path)
    result = judge(path)
    assert hits(result) == [
        ("NHS number (valid check digit)", "note", 2, "943 *** ****"),
        ("NHS number (valid check digit)", "nhs", 1, "943*******"),
        ("full date of birth", "dob", 1, "****-**-**"),
        ("full date of birth", "dob", 3, "****-**-**"),
        ("nested values, which this rule does not read", "tags", None, None),
    ]
    assert result.verdict is Verdict.FAIL


def test_json_records_name_their_key_and_line(tmp_path: Path) -> None:
    path = tmp_path / "cohort.jsonl"
    records = [
        {"id": 1, "email": "x@example.org"},
        {"id": 2, "dob": "1980-03-12"},
        {"id": 3, "nric": "T0123456G"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert hits(judge(path)) == [
        ("email address", "email", 1, "x***@***.org"),
        ("full date of birth", "dob", 2, "****-**-**"),
        ("Singapore NRIC/FIN (valid check letter)", "nric", 3, "*****456G"),
    ]


def test_clean_tables_pass(tmp_path: Path) -> None:
    path = tmp_path / "table.csv"
    path.write_text(
        "region,year,n,rate\n" + "".join(f"r{i},{2000 + i % 20},{i * 37},{i / 7:.6f}\n" for i in range(5_000))
    )
    result = judge(path)
    assert result.verdict is Verdict.PASS
    assert "5,000 rows" in result.findings[0].message


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("piece_bytes", [40, 97, 1 << 20])
def test_csv_rows_stay_exact_across_pieces_and_quoted_line_breaks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, piece_bytes: int, threads: int
) -> None:
    from fivesafes_tes.egress.checks import _parallel

    monkeypatch.setattr(_parallel, "_threads", threads)  # pieces pre-filtered on threads, judged in order
    rows = []
    for i in range(1, 41):
        note = f'"line one\nline two, {NHS}"' if i % 3 == 0 else f"plain {i}"
        rows.append(f"{i},{note},{NRIC if i % 5 == 0 else 'none'}\n")
    path = tmp_path / "t.csv"
    path.write_text("id,note,card\n" + "".join(rows))
    settings_ = IdentifiersSettings.model_validate({"max_findings": 500})
    report = Report(settings_)
    table = Delimited(b",", ["id", "note", "card"])
    scan_text(path, Detector(settings_), report, table, piece_bytes=piece_bytes)
    # A hit on the second line of a quoted value keeps its row; its column is not worked out.
    expected = [(i, "-", "943 *** ****") for i in range(3, 41, 3)]
    expected += [(i, "-" if i % 3 == 0 else "card", "*****567D") for i in range(5, 41, 5)]
    found = [(f.row, f.column or "-", f.excerpt) for f in report.findings]
    assert sorted(found) == sorted(expected)
    assert table.records == 41


@pytest.mark.parametrize("at", [0, 4090, 4096, 4100, 8187, 20_000, 39_960])
def test_a_long_line_is_searched_in_overlapping_windows(at: int) -> None:
    line = bytearray(b"x" * 40_000)
    token = f" {NHS} DOB 12/03/1980 ".encode()
    line[at : at + len(token)] = token
    found = scan(bytes(line) + b"\n", 1 << 20)
    assert [(message, row) for message, row, _ in found] == [
        ("NHS number (valid check digit)", 1),
        ("full date of birth", 1),
    ]


@pytest.mark.parametrize("delimiter", [",", "\t", ";", "|"])
def test_an_nhs_number_between_numeric_fields_is_found_whatever_the_delimiter(
    tmp_path: Path, delimiter: str
) -> None:
    rows = [["a", "b", "c"], ["1", NHS, "3"], ["12", "9434765919", "7"], ["0.5", "9434765919.0", "-2"]]
    path = tmp_path / ("t.tsv" if delimiter == "\t" else "t.csv")
    path.write_text("".join(delimiter.join(row) + "\n" for row in rows))
    assert [(column, row) for _, column, row, _ in hits(judge(path))] == [("b", 1), ("b", 2), ("b", 3)]


def test_a_parquet_column_of_nhs_numbers_stored_as_floats_or_decimals(tmp_path: Path) -> None:
    path = tmp_path / "ids.parquet"
    table = pa.table(
        {
            "nhs": [None, 9434765919.0, 9434765918.0, 9434765919.5],
            "exact": pa.array([1, 9434765919, 3, 4], pa.decimal128(12, 0)),
        }
    )
    pq.write_table(table, path)
    assert [(column, row, excerpt) for _, column, row, excerpt in hits(judge(path))] == [
        ("nhs", 2, "943*******"),
        ("exact", 2, "943*******"),
    ]
