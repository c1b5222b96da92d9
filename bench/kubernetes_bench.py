"""The Kubernetes executor under one real agent (issue 12): how soon a leased child's Job exists, and
whether one agent keeps up with the status of 200 children running at once.

The Kubernetes API is kmock's emulator, served on its own event loop as in
tests/test_executor_kubernetes.py, in a process of its own (`serve`) with moto's S3 for the airlock the
backend stages through, so that the agent never waits on their interpreter. The emulator stores objects
and runs nothing, so that process is also the Job controller and the kubelet, on the bench's word.
Unlike kmock's own emulator, ours honours `labelSelector` as an API server does (without it every
listing the executor makes for one child would return every child's objects) and forgets the requests
it has answered. The gateway is a stub in the bench's process that hands the agent grants and takes
its events; the bench stops each child where its run has ended (the executor's `collect` says "still
gathering"), so the agent's own airlock is never reached and what is timed is the agent and the backend.

Times are taken by a thin wrapper around the executor: a child's Job exists in the API when `start`
has returned (the create call answered), and its end is seen when `poll` first gives a result.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench.common import ROOT, free_port, ms_summary
from bench.loadgen import percentile

NAMESPACE = "fivesafes-tasks"
TRE = "bench-tre"
PROJECT = "alpha"
USER = "alice"
ISSUER = "https://idp.bench.example"
IMAGE = "registry.tre.example/approved/stats:1"
FILER_IMAGE = "registry.tre.example/fivesafes-tes:bench"  # never pulled: nothing runs in the emulator
#: The agent's settings that matter here, at their defaults but for the reporting granularity: events
#: go at once, which changes nothing timed (times are taken at the executor, not from events).
TICK_S = 0.5
CHILD_LABEL = "fivesafes-tes/child"  # the label the executor names a Job's child by


def missing() -> list[str]:
    """What this benchmark needs that is not installed: the emulator, S3 and the Kubernetes client."""
    import importlib.util

    return [name for name in ("kmock", "moto", "kubernetes") if importlib.util.find_spec(name) is None]


class KubernetesBenchError(RuntimeError):
    """The bench could not measure: the emulated cluster or the agent did not do what was asked."""


def _selector(value: str | None) -> dict[str, str]:
    """`a=b,c=d` (equality only: all the executor uses) as a dict."""
    pairs = [part.split("=", 1) for part in (value or "").split(",") if part]
    return {key.strip(): val.strip() for key, val in pairs}


class _Cluster:
    """kmock's Kubernetes emulator, made to behave as an API server would where the bench needs it,
    served on its own thread and event loop; and the Job controller and kubelet, as HTTP calls to it.
    Runs in its own process (`serve`), so that the agent under test never waits on its interpreter."""

    def __init__(self) -> None:
        self.url = ""
        self.busy = {"requests": 0.0, "seconds": 0.0}  # the emulator's own time on requests, since asked
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(
            target=self._loop.run_until_complete, args=(self._serve(),), name="kmock", daemon=True
        )

    async def _serve(self) -> None:
        import kmock

        busy = self.busy

        class Emulator(kmock.KubernetesEmulator):  # type: ignore[misc]
            async def __call__(self, raw_request: Any) -> Any:
                began = time.monotonic()
                try:
                    return await super().__call__(raw_request)
                finally:
                    busy["requests"] += 1
                    busy["seconds"] += time.monotonic() - began
                    # kmock keeps every request for a test's assertions and matches each new one
                    # against all before it: over the bench's thousands of requests, each would take
                    # longer than the last. Nothing here asserts on them.
                    self._requests.clear()
                    for payload in self._payloads:
                        getattr(payload, "_requests", []).clear()

            async def _serve_list(self, request: Any) -> Any:
                listed = await super()._serve_list(request)
                wanted = _selector(request.params.get("labelSelector"))
                listed["items"] = [
                    item
                    for item in listed["items"]
                    if wanted.items() <= ((item.get("metadata") or {}).get("labels") or {}).items()
                ]
                return listed

        self._stop = asyncio.Event()
        async with Emulator() as handler, kmock.Server(handler, host="127.0.0.1") as server:
            handler.resources["batch/v1/jobs"] = {"kind": "Job", "namespaced": True}
            handler.resources["v1/pods"] = {"kind": "Pod", "namespaced": True}
            handler.resources["v1/secrets"] = {"kind": "Secret", "namespaced": True}
            handler.resources["v1/persistentvolumeclaims"] = {
                "kind": "PersistentVolumeClaim",
                "namespaced": True,
            }
            handler.resources["networking.k8s.io/v1/networkpolicies"] = {
                "kind": "NetworkPolicy",
                "namespaced": True,
            }
            handler["get", re.compile(r"^/api/v1/namespaces/[^/]+/pods/[^/]+/log$")] << b""  # printed nothing
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> _Cluster:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("kmock's Kubernetes emulator did not start")
        self.http = httpx.Client(base_url=self.url, timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._loop.close()

    def run_pods(self, names: list[str]) -> dict[str, float]:
        """The Job controller and the kubelet: one pod per Job, its containers running."""
        at = {}
        for name in names:
            job = self._get("jobs", name)
            template = job["spec"]["template"]
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"{name}-pod",
                    "namespace": NAMESPACE,
                    "labels": {**template["metadata"]["labels"], "job-name": name},
                },
                "spec": template["spec"],
                "status": {"phase": "Running", **_statuses(template["spec"], ended=False)},
            }
            self.http.post(_path("pods"), json=pod).raise_for_status()
            at[name] = time.monotonic()
        return at

    def finish(self, names: list[str]) -> dict[str, float]:
        """The kubelet and the Job controller: every container exited 0, every pod and Job succeeded;
        when each Job was marked complete."""
        at = {}
        for name in names:
            pod = self._get("pods", f"{name}-pod")
            self._status(
                "pods", pod["metadata"]["name"], {"phase": "Succeeded", **_statuses(pod["spec"], ended=True)}
            )
            condition = {"type": "Complete", "status": "True", "reason": "Completed"}
            self._status("jobs", name, {"succeeded": 1, "conditions": [condition]})
            at[name] = time.monotonic()
        return at

    def _get(self, kind: str, name: str) -> dict[str, Any]:
        response = self.http.get(_path(kind, name))
        response.raise_for_status()
        found: dict[str, Any] = response.json()
        return found

    def _status(self, kind: str, name: str, status: dict[str, Any]) -> None:
        self.http.patch(
            _path(kind, name) + "/status",
            json={"status": status},
            headers={"Content-Type": "application/merge-patch+json"},
        ).raise_for_status()


def _path(kind: str, name: str = "") -> str:
    group = "/apis/batch/v1" if kind == "jobs" else "/api/v1"
    return f"{group}/namespaces/{NAMESPACE}/{kind}" + (f"/{name}" if name else "")


def _statuses(pod_spec: dict[str, Any], *, ended: bool) -> dict[str, list[dict[str, Any]]]:
    """Container statuses of a pod whose init containers have all exited 0 and whose main containers
    run (`ended` false) or have exited 0 too."""
    began = "2026-01-01T00:00:01Z"
    done = {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": began, "finishedAt": began}}

    def status(container: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        return {"name": container["name"], "image": container["image"], "state": state}

    return {
        "initContainerStatuses": [status(c, done) for c in pod_spec.get("initContainers") or []],
        "containerStatuses": [
            status(c, done if ended else {"running": {"startedAt": began}}) for c in pod_spec["containers"]
        ],
    }


def serve() -> None:
    """The cluster's process, with the airlock the backend stages through (moto's S3): their URLs on
    the first line of stdout, then one JSON answer per command read on stdin (`{"run_pods": [job, ...]}`
    or `{"finish": [job, ...]}`), until stdin closes."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request at INFO
    port = free_port()
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    s3.start()
    with _Cluster() as cluster:
        print(json.dumps({"url": cluster.url, "s3": f"http://127.0.0.1:{port}"}), flush=True)
        for line in sys.stdin:
            command = json.loads(line)
            if "busy" in command:
                answer, cluster.busy["requests"], cluster.busy["seconds"] = dict(cluster.busy), 0, 0
            elif "run_pods" in command:
                answer = cluster.run_pods(command["run_pods"])
            else:
                answer = cluster.finish(command["finish"])
            print(json.dumps(answer), flush=True)
    s3.stop()


