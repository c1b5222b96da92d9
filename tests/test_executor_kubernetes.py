"""The Kubernetes executor's whole lifecycle against kmock's Kubernetes emulator.

The emulator stores objects and serves the API; it runs nothing. The test is the Job controller and
the kubelet: it makes a Job's pod and writes the pod's and the Job's status as a cluster would, then
checks what the executor makes of them.
"""

from __future__ import annotations

import asyncio
import re
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import kmock
import pytest
from kubernetes import client as k8s

from fivesafes_tes.executors import ExecutorError, Limits, Mount, Outcome, RequestRefused, RunSpec, Step
from fivesafes_tes.executors.kubernetes import (
    ANNOTATION_LOGS_DIR,
    LABEL_ATTEMPT,
    LABEL_CHILD,
    NETWORK_POLICY,
    ClaimFolder,
    JobSettings,
    KubernetesExecutor,
    job_manifest,
    job_name,
    network_policy_violations,
    violations,
)

NAMESPACE = "tasks"
TRE = "tre-a"
IMAGE = "fivesafes/busybox:1"
_LOG_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/log$")


class Cluster:
    """kmock's emulator served on its own thread and event loop, for a synchronous client."""

    def __init__(self) -> None:
        self.logs: dict[tuple[str, str], bytes] = {}  # (pod, container) -> what the container printed
        self.url = ""
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(
            target=self._loop.run_until_complete, args=(self._serve(),), daemon=True
        )

    def _log(self, request: Any) -> bytes:
        match = _LOG_PATH.match(request.url.path)
        assert match is not None
        return self.logs.get((match.group(2), request.params.get("container", "")), b"")

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with kmock.KubernetesEmulator() as handler, kmock.Server(handler, host="127.0.0.1") as server:
            handler.resources["batch/v1/jobs"] = {"kind": "Job", "namespaced": True}
            handler.resources["v1/pods"] = {"kind": "Pod", "namespaced": True}
            handler.resources["networking.k8s.io/v1/networkpolicies"] = {
                "kind": "NetworkPolicy",
                "namespaced": True,
            }
            handler["get", _LOG_PATH] << self._log
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> Cluster:
        self._thread.start()
        assert self._ready.wait(10), "the emulator did not start"
        self.http = httpx.Client(base_url=self.url, timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._loop.close()

    def api_client(self) -> k8s.ApiClient:
        config = k8s.Configuration()
        config.host = self.url
        return k8s.ApiClient(config)

    # --- what a test reads ----------------------------------------------------------------------

    def _path(self, kind: str, name: str = "") -> str:
        base = {
            "jobs": f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs",
            "pods": f"/api/v1/namespaces/{NAMESPACE}/pods",
            "networkpolicies": f"/apis/networking.k8s.io/v1/namespaces/{NAMESPACE}/networkpolicies",
        }[kind]
        return f"{base}/{name}" if name else base

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        response = self.http.get(self._path(kind, name))
        if response.status_code == 404:
            return None
        response.raise_for_status()
        found: dict[str, Any] = response.json()
        return found

    def names(self, kind: str) -> list[str]:
        response = self.http.get(self._path(kind))
        response.raise_for_status()
        return sorted(item["metadata"]["name"] for item in response.json().get("items") or [])

    # --- the Job controller and the kubelet -----------------------------------------------------

    def make_pod(self, job: str) -> str:
        """The Job controller's part: one pod from the Job's template."""
        found = self.get("jobs", job)
        assert found is not None, f"Job {job} is not there"
        template = found["spec"]["template"]
        name = f"{job}-x7k2p"
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": NAMESPACE,
                "labels": {**template["metadata"]["labels"], "job-name": job},
                "creationTimestamp": "2026-01-01T00:00:00Z",
            },
            "spec": template["spec"],
            "status": {"phase": "Pending"},
        }
        self.http.post(self._path("pods"), json=pod).raise_for_status()
        return name

    def set_status(self, kind: str, name: str, status: dict[str, Any]) -> None:
        """The kubelet's (or the Job controller's) status write."""
        self.http.patch(
            self._path(kind, name) + "/status",
            json={"status": status},
            headers={"Content-Type": "application/merge-patch+json"},
        ).raise_for_status()


