"""The Kubernetes executor's whole lifecycle against kmock's Kubernetes emulator and moto's S3.

The emulator stores objects and serves the API; it runs nothing. The test is the Job controller and
the kubelet: it makes a Job's pod and writes the pod's and the Job's status as a cluster would, then
checks what the executor makes of them. For the stage-out Job it also runs what that pod would run:
the real filer (`filer.stage_out`), on a folder standing for the run's volume, posting to moto with
the capability the executor put in the run's Secret.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import kmock
import pytest
from kubernetes import client as k8s

from fivesafes_tes.egress import staging_area
from fivesafes_tes.executors import (
    BackendContext,
    Collected,
    DatasetMount,
    ExecutorError,
    InputFile,
    Limits,
    Outcome,
    RequestRefused,
    RunSpec,
    Step,
    filer,
)
from fivesafes_tes.executors.kubernetes import (
    FILER_NETWORK_POLICY,
    LABEL_ATTEMPT,
    LABEL_CHILD,
    NETWORK_POLICY,
    JobSettings,
    KubernetesExecutor,
    filer_network_policy_manifest,
    filer_network_policy_violations,
    inputs_secret_name,
    job_manifest,
    job_name,
    network_policy_violations,
    stage_out_manifest,
    stage_out_name,
    violations,
)
from fivesafes_tes.settings import AgentSettings

NAMESPACE = "tasks"
TRE = "tre-a"
IMAGE = "fivesafes/busybox:1"
FILER_IMAGE = "fivesafes/fivesafes-tes:test"
AIRLOCK_PORT = 9000
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
            handler.resources["v1/persistentvolumeclaims"] = {
                "kind": "PersistentVolumeClaim",
                "namespaced": True,
            }
            handler.resources["v1/secrets"] = {"kind": "Secret", "namespaced": True}
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
            "persistentvolumeclaims": f"/api/v1/namespaces/{NAMESPACE}/persistentvolumeclaims",
            "secrets": f"/api/v1/namespaces/{NAMESPACE}/secrets",
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

    def secret(self, name: str) -> dict[str, bytes]:
        """A Secret's data, decoded."""
        found = self.get("secrets", name)
        assert found is not None, f"Secret {name} is not there"
        return {k: base64.b64decode(v) for k, v in found["data"].items()}

    def everything(self) -> str:
        """Every object of every kind in the namespace, as one text to search."""
        kinds = ("jobs", "pods", "persistentvolumeclaims", "secrets", "networkpolicies")
        return json.dumps([self.items(kind) for kind in kinds])

    def items(self, kind: str) -> list[dict[str, Any]]:
        response = self.http.get(self._path(kind))
        response.raise_for_status()
        found: list[dict[str, Any]] = response.json().get("items") or []
        return found

    def names(self, kind: str) -> list[str]:
        return sorted(item["metadata"]["name"] for item in self.items(kind))

    # --- the Job controller and the kubelet -----------------------------------------------------

    def make_pod(self, job: str) -> str:
        """The Job controller's part: one pod from the Job's template."""
        found = self.get("jobs", job)
        assert found is not None, f"Job {job} is not there"
        template = found["spec"]["template"]
        name = f"{job}-x7k2p"
        assert self.get("pods", name) is None, f"{job} has a pod already"
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

    def delete(self, kind: str, name: str) -> None:
        """Someone removes an object behind the agent's back."""
        self.http.delete(self._path(kind, name)).raise_for_status()

    def set_status(self, kind: str, name: str, status: dict[str, Any]) -> None:
        """The kubelet's (or the Job controller's) status write."""
        self.http.patch(
            self._path(kind, name) + "/status",
            json={"status": status},
            headers={"Content-Type": "application/merge-patch+json"},
        ).raise_for_status()


def terminated(i: int | str, code: int = 0, reason: str = "Completed", message: str = "") -> dict[str, Any]:
    """A container that ended: step `i`, or the container named `i`."""
    return {
        "name": f"step-{i}" if isinstance(i, int) else i,
        "image": IMAGE,
        "state": {
            "terminated": {
                "exitCode": code,
                "reason": reason,
                "startedAt": "2026-01-01T00:00:01Z",
                "finishedAt": "2026-01-01T00:00:02Z",
                **({"message": message} if message else {}),
            }
        },
    }


def running(i: int) -> dict[str, Any]:
    return {"name": f"step-{i}", "image": IMAGE, "state": {"running": {"startedAt": "2026-01-01T00:00:03Z"}}}


def waiting(i: int | str, reason: str, image: str = IMAGE) -> dict[str, Any]:
    name = f"step-{i}" if isinstance(i, int) else i
    return {"name": name, "image": image, "state": {"waiting": {"reason": reason, "message": "nope"}}}


def condition(kind: str, reason: str = "") -> dict[str, Any]:
    return {"conditions": [{"type": kind, "status": "True", "reason": reason}]}


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    with Cluster() as c:
        yield c


