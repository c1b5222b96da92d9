"""The TES relay executor end to end, against a live TES server started here: this project's own gateway
over a Docker-backed TRE agent (the GA4GH contract it passes is tests/test_real_clients.py's). Funnel and
TESK cannot be built here; the relay speaks only TES through py-tes, so which server answers is its
configuration.

The inner gateway delivers released outputs to s3:// urls in buckets it may write to, so the relay's
airlock is a bucket on the inner stack's S3 endpoint that the gateway is told it may deliver to. The inner
TRE holds what the run left for its output checker, who approves it (`approve_what_is_held`); only
then does the inner task end, and its outputs arrive at the relay's staging prefix.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import tes
from pydantic import SecretStr

from fivesafes_tes import devstack
from fivesafes_tes.agent import schema
from fivesafes_tes.db import Database
from fivesafes_tes.egress import staging_area
from fivesafes_tes.egress.store import ObjectStore
from fivesafes_tes.executors import (
    BACKENDS,
    BackendContext,
    DatasetMount,
    ExecutorError,
    InputFile,
    Limits,
    Outcome,
    RunResult,
    RunSpec,
    Step,
    StepResult,
    backend,
)
from fivesafes_tes.executors.tes import DatabaseLedger, RelayRecord, TesRelayExecutor
from fivesafes_tes.settings import AgentSettings, AirlockStoreSettings, TesRelaySettings
from tests import images
from tests.waiting import wait_for

docker_client = images.docker_client

STAGING_BUCKET = "relay-airlock"  # the outer agent's airlock, on the inner stack's S3 endpoint
LATE_BUCKET = "relay-late-airlock"  # another the inner gateway delivers to, made only once a test wants it
INNER_TRE = "uk-tre"
IMAGE = images.BUSYBOX_IMAGE
WAIT_S = 120


@pytest.fixture(scope="module")
def inner(tmp_path_factory: pytest.TempPathFactory, docker_client: object) -> Iterator[devstack.DevStack]:
    """The TRE's TES server: a gateway with a Docker-backed agent, delivering to the relay's airlock."""
    images.ensure_busybox_image(docker_client)
    with devstack.start(
        tmp_path_factory.mktemp("inner") / "data",
        agents=True,
        executor="docker",
        report_granularity_s=0,
        delivery_buckets=[STAGING_BUCKET, LATE_BUCKET],
        delivery_retry_s=0.5,
        delivery_poll_s=0.5,
    ) as stack:
        yield stack


def airlock(inner: devstack.DevStack, bucket: str) -> ObjectStore:
    return ObjectStore.from_settings(
        AirlockStoreSettings(
            endpoint_url=inner.s3_url, bucket=bucket, access_key="dev", secret_key=SecretStr("dev-secret")
        )
    )


@pytest.fixture
def store(inner: devstack.DevStack) -> ObjectStore:
    made = airlock(inner, STAGING_BUCKET)
    made.ensure_bucket()
    return made


@pytest.fixture
def deployment() -> str:
    """This test's own deployment: the tasks of other tests on the same inner server are not its own."""
    return uuid.uuid4().hex


@pytest.fixture
def agent_db(tmp_path: Path) -> Iterator[Database]:
    """The outer agent's own database, where the relay keeps its runs."""
    db = Database(f"sqlite:///{tmp_path / 'agent.db'}")
    schema.upgrade(db.engine)
    yield db
    db.dispose()


def relay(inner: devstack.DevStack, store: ObjectStore, db: Database, deployment: str) -> TesRelayExecutor:
    """A relay as the outer agent would make one, sending to the inner TRE (its `tres` tag)."""
    return TesRelayExecutor(
        inner.url,
        store=store,
        ledger=DatabaseLedger(db),
        tre="outer-tre",
        deployment=deployment,
        token=inner.token("alice", "researcher"),
        poll_s=0,
        tags={"tres": INNER_TRE},
    )


def spec(child: str, *commands: str, runtime_s: int = 300) -> RunSpec:
    return RunSpec(
        child_id=child,
        attempt=1,
        tre="outer-tre",
        steps=[Step(IMAGE, ["sh", "-c", command]) for command in commands],
        limits=Limits(runtime_s=runtime_s),
        inputs=[InputFile("/inputs/words.txt", b"hello from the relay\n")],
        writable=["/data/out"],
    )