def terminated(i: int, code: int = 0, reason: str = "Completed") -> dict[str, Any]:
    return {
        "name": f"step-{i}",
        "image": IMAGE,
        "state": {
            "terminated": {
                "exitCode": code,
                "reason": reason,
                "startedAt": "2026-01-01T00:00:01Z",
                "finishedAt": "2026-01-01T00:00:02Z",
            }
        },
    }


def running(i: int) -> dict[str, Any]:
    return {"name": f"step-{i}", "image": IMAGE, "state": {"running": {"startedAt": "2026-01-01T00:00:03Z"}}}


def waiting(i: int, reason: str, image: str = IMAGE) -> dict[str, Any]:
    return {"name": f"step-{i}", "image": image, "state": {"waiting": {"reason": reason, "message": "nope"}}}


def condition(kind: str, reason: str = "") -> dict[str, Any]:
    return {"conditions": [{"type": kind, "status": "True", "reason": reason}]}


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    with Cluster() as c:
        yield c


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "work" / "inputs").mkdir(parents=True)
    (tmp_path / "datasets" / "omop").mkdir(parents=True)
    return tmp_path


def executor(cluster: Cluster, work: Path, deployment: str = "test") -> KubernetesExecutor:
    return KubernetesExecutor(
        TRE,
        deployment=deployment,
        namespace=NAMESPACE,
        api_client=cluster.api_client(),
        ttl_after_finished_s=600,
        claims=[
            ClaimFolder(work / "work", "fivesafes-work"),
            ClaimFolder(work / "datasets", "omop-datasets"),
        ],
        cap=Limits(cpu_cores=2, memory_bytes=1 << 30, disk_bytes=2 << 30, runtime_s=600, pids=128),
    )


def run_spec(
    work: Path, *, child_id: str | None = None, attempt: int = 1, steps: int = 2, **kw: Any
) -> RunSpec:
    return RunSpec(
        child_id=child_id or str(uuid.uuid4()),
        attempt=attempt,
        tre=TRE,
        steps=kw.pop("step_list", None)
        or [Step(image=IMAGE, command=["sh", "-c", f"echo step {i}"], env={"A": "1"}) for i in range(steps)],
        mounts=[
            Mount(work / "work" / "inputs", "/inputs"),
            Mount(work / "datasets" / "omop", "/data/omop"),
        ],
        limits=kw.pop(
            "limits", Limits(cpu_cores=4, memory_bytes=512 << 20, disk_bytes=1 << 30, runtime_s=900)
        ),
        logs_dir=work / "logs",
    )


def started(cluster: Cluster, work: Path, **kw: Any) -> tuple[KubernetesExecutor, RunSpec, str, str]:
    """A run started, its pod made by the 'controller': (executor, spec, job, pod)."""
    ex = executor(cluster, work)
    spec = run_spec(work, **kw)
    ex.start(spec)
    job = job_name(spec.child_id, spec.attempt)
    return ex, spec, job, cluster.make_pod(job)


# --- create: the hardened Job (RELIABILITY 18) ---------------------------------------------------


