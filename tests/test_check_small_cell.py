"""The small-cell rule on real tables made here: CSV, TSV, Parquet, JSON; counts at and around the
threshold, zeros under each policy, suppression markers, and tables larger than one read."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fivesafes_tes.egress.checks import ChecksConfig, Verdict
from fivesafes_tes.egress.checks.base import CheckContext, RuleResult
from fivesafes_tes.egress.checks.small_cell import SmallCellRule
from tests.held_files import held


def judge(path: Path, name: str | None = None, **settings: object) -> RuleResult:
    config = ChecksConfig.model_validate({"small_cell": settings}).rule_config("small_cell")
    file = held(path, name)
    result = SmallCellRule().check(file, config, CheckContext(files=(file,)))
    assert result.rule == "small_cell"
    assert result.version == "2"
    return result


def listed(result: RuleResult, verdict: Verdict) -> list[tuple[str | None, int | None]]:
    return [(f.column, f.row) for f in result.findings if f.verdict is verdict and f.row is not None]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


AGGREGATE = "region,age_band,n_patients,rate\nNorth,0-17,120,1.5\nNorth,18-64,45,2.25\nSouth,0-17,10,0.5\n"


def test_an_aggregate_table_with_every_count_at_or_above_the_threshold_passes(tmp_path: Path) -> None:
    result = judge(write(tmp_path, "table.csv", AGGREGATE))
    assert result.verdict is Verdict.PASS
    assert "n_patients" in result.findings[-1].message
    assert "3 rows" in result.findings[-1].message


@pytest.mark.parametrize(("value", "verdict"), [(9, Verdict.FAIL), (10, Verdict.PASS), (3, Verdict.FAIL)])
def test_the_threshold_is_exclusive(tmp_path: Path, value: int, verdict: Verdict) -> None:
    path = write(tmp_path, "t.csv", f"group,count\na,50\nb,{value}\n")
    result = judge(path)
    assert result.verdict is verdict
    if verdict is Verdict.FAIL:
        (finding,) = [f for f in result.findings if f.verdict is Verdict.FAIL]
        assert (finding.column, finding.row, finding.excerpt, finding.threshold) == ("count", 2, "<10", "10")
        assert str(value) not in finding.message  # the value itself is never shown


def test_the_threshold_comes_from_the_tre_or_project(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", "group,n\na,15\nb,25\n")
    assert judge(path).verdict is Verdict.PASS
    result = judge(path, threshold=20)
    assert listed(result, Verdict.FAIL) == [("n", 1)]
    assert result.findings[0].excerpt == "<20"


@pytest.mark.parametrize(
    ("zeros", "verdict"), [("pass", Verdict.PASS), ("review", Verdict.REVIEW), ("fail", Verdict.FAIL)]
)
def test_zeros_follow_the_policy(tmp_path: Path, zeros: str, verdict: Verdict) -> None:
    path = write(tmp_path, "t.csv", "group,cases\na,0\nb,30\n")
    result = judge(path, zeros=zeros)
    assert result.verdict is verdict
    assert listed(result, verdict) == ([] if zeros == "pass" else [("cases", 1)])


def test_zeros_default_to_review(tmp_path: Path) -> None:
    assert judge(write(tmp_path, "t.csv", "group,cases\na,0\n")).verdict is Verdict.REVIEW


def test_only_count_like_columns_are_judged(tmp_path: Path) -> None:
    text = "age,year,num_cases,mean_count,total_deaths\n3,2019,40,2.5,12\n5,2020,41,3.5,14\n"
    result = judge(write(tmp_path, "t.csv", text))
    assert result.verdict is Verdict.PASS  # ages 3 and 5, and 2.5 "counts", are not counts
    assert "num_cases, total_deaths" in result.findings[-1].message


def test_a_fractional_value_makes_a_count_named_column_a_measure(tmp_path: Path) -> None:
    result = judge(write(tmp_path, "t.csv", "group,n\na,3\nb,4.5\n"))
    assert result.verdict is Verdict.PASS
    assert "no count columns" in result.findings[0].message


def test_suppression_markers_are_not_counts_but_the_rest_still_are(tmp_path: Path) -> None:
    text = "group,n\na,<10\nb,*\nc,\nd, 12 \ne,3\nf,NA\n"
    assert listed(judge(write(tmp_path, "t.csv", text)), Verdict.FAIL) == [("n", 5)]


def test_a_cross_tabulation_is_found_by_its_content_whatever_its_columns_are_called(tmp_path: Path) -> None:
    text = "sex,2019,2020,age\nF,14,3,40\nM,22,31,41\n"
    path = write(tmp_path, "wide.csv", text)
    result = judge(path)
    assert listed(result, Verdict.FAIL) == [("2020", 1)]  # "age" names a variable, not a count
    assert "count columns 2019, 2020 over 2 rows" in result.findings[-1].message
    staged = write(tmp_path, "stages.csv", "site,stage I,stage II,stage IV\nA,40,12,3\nB,25,0,31\n")
    assert listed(judge(staged), Verdict.FAIL) == [("stage IV", 1)]
    assert listed(judge(staged), Verdict.REVIEW) == [("stage II", 2)]


def test_counting_by_content_can_be_switched_off_leaving_names_and_listed_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "wide.csv", "sex,2019,2020,age\nF,14,3,40\nM,22,31,41\n")
    assert judge(path, counts_by_content=False).verdict is Verdict.PASS
    assert listed(judge(path, counts_by_content=False, count_columns=["2020"]), Verdict.FAIL) == [("2020", 1)]


@pytest.mark.parametrize(
    ("table", "why"),
    [
        ("region,id,n\na,3,40\nb,7,52\n", "an id"),
        ("stage,sex,n\n1,1,40\n1,2,52\n4,2,33\n", "integer-coded categories"),
        ("age_band,imd quintile,n\n1,5,40\n2,3,52\n", "category words only"),
        ("rownum,total deaths\n1,40\n2,52\n3,61\n", "row numbers in the first column"),
        (",total deaths\n0,40\n1,52\n", "a written-out index"),
        ("region,diff,n\na,-3,40\nb,4,52\n", "a negative number"),
        ("region,level,ratio,n\na,2,0.5,40\nb,3,1.5,52\n", "a rate"),
        ("area,period start,n\na,2019,40\nb,2020,52\n", "years"),
        ("region,mean weight,n\na,7,40\nb,4,52\n", "a mean"),
        ("region,note,n\na,3 days,40\nb,seen twice,52\n", "text"),
    ],
)
def test_what_is_not_a_count_by_content(tmp_path: Path, table: str, why: str) -> None:
    result = judge(write(tmp_path, "t.csv", table))
    assert result.verdict is Verdict.PASS, why


def test_a_column_of_years_is_not_listed_as_counts(tmp_path: Path) -> None:
    result = judge(write(tmp_path, "t.csv", "area,opened,n\na,1998,40\nb,2020,52\n"))
    assert result.findings[-1].message == "checked count columns n over 2 rows"


def test_label_columns_are_never_counts_by_content(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", "ward,n\n3,40\n7,52\n")
    assert listed(judge(path), Verdict.FAIL) == [("ward", 1), ("ward", 2)]
    assert judge(path, label_columns=["ward"]).verdict is Verdict.PASS


@pytest.mark.parametrize("last", [300_001, 4])
def test_a_first_column_is_row_numbers_only_when_it_numbers_every_row(tmp_path: Path, last: int) -> None:
    path = tmp_path / "t.csv"
    with path.open("w") as out:
        out.write("stage IV,other\n")
        out.writelines(f"{i},{10 + i}\n" for i in range(1, 300_001))  # longer than one read
        out.write(f"{last},20\n")
    result = judge(path)
    if last == 4:
        assert result.verdict is Verdict.FAIL
        assert result.findings[-1].message == "checked count columns stage IV, other over 300,001 rows"
    else:
        assert result.verdict is Verdict.PASS
        assert result.findings[-1].message == "checked count columns other over 300,001 rows"


def test_a_column_named_like_counts_is_read_in_full_even_when_it_starts_with_markers(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", "group,n,note\n" + "a,<10,x\n" * 20_000 + "b,3,y\n")
    assert listed(judge(path), Verdict.FAIL) == [("n", 20_001)]


def test_a_tsv_is_read_with_its_delimiter(tmp_path: Path) -> None:
    path = write(tmp_path, "t.tsv", "region\tcount\nNorth, East\t4\nSouth\t40\n")
    assert listed(judge(path), Verdict.FAIL) == [("count", 1)]


def test_a_semicolon_csv_is_sniffed(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", "region;count\nNorth;4\nSouth;40\n")
    assert listed(judge(path), Verdict.FAIL) == [("count", 1)]


def test_quoted_line_breaks_do_not_shift_rows(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", 'label,n\n"two\nlines",20\nb,2\n')
    assert listed(judge(path), Verdict.FAIL) == [("n", 2)]


def test_parquet_with_typed_columns(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    table = pa.table(
        {"region": ["a", "b", "c"], "count": pa.array([12, 7, 0], pa.int32()), "rate": [0.1, 2.0, 3.0]}
    )
    pq.write_table(table, path)
    result = judge(path)
    assert listed(result, Verdict.FAIL) == [("count", 2)]
    assert listed(result, Verdict.REVIEW) == [("count", 3)]


def test_parquet_floats_holding_whole_numbers_are_counts(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"n": [12.0, 3.0]}), path)
    assert listed(judge(path), Verdict.FAIL) == [("n", 2)]


def test_json_array_of_objects(tmp_path: Path) -> None:
    records = [
        {"group": "a", "patients": 25},
        {"group": "b", "patients": 4},
        {"group": "c", "patients": "<10"},
    ]
    path = write(tmp_path, "t.json", json.dumps(records, indent=2))
    assert listed(judge(path), Verdict.FAIL) == [("patients", 2)]


def test_json_lines(tmp_path: Path) -> None:
    lines = [{"group": "a", "count": 11}, {"group": "b"}, {"group": "c", "count": 2}]
    path = write(tmp_path, "t.jsonl", "\n".join(json.dumps(r) for r in lines) + "\n")
    assert listed(judge(path), Verdict.FAIL) == [("count", 3)]


def test_json_that_is_not_records_is_not_a_table(tmp_path: Path) -> None:
    path = write(tmp_path, "summary.json", json.dumps({"counts": {"a": 3}}, indent=2))
    result = judge(path)
    assert result.verdict is Verdict.PASS
    assert "not a table" in result.findings[0].message


def test_text_and_logs_are_not_tables(tmp_path: Path) -> None:
    path = write(tmp_path, "step-1.stdout", "count,n\na,3\n")
    result = judge(path, name="step-1.stdout")
    assert result.verdict is Verdict.PASS
    assert "not a table" in result.findings[0].message


def test_a_ragged_table_fails_without_quoting_it(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", "group,n\nsecret-value,40\nonly-one-field\n")
    result = judge(path)
    assert result.verdict is Verdict.FAIL
    (finding,) = result.findings
    assert "1 field(s) where the header has 2" in finding.message
    assert "secret" not in finding.message
    assert "only-one" not in finding.message


def test_damaged_parquet_fails(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    path.write_bytes(b"PAR1 not really")
    result = judge(path)
    assert result.verdict is Verdict.FAIL
    assert "Parquet" in result.findings[0].message


def test_an_empty_table_passes(tmp_path: Path) -> None:
    assert judge(write(tmp_path, "t.csv", "")).verdict is Verdict.PASS
    assert judge(write(tmp_path, "h.csv", "group,n\n")).verdict is Verdict.PASS


def test_findings_are_capped_and_the_rest_counted(tmp_path: Path) -> None:
    text = "group,n\n" + "".join(f"g{i},3\n" for i in range(30))
    result = judge(write(tmp_path, "t.csv", text), max_findings=5)
    assert len(listed(result, Verdict.FAIL)) == 5
    assert any("30 counts below 10 in all, 25 not listed" in f.message for f in result.findings)


def test_a_large_table_is_streamed_and_types_may_change_far_down(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    with path.open("w") as out:
        out.write("region,n\n")
        out.writelines(f"r{i % 50},{100 + i % 900}\n" for i in range(400_000))
        out.write("late,<10\nlater,4\n")
    result = judge(path)
    assert listed(result, Verdict.FAIL) == [("n", 400_002)]


def test_invalid_settings_fail_with_the_key_named(tmp_path: Path) -> None:
    file = held(write(tmp_path, "t.csv", AGGREGATE))
    result = SmallCellRule().check(file, {"treshold": 5}, CheckContext(files=(file,)))
    assert result.verdict is Verdict.FAIL
    assert "treshold" in result.findings[0].message


def test_the_three_tabular_rules_run_through_the_registry_and_runner(tmp_path: Path) -> None:
    from fivesafes_tes.egress.checks import run_checks

    rows = "".join(f"{i},{i},x\n" for i in range(1, 201))
    path = write(tmp_path, "cohort.csv", f"person_id,n,note\n{rows}201,50,NHS 943 476 5919\n")
    config = ChecksConfig.model_validate({"enabled": ["small_cell", "record_level", "identifiers"]})
    (report,) = run_checks([held(path)], config, "diabetes-cancer")
    verdicts = {r.rule: (r.verdict, r.error) for r in report.results}
    assert verdicts == {
        "small_cell": (Verdict.FAIL, None),
        "record_level": (Verdict.FAIL, None),
        "identifiers": (Verdict.FAIL, None),
    }


def test_a_row_longer_than_a_read_block_fails_with_the_fix_named(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", "note,n\n" + "a,20\n" * 10 + "x" * (3 << 20) + ",5\n")
    result = judge(path)
    assert result.verdict is Verdict.FAIL
    assert "longer than 1 MiB; split long values" in result.findings[0].message