def remote(inner: devstack.DevStack, remote_id: str) -> tes.Task:
    """The task as the inner TES server has it, asked by its researcher with py-tes."""
    client = tes.HTTPClient(inner.url, token=inner.token("alice", "researcher"))
    return client.get_task(remote_id, view="BASIC")


def remote_id(executor: TesRelayExecutor, child: str) -> str:
    record = executor.ledger.get(child)
    assert record is not None
    assert record.remote_id is not None
    return record.remote_id


def until_ended(executor: TesRelayExecutor, child: str):  # type: ignore[no-untyped-def]
    return wait_for(lambda: executor.poll(child), WAIT_S, f"the relayed run of {child} to end")


def approve_what_is_held(inner: devstack.DevStack, task_id: str) -> list[str]:
    """As the inner TRE's output checker, through its own review API: wait until the child of inner task
    `task_id` has its files held, approve them all, and return their names. Other children held there
    (another test's) are left alone."""
    token = inner.tre_token(f"{INNER_TRE}-checker", "output-checker", INNER_TRE)
    with httpx.Client(
        base_url=inner.tre_url(INNER_TRE), headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as api:

        def held() -> dict[str, Any] | None:
            children = api.get("/review/v1/children").json()
            return next((c for c in children if c["task_id"] == task_id), None)

        child = wait_for(held, WAIT_S, f"the inner TRE to hold what task {task_id} left")
        names = sorted(f["name"] for f in child["files"])
        for name in names:
            decided = api.post(
                f"/review/v1/children/{child['child_id']}/decisions",
                json={"name": name, "decision": "approved", "reason": "relay test"},
            )
            assert decided.status_code == 200, decided.text
    return names


@pytest.mark.slow
def test_a_relayed_run_is_held_released_and_collected_by_a_relay_that_re_attached(
    inner: devstack.DevStack, store: ObjectStore, agent_db: Database, deployment: str, tmp_path: Path
) -> None:
    first = relay(inner, store, agent_db, deployment)
    first.start(
        spec(
            "child-ok",
            "tr a-z A-Z < /inputs/words.txt > /data/out/shout.txt; echo written",
            "echo second; echo oops >&2",
        )
    )
    first.start(spec("child-ok", "echo a second start of the same attempt changes nothing"))
    sent = remote(inner, remote_id(first, "child-ok"))
    assert sent.tags["fivesafes_child"] == "child-ok"
    assert sent.tags["fivesafes_attempt"] == "1"
    assert sent.tags["fivesafes_deployment"] == deployment
    assert sent.tags["tres"] == INNER_TRE

    # The agent restarts: a new relay on the same database finds the run and carries on with it.
    again = relay(inner, store, agent_db, deployment)
    assert again.running() == {"child-ok": 1}
    assert approve_what_is_held(inner, remote_id(again, "child-ok")) == [
        "/data/out/shout.txt",
        "step-0.stderr",
        "step-0.stdout",
        "step-1.stderr",
        "step-1.stdout",
    ]
    result = until_ended(again, "child-ok")
    assert result.outcome is Outcome.SUCCEEDED, result
    assert [s.exit_code for s in result.steps] == [0, 0]
    assert all(s.start_time.endswith("Z") and s.end_time >= s.start_time for s in result.steps)
    assert again.running() == {}

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    collected = wait_for(lambda: again.collect("child-ok", scratch), WAIT_S, "the outputs to be staged")
    assert {path: file.read_bytes() for path, file in collected.files.items()} == {
        "/data/out/shout.txt": b"HELLO FROM THE RELAY\n"
    }
    assert {key: file.read_text() for key, file in collected.logs.items()} == {
        (0, "stdout"): "written\n",
        (0, "stderr"): "",
        (1, "stdout"): "second\n",
        (1, "stderr"): "oops\n",
    }
    assert list(store.list(staging_area.child_prefix("child-ok")))

    again.cleanup("child-ok")
    assert not list(store.list(staging_area.child_prefix("child-ok")))
    assert again.ledger.get("child-ok") is None


@pytest.mark.slow
def test_collect_waits_until_the_tes_server_has_delivered_the_outputs(
    inner: devstack.DevStack, agent_db: Database, deployment: str, tmp_path: Path
) -> None:
    late = airlock(inner, LATE_BUCKET)  # no bucket yet: the inner gateway's deliveries fail until it exists
    executor = relay(inner, late, agent_db, deployment)
    executor.start(spec("child-late", "cp /inputs/words.txt /data/out/copy.txt"))
    assert executor.collect("child-late", tmp_path) is None  # still running
    approve_what_is_held(inner, remote_id(executor, "child-late"))
    assert until_ended(executor, "child-late").outcome is Outcome.SUCCEEDED
    assert executor.collect("child-late", tmp_path) is None  # ended, but its outputs are not staged

    late.ensure_bucket()
    collected = wait_for(lambda: executor.collect("child-late", tmp_path), WAIT_S, "the delivery")
    assert {path: file.read_bytes() for path, file in collected.files.items()} == {
        "/data/out/copy.txt": b"hello from the relay\n"
    }


@pytest.mark.slow
def test_a_failing_step_fails_the_run_with_its_exit_code(
    inner: devstack.DevStack, store: ObjectStore, agent_db: Database, deployment: str
) -> None:
    executor = relay(inner, store, agent_db, deployment)
    executor.start(spec("child-fails", "echo working; exit 3", "echo never"))
    approve_what_is_held(inner, remote_id(executor, "child-fails"))  # the checker sees the failure's logs
    result = until_ended(executor, "child-fails")
    assert result.outcome is Outcome.FAILED
    assert [s.exit_code for s in result.steps] == [3]
    assert result.message == "step 1 of 2 exited with code 3"


@pytest.mark.slow
def test_cancel_is_relayed_and_the_inner_task_ends_canceled(
    inner: devstack.DevStack, store: ObjectStore, agent_db: Database, deployment: str
) -> None:
    executor = relay(inner, store, agent_db, deployment)
    executor.start(spec("child-cancel", "sleep 60"))
    task = remote_id(executor, "child-cancel")
    wait_for(lambda: remote(inner, task).state == "RUNNING", WAIT_S, "the inner task to run")

    result = executor.cancel("child-cancel")
    assert result is not None
    assert result.outcome is Outcome.CANCELED
    assert executor.poll("child-cancel") == result
    assert executor.cancel("child-cancel") == result
    assert remote(inner, task).state == "CANCELED"
    assert executor.running() == {}


@pytest.mark.slow
def test_the_relay_stops_a_run_past_its_time_limit(
    inner: devstack.DevStack, store: ObjectStore, agent_db: Database, deployment: str
) -> None:
    executor = relay(inner, store, agent_db, deployment)
    executor.start(spec("child-slow", "sleep 60", runtime_s=1))
    result = until_ended(executor, "child-slow")
    assert result.outcome is Outcome.TIMED_OUT
    assert remote(inner, remote_id(executor, "child-slow")).state == "CANCELED"


@pytest.mark.slow
def test_sweep_cancels_the_runs_of_children_the_agent_no_longer_has(
    inner: devstack.DevStack, store: ObjectStore, agent_db: Database, deployment: str
) -> None:
    executor = relay(inner, store, agent_db, deployment)
    executor.start(spec("child-kept", "sleep 60"))
    executor.start(spec("child-gone", "sleep 60"))
    kept, gone = remote_id(executor, "child-kept"), remote_id(executor, "child-gone")
    # A task created just before a crash, its remote id never written down, is found by its tags.
    executor.ledger.delete("child-gone")

    assert executor.sweep({"child-kept"}) == ["child-gone"]
    assert remote(inner, gone).state == "CANCELED"
    assert remote(inner, kept).state != "CANCELED"
    assert executor.running() == {"child-kept": 1}
    assert executor.sweep(set()) == ["child-kept"]
    assert remote(inner, kept).state == "CANCELED"
    assert executor.running() == {}
    assert executor.sweep(set()) == []


def test_a_tes_server_that_is_down_is_an_executor_error_in_plain_words(tmp_path: Path) -> None:
    store = SimpleNamespace(bucket="airlock")
    db = Database(f"sqlite:///{tmp_path / 'agent.db'}")
    schema.upgrade(db.engine)
    down = f"http://127.0.0.1:{devstack.free_port()}"
    executor = TesRelayExecutor(
        down,
        store=store,
        ledger=DatabaseLedger(db),
        tre="t",
        deployment="d",
        timeout_s=2,  # type: ignore[arg-type]
    )
    with pytest.raises(
        ExecutorError, match=r"the TRE's TES server at http://127\.0\.0\.1:\d+ cannot be reached"
    ):
        executor.start(spec("child-down", "true"))
    # The record written before sending lets a later start (or poll) look for the run again.
    assert executor.running() == {"child-down": 1}
    with pytest.raises(ExecutorError, match="cannot be reached"):
        executor.poll("child-down")
    db.dispose()


def test_the_task_sent_carries_the_run_and_from_context_checks_the_configuration(tmp_path: Path) -> None:
    settings = AgentSettings(
        tre="t", data_dir=tmp_path, tes=TesRelaySettings(url="https://tes.tre.example", tags={"x": "y"})
    )
    store = SimpleNamespace(bucket="airlock")
    with_url = {"omop": SimpleNamespace(path=None, claim=None, url="s3://tre-data/omop/")}
    context = BackendContext("t", "dep", tmp_path, datasets=with_url, store=store, settings=settings)
    assert BACKENDS["tes"].endswith(":TesRelayExecutor")
    assert backend("tes") is TesRelayExecutor
    executor = TesRelayExecutor.from_context(context)

    run = RunSpec(
        child_id="c",
        attempt=2,
        tre="t",
        steps=[Step(IMAGE, ["cat", "/in/a"], workdir="/w", env={"A": "1"}, ignore_error=True)],
        limits=Limits(cpu_cores=1.5, memory_bytes=3 << 29, disk_bytes=2 << 30),
        inputs=[InputFile("/in/a", b"text")],
        writable=["/out"],
        datasets=[DatasetMount("omop", "/data/omop")],
    )
    task = executor.task_of(run).as_dict()
    assert task["inputs"] == [
        {"path": "/in/a", "content": "text", "type": "FILE"},
        {"path": "/data/omop", "url": "s3://tre-data/omop/", "type": "DIRECTORY"},
    ]
    assert task["outputs"] == [
        {"path": "/out", "url": "s3://airlock/staging/c/2/files/out/", "type": "DIRECTORY"}
    ]
    assert task["executors"] == [
        {
            "image": IMAGE,
            "command": ["cat", "/in/a"],
            "workdir": "/w",
            "env": {"A": "1"},
            "ignore_error": True,
        }
    ]
    assert task["resources"] == {"cpu_cores": 2, "ram_gb": 1.5, "disk_gb": 2.0}
    assert task["tags"] == {
        "x": "y",
        "fivesafes_child": "c",
        "fivesafes_attempt": "2",
        "fivesafes_tre": "t",
        "fivesafes_deployment": "dep",
    }

    no_url = {"omop": SimpleNamespace(path=tmp_path, claim=None, url=None)}
    with pytest.raises(ValueError, match=r"dataset 'omop' .* has no url.*datasets\.omop\.url"):
        TesRelayExecutor.from_context(BackendContext("t", "dep", tmp_path, no_url, store, settings))
    unset = AgentSettings(tre="t", data_dir=tmp_path)
    with pytest.raises(ValueError, match="FIVESAFES_AGENT_TES_URL"):
        TesRelayExecutor.from_context(BackendContext("t", "dep", tmp_path, {}, store, unset))
    with pytest.raises(ValueError, match="not UTF-8"):
        executor.task_of(RunSpec("c", 1, "t", run.steps, Limits(), inputs=[InputFile("/in/b", b"\xff")]))


def test_the_ledger_keeps_runs_and_their_results_in_the_agents_database(empty_database_url: str) -> None:
    db = Database(empty_database_url)
    schema.upgrade(db.engine)
    ledger = DatabaseLedger(db)
    pending = RelayRecord("c1", 1, None, deadline=1.5, max_bytes=5 << 30)
    ledger.put(pending)
    assert ledger.get("c1") == pending
    ended = RunResult(Outcome.FAILED, [StepResult(3, "2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z")], "why")
    ledger.put(RelayRecord("c1", 2, "remote-1", deadline=2.5, max_bytes=1, result=ended))
    ledger.put(RelayRecord("c2", 1, "remote-2", deadline=3.5, max_bytes=1))
    assert ledger.get("c1") == RelayRecord("c1", 2, "remote-1", deadline=2.5, max_bytes=1, result=ended)
    assert sorted(r.child_id for r in ledger.all()) == ["c1", "c2"]
    ledger.delete("c1")
    ledger.delete("c1")
    assert ledger.get("c1") is None
    assert [r.child_id for r in ledger.all()] == ["c2"]
    db.dispose()