def test_start_creates_one_hardened_job_and_a_deny_all_network_policy(cluster, work):
    ex = executor(cluster, work)
    spec = run_spec(work)
    ex.start(spec)
    job = cluster.get("jobs", job_name(spec.child_id, 1))
    assert job is not None
    assert violations(job) == []
    meta, jspec = job["metadata"], job["spec"]
    assert meta["labels"] == {
        "app.kubernetes.io/managed-by": "fivesafes-tes",
        "fivesafes-tes/role": "task",
        "fivesafes-tes/tre": TRE,
        "fivesafes-tes/deployment": "test",
        LABEL_CHILD: spec.child_id,
        LABEL_ATTEMPT: "1",
    }
    assert jspec["template"]["metadata"]["labels"] == meta["labels"]
    assert (jspec["backoffLimit"], jspec["completions"], jspec["parallelism"]) == (0, 1, 1)
    assert jspec["activeDeadlineSeconds"] == 600  # the spec asked 900; the TRE's cap is 600
    assert jspec["ttlSecondsAfterFinished"] == 600
    pod = jspec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["activeDeadlineSeconds"] == 600
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert not any(pod[k] for k in ("hostNetwork", "hostPID", "hostIPC", "shareProcessNamespace"))
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65534,
        "runAsGroup": 65534,
        "fsGroup": 65534,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert [v for v in pod["volumes"] if "hostPath" in v] == []
    assert pod["volumes"] == [
        {"name": "tmp", "emptyDir": {"medium": "", "sizeLimit": str(1 << 30)}},
        {"name": "claim-0", "persistentVolumeClaim": {"claimName": "fivesafes-work"}},
        {"name": "claim-1", "persistentVolumeClaim": {"claimName": "omop-datasets"}},
    ]
    # Steps in order: all but the last as init containers, the last as the main container.
    assert [c["name"] for c in pod["initContainers"]] == ["step-0"]
    assert [c["name"] for c in pod["containers"]] == ["step-1"]
    for i, c in enumerate([*pod["initContainers"], *pod["containers"]]):
        assert c["image"] == IMAGE
        assert c["command"] == ["sh", "-c", f"echo step {i}"]
        assert c["securityContext"] == {
            "runAsNonRoot": True,
            "runAsUser": 65534,
            "runAsGroup": 65534,
            "privileged": False,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        quantities = {"cpu": "2000m", "memory": str(512 << 20), "ephemeral-storage": str(1 << 30)}
        assert c["resources"] == {"requests": quantities, "limits": quantities}
        assert c["volumeMounts"] == [
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "claim-0", "mountPath": "/inputs", "subPath": "inputs", "readOnly": True},
            {"name": "claim-1", "mountPath": "/data/omop", "subPath": "omop", "readOnly": True},
        ]
        env = {e["name"]: e["value"] for e in c["env"]}
        assert env["A"] == "1"
        assert env["HOME"] == "/tmp"
        assert "FIVESAFES_DEADLINE" in env
        assert (c["stdin"], c["tty"]) == (False, False)
    policy = cluster.get("networkpolicies", NETWORK_POLICY)
    assert policy is not None
    assert network_policy_violations(policy) == []
    assert policy["spec"] == {
        "podSelector": {
            "matchLabels": {"app.kubernetes.io/managed-by": "fivesafes-tes", "fivesafes-tes/role": "task"}
        },
        "policyTypes": ["Ingress", "Egress"],
    }
    ex.start(spec)  # again, as after a crash: still one Job
    assert cluster.names("jobs") == [job_name(spec.child_id, 1)]


def test_the_checks_see_each_escape_vector(work):
    settings = JobSettings(namespace=NAMESPACE, tre=TRE, deployment="t", claims=(ClaimFolder(work, "c"),))
    sound = job_manifest(run_spec(work), settings, 0)
    assert violations(sound) == []
    breaks = {
        "hostPath": lambda j: j["spec"]["template"]["spec"]["volumes"].append(
            {"name": "h", "hostPath": {"path": "/"}}
        ),
        "token": lambda j: j["spec"]["template"]["spec"].update(automountServiceAccountToken=True),
        "hostNetwork": lambda j: j["spec"]["template"]["spec"].update(hostNetwork=True),
        "privileged": lambda j: j["spec"]["template"]["spec"]["containers"][0]["securityContext"].update(
            privileged=True
        ),
        "caps": lambda j: j["spec"]["template"]["spec"]["initContainers"][0]["securityContext"].update(
            capabilities={"drop": ["ALL"], "add": ["NET_ADMIN"]}
        ),
        "backoff": lambda j: j["spec"].update(backoffLimit=6),
        "deadline": lambda j: j["spec"].pop("activeDeadlineSeconds"),
        "ttl": lambda j: j["spec"].pop("ttlSecondsAfterFinished"),
        "limits": lambda j: j["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"].pop(
            "memory"
        ),
        "root": lambda j: j["spec"]["template"]["spec"]["securityContext"].update(runAsUser=0),
    }
    for what, breaking in breaks.items():
        job = job_manifest(run_spec(work), settings, 0)
        breaking(job)
        assert violations(job), f"{what} went unnoticed"
    open_policy = {"spec": {"podSelector": {}, "policyTypes": ["Ingress"], "egress": [{}]}}
    assert len(network_policy_violations(open_policy)) == 3


