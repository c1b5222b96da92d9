"""Issue 3's benchmarks: the federation as a researcher and a TRE see it.

1. End to end: a trivial container (`echo hi > /outputs/x`, one TRE) through the devstack's gateway
   and agent with the Docker executor, from submit until its output is held (`awaiting_review`), next
   to a bare `docker run` of the same image on the same engine. Where the gap goes comes from the
   gateway's audit log (stage transitions), the agent's database (when the container ran) and the
   polling client (when it saw each stage).
2. Fan-out: one task to 20 simulated TREs (`bench/simagents.py`), from submit until the parent is
   RUNNING, on SQLite and PostgreSQL.
3. The idle agent: a real agent process (`fivesafes-tes agent`) left alone for a minute: requests it
   makes (the gateway's /metrics), CPU it burns (/proc), and how soon it picks up work.

Every server runs in its own process (`bench/stack.py`, `bench/server.py`); the polling client runs here.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import httpx
import yaml
from sqlalchemy import select

from bench import dataset
from bench.common import ROOT, SCRATCH, TES, USER, cpu_seconds
from bench.loadgen import percentile
from fivesafes_tes.audit.tables import AuditRecord
from fivesafes_tes.db import Database
from fivesafes_tes.devimages import BUSYBOX_IMAGE
from fivesafes_tes.submission import federation
from fivesafes_tes.submission.stages import Stage
from fivesafes_tes.submission.tables import Child

if TYPE_CHECKING:
    from bench.run import Bench

POLL_S = 0.02  # the client polls every ~20 ms
STUCK_S = 5.0  # a fanned-out parent not RUNNING by then, with every child running, is stuck
E2E_COMMAND = "echo hi > /outputs/x"
E2E_TASK: dict[str, Any] = {
    "name": "bench-e2e",
    "executors": [{"image": BUSYBOX_IMAGE, "command": ["sh", "-c", E2E_COMMAND]}],
    "outputs": [{"path": "/outputs/x", "url": "s3://results/x"}],
    "tags": {"tres": "uk-tre"},
}
BARE_COMMAND = ["sh", "-c", "echo hi > /tmp/x"]
#: The stages a child passes on its way to held outputs, in order.
E2E_STAGES = ("received", "leased", "staging", "running", "checking", "awaiting_review")
FANOUT_PROJECT = "fanout"
FANOUT_TASK: dict[str, Any] = {
    "name": "bench-fanout",
    "executors": [{"image": "fivesafes/analysis-python:1.0", "command": ["python", "-c", "print(1)"]}],
}
#: The devstack's agent settings (devstack._start_tres), and the agent's defaults (AgentSettings).
AGENT_CONFIGS: dict[str, dict[str, str]] = {
    "devstack": {"POLL_WAIT_S": "10", "HEARTBEAT_S": "5", "SYNC_S": "5", "TICK_S": "0.2"},
    "defaults": {},
}
AGENT_DEFAULTS = {"POLL_WAIT_S": "20", "HEARTBEAT_S": "15", "SYNC_S": "30", "TICK_S": "0.5"}


class FederationError(RuntimeError):
    pass


# --- processes --------------------------------------------------------------------------------


@dataclass
class Stack:
    proc: subprocess.Popen
    info: dict[str, Any]
    directory: Path
    log_path: Path

    @property
    def url(self) -> str:
        return self.info["url"]


@contextlib.contextmanager
def stack(name: str, *flags: str) -> Iterator[Stack]:
    """`bench.stack` in its own process on a fresh directory; yields once it answers."""
    directory = SCRATCH / name
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    log_path = SCRATCH / f"{name}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.stack", str(directory), *flags],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    watchdog = threading.Timer(180, proc.kill)
    watchdog.start()
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        watchdog.cancel()
        if not line:
            proc.wait()
            raise FederationError(f"the {name} stack exited ({proc.returncode}):\n{_tail(log_path)}")
        yield Stack(proc, json.loads(line), directory, log_path)
    finally:
        watchdog.cancel()
        _stop(proc)


def _stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    if proc.poll() is None:
        with contextlib.suppress(OSError, ValueError):
            if proc.stdin:
                proc.stdin.close()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _tail(path: Path, lines: int = 30) -> str:
    with open(path) as handle:
        return "".join(handle.readlines()[-lines:])


class Researcher:
    """The polling client: submits, then reads the task every ~20 ms and notes when it saw what."""

    def __init__(self, base_url: str, token: str) -> None:
        self.http = httpx.Client(
            base_url=base_url + TES, headers={"authorization": f"Bearer {token}"}, timeout=30
        )

    def close(self) -> None:
        self.http.close()

    def submit(self, body: dict[str, Any]) -> tuple[str, float, float]:
        """Returns the task id, and the wall-clock and monotonic times just before the request was sent."""
        wall, mono = time.time(), time.perf_counter()
        response = self.http.post("/tasks", json=body)
        if response.status_code != 200:
            raise FederationError(f"POST /tasks answered {response.status_code}: {response.text[:300]}")
        return response.json()["id"], wall, mono

    def get(self, task_id: str, view: str) -> dict[str, Any]:
        response = self.http.get(f"/tasks/{task_id}", params={"view": view})
        if response.status_code != 200:
            raise FederationError(
                f"GET /tasks/{task_id} answered {response.status_code}: {response.text[:300]}"
            )
        return response.json()

    def follow(
        self,
        task_id: str,
        view: str,
        key: Callable[[dict[str, Any]], str],
        until: Callable[[str], bool],
        started: float,
        timeout: float = 60,
    ) -> dict[str, float]:
        """Poll every ~20 ms until ``until(key(doc))``; return when each key value was first seen, in
        seconds after ``started`` (a perf_counter time)."""
        seen: dict[str, float] = {}
        next_at = time.perf_counter()
        deadline = next_at + timeout
        while True:
            value = key(self.get(task_id, view))
            now = time.perf_counter()
            seen.setdefault(value, now - started)
            if until(value):
                return seen
            if now > deadline:
                raise FederationError(f"task {task_id} still {value!r} after {timeout:.0f} s; saw {seen}")
            next_at += POLL_S
            time.sleep(max(0.0, next_at - time.perf_counter()))

    def cancel(self, task_id: str) -> None:
        self.http.post(f"/tasks/{task_id}:cancel").raise_for_status()


def _stage(doc: dict[str, Any]) -> str:
    logs = doc.get("logs") or []
    return logs[0]["metadata"]["stage"] if logs else "received"


def _held_or_ended(stage: str) -> bool:
    return stage == "awaiting_review" or Stage(stage).is_final


def _epoch(moment: datetime) -> float:
    if moment.tzinfo is None:  # SQLite hands back naive datetimes; the gateway stores UTC
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def gateway_timeline(database_url: str, task_ids: list[str]) -> dict[str, dict[str, float]]:
    """Per task, the wall-clock time of each audited step: `created`, then each child stage (leased,
    staging, ...). One child per task (the first TRE's) is followed."""
    db = Database(database_url)
    try:
        with db.read() as session:
            child_of = dict(
                session.execute(select(Child.task_id, Child.id).where(Child.task_id.in_(task_ids))).all()
            )
            objects = [f"task:{t}" for t in task_ids] + [f"child:{c}" for c in child_of.values()]
            rows = session.execute(
                select(AuditRecord.object, AuditRecord.action, AuditRecord.outcome, AuditRecord.at)
                .where(AuditRecord.object.in_(objects))
                .order_by(AuditRecord.seq)
            ).all()
    finally:
        db.dispose()
    task_of = {f"child:{c}": t for t, c in child_of.items()}
    out: dict[str, dict[str, float]] = {t: {} for t in task_ids}
    for obj, action, outcome, at in rows:
        if action == "task.create":
            out[obj.split(":", 1)[1]]["created"] = _epoch(at)
        elif action == "child.lease":
            out[task_of[obj]].setdefault("leased", _epoch(at))
        elif action == "child.stage":
            out[task_of[obj]].setdefault(outcome, _epoch(at))
    return out


def container_times(agent_db: str, task_ids: list[str]) -> dict[str, tuple[float, float]]:
    """When each task's container started and exited, as the Docker engine stamped it (the agent keeps it)."""
    out = {}
    con = sqlite3.connect(f"file:{agent_db}?mode=ro", uri=True)
    try:
        marks = ",".join("?" * len(task_ids))
        for task_id, result in con.execute(
            f"SELECT task_id, result FROM agent_children WHERE task_id IN ({marks})", task_ids
        ):
            steps = (json.loads(result or "{}").get("outcome") or {}).get("steps") or []
            if steps:
                start, end = (_epoch(datetime.fromisoformat(steps[0][k])) for k in ("start_time", "end_time"))
                out[task_id] = (start, end)
    finally:
        con.close()
    return out


def p(values: list[float], q: float) -> float:
    return percentile(sorted(values), q)


# --- 1. end to end ---------------------------------------------------------------------------


def bare_docker_run(client: Any) -> dict[str, float]:
    """One `docker run --rm --network none` of the same image, through the SDK and through the CLI."""
    started = time.perf_counter()
    client.containers.run(BUSYBOX_IMAGE, BARE_COMMAND, network_mode="none", remove=True)
    sdk = time.perf_counter() - started
    started = time.perf_counter()
    subprocess.run(
        ["docker", "run", "--rm", "--network", "none", BUSYBOX_IMAGE, *BARE_COMMAND],
        check=True,
        capture_output=True,
    )
    return {"sdk": sdk, "cli": time.perf_counter() - started}


def e2e(bench: Bench) -> None:
    """Submit → outputs held, interleaved with the bare `docker run` it is compared with: each run
    through the stack is followed by one bare run (SDK and CLI) on the same engine, so that drifting
    load on the machine hits both alike."""
    import docker

    a = bench.args
    bench.begin("end to end: starting the devstack (gateway, S3, two agents, Docker executor)", None)
    client = docker.from_env()
    bare: dict[str, list[float]] = {"sdk": [], "cli": []}
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(client.close)
        s = cleanup.enter_context(
            stack("e2e", "--agents", "--report-granularity-s", str(a.e2e_granularity_s))
        )
        researcher = Researcher(s.url, s.info["researcher_token"])
        cleanup.callback(researcher.close)
        stack_cpu = 0.0  # the stack's CPU from each submit until its bare run starts
        runs: list[dict[str, Any]] = []
        bench.begin("end to end: submit until outputs held, then a bare docker run; one TRE", a.e2e_runs)
        for i in range(a.e2e_warmup + a.e2e_runs):
            cpu_before = cpu_seconds(s.proc.pid)
            task_id, wall, mono = researcher.submit(E2E_TASK)
            seen = researcher.follow(task_id, "BASIC", _stage, _held_or_ended, mono)
            if "awaiting_review" not in seen:
                doc = researcher.get(task_id, "FULL")
                raise FederationError(
                    f"the end-to-end task ended {_stage(doc)}: {doc['logs'][0]['system_logs']}"
                )
            researcher.cancel(task_id)  # the agent discards what it held and forgets the child
            time.sleep(a.e2e_pause)
            stack_cpu += cpu_seconds(s.proc.pid) - cpu_before
            bare_run = bare_docker_run(client)
            if i >= a.e2e_warmup:
                runs.append(
                    {"task_id": task_id, "submitted_at": wall, "seen": seen, "e2e_s": seen["awaiting_review"]}
                )
                for how, seconds in bare_run.items():
                    bare[how].append(seconds)
                bench.progress.update(bench.step, completed=len(runs))
        ids = [r["task_id"] for r in runs]
        timeline = gateway_timeline(s.info["database_url"], ids)
        containers = container_times(s.info["agent_databases"]["uk-tre"], ids)
    for run in runs:
        marks = timeline.get(run["task_id"], {})
        run["audit"] = {k: v - run["submitted_at"] for k, v in marks.items()}
        if run["task_id"] in containers:
            start, end = containers[run["task_id"]]
            run["container"] = {"started": start - run["submitted_at"], "exited": end - run["submitted_at"]}
    result = {
        "runs": runs,
        "bare": bare,
        "interleaved": True,
        "stack_cpu_s": stack_cpu,
        "summary": summarise_e2e(runs, bare),
    }
    bench.results["e2e"] = result
    sm = result["summary"]
    bench.log(
        f"end to end: p50 {sm['e2e_p50_s']:.3f} s, p90 {sm['e2e_p90_s']:.3f} s; bare docker run p50 "
        f"{sm['bare_p50_s']:.3f} s ({sm['bare_reference']}); gap {sm['gap_s']:+.3f} s"
    )
    bench.advance_overall()


def summarise_e2e(runs: list[dict[str, Any]], bare: dict[str, list[float]]) -> dict[str, Any]:
    e2e_s = [r["e2e_s"] for r in runs]
    bare_p50 = {how: p(v, 50) for how, v in bare.items()}
    reference = min(bare_p50, key=bare_p50.__getitem__)  # the faster of SDK and CLI: the stricter target
    # Where the time goes: the median of each step, from the audit log and the engine's stamps.
    marks = ["submitted", "created", *E2E_STAGES[1:]]
    steps = []
    for before, after in itertools.pairwise(marks):
        values = [
            r["audit"].get(after, float("nan"))
            - (r["audit"].get(before, float("nan")) if before != "submitted" else 0.0)
            for r in runs
        ]
        steps.append({"from": before, "to": after, "p50_s": p(values, 50), "p90_s": p(values, 90)})
    seen_lag = [r["e2e_s"] - r["audit"]["awaiting_review"] for r in runs if "awaiting_review" in r["audit"]]
    steps.append(
        {
            "from": "awaiting_review",
            "to": "seen by the client",
            "p50_s": p(seen_lag, 50),
            "p90_s": p(seen_lag, 90),
        }
    )
    with_container = [r for r in runs if "container" in r]
    container = (
        {
            "run_p50_s": p(
                [r["container"]["exited"] - r["container"]["started"] for r in with_container], 50
            ),
            "running_to_started_p50_s": p(
                [r["container"]["started"] - r["audit"]["running"] for r in with_container], 50
            ),
            "staging_to_started_p50_s": p(
                [r["container"]["started"] - r["audit"]["staging"] for r in with_container], 50
            ),
            "exited_to_checking_p50_s": p(
                [r["audit"]["checking"] - r["container"]["exited"] for r in with_container], 50
            ),
        }
        if with_container
        else {}
    )
    return {
        "runs": len(runs),
        "e2e_p50_s": p(e2e_s, 50),
        "e2e_p90_s": p(e2e_s, 90),
        "e2e_max_s": max(e2e_s),
        "bare_p50": bare_p50,
        "bare_p90": {how: p(v, 90) for how, v in bare.items()},
        "bare_reference": reference,
        "bare_p50_s": bare_p50[reference],
        "gap_s": p(e2e_s, 50) - bare_p50[reference],
        "steps": steps,
        "container": container,
    }


# --- 2. fan-out ------------------------------------------------------------------------------


def _setup_fanout(url: str, tres: list[str]) -> None:
    db = Database(url)
    try:
        with db.write() as session:
            for name in tres:
                federation.add_tre(session, "bench", name, f"simulated {name}")
            federation.add_project(session, "bench", FANOUT_PROJECT, tres=tres)
            federation.add_member(session, "bench", FANOUT_PROJECT, USER, default=True)
    finally:
        db.dispose()


def _stuck(researcher: Researcher, task_id: str, children: int) -> dict[str, Any]:
    """The parent did not show RUNNING in time: say what it shows, and what its children are."""
    doc = researcher.get(task_id, "BASIC")
    stages = collections.Counter(log["metadata"]["stage"] for log in doc.get("logs") or [])
    if stages.get("running") != children:
        raise FederationError(
            f"task {task_id} is {doc['state']} after {STUCK_S:g} s; its children: {dict(stages)}"
        )
    return {"task_id": task_id, "state": doc["state"], "children": dict(stages)}


class SimAgents:
    """`bench.simagents` in its own process; collects what it reports."""

    def __init__(self, base_url: str, agents: list[dict[str, str]], wait_s: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.simagents"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(SCRATCH / "simagents.log", "w"),  # noqa: SIM115  closed with the process
            text=True,
        )
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"base_url": base_url, "agents": agents, "wait_s": wait_s}) + "\n")
        self.proc.stdin.flush()
        self.ready = threading.Event()
        self.lock = threading.Condition()
        self.running: dict[str, list[dict[str, Any]]] = {}
        self.acks = 0
        self.reader = threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True)
        self.reader.start()
        if not self.ready.wait(60):
            self.close()
            raise FederationError(f"the simulated agents did not start:\n{_tail(SCRATCH / 'simagents.log')}")

    def _read(self, stdout: IO[str]) -> None:
        for line in stdout:
            event = json.loads(line)
            kind = event.pop("event")
            with self.lock:
                if kind == "ready":
                    self.ready.set()
                elif kind == "running":
                    self.running.setdefault(event["task_id"], []).append(event)
                elif kind == "ack":
                    self.acks += 1
                self.lock.notify_all()

    def wait_acks(self, count: int, timeout: float = 30) -> None:
        with self.lock:
            if not self.lock.wait_for(lambda: self.acks >= count, timeout):
                raise FederationError(f"{self.acks} of {count} cancellations acknowledged")

    def wait_running(self, task_id: str, count: int, timeout: float = 30) -> list[dict[str, Any]]:
        with self.lock:
            if not self.lock.wait_for(lambda: len(self.running.get(task_id, [])) >= count, timeout):
                raise FederationError(f"{len(self.running.get(task_id, []))} of {count} children running")
            return list(self.running[task_id])

    def close(self) -> None:
        _stop(self.proc)


