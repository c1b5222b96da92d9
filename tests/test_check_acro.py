"""ACRO's verdicts honoured, on output folders made by the real `acro` package.

ACRO runs in a subprocess, as it would in the researcher's container: it configures logging and
writes scratch files in the working directory when imported and used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fivesafes_tes.egress.checks import ChecksConfig, HeldFile, Verdict, run_checks
from fivesafes_tes.egress.checks.acro import AcroRule
from fivesafes_tes.egress.checks.base import CheckContext, RuleResult
from fivesafes_tes.egress.held import OutputKey

FOLDER = "/outputs/acro"

ANALYSIS = textwrap.dedent(
    """
    import numpy as np
    import pandas as pd
    import statsmodels.api as sm
    from acro import ACRO

    rng = np.random.default_rng(7)
    n = 200
    df = pd.DataFrame({
        "year": rng.choice([2010, 2011], n),
        "grant_type": rng.choice(list("ABCD"), n, p=[0.45, 0.45, 0.08, 0.02]),
        "inc": rng.normal(100, 10, n),
        "x1": rng.normal(size=n),
    })
    big = pd.DataFrame({"a": rng.choice([0, 1], 4000), "b": rng.choice([0, 1], 4000)})

    acro = ACRO(suppress=False)
    acro.crosstab(df.year, df.grant_type)                                   # output_0: small cells
    acro.crosstab(df.year, df.grant_type, values=df.inc, aggfunc="mean")   # output_1: small cells, dominance
    acro.crosstab(big.a, big.b)                                             # output_2: passes
    acro.ols(df.inc, sm.add_constant(df.x1))                                # output_3: regression, passes
    with open("method.txt", "w") as handle:
        handle.write("Counts by year and grant type; see the tables.\\n")
    acro.custom_output("method.txt", "how the tables were made")            # output_4: custom, review
    pd.DataFrame({"id": [1, 2]}).to_csv("extract-DONT_RELEASE.csv", index=False)
    # output_5: custom, named not to release
    acro.custom_output("extract-DONT_RELEASE.csv", "for my own checking")
    acro.add_exception("output_0", "grant type D is a national scheme; its counts are published")
    acro.finalise("acro_out", "json")
    """
)


@pytest.fixture(scope="module")
def acro_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("analysis")
    env = {**os.environ, "MPLBACKEND": "Agg"}
    run = subprocess.run(
        [sys.executable, "-c", ANALYSIS],
        check=False,
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return workdir / "acro_out"


@pytest.fixture
def folder(acro_folder: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "acro_out"
    shutil.copytree(acro_folder, copy)
    return copy


def held_tree(root: Path, prefix: str = FOLDER) -> list[HeldFile]:
    files = []
    for path in sorted(root.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            name = f"{prefix}/{path.relative_to(root).as_posix()}"
            files.append(HeldFile(OutputKey(name), len(data), hashlib.sha256(data).hexdigest(), path))
    return files


def judge_all(files: list[HeldFile], **overrides: object) -> dict[str, RuleResult]:
    cfg = ChecksConfig.model_validate({"acro": overrides}).rule_config("acro")
    rule, context = AcroRule(), CheckContext(files=tuple(files), project="alpha")
    return {f.name.removeprefix(f"{FOLDER}/"): rule.check(f, cfg, context) for f in files}


def messages(result: RuleResult) -> str:
    return "\n".join(f.message for f in result.findings)


def test_what_acro_really_writes(acro_folder):
    results = json.loads((acro_folder / "results.json").read_text())
    assert results["tool"]["name"] == "ACRO"
    records = results["results"]
    assert {uid: r["status"] for uid, r in records.items()} == {
        "output_0": "fail",
        "output_1": "fail",
        "output_2": "pass",
        "output_3": "pass",
        "output_4": "review",
        "output_5": "review",
        "2ndary_risk_summary_json-DONT_RELEASE": "review",
        "2ndary_risk_summary_csv-DONT_RELEASE": "review",
    }
    assert records["output_0"]["exception"].startswith("grant type D")
    assert records["output_0"]["files"][0]["sdc"]["cells"]["MinimumThresholdCheck"]
    assert (acro_folder / "config.json").exists()
    assert (acro_folder / "checksums" / "results.json.txt").exists()


def test_each_output_gets_acros_status(folder):
    results = judge_all(held_tree(folder))
    verdicts = {name: r.verdict for name, r in results.items()}
    assert verdicts["output_0_0.csv"] is Verdict.REVIEW  # failed, with an exception requested
    assert verdicts["output_1_0.csv"] is Verdict.FAIL
    assert verdicts["output_2_0.csv"] is Verdict.PASS
    assert [verdicts[f"output_3_{i}.csv"] for i in range(3)] == [Verdict.PASS] * 3
    assert verdicts["method.txt"] is Verdict.REVIEW
    assert verdicts["extract-DONT_RELEASE.csv"] is Verdict.FAIL
    assert verdicts["session_summary.json"] is Verdict.FAIL
    assert verdicts["session_summary.csv"] is Verdict.FAIL
    assert verdicts["results.json"] is Verdict.REVIEW
    assert verdicts["config.json"] is Verdict.REVIEW
    checksums = {n: v for n, v in verdicts.items() if n.startswith("checksums/")}
    assert checksums.pop("checksums/extract-DONT_RELEASE.csv.txt") is Verdict.FAIL  # the name says so
    assert set(checksums.values()) == {Verdict.PASS}

    summary = messages(results["results.json"])
    assert "ACRO's record of 8 outputs (2 fail, 2 pass, 4 review; exceptions requested for 1)" in summary
    assert "exception: 'grant type D is a national scheme" in messages(results["output_0_0.csv"])
    assert "how the tables were made" in messages(results["method.txt"])
    assert "is named 'DONT_RELEASE': never released" in messages(results["extract-DONT_RELEASE.csv"])
    assert "marked 'DONT_RELEASE' by ACRO: never released" in messages(results["session_summary.csv"])
    never = {name for name, result in results.items() if any(f.never_release for f in result.findings)}
    assert never == {  # failed by ACRO is for a checker to weigh; marked not to release is final
        "extract-DONT_RELEASE.csv",
        "checksums/extract-DONT_RELEASE.csv.txt",
        "session_summary.csv",
        "session_summary.json",
    }


def test_flagged_cells_name_row_column_check_and_threshold(folder):
    results = judge_all(held_tree(folder))
    outcome = json.loads((folder / "results.json").read_text())["results"]["output_1"]["outcome"]
    flagged = {
        (row, col) for col, rows in outcome.items() for row, status in rows.items() if "Threshold" in status
    }
    cells = [f for f in results["output_1_0.csv"].findings if "MinimumThresholdCheck flagged" in f.message]
    assert {(str(c.message.split("row '")[1].split("'")[0]), c.column) for c in cells} == flagged
    header = (folder / "output_1_0.csv").read_text().splitlines()[0].split(",")
    for cell in cells:
        assert cell.verdict is Verdict.FAIL
        assert cell.threshold == "safe_threshold=10"
        assert cell.column in header
        assert cell.row in (1, 2)
        assert cell.message.startswith("acro v1: /outputs/acro/output_1_0.csv: ACRO MinimumThresholdCheck")
    dominance = [f for f in results["output_1_0.csv"].findings if "NKCheck flagged" in f.message]
    assert dominance
    assert dominance[0].threshold == "safe_nk_n=2, safe_nk_k=0.9"
    capped = judge_all(held_tree(folder), max_cell_findings=1)["output_1_0.csv"]
    assert "ACRO flagged" in capped.findings[-1].message
    assert capped.findings[-1].threshold == "max_cell_findings=1"


def test_a_file_acro_never_saw_needs_review_or_fails(folder):
    (folder / "extra_table.csv").write_text("a,b\n1,2\n")
    assert judge_all(held_tree(folder))["extra_table.csv"].verdict is Verdict.REVIEW
    result = judge_all(held_tree(folder), unlisted="fail")["extra_table.csv"]
    assert result.verdict is Verdict.FAIL
    assert "does not list it: ACRO never checked it" in messages(result)


def test_a_file_changed_after_acro_checked_it(folder):
    with (folder / "output_2_0.csv").open("a") as handle:
        handle.write("2,1,1\n")
    result = judge_all(held_tree(folder))["output_2_0.csv"]
    assert result.verdict is Verdict.FAIL
    assert "its SHA-256 differs from checksums/output_2_0.csv.txt" in messages(result)
    checksum = judge_all(held_tree(folder))["checksums/output_2_0.csv.txt"]
    # no longer the checksum of a held file, so it could carry anything
    assert checksum.verdict is Verdict.REVIEW


def test_acros_passes_need_review_when_its_thresholds_were_weaker_or_unknown(folder):
    settings = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**settings, "safe_threshold": 3}))
    results = judge_all(held_tree(folder))
    assert results["output_2_0.csv"].verdict is Verdict.REVIEW
    assert "ACRO ran with safe_threshold=3 (this TRE requires at least 10)" in messages(
        results["output_2_0.csv"]
    )
    assert "ACRO ran with safe_threshold=3" in messages(results["results.json"])
    assert results["output_1_0.csv"].verdict is Verdict.FAIL
    (folder / "config.json").unlink()
    assert judge_all(held_tree(folder))["output_2_0.csv"].verdict is Verdict.REVIEW
    assert judge_all(held_tree(folder), min_safe_threshold=3)["output_2_0.csv"].verdict is Verdict.REVIEW


def test_acros_own_files_may_pass_by_config(folder):
    results = judge_all(held_tree(folder), metadata="pass")
    assert results["results.json"].verdict is Verdict.PASS
    assert results["config.json"].verdict is Verdict.PASS


def test_a_listed_output_that_was_not_held_is_reported(folder):
    (folder / "output_3_2.csv").unlink()
    result = judge_all(held_tree(folder))["results.json"]
    assert "ACRO lists output_3_2.csv (output 'output_3') but it was not held" in messages(result)


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda text: text[: len(text) // 2], "not valid JSON at line"),
        (
            lambda text: json.dumps({**json.loads(text), "results": ["output_0"]}),
            "'results' is not a mapping",
        ),
        (
            lambda text: json.dumps(
                {**json.loads(text), "results": {"output_0": {"status": "pass", "files": [{"sdc": {}}]}}}
            ),
            "lists a file without a name",
        ),
    ],
)
def test_a_malformed_results_json_fails_the_whole_folder_closed(folder, damage, why):
    results_json = folder / "results.json"
    results_json.write_text(damage(results_json.read_text()))
    results = judge_all(held_tree(folder))
    assert {r.verdict for r in results.values()} == {Verdict.FAIL}
    assert why in messages(results["output_2_0.csv"])
    assert "nothing in this folder leaves until results.json is fixed or removed" in messages(
        results["results.json"]
    )


def test_an_unknown_acro_status_fails(folder):
    results_json = folder / "results.json"
    data = json.loads(results_json.read_text())
    data["results"]["output_2"]["status"] = "probably fine"
    results_json.write_text(json.dumps(data))
    result = judge_all(held_tree(folder))["output_2_0.csv"]
    assert result.verdict is Verdict.FAIL
    assert "has status 'probably fine', not pass, review or fail" in messages(result)


def test_outside_an_acro_folder_the_rule_has_nothing_to_say_except_dont_release(tmp_path, folder):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "counts.csv").write_text("a,b\n1,2\n")
    (tmp_path / "plain" / "results.json").write_text(json.dumps({"accuracy": 0.93}))  # not ACRO's
    (tmp_path / "plain" / "notes-dont-release.txt").write_text("mine\n")
    files = held_tree(tmp_path / "plain", "/outputs/plain") + held_tree(folder)
    rule, context = AcroRule(), CheckContext(files=tuple(files))
    cfg = ChecksConfig().rule_config("acro")
    by_name = {f.name: rule.check(f, cfg, context) for f in files}
    assert by_name["/outputs/plain/counts.csv"].verdict is Verdict.PASS
    assert by_name["/outputs/plain/counts.csv"].findings == []
    assert by_name["/outputs/plain/results.json"].verdict is Verdict.PASS
    assert by_name["/outputs/plain/notes-dont-release.txt"].verdict is Verdict.FAIL
    assert by_name[f"{FOLDER}/output_1_0.csv"].verdict is Verdict.FAIL


def test_through_the_runner_the_worst_rule_wins(folder):
    reports = run_checks(held_tree(folder), ChecksConfig(enabled=["file_type", "acro"]), "alpha")
    verdicts = {r.file.name.removeprefix(f"{FOLDER}/"): r.verdict for r in reports}
    assert verdicts["output_2_0.csv"] is Verdict.PASS
    assert verdicts["output_1_0.csv"] is Verdict.FAIL
    assert verdicts["output_0_0.csv"] is Verdict.REVIEW
    assert verdicts["session_summary.json"] is Verdict.FAIL
    assert all(not result.error for report in reports for result in report.results)
    never = {  # the marking crosses from the check process as data
        r.file.name.removeprefix(f"{FOLDER}/")
        for r in reports
        if any(f.never_release for result in r.results for f in result.findings)
    }
    assert "extract-DONT_RELEASE.csv" in never
    assert "output_1_0.csv" not in never
