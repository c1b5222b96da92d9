"""The output checkers' pages benchmark (`make bench`'s pages part) at its `--quick` sizes: a change to the
agent's pages, its holding of outputs or the bench that stops it measuring must break this test, not the
bench run an hour later. The figures are not judged here, only that every one is there and shaped right,
and that the page shows them."""

from __future__ import annotations

import pytest

from bench import dataset, pages_bench, report, run, targets
from bench.pages_bench import BIG

pytestmark = pytest.mark.skipif(bool(pages_bench.missing()), reason="moto is not installed")


def test_the_pages_bench_times_a_real_agents_pages_at_its_quick_sizes() -> None:
    quick = run.QUICK
    results = pages_bench.run(
        [dataset.SqliteBackend()],
        quick["pages_children"],
        quick["pages_csv_mb"],
        quick["pages_requests"],
        quick["pages_warmup"],
    )
    assert results["children"] == quick["pages_children"]
    queue, review = results["cases"]
    assert (queue["page"], queue["path"]) == ("queue", "/review")
    assert (review["page"], review["path"]) == ("review", f"/review/{BIG}")
    for case in (queue, review):
        assert case["backend"] == "sqlite"
        assert case["requests"] == quick["pages_requests"]
        assert 0 < case["p50_ms"] <= case["p95_ms"] <= case["max_ms"]
        server = case["server"]
        assert 0 < server["p50_ms"] <= server["p95_ms"] <= server["max_ms"]
        assert server["p50_ms"] <= case["p50_ms"] + 1  # inside the server: within what the client saw
    assert queue["airlock_gets_per_request"] == 0  # the queue never reads the airlock
    # The review page reads each held file's first 64 KiB (the CSV and its stdout), never the CSV whole.
    assert review["airlock_gets_per_request"] == 2
    assert review["airlock_largest_read"] == 64 * 1024
    (seeded,) = results["seeding"]
    assert seeded["stored_bytes"] == seeded["csv_bytes"] >= quick["pages_csv_mb"] * 1_000_000
    assert seeded["verdict"] == "fail"
    assert seeded["flagged_rows"] == list(pages_bench.SMALL_ROWS)

    verdicts = targets.judge({"pages": results})
    assert [v["goal"] for v in verdicts] == [targets.PAGE_QUEUE.goal, targets.PAGE_REVIEW.goal]
    assert all(isinstance(v["pass"], bool) for v in verdicts)
    section = "\n".join(report._pages_section({"pages": results}, {}))
    assert f"{quick['pages_children']} children awaiting review" in section
    assert "`GET /review`" in section