def test_what_the_backend_cannot_do_is_refused_before_anything_is_made(cluster, work):
    ex = executor(cluster, work)
    with pytest.raises(RequestRefused, match="stdout"):
        ex.start(run_spec(work, step_list=[Step(image=IMAGE, command=["true"], stdout="/tmp/out")]))
    ignoring = [Step(image=IMAGE, command=["false"], ignore_error=True), Step(image=IMAGE, command=["true"])]
    with pytest.raises(RequestRefused, match="ignore_error"):
        ex.start(run_spec(work, step_list=ignoring))
    elsewhere = RunSpec(**{**run_spec(work).__dict__, "mounts": [Mount(work.parent, "/elsewhere")]})
    with pytest.raises(ValueError, match="no volume task pods can mount"):
        ex.start(elsewhere)
    assert cluster.names("jobs") == []


# --- running, succeeded, failed ------------------------------------------------------------------


def test_running_then_succeeded_with_each_steps_log(cluster, work):
    ex, spec, job, pod = started(cluster, work)
    assert ex.poll(spec.child_id) is None  # pending
    cluster.set_status(
        "pods",
        pod,
        {"phase": "Running", "initContainerStatuses": [terminated(0)], "containerStatuses": [running(1)]},
    )
    assert ex.poll(spec.child_id) is None
    assert ex.running() == {spec.child_id: 1}
    cluster.logs[(pod, "step-0")] = b"step 0\n"
    cluster.logs[(pod, "step-1")] = b"step 1\n"
    cluster.set_status("pods", pod, {"phase": "Succeeded", "containerStatuses": [terminated(1)]})
    cluster.set_status("jobs", job, condition("Complete"))
    result = ex.poll(spec.child_id)
    assert result is not None
    assert (result.outcome, result.message) == (Outcome.SUCCEEDED, "all 2 step(s) succeeded")
    assert [s.exit_code for s in result.steps] == [0, 0]
    assert [s.stdout_path.read_bytes() for s in result.steps] == [b"step 0\n", b"step 1\n"]
    assert result.steps[0].start_time == "2026-01-01T00:00:01Z"
    assert ex.running() == {}


def test_a_step_exiting_non_zero_fails_the_run(cluster, work):
    ex, spec, job, pod = started(cluster, work)
    cluster.set_status("pods", pod, {"phase": "Failed", "initContainerStatuses": [terminated(0, 3, "Error")]})
    cluster.set_status("jobs", job, condition("Failed", "BackoffLimitExceeded"))
    result = ex.poll(spec.child_id)
    assert result is not None
    assert (result.outcome, result.message) == (Outcome.FAILED, "step 1 of 2 exited with code 3")
    assert [s.exit_code for s in result.steps] == [3]


def test_the_deadline_is_reported_as_a_time_limit(cluster, work):
    ex, spec, job, pod = started(cluster, work)
    cluster.set_status(
        "pods",
        pod,
        {
            "phase": "Failed",
            "reason": "DeadlineExceeded",
            "initContainerStatuses": [terminated(0, 137, "Error")],
        },
    )
    cluster.set_status("jobs", job, condition("Failed", "DeadlineExceeded"))
    result = ex.poll(spec.child_id)
    assert result is not None
    assert result.outcome is Outcome.TIMED_OUT
    assert result.message == "the run was stopped: its time limit of 600 s was reached"


def test_out_of_memory_is_reported_with_the_limit(cluster, work):
    ex, spec, job, pod = started(cluster, work)
    cluster.set_status(
        "pods",
        pod,
        {
            "phase": "Failed",
            "initContainerStatuses": [terminated(0)],
            "containerStatuses": [terminated(1, 137, "OOMKilled")],
        },
    )
    cluster.set_status("jobs", job, condition("Failed", "BackoffLimitExceeded"))
    result = ex.poll(spec.child_id)
    assert result is not None
    assert (result.outcome, result.message) == (
        Outcome.OUT_OF_MEMORY,
        "step 2 of 2 ran out of memory (limit 512 MiB)",
    )


def test_an_image_that_cannot_be_pulled_fails_the_run_and_removes_it(cluster, work):
    ex, spec, job, pod = started(cluster, work)
    cluster.set_status(
        "pods",
        pod,
        {"phase": "Pending", "initContainerStatuses": [waiting(0, "ImagePullBackOff", "ghost:1")]},
    )
    result = ex.poll(spec.child_id)
    assert result is not None
    assert result.outcome is Outcome.FAILED
    assert result.message == (
        "step 1 of 2: image ghost:1 is not on this TRE's cluster and could not be pulled "
        "(ImagePullBackOff: nope)"
    )
    assert cluster.get("jobs", job) is None
    assert cluster.get("pods", pod) is None