def executor(
    cluster: Cluster, store: Any, deployment: str = "test", snapshot_ttl_s: float = 0.0
) -> KubernetesExecutor:
    """The backend as a TRE configures it. The tests play the kubelet and poll at once, so by default
    `poll` reads directly; `test_polls_read_one_listing_...` covers the snapshot."""
    return KubernetesExecutor(
        TRE,
        deployment=deployment,
        store=store,
        filer_image=FILER_IMAGE,
        datasets={"omop": "omop-datasets"},
        namespace=NAMESPACE,
        api_client=cluster.api_client(),
        storage_class="fast",
        ttl_after_finished_s=600,
        capability_ttl_s=300,
        airlock_port=AIRLOCK_PORT,
        snapshot_ttl_s=snapshot_ttl_s,
    )


def run_spec(*, child_id: str | None = None, attempt: int = 1, steps: int = 2, **kw: Any) -> RunSpec:
    return RunSpec(
        child_id=child_id or str(uuid.uuid4()),
        attempt=attempt,
        tre=TRE,
        steps=kw.pop("step_list", None)
        or [Step(image=IMAGE, command=["sh", "-c", f"echo step {i}"], env={"A": "1"}) for i in range(steps)],
        inputs=kw.pop(
            "inputs",
            [InputFile("/inputs/params.json", b'{"a": 1}'), InputFile("/outputs/seed.txt", b"seed\n")],
        ),
        writable=kw.pop("writable", ["/outputs", "/work"]),
        datasets=kw.pop("datasets", [DatasetMount("omop", "/data/omop")]),
        limits=kw.pop(
            "limits", Limits(cpu_cores=2, memory_bytes=512 << 20, disk_bytes=1 << 30, runtime_s=900)
        ),
    )


def started(cluster: Cluster, store: Any, **kw: Any) -> tuple[KubernetesExecutor, RunSpec, str, str]:
    """A run started, its pod made by the 'controller': (executor, spec, job, pod)."""
    ex = executor(cluster, store)
    spec = run_spec(**kw)
    ex.start(spec)
    job = job_name(spec.child_id, spec.attempt)
    return ex, spec, job, cluster.make_pod(job)


def succeeded(cluster: Cluster, job: str, pod: str) -> None:
    """The kubelet ran stage-in and both steps; the Job controller saw it complete."""
    cluster.set_status(
        "pods",
        pod,
        {
            "phase": "Succeeded",
            "initContainerStatuses": [terminated("filer-in"), terminated(0)],
            "containerStatuses": [terminated(1)],
        },
    )
    cluster.set_status("jobs", job, condition("Complete"))


def staged_in(cluster: Cluster, spec: RunSpec, tmp_path: Path) -> Path:
    """The filer-in container's part, by the real filer: the run's volume filled from its inputs Secret."""
    secret = tmp_path / "inputs-secret"
    secret.mkdir()
    for key, value in cluster.secret(inputs_secret_name(spec.child_id, spec.attempt)).items():
        (secret / key).write_bytes(value)
    volume = tmp_path / "volume"
    volume.mkdir()
    filer.stage_in(secret, volume)
    return volume


def staged_out(cluster: Cluster, spec: RunSpec, volume: Path) -> list[filer.StagedFile]:
    """The stage-out pod's part, by the real filer: what the volume holds posted to the airlock with the
    capability the executor gave it; then the Job controller sees the Job complete."""
    name = stage_out_name(spec.child_id, spec.attempt)
    capability = json.loads(cluster.secret(name)["capability.json"])
    staged = filer.stage_out(volume, capability)
    cluster.set_status("jobs", name, condition("Complete"))
    return staged


def settings() -> JobSettings:
    return JobSettings(
        namespace=NAMESPACE,
        tre=TRE,
        deployment="t",
        filer_image=FILER_IMAGE,
        datasets={"omop": "omop-datasets"},
        airlock_port=AIRLOCK_PORT,
    )