def fanout(bench: Bench, backend: dataset.Backend) -> None:
    from bench.run import serve

    a = bench.args
    tres = [f"sim-tre-{i:02d}" for i in range(1, a.fanout_tres + 1)]
    url = backend.fresh("fanout")
    try:
        _setup_fanout(url, tres)
        with serve("gateway", url) as server:
            agents = [
                {
                    "tre": tre,
                    "token": bench.issuer.issue(
                        f"agent-{tre}", ["tre-agent"], audience=bench.audience, tre=tre, ttl_s=6 * 3600
                    ),
                }
                for tre in tres
            ]
            sims = SimAgents(server.base_url, agents, wait_s=20)
            researcher = Researcher(server.base_url, bench.token(USER))
            cpu_before = cpu_seconds(server.proc.pid)
            runs = []
            try:
                time.sleep(1)  # every agent back in its long-poll
                bench.begin(
                    f"{backend.name}: one task to {len(tres)} simulated TREs, until RUNNING", a.fanout_runs
                )
                for i in range(a.fanout_warmup + a.fanout_runs):
                    task_id, wall, mono = researcher.submit(FANOUT_TASK)
                    try:
                        seen = researcher.follow(
                            task_id, "MINIMAL", lambda d: d["state"], lambda s: s == "RUNNING", mono, STUCK_S
                        )
                        stuck = None
                    except FederationError:
                        seen, stuck = {}, _stuck(researcher, task_id, len(tres))
                    events = sims.wait_running(task_id, len(tres))
                    if i >= a.fanout_warmup:
                        runs.append(
                            {
                                "polled_s": seen.get("RUNNING"),
                                "stuck": stuck,
                                "first_leased_s": min(e["leased_at"] for e in events) - wall,
                                "last_leased_s": max(e["leased_at"] for e in events) - wall,
                                "last_running_s": max(e["running_at"] for e in events) - wall,
                            }
                        )
                        bench.progress.update(bench.step, completed=len(runs))
                    researcher.cancel(task_id)
                    sims.wait_acks(len(tres) * (i + 1))
                    time.sleep(0.3)
                server_cpu = cpu_seconds(server.proc.pid) - cpu_before
            finally:
                researcher.close()
                sims.close()
    finally:
        backend.drop(url)
    polled = [r["polled_s"] for r in runs if r["polled_s"] is not None]
    stuck = [r["stuck"] for r in runs if r["stuck"]]
    result = {
        "backend": backend.name,
        "tres": len(tres),
        "runs": runs,
        "reached": len(polled),
        "stuck": len(stuck),
        "stuck_examples": stuck[:3],
        "p50_s": p(polled, 50),
        "p90_s": p(polled, 90),
        "max_s": max(polled, default=float("nan")),
        "last_leased_p50_s": p([r["last_leased_s"] for r in runs], 50),
        "first_leased_p50_s": p([r["first_leased_s"] for r in runs], 50),
        "last_running_p50_s": p([r["last_running_s"] for r in runs], 50),
        "server_cpu_s_per_run": server_cpu / (a.fanout_warmup + a.fanout_runs),
    }
    bench.results["fanout"].append(result)
    bench.log(
        f"{backend.name}: fan-out to {len(tres)} TREs RUNNING after p50 {result['p50_s']:.3f} s "
        f"(all leased {result['last_leased_p50_s']:.3f} s, last running event "
        f"{result['last_running_p50_s']:.3f} s)"
        + (f"; [red]{len(stuck)} of {len(runs)} runs never showed RUNNING[/]: {stuck[0]}" if stuck else "")
    )
    bench.advance_overall()


