"""The rules' benchmark (`make bench`'s checks part) runs each rule as the agent does, in a fresh
interpreter: a change to what a rule is given (the held file, its context) must break this test, not
the bench run an hour later."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import checks_bench


@pytest.mark.parametrize("rule", sorted(checks_bench.RULES))
def test_each_rule_runs_under_the_bench_on_a_small_table(tmp_path: Path, rule: str) -> None:
    table = tmp_path / "counts.csv"
    table.write_text("region,n\nnorth,3\nsouth,40\n")
    result = checks_bench.measure("rule", table, rule)
    assert result["verdict"] in {"pass", "fail", "error"}
    assert result["seconds"] >= 0
    assert result["peak_rss_bytes"] > 0