HARDENED = {
    "runAsNonRoot": True,
    "runAsUser": 65534,
    "runAsGroup": 65534,
    "privileged": False,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


# --- create: the volume, the inputs Secret, the hardened Job (RELIABILITY 18) ---------------------


def test_start_creates_one_hardened_job_and_a_deny_all_network_policy(cluster, s3_store):
    ex = executor(cluster, s3_store)
    spec = run_spec()
    ex.start(spec)
    name = job_name(spec.child_id, 1)
    job = cluster.get("jobs", name)
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
    assert jspec["activeDeadlineSeconds"] == 900
    assert jspec["ttlSecondsAfterFinished"] == 600
    pod = jspec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["activeDeadlineSeconds"] == 900
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
    assert pod["volumes"] == [
        {"name": "tmp", "emptyDir": {"medium": "", "sizeLimit": str(1 << 30)}},
        {"name": "volume", "persistentVolumeClaim": {"claimName": name}},
        {"name": "inputs", "secret": {"secretName": f"{name}-inputs", "defaultMode": 0o440}},
        {"name": "dataset-0", "persistentVolumeClaim": {"claimName": "omop-datasets", "readOnly": True}},
    ]
    # Stage-in first, then the steps in order: all but the last as init containers.
    assert [c["name"] for c in pod["initContainers"]] == ["filer-in", "step-0"]
    assert [c["name"] for c in pod["containers"]] == ["step-1"]
    stage_in = pod["initContainers"][0]
    assert (stage_in["image"], stage_in["command"]) == (FILER_IMAGE, ["fivesafes-tes", "filer", "stage-in"])
    assert stage_in["securityContext"] == HARDENED
    assert stage_in["volumeMounts"] == [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "volume", "mountPath": "/fivesafes/volume"},
        {"name": "inputs", "mountPath": "/fivesafes/inputs", "readOnly": True},
    ]
    assert {e["name"]: e["value"] for e in stage_in["env"]} == {
        "HOME": "/tmp",
        "FIVESAFES_FILER_INPUTS": "/fivesafes/inputs",
        "FIVESAFES_FILER_VOLUME": "/fivesafes/volume",
    }
    for i, c in enumerate([*pod["initContainers"][1:], *pod["containers"]]):
        assert c["image"] == IMAGE
        assert c["command"] == ["sh", "-c", f"echo step {i}"]
        assert c["securityContext"] == HARDENED
        quantities = {"cpu": "2000m", "memory": str(512 << 20), "ephemeral-storage": str(1 << 30)}
        assert c["resources"] == {"requests": quantities, "limits": quantities}
        # Writable folders and inputs are sub paths of the run's own volume; the dataset is its claim.
        assert c["volumeMounts"] == [
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "volume", "mountPath": "/outputs", "subPath": "rw/0"},
            {"name": "volume", "mountPath": "/work", "subPath": "rw/1"},
            {
                "name": "volume",
                "mountPath": "/inputs/params.json",
                "subPath": "in/0/params.json",
                "readOnly": True,
            },
            {"name": "dataset-0", "mountPath": "/data/omop", "readOnly": True},
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
    filer_policy = cluster.get("networkpolicies", FILER_NETWORK_POLICY)
    assert filer_policy is not None
    assert filer_network_policy_violations(filer_policy, ex.settings) == []
    assert filer_policy["spec"]["egress"] == [
        {
            "ports": [
                {"protocol": "UDP", "port": 53},
                {"protocol": "TCP", "port": 53},
                {"protocol": "TCP", "port": AIRLOCK_PORT},
            ]
        }
    ]
    ex.start(spec)  # again, as after a crash: still one Job, one volume, one Secret
    assert cluster.names("jobs") == [name]
    assert cluster.names("persistentvolumeclaims") == [name]
    assert cluster.names("secrets") == [f"{name}-inputs"]


def test_the_volume_and_the_inputs_secret_are_the_runs_and_stage_in_fills_the_volume(
    cluster, s3_store, tmp_path
):
    ex = executor(cluster, s3_store)
    spec = run_spec()
    ex.start(spec)
    name = job_name(spec.child_id, 1)
    labels = {
        "app.kubernetes.io/managed-by": "fivesafes-tes",
        "fivesafes-tes/tre": TRE,
        "fivesafes-tes/deployment": "test",
        LABEL_CHILD: spec.child_id,
        LABEL_ATTEMPT: "1",
    }
    volume = cluster.get("persistentvolumeclaims", name)
    assert volume is not None
    assert volume["metadata"]["labels"] == labels
    assert volume["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": str((1 << 30) + len(b'{"a": 1}') + len(b"seed\n"))}},
        "storageClassName": "fast",
    }
    secret = cluster.get("secrets", f"{name}-inputs")
    assert secret is not None
    assert secret["metadata"]["labels"] == labels
    data = cluster.secret(f"{name}-inputs")
    assert (data["0"], data["1"]) == (b'{"a": 1}', b"seed\n")
    # An input inside a writable folder is a file in that folder; any other is a file of its own.
    assert json.loads(data["index.json"]) == {
        "inputs": {"0": "in/0/params.json", "1": "rw/0/seed.txt"},
        "folders": ["rw/0", "rw/1"],
    }
    root = staged_in(cluster, spec, tmp_path)
    assert (root / "in/0/params.json").read_bytes() == b'{"a": 1}'
    assert (root / "rw/0/seed.txt").read_bytes() == b"seed\n"
    assert (root / "rw/0/seed.txt").stat().st_mode & 0o777 == 0o444
    assert (root / "rw/1").is_dir()
    assert sorted(p.name for p in (root / "rw/0").iterdir()) == ["seed.txt"]  # no partial file left


def test_datasets_come_from_the_policys_claims_and_one_without_a_claim_is_refused(
    cluster, s3_store, monkeypatch, tmp_path
):
    ex = executor(cluster, s3_store)
    with pytest.raises(ValueError, match="'census' has no PersistentVolumeClaim"):
        ex.start(run_spec(datasets=[DatasetMount("census", "/data/census")]))
    assert cluster.names("persistentvolumeclaims") == []

    def context(**datasets: Any) -> BackendContext:
        agent = AgentSettings(tre=TRE, kubernetes={"filer_image": FILER_IMAGE, "namespace": NAMESPACE})
        return BackendContext(TRE, "test", tmp_path, datasets, s3_store, agent)

    def source(claim: str | None) -> Any:
        return type("Dataset", (), {"path": None, "claim": claim, "url": None})()

    with pytest.raises(ValueError, match="dataset 'omop' has no `claim`"):
        KubernetesExecutor.from_context(context(omop=source(None)))
    monkeypatch.setattr("fivesafes_tes.executors.kubernetes.k8s_config.load_incluster_config", lambda: None)
    made = KubernetesExecutor.from_context(context(omop=source("omop-pvc")))
    assert made.settings.datasets == {"omop": "omop-pvc"}
    assert (made.settings.namespace, made.settings.filer_image) == (NAMESPACE, FILER_IMAGE)
    no_image = BackendContext(TRE, "test", tmp_path, {}, s3_store, AgentSettings(tre=TRE))
    with pytest.raises(ValueError, match="FIVESAFES_AGENT_KUBERNETES_FILER_IMAGE"):
        KubernetesExecutor.from_context(no_image)