# --- 3. the idle agent -------------------------------------------------------------------------


def _agent_env(s: Stack, home: Path, overrides: dict[str, str]) -> dict[str, str]:
    """As tests/test_tre_e2e.py::_agent_env configures a separate agent process, with the given intervals."""
    from fivesafes_tes.synthetic import generate

    omop = home / "omop"
    generate(omop, "uk-tre", 1, n_persons=50)
    policy = home / "policy.yaml"
    policy.write_text(
        yaml.safe_dump(
            {
                "allowed_images": ["fivesafes/*"],
                "datasets": {"omop": {"path": str(omop)}},
                "grants": {"diabetes-cancer": ["omop"]},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIVESAFES_")}
    env.update(
        {
            "FIVESAFES_AGENT_TRE": "uk-tre",
            "FIVESAFES_AGENT_GATEWAY_URL": s.url,
            "FIVESAFES_AGENT_TOKEN": s.info["agent_tokens"]["uk-tre"],
            "FIVESAFES_AGENT_DATA_DIR": str(home),
            "FIVESAFES_AGENT_POLICY_FILE": str(policy),
            "FIVESAFES_AGENT_AIRLOCK_ENDPOINT_URL": s.info["s3_url"],
            "FIVESAFES_AGENT_AIRLOCK_ACCESS_KEY": "dev",
            "FIVESAFES_AGENT_AIRLOCK_SECRET_KEY": "dev-secret",
            "FIVESAFES_AGENT_AIRLOCK_BUCKET": "uk-airlock",
            **{f"FIVESAFES_AGENT_{k}": v for k, v in overrides.items()},
        }
    )
    return env


def agent_requests(s: Stack) -> dict[str, float]:
    """Requests served per agent route so far, from the gateway's /metrics."""
    response = httpx.get(
        s.url + "/metrics", headers={"authorization": f"Bearer {s.info['researcher_token']}"}
    )
    response.raise_for_status()
    counts: dict[str, float] = {}
    for line in response.text.splitlines():
        if not line.startswith("fivesafes_http_requests_total{"):
            continue
        labels, value = line[len("fivesafes_http_requests_total{") :].rsplit("} ", 1)
        fields = dict(part.split("=", 1) for part in labels.split(","))
        route = fields["route"].strip('"')
        if route.startswith("/agent/"):
            key = f"{fields['method'].strip(chr(34))} {route}"
            counts[key] = counts.get(key, 0.0) + float(value)
    return counts


@dataclass
class IdleAgent:
    config: str
    stack: Stack
    proc: subprocess.Popen
    log_path: Path
    samples: dict[str, Any] = field(default_factory=dict)


def idle(bench: Bench) -> None:
    """Both agent configurations at once, each against its own gateway (so /metrics counts one agent)."""
    a = bench.args
    bench.begin("idle agent: starting two gateways and two agent processes", None)
    with contextlib.ExitStack() as exits:
        agents: list[IdleAgent] = []
        for config, overrides in AGENT_CONFIGS.items():
            s = exits.enter_context(stack(f"idle-{config}", "--s3"))
            home = s.directory / "agent"
            env = _agent_env(s, home, overrides)
            log_path = SCRATCH / f"idle-agent-{config}.log"
            proc = subprocess.Popen(
                [sys.executable, "-m", "fivesafes_tes.cli", "agent"],
                cwd=ROOT,
                env=env,
                stdout=open(log_path, "w"),  # noqa: SIM115  closed with the process
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            exits.callback(_stop_agent, proc)
            agents.append(IdleAgent(config, s, proc, log_path))
        deadline = time.monotonic() + 60
        for agent in agents:  # up when it has synced once: its worker thread is running
            while not any(k.endswith("/agent/v1/sync") for k in agent_requests(agent.stack)):
                if agent.proc.poll() is not None or time.monotonic() > deadline:
                    raise FederationError(f"the {agent.config} agent did not start:\n{_tail(agent.log_path)}")
                time.sleep(0.2)
        time.sleep(2)  # past start-up (recover, sweep, first sync)
        bench.begin(f"idle agent: both agents left alone for {a.idle_seconds:.0f} s", int(a.idle_seconds))
        started = time.perf_counter()
        for agent in agents:
            agent.samples = {
                "requests": agent_requests(agent.stack),
                "cpu": cpu_seconds(agent.proc.pid),
                "gateway_cpu": cpu_seconds(agent.stack.proc.pid),
            }
        while (elapsed := time.perf_counter() - started) < a.idle_seconds:
            bench.progress.update(bench.step, completed=int(elapsed))
            time.sleep(min(1.0, a.idle_seconds - elapsed))
        for agent in agents:
            before = agent.samples
            after = agent_requests(agent.stack)
            window = time.perf_counter() - started
            per_min = 60 / window
            routes = {k: (after.get(k, 0) - before["requests"].get(k, 0)) * per_min for k in after}
            agent.samples = {
                "window_s": window,
                "requests_per_min": {k: v for k, v in sorted(routes.items()) if v},
                "requests_per_min_total": sum(routes.values()),
                "agent_cpu_s_per_min": (cpu_seconds(agent.proc.pid) - before["cpu"]) * per_min,
                "gateway_cpu_s_per_min": (cpu_seconds(agent.stack.proc.pid) - before["gateway_cpu"])
                * per_min,
            }
        for agent in agents:
            agent.samples["pickups"] = pickups(bench, agent)
    for agent in agents:
        picks = [x["polled_s"] for x in agent.samples["pickups"]]
        settings = {k: (AGENT_CONFIGS[agent.config].get(k) or AGENT_DEFAULTS[k]) for k in AGENT_DEFAULTS}
        row = {
            "config": agent.config,
            "settings": settings,
            **agent.samples,
            "pickup_p50_s": p(picks, 50),
            "pickup_max_s": max(picks),
            "pickup_audit_p50_s": p([x["audit_s"] for x in agent.samples["pickups"]], 50),
            "pickup_audit_max_s": max(x["audit_s"] for x in agent.samples["pickups"]),
        }
        bench.results["idle"].append(row)
        bench.log(
            f"idle agent ({agent.config}): {row['requests_per_min_total']:.1f} requests/min, "
            f"{row['agent_cpu_s_per_min']:.2f} CPU s/min; pick-up p50 {row['pickup_p50_s'] * 1000:.0f} ms, "
            f"max {row['pickup_max_s'] * 1000:.0f} ms"
        )
    bench.advance_overall()


def _stop_agent(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def pickups(bench: Bench, agent: IdleAgent) -> list[dict[str, float]]:
    """Submit while the agent idles; time until its TRE's child is `leased`."""
    a = bench.args
    bench.begin(f"idle agent ({agent.config}): pick-up of new work", a.pickups)
    researcher = Researcher(agent.stack.url, agent.stack.info["researcher_token"])
    out, ids = [], []
    try:
        for i in range(a.pickups):
            time.sleep(random.uniform(1.0, 2.0))  # idle again, at a random point of its poll cycle
            task_id, wall, mono = researcher.submit(E2E_TASK)
            seen = researcher.follow(task_id, "BASIC", _stage, lambda s: s != "received", mono)
            out.append({"polled_s": min(v for k, v in seen.items() if k != "received"), "submitted_at": wall})
            ids.append(task_id)
            researcher.cancel(task_id)
            bench.progress.update(bench.step, completed=i + 1)
    finally:
        researcher.close()
    timeline = gateway_timeline(agent.stack.info["database_url"], ids)
    for task_id, row in zip(ids, out, strict=True):
        marks = timeline[task_id]
        row["audit_s"] = marks["leased"] - marks["created"]
    return out


def stage_table(summary: dict[str, Any]) -> list[list[str]]:
    return [
        [f"{s['from']} → {s['to']}", f"{s['p50_s'] * 1000:.0f}", f"{s['p90_s'] * 1000:.0f}"]
        for s in summary["steps"]
    ]


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")
