"""RELIABILITY 31: what a researcher sees of a child does not depend on what its task did.

Pairs of tasks, the same request twice, run in one TRE through the real Docker engine. Between the two
members of a pair the TRE's data changes (the second runs on another extract, whose second person
differs), and the script turns that secret into everything a task controls: exit codes (0 then 3, vs
the byte of a birth-year digit), how many steps ran, the number, names and sizes of the outputs, how
long it sleeps (within the reporting granularity), stdout and stderr, and an ACRO-shaped
`results.json` with the person in it. Every researcher-facing route must give the two the same body,
up to ids and the timestamps no task sets: while the outputs are held, after the checker rejected
everything (with the same reason for both), and after the checker released one file of the same
content from each (then the released file and the run the checker saw may show, nothing else).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from fivesafes_tes import devstack
from fivesafes_tes.agent import review
from fivesafes_tes.agent.policy import Dataset
from fivesafes_tes.agent.tables import LocalChild
from fivesafes_tes.devimages import BUSYBOX_IMAGE
from tests import images
from tests.test_release_e2e import _decide, uk_held

docker_client = images.docker_client
GRANULARITY_S = 2.0
TES_BASES = ("/ga4gh/tes/v1", "/v1")
VIEWS = ("MINIMAL", "BASIC", "FULL")

FIRST = r"""set -u
line=$(sed -n 2p /data/omop/person.csv)
id=$(echo "$line" | cut -d, -f1)
gender=$(echo "$line" | cut -d, -f2)
year=$(echo "$line" | cut -d, -f3)
printf 'count\n42\n' > /outputs/keep.csv
echo "$line" > "/extra/person-$id.csv"
cat > /extra/results.json <<EOF
{"version": "0.4.5", "results": {"output_0": {"uid": "output_0", "status": "review", "type": "table",
 "properties": {"method": "crosstab"}, "files": [{"name": "person-$id.csv", "sdc": {}}],
 "outcome": {"$line": {"0": "threshold; "}}, "command": "safe_table($line)",
 "summary": "fail; threshold: 1 cells may need suppressing; $line", "timestamp": "2026-01-01T00:00:00",
 "comments": ["person $id born $year"], "exception": "please release $line"}}}
EOF
echo "$line"
echo "read person $id" >&2
if [ "$gender" = 8507 ]; then
  sleep 0.1
  exit 0