def test_the_checks_see_each_escape_vector_in_task_and_stage_out_jobs():
    spec = run_spec()
    jobs = {
        "task": lambda: job_manifest(spec, settings(), 0),
        "stage-out": lambda: stage_out_manifest(spec.child_id, 1, spec.user, settings()),
    }
    pod = lambda j: j["spec"]["template"]["spec"]  # noqa: E731
    first = lambda j: [*pod(j)["initContainers"], *pod(j)["containers"]][0]  # filer-in, filer-out  # noqa: E731
    breaks = {
        "hostPath": lambda j: pod(j)["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
        "nfs": lambda j: pod(j)["volumes"].append({"name": "n", "nfs": {"server": "x", "path": "/"}}),
        "token": lambda j: pod(j).update(automountServiceAccountToken=True),
        "hostNetwork": lambda j: pod(j).update(hostNetwork=True),
        "privileged": lambda j: pod(j)["containers"][0]["securityContext"].update(privileged=True),
        "filer caps": lambda j: first(j)["securityContext"].update(
            capabilities={"drop": ["ALL"], "add": ["NET_ADMIN"]}
        ),
        "filer root fs": lambda j: first(j)["securityContext"].update(readOnlyRootFilesystem=False),
        "filer limits": lambda j: first(j)["resources"]["limits"].pop("memory"),
        "backoff": lambda j: j["spec"].update(backoffLimit=6),
        "deadline": lambda j: j["spec"].pop("activeDeadlineSeconds"),
        "ttl": lambda j: j["spec"].pop("ttlSecondsAfterFinished"),
        "limits": lambda j: pod(j)["containers"][0]["resources"]["limits"].pop("memory"),
        "root": lambda j: pod(j)["securityContext"].update(runAsUser=0),
        "unlabelled": lambda j: j["spec"]["template"]["metadata"]["labels"].pop("fivesafes-tes/role"),
    }
    for kind, make in jobs.items():
        assert violations(make()) == [], kind
        for what, breaking in breaks.items():
            job = make()
            breaking(job)
            assert violations(job), f"{what} in the {kind} Job went unnoticed"
    open_policy = {"spec": {"podSelector": {}, "policyTypes": ["Ingress"], "egress": [{}]}}
    assert len(network_policy_violations(open_policy)) == 3
    sound = filer_network_policy_manifest(settings())
    assert filer_network_policy_violations(sound, settings()) == []
    for rule in (
        {},
        {"ports": [{"protocol": "TCP", "port": 22}]},
        {"ports": [{"protocol": "TCP", "port": 53, "endPort": 65535}]},
    ):
        wide = filer_network_policy_manifest(settings())
        wide["spec"]["egress"].append(rule)
        assert filer_network_policy_violations(wide, settings()), rule
    inbound = filer_network_policy_manifest(settings())
    inbound["spec"]["ingress"] = [{}]
    assert filer_network_policy_violations(inbound, settings())


def test_what_the_backend_cannot_do_is_refused_before_anything_is_made(cluster, s3_store):
    ex = executor(cluster, s3_store)
    with pytest.raises(RequestRefused, match="stdout"):
        ex.start(run_spec(step_list=[Step(image=IMAGE, command=["true"], stdout="/tmp/out")]))
    ignoring = [Step(image=IMAGE, command=["false"], ignore_error=True), Step(image=IMAGE, command=["true"])]
    with pytest.raises(RequestRefused, match="ignore_error"):
        ex.start(run_spec(step_list=ignoring))
    with pytest.raises(RequestRefused, match="as a dataset"):
        ex.start(run_spec(inputs=[InputFile("/inputs/big", b"x" * (600 << 10))]))
    assert cluster.names("jobs") == []
    assert cluster.names("persistentvolumeclaims") == []


# --- running, succeeded, staged out, collected -------------------------------------------------------


def test_a_run_is_staged_out_by_the_filer_and_collected_with_its_logs(
    cluster, s3_store, s3_endpoint, tmp_path
):
    ex, spec, job, pod = started(cluster, s3_store)
    assert ex.poll(spec.child_id) is None  # pending
    cluster.set_status(
        "pods",
        pod,
        {
            "phase": "Running",
            "initContainerStatuses": [terminated("filer-in"), terminated(0)],
            "containerStatuses": [running(1)],
        },
    )
    assert ex.poll(spec.child_id) is None
    assert ex.running() == {spec.child_id: 1}
    assert ex.collect(spec.child_id, tmp_path / "early") is None  # not ended: nothing to gather yet
    assert cluster.get("jobs", stage_out_name(spec.child_id, 1)) is None
    # The task ran in its volume: stage-in filled it, the steps wrote outputs (and a link, a pipe).
    volume = staged_in(cluster, spec, tmp_path)
    (volume / "rw/0/result.csv").write_bytes(b"a,b\n1,2\n")
    (volume / "rw/0/sub").mkdir()
    (volume / "rw/0/sub/deep.txt").write_bytes(b"deep")
    (volume / "rw/0/passwd").symlink_to("/etc/passwd")
    (volume / "rw/1/notes").write_bytes(b"")
    cluster.logs[(pod, "step-0")] = b"step 0\n"
    cluster.logs[(pod, "step-1")] = b"step 1\n"
    succeeded(cluster, job, pod)

    result = ex.poll(spec.child_id)
    assert result is not None
    assert (result.outcome, result.message) == (Outcome.SUCCEEDED, "all 2 step(s) succeeded")
    assert [s.exit_code for s in result.steps] == [0, 0]
    assert result.steps[0].start_time == "2026-01-01T00:00:01Z"
    assert ex.running() == {}
    assert cluster.get("jobs", stage_out_name(spec.child_id, 1)) is None  # a status pass starts nothing
    assert ex.collect(spec.child_id, tmp_path / "starting") is None  # the agent's first ask starts it
    # The stage-out Job: our filer, the volume read-only, the capability in a Secret; sandboxed too.
    out = cluster.get("jobs", stage_out_name(spec.child_id, 1))
    assert out is not None
    assert violations(out) == []
    assert out["spec"]["template"]["metadata"]["labels"]["fivesafes-tes/role"] == "filer"
    assert out["spec"]["activeDeadlineSeconds"] == 300
    out_pod = out["spec"]["template"]["spec"]
    assert out_pod["volumes"][1:] == [
        {"name": "volume", "persistentVolumeClaim": {"claimName": job, "readOnly": True}},
        {"name": "capability", "secret": {"secretName": f"{job}-out", "defaultMode": 0o440}},
    ]
    (filer_out,) = out_pod["containers"]
    assert filer_out["command"] == ["fivesafes-tes", "filer", "stage-out"]
    assert {"name": "volume", "mountPath": "/fivesafes/volume", "readOnly": True} in filer_out["volumeMounts"]
    assert all(violations(j) == [] for j in cluster.items("jobs"))  # the task's and the filer's
    # No S3 credential anywhere in the task namespace: the filer holds a presigned POST only.
    assert s3_endpoint.secret_key not in cluster.everything()
    assert ex.collect(spec.child_id, tmp_path / "waiting") is None  # the filer has not run yet
    again = executor(cluster, s3_store)  # an agent restarted meanwhile gets the same result back
    assert again.poll(spec.child_id) == result

    staged = staged_out(cluster, spec, volume)
    assert sorted(f.path for f in staged) == [
        "/outputs/result.csv",
        "/outputs/seed.txt",
        "/outputs/sub/deep.txt",
        "/work/notes",
    ]
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    collected = again.collect(spec.child_id, scratch)
    assert collected is not None
    assert {path: local.read_bytes() for path, local in collected.files.items()} == {
        "/outputs/result.csv": b"a,b\n1,2\n",
        "/outputs/seed.txt": b"seed\n",
        "/outputs/sub/deep.txt": b"deep",
        "/work/notes": b"",
    }
    assert {key: local.read_bytes() for key, local in collected.logs.items()} == {
        (0, "stdout"): b"step 0\n",
        (0, "stderr"): b"",
        (1, "stdout"): b"step 1\n",
        (1, "stderr"): b"",
    }
    assert all(scratch in local.parents for local in [*collected.files.values(), *collected.logs.values()])


def test_the_capability_is_for_this_attempts_prefix_only_and_expires_soon(
    cluster, s3_store, s3_endpoint, tmp_path
):
    ex, spec, job, pod = started(cluster, s3_store)
    succeeded(cluster, job, pod)
    before = time.time()
    assert ex.poll(spec.child_id) is not None
    assert ex.collect(spec.child_id, tmp_path) is None  # starts the stage-out
    capability = json.loads(cluster.secret(stage_out_name(spec.child_id, 1))["capability.json"])
    assert capability["url"] == f"{s3_endpoint.url}/{s3_store.bucket}"
    assert capability["manifest"] == staging_area.manifest_key(spec.child_id, 1)
    assert capability["folders"] == [
        {"volume": "rw/0", "path": "/outputs", "key": staging_area.folder_key(spec.child_id, 1, "/outputs")},
        {"volume": "rw/1", "path": "/work", "key": staging_area.folder_key(spec.child_id, 1, "/work")},
    ]
    assert "x-amz-signature" in capability["fields"]
    policy = json.loads(base64.b64decode(capability["fields"]["policy"]))
    conditions = policy["conditions"]
    assert {"bucket": s3_store.bucket} in conditions
    assert ["starts-with", "$key", f"staging/{spec.child_id}/1/"] in conditions
    assert ["content-length-range", 0, 1 << 30] in conditions
    expires = time.mktime(time.strptime(policy["expiration"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert before + 300 - 5 <= expires <= time.time() + 300 + 5
    # moto accepts a POST whatever its policy says (it checks neither the key's prefix nor the size), so
    # the limits are asserted on the signed policy document above; S3, MinIO and Ceph enforce it.


def test_a_failed_stage_out_is_an_error_in_plain_words(cluster, s3_store, tmp_path):
    ex, spec, job, pod = started(cluster, s3_store)
    succeeded(cluster, job, pod)
    assert ex.poll(spec.child_id) is not None
    assert ex.collect(spec.child_id, tmp_path) is None  # starts the stage-out
    out = stage_out_name(spec.child_id, 1)
    out_pod = cluster.make_pod(out)
    cluster.set_status(
        "pods",
        out_pod,
        {
            "phase": "Failed",
            "containerStatuses": [
                terminated("filer-out", 1, "Error", "Cannot stage the outputs out: the airlock refused it")
            ],
        },
    )
    cluster.set_status("jobs", out, condition("Failed", "BackoffLimitExceeded"))
    with pytest.raises(ExecutorError) as failed:
        ex.collect(spec.child_id, tmp_path)
    assert str(failed.value) == (
        "the run's outputs could not be staged out: Cannot stage the outputs out: the airlock refused it"
    )
    cluster.set_status("pods", out_pod, {"phase": "Failed", "containerStatuses": []})
    cluster.set_status("jobs", out, condition("Failed", "DeadlineExceeded"))
    with pytest.raises(ExecutorError, match="not staged out within 300 s"):
        ex.collect(spec.child_id, tmp_path)


def test_a_filer_image_that_cannot_be_pulled_for_stage_out_is_an_error_at_once(cluster, s3_store, tmp_path):
    ex, spec, job, pod = started(cluster, s3_store)
    succeeded(cluster, job, pod)
    assert ex.poll(spec.child_id) is not None
    assert ex.collect(spec.child_id, tmp_path) is None  # starts the stage-out
    out = stage_out_name(spec.child_id, 1)
    out_pod = cluster.make_pod(out)
    assert ex.collect(spec.child_id, tmp_path) is None  # pending: it may yet run
    cluster.set_status(
        "pods",
        out_pod,
        {"phase": "Pending", "containerStatuses": [waiting("filer-out", "ImagePullBackOff", FILER_IMAGE)]},
    )
    with pytest.raises(ExecutorError, match=r"filer image .* could not be pulled .*FILER_IMAGE"):
        ex.collect(spec.child_id, tmp_path)


def test_a_staged_file_changed_behind_the_filers_back_is_refused(cluster, s3_store, tmp_path):
    ex, spec, job, pod = started(cluster, s3_store)
    volume = staged_in(cluster, spec, tmp_path)
    succeeded(cluster, job, pod)
    assert ex.poll(spec.child_id) is not None
    assert ex.collect(spec.child_id, tmp_path) is None  # starts the stage-out
    staged_out(cluster, spec, volume)
    s3_store.put_bytes(staging_area.file_key(spec.child_id, 1, "/outputs/seed.txt"), b"swapped")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with pytest.raises(ExecutorError, match=r"/outputs/seed\.txt in the run's staging area is not the file"):
        ex.collect(spec.child_id, scratch)


def test_a_step_exiting_non_zero_fails_the_run(cluster, s3_store):
    ex, spec, job, pod = started(cluster, s3_store)
    cluster.set_status(
        "pods",
        pod,
        {"phase": "Failed", "initContainerStatuses": [terminated("filer-in"), terminated(0, 3, "Error")]},
    )
    cluster.set_status("jobs", job, condition("Failed", "BackoffLimitExceeded"))
    result = ex.poll(spec.child_id)
    assert result is not None
    assert (result.outcome, result.message) == (Outcome.FAILED, "step 1 of 2 exited with code 3")
    assert [s.exit_code for s in result.steps] == [3]
    assert ex.collect(spec.child_id, Path("/nonexistent")) is None  # its outputs still come out
    assert cluster.get("jobs", stage_out_name(spec.child_id, 1)) is not None


def test_inputs_that_cannot_be_placed_fail_the_run_in_plain_words(cluster, s3_store):
    ex, spec, job, pod = started(cluster, s3_store)
    cluster.set_status(
        "pods",
        pod,
        {
            "phase": "Failed",
            "initContainerStatuses": [
                terminated("filer-in", 1, "Error", "Cannot stage the inputs in: No space left on device")
            ],
        },
    )
    cluster.set_status("jobs", job, condition("Failed", "BackoffLimitExceeded"))
    result = ex.poll(spec.child_id)
    assert result is not None
    assert (result.outcome, result.steps) == (Outcome.FAILED, [])
    assert result.message == (
        "the run's inputs could not be placed in its volume: "
        "Cannot stage the inputs in: No space left on device"
    )


def test_the_deadline_is_reported_as_a_time_limit(cluster, s3_store):
    ex, spec, job, pod = started(cluster, s3_store)
    cluster.set_status(
        "pods",
        pod,
        {
            "phase": "Failed",
            "reason": "DeadlineExceeded",
            "initContainerStatuses": [terminated("filer-in"), terminated(0, 137, "Error")],
        },
    )
    cluster.set_status("jobs", job, condition("Failed", "DeadlineExceeded"))
    result = ex.poll(spec.child_id)
    assert result is not None
    assert result.outcome is Outcome.TIMED_OUT
    assert result.message == "the run was stopped: its time limit of 900 s was reached"


def test_out_of_memory_is_reported_with_the_limit(cluster, s3_store):
    ex, spec, job, pod = started(cluster, s3_store)
    cluster.set_status(
        "pods",
        pod,
        {
            "phase": "Failed",
            "initContainerStatuses": [terminated("filer-in"), terminated(0)],
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


def test_an_image_that_cannot_be_pulled_fails_the_run_and_removes_its_job(cluster, s3_store):
    ex, spec, job, pod = started(cluster, s3_store)
    cluster.set_status(
        "pods",
        pod,
        {
            "phase": "Pending",
            "initContainerStatuses": [terminated("filer-in"), waiting(0, "ImagePullBackOff", "ghost:1")],
        },
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
    assert ex.poll(spec.child_id) == result


def test_a_filer_image_that_cannot_be_pulled_names_the_setting(cluster, s3_store):
    ex, spec, _, pod = started(cluster, s3_store)
    cluster.set_status(
        "pods",
        pod,
        {"phase": "Pending", "initContainerStatuses": [waiting("filer-in", "ErrImagePull", FILER_IMAGE)]},
    )
    result = ex.poll(spec.child_id)
    assert result is not None
    assert result.outcome is Outcome.FAILED
    assert "FIVESAFES_AGENT_KUBERNETES_FILER_IMAGE" in result.message


# --- cancel, re-attach, sweep ---------------------------------------------------------------------


def test_cancel_deletes_the_job_and_keeps_the_outcome_and_the_logs_of_what_ran(cluster, s3_store, tmp_path):
    ex, spec, job, pod = started(cluster, s3_store)
    cluster.logs[(pod, "step-0")] = b"first\n"
    cluster.set_status(
        "pods",
        pod,
        {
            "phase": "Running",
            "initContainerStatuses": [terminated("filer-in"), terminated(0)],
            "containerStatuses": [running(1)],
        },
    )
    result = ex.cancel(spec.child_id)
    assert result is not None
    assert result.outcome is Outcome.CANCELED
    assert [s.exit_code for s in result.steps] == [0, -1]
    assert cluster.get("jobs", job) is None
    assert cluster.get("pods", pod) is None
    assert executor(cluster, s3_store).poll(spec.child_id) == result  # a restarted agent too
    ex.start(spec)  # a late start does not revive it
    assert cluster.names("jobs") == []
    assert ex.cancel(spec.child_id) == result  # idempotent
    assert ex.collect(spec.child_id, tmp_path) is None  # what ran still comes out, if asked
    assert cluster.names("jobs") == [stage_out_name(spec.child_id, 1)]
    staged_out(cluster, spec, staged_in(cluster, spec, tmp_path))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    collected = ex.collect(spec.child_id, scratch)
    assert collected is not None
    assert collected.logs[(0, "stdout")].read_bytes() == b"first\n"


def test_cancel_of_what_never_started_is_none(cluster, s3_store):
    assert executor(cluster, s3_store).cancel(str(uuid.uuid4())) is None


def test_a_new_executor_reattaches_by_labels_and_cleanup_removes_everything(cluster, s3_store, tmp_path):
    _, spec, job, pod = started(cluster, s3_store)
    again = executor(cluster, s3_store)  # the agent restarted
    assert again.running() == {spec.child_id: 1}
    again.start(spec)  # re-attach, not a second Job
    assert cluster.names("jobs") == [job]
    volume = staged_in(cluster, spec, tmp_path)
    succeeded(cluster, job, pod)
    result = again.poll(spec.child_id)
    assert result is not None
    assert result.outcome is Outcome.SUCCEEDED
    assert again.collect(spec.child_id, tmp_path) is None  # starts the stage-out
    staged_out(cluster, spec, volume)
    with pytest.raises(ExecutorError, match="superseded"):
        again.start(run_spec(child_id=spec.child_id, attempt=0))
    assert list(s3_store.list(staging_area.child_prefix(spec.child_id)))
    again.cleanup(spec.child_id)
    for kind in ("jobs", "pods", "persistentvolumeclaims", "secrets"):
        assert cluster.names(kind) == [], kind
    assert list(s3_store.list(staging_area.child_prefix(spec.child_id))) == []


def test_a_newer_attempt_replaces_the_older(cluster, s3_store):
    ex, spec, _, _ = started(cluster, s3_store)
    ex.start(run_spec(child_id=spec.child_id, attempt=2))
    newer = job_name(spec.child_id, 2)
    assert cluster.names("jobs") == [newer]
    assert cluster.names("persistentvolumeclaims") == [newer]
    assert cluster.names("secrets") == [f"{newer}-inputs"]
    assert ex.running() == {spec.child_id: 2}


def test_sweep_removes_orphans_and_nothing_of_another_deployment(cluster, s3_store):
    ex, kept, kept_job, _ = started(cluster, s3_store)
    orphan = run_spec()
    ex.start(orphan)
    orphan_job = job_name(orphan.child_id, 1)
    orphan_pod = cluster.make_pod(orphan_job)
    cluster.set_status("jobs", orphan_job, condition("Complete"))
    assert ex.poll(orphan.child_id) is not None  # its stage-out Job and capability Secret made
    s3_store.put_bytes(staging_area.file_key(orphan.child_id, 1, "/outputs/x"), b"x")
    other = executor(cluster, s3_store, deployment="other-stack")
    theirs = run_spec()
    other.start(theirs)
    assert ex.sweep({kept.child_id}) == [orphan.child_id]
    their_job = job_name(theirs.child_id, 1)
    assert cluster.names("jobs") == sorted([kept_job, their_job])
    assert cluster.names("persistentvolumeclaims") == sorted([kept_job, their_job])
    assert cluster.names("secrets") == sorted([f"{kept_job}-inputs", f"{their_job}-inputs"])
    assert cluster.get("pods", orphan_pod) is None
    assert list(s3_store.list(staging_area.child_prefix(orphan.child_id))) == []
    result = ex.poll(orphan.child_id)
    assert result is not None
    assert result.outcome is Outcome.LOST
    assert ex.collect(orphan.child_id, Path("/nonexistent")) == Collected()


def test_a_job_removed_behind_the_agents_back_is_lost_but_its_volume_is_still_staged_out(
    cluster, s3_store, tmp_path
):
    ex, spec, job, _ = started(cluster, s3_store)
    volume = staged_in(cluster, spec, tmp_path)
    cluster.delete("jobs", job)
    result = ex.poll(spec.child_id)
    assert result is not None
    assert (result.outcome, result.message) == (Outcome.LOST, "the cluster has no Job for this run")
    assert ex.poll(spec.child_id) == result
    assert ex.collect(spec.child_id, tmp_path) is None  # starts the stage-out
    staged_out(cluster, spec, volume)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    collected = ex.collect(spec.child_id, scratch)
    assert collected is not None
    assert collected.files["/outputs/seed.txt"].read_bytes() == b"seed\n"


def test_the_last_step_may_ignore_its_error(cluster, s3_store):
    steps = [Step(image=IMAGE, command=["true"]), Step(image=IMAGE, command=["false"], ignore_error=True)]
    ex, spec, job, pod = started(cluster, s3_store, step_list=steps)
    cluster.set_status(
        "pods",
        pod,
        {
            "phase": "Failed",
            "initContainerStatuses": [terminated("filer-in"), terminated(0)],
            "containerStatuses": [terminated(1, 1, "Error")],
        },
    )
    cluster.set_status("jobs", job, condition("Failed", "BackoffLimitExceeded"))
    result = ex.poll(spec.child_id)
    assert result is not None
    assert result.outcome is Outcome.SUCCEEDED
    assert [s.exit_code for s in result.steps] == [0, 1]


def test_polls_read_one_listing_per_kind_and_never_call_a_run_lost_from_it(cluster, s3_store, monkeypatch):
    """With many runs, a status pass costs three listings, not three requests per run; what this
    process changed is read directly, a kubelet's change shows once the listing is older than its
    limit, and a run missing from the listing is asked after before it is called lost."""
    ex = executor(cluster, s3_store, snapshot_ttl_s=60)
    specs = [run_spec() for _ in range(5)]
    pods = {}
    for spec in specs:
        ex.start(spec)
        pods[spec.child_id] = cluster.make_pod(job_name(spec.child_id, 1))
    requests: list[str] = []
    real = ex._request
    monkeypatch.setattr(ex, "_request", lambda what, *a, **k: requests.append(what) or real(what, *a, **k))

    assert [ex.poll(s.child_id) for s in specs] == [None] * 5  # one listing per kind, made once
    requests.clear()
    assert [ex.poll(s.child_id) for s in specs] == [None] * 5
    assert requests == [], requests  # the listing made during the first pass still speaks for them
    ex._snapshot_at = float("-inf")  # the listing is older than its limit
    assert [ex.poll(s.child_id) for s in specs] == [None] * 5
    assert sorted(requests) == ["list Jobs", "list PersistentVolumeClaims", "list Pods"]

    first = specs[0]
    succeeded(cluster, job_name(first.child_id, 1), pods[first.child_id])
    assert ex.poll(first.child_id) is None  # the kubelet's change is not in the listing yet
    ex._snapshot_at = float("-inf")
    ended = ex.poll(first.child_id)
    assert ended is not None
    assert ended.outcome is Outcome.SUCCEEDED
    # Ending it changed its objects (a recorded result, a stage-out Job): read directly from now on.
    requests.clear()
    assert ex.poll(first.child_id) == ended
    assert "list PersistentVolumeClaims" in requests

    # A run another agent process started after the listing: asked after, not lost.
    late = run_spec()
    executor(cluster, s3_store).start(late)
    assert ex.poll(late.child_id) is None
