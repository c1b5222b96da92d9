"""The Kubernetes executor's benchmark (`make bench`'s kubernetes part) at its `--quick` sizes: a change
to the agent, the backend or the emulator that stops it measuring must break this test, not the bench
run an hour later. The figures are not judged here, only that every one is there and the page shows them."""

from __future__ import annotations

from bench import kubernetes_bench, report, run, targets


def test_the_kubernetes_bench_measures_a_real_agent_at_its_quick_sizes() -> None:
    quick = run.QUICK
    results = kubernetes_bench.run(quick["k8s_leases"], quick["k8s_children"], quick["k8s_passes"])
    lease, many = results["lease_to_job"], results["concurrent"]
    assert len(lease["latencies_s"]) == quick["k8s_leases"]
    assert 0 < lease["p50_ms"] <= lease["p95_ms"] <= lease["max_ms"]
    assert many["children"] == quick["k8s_children"]
    assert many["passes"] >= quick["k8s_passes"]
    assert many["requests_per_poll"] > 0  # a pass lists the cluster (once per kind, not per child)
    for key in ("burst_all_created_s", "pass_p50_s", "pass_max_s", "pass_poll_p50_s", "pass_api_s"):
        assert many[key] > 0, key  # NaN is not
    assert 0 < many["lag"]["p50_ms"] <= many["lag"]["max_ms"]

    verdicts = targets.judge({"kubernetes": results})
    assert [v["goal"] for v in verdicts] == [
        targets.K8S_LEASE_TO_JOB.goal,
        targets.K8S_PASS.goal,
        targets.K8S_LAG.goal,
    ]
    assert all(isinstance(v["pass"], bool) for v in verdicts)
    section = "\n".join(report._kubernetes_section({"kubernetes": results}, {}))
    assert f"{quick['k8s_children']} running children" in section
