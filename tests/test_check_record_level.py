"""The record-level rule on real tables made here: person-level data in each format fails, aggregate
tables pass, and each sign (a per-person key, the event-data shape, length) has its own verdict."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fivesafes_tes.egress.checks import ChecksConfig, Verdict
from fivesafes_tes.egress.checks.base import CheckContext, RuleResult
from fivesafes_tes.egress.checks.record_level import ID_WORDS, PERSON_WORDS, RecordLevelRule, _is_key_name
from tests.held_files import held


def judge(path: Path, name: str | None = None, **settings: object) -> RuleResult:
    config = ChecksConfig.model_validate({"record_level": settings}).rule_config("record_level")
    file = held(path, name)
    result = RecordLevelRule().check(file, config, CheckContext(files=(file,)))
    assert result.rule == "record_level"
    assert result.version == "1"
    return result


def flagged(result: RuleResult) -> dict[str | None, Verdict]:
    return {f.column: f.verdict for f in result.findings if f.verdict is not Verdict.PASS}


def person_rows(n: int) -> list[dict[str, object]]:
    return [
        {"person_id": 10_000 + i, "sex": "FM"[i % 2], "age": 20 + i % 60, "smoker": i % 3 == 0}
        for i in range(n)
    ]


def write_csv(path: Path, rows: list[dict[str, object]]) -> Path:
    names = list(rows[0])
    path.write_text(",".join(names) + "\n" + "".join(",".join(str(r[k]) for k in names) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("person_id", True),
        ("patient", True),
        ("PatientID", True),
        ("nhs_number", True),
        ("SubjectNo", True),
        ("id", True),
        ("eid", True),
        ("n_patients", False),
        ("patient_age", False),
        ("region_id", False),
        ("number", False),
        ("count", False),
        ("", False),
    ],
)
def test_key_names(name: str, key: bool) -> None:
    assert _is_key_name(name, set(PERSON_WORDS), set(ID_WORDS)) is key


def test_person_level_csv_fails_naming_the_key(tmp_path: Path) -> None:
    result = judge(write_csv(tmp_path / "cohort.csv", person_rows(500)))
    assert result.verdict is Verdict.FAIL
    (finding,) = [f for f in result.findings if f.column == "person_id"]
    assert finding.verdict is Verdict.FAIL
    assert "500 distinct among 500 values (100%)" in finding.message
    assert finding.threshold


def test_the_key_verdict_can_be_review(tmp_path: Path) -> None:
    result = judge(write_csv(tmp_path / "cohort.csv", person_rows(500)), id_column="review")
    assert result.verdict is Verdict.REVIEW


def test_a_repeated_key_naming_many_people_fails_too(tmp_path: Path) -> None:
    rows = [{"patient_id": f"P{i // 3:05d}", "visit": i % 3, "code": "E11"} for i in range(600)]
    result = judge(write_csv(tmp_path / "visits.csv", rows))
    assert flagged(result) == {"patient_id": Verdict.FAIL}
    assert "200 distinct" in result.findings[0].message


def test_an_aggregate_table_passes(tmp_path: Path) -> None:
    rows = [
        {"region": r, "age_band": a, "sex": s, "n_patients": 10 + i}
        for i, (r, a, s) in enumerate(
            (r, a, s) for r in "NSEW" for a in ("0-17", "18-64", "65+") for s in "FM"
        )
    ]
    result = judge(write_csv(tmp_path / "table.csv", rows))
    assert result.verdict is Verdict.PASS
    assert "24 rows" in result.findings[0].message


def test_a_few_rows_say_nothing_about_keys(tmp_path: Path) -> None:
    assert judge(write_csv(tmp_path / "t.csv", person_rows(50))).verdict is Verdict.PASS


def test_min_rows_is_configurable(tmp_path: Path) -> None:
    result = judge(write_csv(tmp_path / "t.csv", person_rows(50)), min_rows=20)
    assert flagged(result) == {"person_id": Verdict.FAIL}


def test_events_with_dates_and_free_text_need_review(tmp_path: Path) -> None:
    rows = [
        {
            "event_date": f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}",
            "note": f"seen at clinic {i * 7919 % 10007}",
            "ward": "W" + str(i % 4),
        }
        for i in range(300)
    ]
    result = judge(write_csv(tmp_path / "events.csv", rows))
    assert result.verdict is Verdict.REVIEW
    (finding,) = result.findings
    assert "event_date" in finding.message
    assert "note (100% distinct)" in finding.message
    assert judge(tmp_path / "events.csv", row_shape="pass").verdict is Verdict.PASS


def test_a_long_table_needs_review(tmp_path: Path) -> None:
    rows = [{"year": 2000 + i % 20, "region": f"r{i % 7}", "count": 50 + i % 11} for i in range(1_500)]
    path = write_csv(tmp_path / "long.csv", rows)
    result = judge(path)
    assert result.verdict is Verdict.REVIEW
    assert "1,500 data rows" in result.findings[0].message
    assert judge(path, max_rows=5_000).verdict is Verdict.PASS
    assert judge(path, many_rows="fail").verdict is Verdict.FAIL


def test_windows_bound_memory_and_still_see_keys(tmp_path: Path) -> None:
    result = judge(write_csv(tmp_path / "cohort.csv", person_rows(5_000)), window_rows=300, max_rows=10_000)
    assert flagged(result) == {"person_id": Verdict.FAIL}


def test_parquet_person_level(tmp_path: Path) -> None:
    path = tmp_path / "cohort.parquet"
    pq.write_table(pa.Table.from_pylist(person_rows(300)), path)
    assert flagged(judge(path)) == {"person_id": Verdict.FAIL}


def test_parquet_dates_are_typed(tmp_path: Path) -> None:
    import datetime

    path = tmp_path / "events.parquet"
    start = datetime.date(2020, 1, 1)
    pq.write_table(
        pa.table(
            {
                "admitted": [start + datetime.timedelta(days=i) for i in range(200)],
                "diagnosis_text": [f"text {i}" for i in range(200)],
            }
        ),
        path,
    )
    assert judge(path).verdict is Verdict.REVIEW


def test_json_records_person_level(tmp_path: Path) -> None:
    path = tmp_path / "cohort.json"
    path.write_text(json.dumps(person_rows(200)))
    assert flagged(judge(path)) == {"person_id": Verdict.FAIL}
    lines = tmp_path / "cohort.jsonl"
    lines.write_text("".join(json.dumps(r) + "\n" for r in person_rows(200)))
    assert flagged(judge(lines)) == {"person_id": Verdict.FAIL}


def test_json_keys_changing_type_are_compared_as_text(tmp_path: Path) -> None:
    rows = [{"id": i if i % 2 else f"x{i}"} for i in range(20_000)]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert flagged(judge(path, max_rows=100_000)) == {"id": Verdict.FAIL}


def test_not_a_table_passes_and_unreadable_fails(tmp_path: Path) -> None:
    log = tmp_path / "step-1.stderr"
    log.write_text("person_id\n1\n2\n")
    assert judge(log, name="step-1.stderr").verdict is Verdict.PASS
    ragged = tmp_path / "t.csv"
    ragged.write_text("a,b\n1,2\n3\n")
    result = judge(ragged)
    assert result.verdict is Verdict.FAIL
    assert "field" in result.findings[0].message


def test_invalid_settings_fail(tmp_path: Path) -> None:
    file = held(write_csv(tmp_path / "t.csv", person_rows(5)))
    result = RecordLevelRule().check(file, {"max_unique_fraction": 2}, CheckContext(files=(file,)))
    assert result.verdict is Verdict.FAIL
    assert "max_unique_fraction" in result.findings[0].message