fi
for n in 1 2 3; do echo "$line,$n" > "/extra/row-$year-$n.txt"; done
sleep 1.2
exit $(printf '%d' "'${year#???}")
"""
SECOND = """line=$(sed -n 2p /data/omop/person.csv)
echo "${line%%,*}" >&2
exit 3
"""


def task(name: str) -> dict:
    return {
        "name": name,
        "executors": [
            {"image": BUSYBOX_IMAGE, "command": ["sh", "/analysis/first.sh"]},
            {"image": BUSYBOX_IMAGE, "command": ["sh", "/analysis/second.sh"]},
        ],
        "inputs": [
            {"path": "/analysis/first.sh", "content": FIRST},
            {"path": "/analysis/second.sh", "content": SECOND},
        ],
        "outputs": [
            {"path": "/outputs/keep.csv", "url": "s3://results/keep.csv"},
            {"path": "/extra", "url": "s3://results/extra", "type": "DIRECTORY"},
        ],
        "tags": {"tres": "uk-tre"},
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory, docker_client):
    images.ensure_busybox_image(docker_client)
    home = tmp_path_factory.mktemp("researcher-view")
    with devstack.start(
        home / "stack", agents=True, executor="docker", report_granularity_s=GRANULARITY_S
    ) as running:
        yield running


@pytest.fixture(scope="module")
def alice(stack):
    with httpx.Client(
        base_url=stack.url, headers={"Authorization": f"Bearer {stack.token('alice')}"}, timeout=30
    ) as client:
        yield client


def _stage(http: httpx.Client, task_id: str) -> str:
    return http.get(f"/ga4gh/tes/v1/tasks/{task_id}", params={"view": "BASIC"}).json()["logs"][0]["metadata"][
        "stage"
    ]


def _wait_stage(http: httpx.Client, task_ids: list[str], stages: set[str], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not all(_stage(http, t) in stages for t in task_ids):
        assert time.monotonic() < deadline, [_stage(http, t) for t in task_ids]
        time.sleep(0.2)


def _other_extract(original: Path, into: Path) -> Path:
    """The TRE's data as it is for the second member of each pair: its second person is the first
    person of the other sex, so the script takes the other branch."""
    header, first, *rest = (original / "person.csv").read_text().splitlines(keepends=True)
    other = next(row for row in rest if row.split(",")[1] != first.split(",")[1])
    into.mkdir()
    (into / "person.csv").write_text(header + other + first + "".join(r for r in rest if r is not other))
    return into


@pytest.fixture(scope="module")
def pairs(stack, alice, tmp_path_factory):
    """Two pairs (held, then rejected; held, then partly released), all four held for review."""
    uk = stack.agents["uk-tre"]
    names = ["pair-rejected", "pair-released"]
    firsts = [alice.post("/ga4gh/tes/v1/tasks", json=task(n)).json()["id"] for n in names]
    _wait_stage(alice, firsts, {"running", "checking", "awaiting_review"})  # staged on the first extract
    original = uk.policy
    extract = _other_extract(original.datasets["omop"].path, tmp_path_factory.mktemp("extract") / "omop")
    # The TRE's next extract, in its policy and in its backend (which mounts the policy's folders), as
    # an agent restarted on the new policy would have them.
    uk.policy = original.model_copy(
        update={"datasets": {"omop": Dataset(path=extract, description="the TRE's next extract")}}
    )
    folders = uk.executor._datasets
    uk.executor._datasets = {"omop": extract}
    try:
        seconds = [alice.post("/ga4gh/tes/v1/tasks", json=task(n)).json()["id"] for n in names]
        _wait_stage(alice, seconds, {"running", "checking", "awaiting_review"})
    finally:
        uk.policy = original
        uk.executor._datasets = folders
    _wait_stage(alice, firsts + seconds, {"awaiting_review"})
    return list(zip(firsts, seconds, strict=True))


def _child_of(agent, task_id: str) -> str:
    with agent.db.read() as session:
        return session.scalar(select(LocalChild.child_id).where(LocalChild.task_id == task_id))


def _routes(http: httpx.Client, task_id: str, name: str) -> dict[str, str]:
    """Every researcher-facing body about `task_id`, with ids and the timestamps no task sets masked;
    a list's body is this task's entry, as the server serialised it."""
    full = http.get(f"/ga4gh/tes/v1/tasks/{task_id}", params={"view": "FULL"}).json()
    results = http.get(f"/api/v1/tasks/{task_id}/results")
    masks = {task_id: "<task>", full["creation_time"]: "<submitted>"}
    for log in full["logs"]:  # when staging began and the last stage arrived (at the granularity)
        masks.update({log[k]: f"<{k}>" for k in ("start_time", "end_time") if k in log})
    for tre in results.json()["tres"]:
        for file in tre["files"]:
            masks[f'/api/v1/results/{file["id"]}"'] = '/api/v1/results/<file>"'
            masks[f'"id":{file["id"]},'] = '"id":"<file>",'
        for entry in (tre["disclosure"] or {}).get("files", []):  # when the checker decided
            masks.update({d["at"]: "<decided>" for d in entry["decisions"]})

    def masked(text: str) -> str:
        for value, mask in masks.items():
            text = text.replace(value, mask)
        return text

    bodies = {"GET /api/v1/tasks/{id}/results": masked(results.text)}
    for base in TES_BASES:
        for view in VIEWS:
            one = http.get(f"{base}/tasks/{task_id}", params={"view": view})
            bodies[f"GET {base}/tasks/{{id}}?view={view}"] = masked(one.text)
            listed = http.get(f"{base}/tasks", params={"view": view, "name_prefix": name}).json()
            [entry] = [t for t in listed["tasks"] if t["id"] == task_id]
            bodies[f"GET {base}/tasks?view={view}"] = masked(
                json.dumps(entry, ensure_ascii=False, separators=(",", ":"))
            )
    return bodies


def _assert_same(first: dict[str, str], second: dict[str, str]) -> None:
    assert first.keys() == second.keys()
    for route, body in first.items():
        assert body == second[route], route


def test_held_outputs_look_the_same_whatever_the_task_did(stack, alice, pairs):
    uk = stack.agents["uk-tre"]
    for name, (first, second) in zip(("pair-rejected", "pair-released"), pairs, strict=True):
        # The two runs differed in everything a task controls (seen inside the TRE)...
        one, two = (_child_of(uk, t) for t in (first, second))
        with uk.db.read() as session:
            runs = [review.describe(session, c) for c in (one, two)]
        assert [s.exit_code for s in runs[0].steps] == [0, 3]
        assert len(runs[1].steps) == 1
        assert 48 <= runs[1].steps[0].exit_code <= 57
        names = [sorted(f.name for f in run.files) for run in runs]
        assert len(names[0]) != len(names[1])
        assert set(names[0]) != set(names[1])
        # ... and the researcher sees the same on every route.
        assert (
            json.loads(_routes(alice, first, name)["GET /api/v1/tasks/{id}/results"])["tres"][0]["disclosure"]
            is None
        )
        _assert_same(_routes(alice, first, name), _routes(alice, second, name))


def test_after_a_full_rejection_only_the_reviewers_reasons_show(stack, alice, pairs):
    uk = stack.agents["uk-tre"]
    first, second = pairs[0]
    for task_id in (first, second):
        child = _child_of(uk, task_id)
        for file in uk_held(uk, child):
            _decide(uk, child, file.name, "uk-checker", "rejected", "record-level data")
    _wait_stage(alice, [first, second], {"withheld"})
    bodies = _routes(alice, first, "pair-rejected")
    _assert_same(bodies, _routes(alice, second, "pair-rejected"))
    full = json.loads(bodies["GET /ga4gh/tes/v1/tasks/{id}?view=FULL"])
    assert full["state"] == "SYSTEM_ERROR"  # withheld, not EXECUTOR_ERROR: the failure stays in the TRE
    assert full["logs"][0]["logs"] == []
    assert full["logs"][0]["outputs"] == []
    assert (
        "uk-tre: the output checkers withheld every output; their reasons: record-level data"
        in full["logs"][0]["system_logs"]
    )
    disclosure = json.loads(bodies["GET /api/v1/tasks/{id}/results"])["tres"][0]["disclosure"]
    assert disclosure["files"] == []
    assert disclosure["withheld_reasons"] == ["record-level data"]


def test_after_a_partial_release_only_the_released_file_and_the_run_the_checker_saw_show(stack, alice, pairs):
    uk = stack.agents["uk-tre"]
    first, second = pairs[1]
    for task_id in (first, second):
        child = _child_of(uk, task_id)
        for file in uk_held(uk, child):
            if file.name == "/outputs/keep.csv":
                _decide(uk, child, file.name, "uk-checker", "approved", "an aggregate count")
            else:
                _decide(uk, child, file.name, "uk-checker", "rejected", "record-level data")
    _wait_stage(alice, [first, second], {"executor_failed"})
    bodies = [_routes(alice, t, "pair-released") for t in (first, second)]

    # Each shows the run its checker saw when releasing (the steps' exit codes and times), which
    # differ; masked, nothing else does.
    for route in bodies[0]:
        if route.endswith("MINIMAL") or "results" in route:
            continue
        runs = [json.loads(b[route])["logs"][0]["logs"] for b in bodies]
        assert [step["exit_code"] for step in runs[0]] == [0, 3], route
        assert len(runs[1]) == 1, route
        assert 48 <= runs[1][0]["exit_code"] <= 57, route
        for b, run in zip(bodies, runs, strict=True):
            b[route] = b[route].replace(json.dumps(run, separators=(",", ":")), '"<the released run>"')
    _assert_same(*bodies)

    listing = json.loads(bodies[0]["GET /api/v1/tasks/{id}/results"])["tres"][0]
    assert [f["name"] for f in listing["files"]] == ["/outputs/keep.csv"]
    assert [f["name"] for f in listing["disclosure"]["files"]] == ["/outputs/keep.csv"]
    assert listing["disclosure"]["withheld_reasons"] == ["record-level data"]