# --- cancel, re-attach, sweep ---------------------------------------------------------------------


def test_cancel_deletes_the_job_and_keeps_the_logs_of_what_ran(cluster, work):
    ex, spec, job, pod = started(cluster, work)
    cluster.logs[(pod, "step-0")] = b"first\n"
    cluster.set_status(
        "pods",
        pod,
        {"phase": "Running", "initContainerStatuses": [terminated(0)], "containerStatuses": [running(1)]},
    )
    ex.cancel(spec.child_id)
    assert cluster.get("jobs", job) is None
    assert cluster.get("pods", pod) is None
    result = ex.poll(spec.child_id)
    assert result is not None
    assert result.outcome is Outcome.CANCELED
    assert result.steps[0].stdout_path.read_bytes() == b"first\n"
    ex.start(spec)  # a late start does not revive it
    assert cluster.names("jobs") == []
    ex.cancel(spec.child_id)  # idempotent


def test_a_new_executor_reattaches_by_labels(cluster, work):
    _, spec, job, pod = started(cluster, work)
    again = executor(cluster, work)  # the agent restarted
    assert again.running() == {spec.child_id: 1}
    again.start(spec)  # re-attach, not a second Job
    assert cluster.names("jobs") == [job]
    cluster.set_status(
        "pods",
        pod,
        {
            "phase": "Succeeded",
            "initContainerStatuses": [terminated(0)],
            "containerStatuses": [terminated(1)],
        },
    )
    cluster.set_status("jobs", job, condition("Complete"))
    result = again.poll(spec.child_id)
    assert result is not None
    assert result.outcome is Outcome.SUCCEEDED
    found = cluster.get("jobs", job)
    assert found is not None
    assert found["metadata"]["annotations"][ANNOTATION_LOGS_DIR] == str((work / "logs").resolve())
    with pytest.raises(ExecutorError, match="superseded"):
        again.start(run_spec(work, child_id=spec.child_id, attempt=0))
    again.cleanup(spec.child_id)
    assert cluster.names("jobs") == []
    assert cluster.names("pods") == []


def test_a_newer_attempt_replaces_the_older(cluster, work):
    ex, spec, _, _ = started(cluster, work)
    ex.start(run_spec(work, child_id=spec.child_id, attempt=2))
    assert cluster.names("jobs") == [job_name(spec.child_id, 2)]
    assert ex.running() == {spec.child_id: 2}


def test_sweep_removes_orphans_and_nothing_of_another_deployment(cluster, work):
    ex, kept, kept_job, _ = started(cluster, work)
    orphan = run_spec(work)
    ex.start(orphan)
    orphan_pod = cluster.make_pod(job_name(orphan.child_id, 1))
    other = executor(cluster, work, deployment="other-stack")
    theirs = run_spec(work)
    other.start(theirs)
    assert ex.sweep({kept.child_id}) == [orphan.child_id]
    assert cluster.names("jobs") == sorted([kept_job, job_name(theirs.child_id, 1)])
    assert cluster.get("pods", orphan_pod) is None
    result = ex.poll(orphan.child_id)
    assert result is not None
    assert result.outcome is Outcome.LOST


def test_the_last_step_may_ignore_its_error(cluster, work):
    steps = [Step(image=IMAGE, command=["true"]), Step(image=IMAGE, command=["false"], ignore_error=True)]
    ex, spec, job, pod = started(cluster, work, step_list=steps)
    cluster.set_status(
        "pods",
        pod,
        {
            "phase": "Failed",
            "initContainerStatuses": [terminated(0)],
            "containerStatuses": [terminated(1, 1, "Error")],
        },
    )
    cluster.set_status("jobs", job, condition("Failed", "BackoffLimitExceeded"))
    result = ex.poll(spec.child_id)
    assert result is not None
    assert result.outcome is Outcome.SUCCEEDED
    assert [s.exit_code for s in result.steps] == [0, 1]