class Cluster:
    """The emulated cluster as the bench sees it: `serve` in a child process."""

    def __enter__(self) -> Cluster:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.kubernetes_bench"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self._proc.stdin is not None
        assert self._proc.stdout is not None
        self._in, self._out = self._proc.stdin, self._proc.stdout
        line = self._out.readline()
        if not line:
            raise KubernetesBenchError("the emulated cluster did not start")
        urls = json.loads(line)
        self.url, self.s3_url = urls["url"], urls["s3"]
        self.http = httpx.Client(base_url=self.url, timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()
        self._in.close()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def api_client(self) -> Any:
        from kubernetes import client as k8s

        config = k8s.Configuration()
        config.host = self.url
        return k8s.ApiClient(config)

    def airlock(self) -> Any:
        """A fresh bucket of the cluster's S3: the airlock whose staging area the backend uses."""
        from fivesafes_tes.egress.store import ObjectStore

        store = ObjectStore(
            self.s3_url, f"airlock-{uuid.uuid4().hex[:8]}", "bench", "bench-secret", "us-east-1"
        )
        store.ensure_bucket()
        return store

    def job_of(self, child_id: str) -> str:
        response = self.http.get(_path("jobs"), params={"labelSelector": f"{CHILD_LABEL}={child_id}"})
        response.raise_for_status()
        (job,) = response.json()["items"]
        name: str = job["metadata"]["name"]
        return name

    def busy(self) -> dict[str, float]:
        """How many requests the emulator answered since last asked, and its seconds on them."""
        return self._ask({"busy": True})

    def _ask(self, command: dict[str, Any]) -> dict[str, float]:
        self._in.write(json.dumps(command) + "\n")
        self._in.flush()
        answer: dict[str, float] = json.loads(self._out.readline())
        return answer

    def run_pods(self, jobs: list[str]) -> dict[str, float]:
        return self._ask({"run_pods": jobs})

    def finish(self, jobs: list[str]) -> dict[str, float]:
        return self._ask({"finish": jobs})


class Gateway:
    """The gateway client as the agent uses it: grants offered by the bench, every event taken."""

    def __init__(self) -> None:
        self._grants: list[dict[str, Any]] = []
        self._offered = threading.Condition()
        self.leased_at: dict[str, float] = {}
        self.closed = False

    def offer(self, grants: list[dict[str, Any]]) -> None:
        with self._offered:
            self._grants.extend(grants)
            self._offered.notify_all()

    def lease(self, wait_s: float) -> dict[str, Any]:
        with self._offered:
            self._offered.wait_for(lambda: self._grants or self.closed, timeout=min(wait_s, 1.0))
            if self.closed:
                raise ConnectionError("closed")
            grants, self._grants = self._grants, []
        now = time.monotonic()
        for grant in grants:
            self.leased_at[grant["child_id"]] = now
        return {"leases": grants, "cancel": []}

    def heartbeat(self, held: list[tuple[str, int]]) -> dict[str, str]:
        return {}

    def event(self, *args: Any) -> None:
        pass

    def sync(self) -> dict[str, Any]:
        return {
            "projects": [
                {"name": PROJECT, "title": "Alpha", "members": [USER], "starts_on": None, "ends_on": None}
            ]
        }

    def publish_policy(self, admission: dict[str, Any]) -> bool:
        return True

    def push_decisions(self, body: list[dict[str, Any]]) -> None:
        pass

    def cancel_ack(self, child_id: str) -> None:
        pass

    def close(self) -> None:
        with self._offered:
            self.closed = True
            self._offered.notify_all()


class Airlock:
    """Never reached: every child stops where its run has ended."""

    def ensure_bucket(self) -> None:
        pass


class Timed:
    """The executor as the agent sees it, timing what it does: when each child's `start` returned
    (its Job exists), when its `poll` first gave a result, and every poll call (start, end)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.created: dict[str, float] = {}
        self.seen: dict[str, float] = {}
        self.polls: list[tuple[str, float, float]] = []

    def start(self, spec: Any) -> None:
        self.inner.start(spec)
        self.created.setdefault(spec.child_id, time.monotonic())

    def poll(self, child_id: str) -> Any:
        began = time.monotonic()
        result = self.inner.poll(child_id)
        ended = time.monotonic()
        self.polls.append((child_id, began, ended))
        if result is not None:
            self.seen.setdefault(child_id, ended)
        return result

    def collect(self, child_id: str, scratch: Path) -> None:
        return None  # still gathering, as far as the agent knows: the bench ends each child here

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def executor_for(cluster: Cluster, deployment: str) -> Any:
    """The Kubernetes backend as a TRE would configure it, talking to the emulator."""
    from fivesafes_tes.executors.kubernetes import KubernetesExecutor

    return KubernetesExecutor(
        TRE,
        deployment=deployment,
        store=cluster.airlock(),
        filer_image=FILER_IMAGE,
        namespace=NAMESPACE,
        api_client=cluster.api_client(),
    )


def grant(child_id: str) -> dict[str, Any]:
    return {
        "child_id": child_id,
        "task_id": f"task-{child_id}",
        "attempt": 1,
        "stage": "leased",
        "project": PROJECT,
        "user": USER,
        "user_issuer": ISSUER,
        "user_subject": f"{USER}-sub",
        "task": {
            "executors": [{"image": IMAGE, "command": ["sh", "-c", "echo hello"]}],
            "resources": {"cpu_cores": 1, "ram_gb": 0.5},
        },
    }


@contextmanager
def running_agent(folder: Path, cluster: Cluster) -> Iterator[tuple[Any, Gateway, Timed]]:
    """A real agent (default settings, events at once) driving the Kubernetes backend, its project and
    user approved by this TRE, its threads running."""
    from fivesafes_tes.agent import approvals
    from fivesafes_tes.agent.loop import Agent, deployment_id, open_database
    from fivesafes_tes.agent.policy import TrePolicy
    from fivesafes_tes.auth import Person
    from fivesafes_tes.settings import AgentSettings

    settings = AgentSettings(
        tre=TRE, data_dir=folder, executor="kubernetes", report_granularity_s=0, tick_s=TICK_S
    )
    db = open_database(settings)
    gateway = Gateway()
    executor = Timed(executor_for(cluster, deployment_id(db)))
    agent = Agent(
        settings,
        client=gateway,  # type: ignore[arg-type]
        executor=executor,  # type: ignore[arg-type]
        store=Airlock(),  # type: ignore[arg-type]
        policy=TrePolicy(allowed_images=["registry.tre.example/approved/*"]),
        db=db,
    )
    agent.sync()
    admin = Person(ISSUER, "dora-sub", "dora")
    with db.write() as session:
        approvals.decide(session, admin, PROJECT, "approved")
        approvals.decide(session, admin, PROJECT, "approved", username=USER)
    agent.start()
    try:
        yield agent, gateway, executor
    finally:
        agent.shutdown(timeout=5)
        db.dispose()


def _until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise KubernetesBenchError(f"kubernetes bench: timed out waiting for {what}")
        time.sleep(0.005)


def _passes(polls: list[tuple[str, float, float]], children: set[str]) -> list[dict[str, float]]:
    """The agent's status passes over `children`: each the run of polls in which every child was asked
    once (the agent advances every active child once per pass), with its wall time and the time spent
    inside `poll`."""
    out, asked, first, inside = [], set(), 0.0, 0.0
    for child_id, began, ended in polls:
        if child_id not in children:
            continue
        if not asked:
            first = began
        asked.add(child_id)
        inside += ended - began
        if asked == children:
            out.append({"wall_s": ended - first, "poll_s": inside})
            asked, inside = set(), 0.0
    return out


def lease_to_job(
    cluster: Cluster, leases: int, on_step: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """One grant at a time to an idle agent: from the lease answer carrying it to its Job existing."""
    with (
        tempfile.TemporaryDirectory(prefix="fivesafes-bench-k8s-") as folder,
        running_agent(Path(folder), cluster) as (_, gateway, executor),
    ):
        latencies, phase = [], random.Random(12)
        for i in range(leases + 1):  # the first, untimed, makes the namespace's network policy
            child_id = uuid.uuid4().hex[:16]
            gateway.offer([grant(child_id)])
            _until(lambda child_id=child_id: child_id in executor.created, 30, f"the Job of child {i}")
            if i:
                latencies.append(executor.created[child_id] - gateway.leased_at[child_id])
            # Its run ends at once, so the agent stays idle but for the child in hand.
            job = cluster.job_of(child_id)
            cluster.run_pods([job])
            cluster.finish([job])
            if on_step:
                on_step(f"lease → Job {i}/{leases}")
            time.sleep(phase.uniform(0, TICK_S))  # grants come at any point of the agent's tick
    return {"leases": leases, "tick_s": TICK_S, "latencies_s": latencies, **ms_summary(latencies)}


def concurrent(
    cluster: Cluster, children: int, passes_wanted: int, on_step: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """`children` grants in one lease answer; once their Jobs run, the agent's status passes over them;
    then every one ends at once, and how long until the agent's poll has seen each end."""
    with (
        tempfile.TemporaryDirectory(prefix="fivesafes-bench-k8s-") as folder,
        running_agent(Path(folder), cluster) as (_, gateway, executor),
    ):
        ids = [uuid.uuid4().hex[:16] for _ in range(children)]
        gateway.offer([grant(child_id) for child_id in ids])
        _until(lambda: len(executor.created) == children, 120, f"{children} Jobs")
        leased = min(gateway.leased_at[c] for c in ids)
        created = sorted(executor.created[c] - leased for c in ids)
        if on_step:
            on_step(f"{children} Jobs created")
        jobs = {cluster.job_of(child_id): child_id for child_id in ids}
        cluster.run_pods(list(jobs))
        executor.polls.clear()
        cluster.busy()
        # The agent polls its running children on every pass meanwhile; the first pass seen may have
        # begun before the polls were cleared.
        _until(lambda: len(executor.polls) >= children * (passes_wanted + 2), 600, "status passes")
        api = cluster.busy()  # only the agent calls the API meanwhile
        polled = len(executor.polls)
        passes = _passes(list(executor.polls), set(ids))[1:]
        if on_step:
            on_step(f"{len(passes)} status passes over {children} running children")
        ended_at = {jobs[job]: at for job, at in cluster.finish(list(jobs)).items()}
        finished = time.monotonic()
        _until(lambda: len(executor.seen) == children, 120, f"the ends of {children} runs")
        lags = [executor.seen[c] - ended_at[c] for c in ids]
    walls = [p["wall_s"] for p in passes]
    return {
        "children": children,
        "tick_s": TICK_S,
        "burst_all_created_s": created[-1],
        "burst_p50_ms": percentile(created, 50) * 1000,
        "passes": len(passes),
        "pass_p50_s": statistics.median(walls) if walls else float("nan"),
        "pass_max_s": max(walls) if walls else float("nan"),
        "pass_poll_p50_s": statistics.median(p["poll_s"] for p in passes) if passes else float("nan"),
        # The emulator's own time on a pass's requests: its busy seconds per poll, times a pass's polls.
        "pass_api_s": api["seconds"] / polled * children,
        "requests_per_poll": api["requests"] / polled,
        "finish_s": finished - min(ended_at.values()),
        "all_seen_after_finish_s": max(executor.seen.values()) - finished,
        "lag": ms_summary(lags),
    }


def run(
    leases: int, children: int, passes: int, on_step: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Both measurements, each with a fresh agent, against one emulator."""
    quiet = logging.getLogger("fivesafes_tes")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # an agent logs each child it starts; 200 lines say nothing here
    try:
        with Cluster() as cluster:
            return {
                "lease_to_job": lease_to_job(cluster, leases, on_step),
                "concurrent": concurrent(cluster, children, passes, on_step),
            }
    finally:
        quiet.setLevel(level)


if __name__ == "__main__":
    serve()
