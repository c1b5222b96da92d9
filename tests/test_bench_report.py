"""docs/benchmarks.md is rendered from one run's JSON: its provenance, each target with its source and
verdict, and with --before an earlier run's figures beside it. No services: results are made up here."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from bench import report, targets

BASELINE = Path(__file__).resolve().parent.parent / "bench" / "baseline-7f9af53.json"


def _load(rps: float, p50: float = 10.0) -> dict[str, Any]:
    return {
        "requests": 100, "elapsed_s": 100 / rps, "throughput_rps": rps, "p50_ms": p50, "p90_ms": p50 * 1.5,
        "p99_ms": p50 * 3, "server_cpu_pct": 90.0, "server_cpu_ms_per_request": 2.0, "client_cpu_s": 0.1,
        "concurrency": 16,
    }  # fmt: skip


def _rule(mb_per_s: float, lines: float, cold: float, cold_plain: float, rss_mib: float) -> dict[str, Any]:
    return {
        "seconds": 100 / mb_per_s, "mb_per_s": mb_per_s, "peak_rss_bytes": rss_mib * 2**20, "verdict": "fail",
        "cold": {"seconds": 100 / cold, "mb_per_s": cold},
        "paired": {"plain_lines_mb_per_s": lines, "plain_chunks_cold_mb_per_s": cold_plain},
        "share_of_lines": mb_per_s / lines, "share_of_chunks": mb_per_s / 9000,
        "cold_share_of_chunks": cold / cold_plain,
    }  # fmt: skip


def _plain(mb_per_s: float) -> dict[str, Any]:
    return {"seconds": 100 / mb_per_s, "mb_per_s": mb_per_s, "peak_rss_bytes": 30 * 2**20}


def results(create_ratio: float = 0.54, commit: str = "abc1234", dirty: bool = False) -> dict[str, Any]:
    """One run as `make bench` records it, with the figures the targets are judged on."""
    small = {"backend": "sqlite", "case": "small", "view": "MINIMAL", "page": "first", "user_tasks": 1000,
             "all_tasks": 1250, **_load(300, p50=3.4)}  # fmt: skip
    large = {**small, "case": "large", "user_tasks": 1_000_000, "all_tasks": 1_251_000, "p50_ms": 8.0}
    return {
        "run": {
            "started_at": "2026-12-06T18:40:12+00:00",
            "date": "2026-12-06 18:40 UTC",
            "argv": ["--no-postgres"],
            "quick": False,
            "commit": commit,
            "dirty": dirty,
            "dirty_paths": ["fivesafes_tes/db.py"] if dirty else [],
            "load_before": "1.20 0.90 0.80",
            "load_after": "2.10 1.50 1.00",
            "load_during": {"create": {"mean": 1.5, "max": 2.0}},
            "duration_s": 321.0,
        },
        "machine": {
            "cpu_model": "Test CPU 9000",
            "nproc": 2,
            "ram_gib": 23.5,
            "os": "Debian GNU/Linux 12",
            "platform": "Linux-6.1-x86_64",
            "python": "3.11.7",
        },
        "config": {
            "concurrency": 16,
            "create_requests": 2000,
            "create_warmup": 200,
            "rounds": 4,
            "list_requests": 200,
            "list_warmup": 20,
            "get_requests": 2000,
            "get_warmup": 200,
        },
        "databases": {"sqlite": "SQLite 3.40.1"},
        "create": [
            {"backend": "sqlite", "app": "ceiling", "rounds": 4, **_load(500)},
            {"backend": "sqlite", "app": "gateway", "rounds": 4, **_load(500 * create_ratio)},
        ],
        "list": [small, large],
        "get": [{**small, "p50_ms": 2.5}],
        "datasets": [],
        "checks": {
            "sizes_mb": [100, 1000],
            "files": [
                {
                    "size_bytes": 100_000_000,
                    "runs": {"plain_lines": _plain(1600), "small_cell": _rule(700, 1600, 650, 1800, 190)},
                },
                {
                    "size_bytes": 1_000_000_000,
                    "runs": {"plain_lines": _plain(1700), "small_cell": _rule(800, 1700, 800, 730, 200)},
                },
            ],
        },
    }


def _row(page: str, *needles: str) -> str:
    """The one table row of the page holding every needle."""
    rows = [line for line in page.splitlines() if line.startswith("|") and all(n in line for n in needles)]
    assert len(rows) == 1, f"expected one row with {needles}, found {rows}"
    return rows[0]


def test_the_page_says_it_is_generated_and_what_the_run_was_made_on() -> None:
    page = report.render(results(dirty=True))

    assert page.startswith("# Benchmarks\n")
    assert "Do not edit by hand" in page
    assert "Test CPU 9000" in _row(page, "| CPU")
    assert "Debian GNU/Linux 12" in _row(page, "| OS")
    assert "2 |" in _row(page, "| Cores")
    assert "23.5 GiB" in _row(page, "| RAM")
    assert "3.11.7" in _row(page, "| Python |")
    assert "2026-12-06 18:40 UTC" in _row(page, "| Date")
    assert "321 s" in _row(page, "| Whole run")
    assert "1.20 0.90 0.80" in _row(page, "| Load average before")
    assert "2.10 1.50 1.00" in _row(page, "| Load average after")
    commit = _row(page, "| Commit")
    assert "abc1234" in commit
    assert "dirty" in commit
    assert "fivesafes_tes/db.py" in commit


def test_each_target_shows_its_goal_source_figure_and_verdict() -> None:
    page = report.render(results(create_ratio=0.54))

    create = _row(page, "create throughput")
    assert targets.CREATE.goal in create
    assert targets.CREATE.source in create
    assert "270 vs 500 req/s = 54%" in create
    assert "**PASS**" in create
    listed = _row(page, "GET /tasks MINIMAL, first page")
    assert "8.0 vs 3.4 ms = 2.35x" in listed
    assert "**MISS**" in listed
    assert "**PASS**" in _row(page, "GET /tasks/{id} MINIMAL p50")
    assert "**MISS**" in _row(page, "`small_cell` on a 100 MB CSV, warm")  # 700 of 1600 MB/s
    assert "**PASS**" in _row(page, "`small_cell` on a 1,000 MB CSV, cold")  # 800 of 730 MB/s
    assert "**PASS**" in _row(page, "`small_cell` peak RSS")  # 200 vs 190 MiB
    assert "4 of 8 targets met" in page


def test_a_create_below_half_the_ceiling_is_a_miss() -> None:
    page = report.render(results(create_ratio=0.31))

    create = _row(page, "create throughput")
    assert "= 31%" in create
    assert "**MISS**" in create


def test_before_adds_the_earlier_runs_figure_and_verdict_beside_each_target() -> None:
    before = results(create_ratio=0.31, commit="0ld0ld0")
    page = report.render(results(create_ratio=0.54), before)

    headers = [line for line in page.splitlines() if line.startswith("| Target |")]
    assert headers
    assert all("| Measured | Before | Result |" in header for header in headers)
    create = _row(page, "create throughput")
    assert "155 vs 500 req/s = 31% (MISS)" in create
    assert create.endswith("**PASS** |")
    assert "0ld0ld0" in _row(page, "| Commit")


def test_the_run_before_this_page_was_generated_can_be_the_before() -> None:
    page = report.render(results(), report.load(BASELINE))

    assert "134 vs 309 req/s = 43% (MISS)" in _row(page, "create throughput")
    assert "9d5efc1" in _row(page, "| Commit")


def test_a_run_is_written_as_the_page_and_a_dated_page_and_json_that_render_it_again(tmp_path: Path) -> None:
    run = results(dirty=True)
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / report.OLD_LOG).write_text("# the old log\n")
    written = report.write(run, tmp_path / "benchmarks.md", tmp_path / "benchmarks", None)

    stem = "2026-12-06-1840-abc1234-dirty"
    assert [p.relative_to(tmp_path).as_posix() for p in written] == [
        "benchmarks.md",
        f"benchmarks/{stem}.md",
        f"benchmarks/{stem}.json",
    ]
    again = report.load(written[2])
    assert report.render(again, history="benchmarks", stem=stem) == written[0].read_text()
    assert f"(benchmarks/{report.OLD_LOG})" in written[0].read_text()


def test_a_before_file_that_is_not_a_run_is_refused_with_its_name(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([1, 2]))
    with pytest.raises(TypeError, match=r"bad\.json"):
        report.load(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json"):
        report.load(bad)


def test_parts_that_did_not_run_leave_no_targets() -> None:
    run = copy.deepcopy(results())
    run["create"], run["checks"] = [], {}
    benchmarks = {v["benchmark"] for v in targets.judge(run)}
    assert benchmarks == {"list", "get"}


def _crates(share: float, growth_mib: float, refusal_s: float, writes: int = 0) -> dict[str, Any]:
    def verify(label: str, mib: int, compression: str) -> dict[str, Any]:
        return {
            "crate": label, "compression": compression, "payload_bytes": mib * 2**20,
            "zip_bytes": mib * 2**20 + 4096, "sha512sum_mb_per_s": 700.0, "intake_mb_per_s": 700.0 * share,
            "share": share, "rss_growth_bytes": growth_mib * 2**20, "cpu_s": 3.0, "seconds": 1.5, "runs": [],
        }  # fmt: skip

    def refused(case: str) -> dict[str, Any]:
        return {
            "case": case, "what": "…", "zip_bytes": 2**20, "seconds": refusal_s, "runs_s": [refusal_s] * 3,
            "message": "the zip has 60,004 entries; the limit is 10,000", "writes": [["open", "x"]] * writes,
        }  # fmt: skip

    return {
        "size_mb": 1024, "rounds": 3,
        "verify": [verify("stored", 1024, "random bytes, stored"), verify("small", 64, "random, stored")],
        "refusals": [refused("zip bomb"), refused("60,000 entries")],
    }  # fmt: skip


def test_crate_intake_targets_are_judged_and_shown() -> None:
    run = {**results(), "crates": _crates(share=0.62, growth_mib=9.5, refusal_s=0.004)}
    page = report.render(run)

    speed = _row(page, "intake of a 1,024 MiB crate (random bytes, stored) vs `sha512sum`")
    assert "434 vs 700 MiB/s = 62%" in speed
    assert targets.ISSUE_11 in speed
    assert "**PASS**" in speed
    assert "**PASS**" in _row(page, "intake of a 64 MiB crate (random, stored): peak RSS growth")
    assert "4 ms (slowest of 3), 0 files written" in _row(page, "refusing a zip bomb crate")
    assert "**PASS**" in _row(page, "refusing a 60,000 entries crate")
    assert "## Crate intake" in page


def test_slow_crate_intake_growing_memory_or_a_refusal_that_writes_are_misses() -> None:
    run = {**results(), "crates": _crates(share=0.4, growth_mib=300, refusal_s=0.004, writes=1)}
    verdicts = {v["target"]: v["pass"] for v in targets.judge(run) if v["benchmark"] == "crates"}
    assert verdicts
    assert not any(verdicts.values())
    slow = {**results(), "crates": _crates(share=0.9, growth_mib=1, refusal_s=1.5)}
    refusals = [v for v in targets.judge(slow) if v["target"].startswith("refusing")]
    assert refusals
    assert not any(v["pass"] for v in refusals)
