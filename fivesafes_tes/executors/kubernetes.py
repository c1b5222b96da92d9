"""Kubernetes backend: each child attempt is one hardened Job in the TRE's task namespace.

NOT YET WIRED TO THE AGENT (it is not in `BACKENDS`): the interface still hands a backend host
folders, which a task pod must never mount (docs/architecture.md, "Kubernetes executor").

The TES executors of a run are the Pod's containers in order, as TESK orders them: every step but the
last is an init container, the last is the main container. The kubelet then runs them one after
another and stops at the first failure, one Job covers the whole run, and its `activeDeadlineSeconds`
holds the run's time limit while the agent is dead. Everything the backend needs later (which child,
which attempt, its logs directory) is on the Job as labels and annotations, so a restarted agent
re-attaches by listing Jobs by label and keeps no state of its own, except the outcome of a cancel,
whose Job is deleted.

The manifests are built by pure functions (`job_manifest`, `network_policy_manifest`) and checked by
`violations`, which the executor applies to what the API server returns (RELIABILITY 18).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from .base import ExecutorError, Limits, Outcome, RequestRefused, RunResult, RunSpec, StepResult
from .sandbox import POLICY, SandboxPolicy, SandboxViolation, parse_user, step_env, validate_run_spec

log = logging.getLogger(__name__)

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "fivesafes-tes"
LABEL_ROLE = "fivesafes-tes/role"
ROLE_TASK = "task"
LABEL_CHILD = "fivesafes-tes/child"
LABEL_ATTEMPT = "fivesafes-tes/attempt"
LABEL_TRE = "fivesafes-tes/tre"
LABEL_DEPLOYMENT = "fivesafes-tes/deployment"
ANNOTATION_LOGS_DIR = "fivesafes-tes/logs-dir"
ANNOTATION_STEPS = "fivesafes-tes/steps"
ANNOTATION_RUNTIME = "fivesafes-tes/runtime-s"
ANNOTATION_DEADLINE = "fivesafes-tes/deadline"
ANNOTATION_IGNORE_LAST = "fivesafes-tes/ignore-error-last"
NETWORK_POLICY = "fivesafes-tes-tasks-deny-all"

# A name or label value the API server accepts (DNS-1123 label; label values allow the same here).
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]{0,61}[A-Za-z0-9]|[A-Za-z0-9])$")
# Waiting reasons that do not heal by waiting: the image is not there and cannot be fetched.
IMAGE_PULL_FAILURES = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")


@dataclass(frozen=True)
class ClaimFolder:
    """A folder of the agent that task pods reach through a PersistentVolumeClaim: a mount whose host
    source is `folder` or below it becomes `claim` mounted at the same relative sub path. Never a
    hostPath."""

    folder: Path
    claim: str


@dataclass(frozen=True)
class JobSettings:
    """What a TRE configures once for every task Job."""

    namespace: str
    tre: str
    deployment: str
    ttl_after_finished_s: int = 3600
    tmp_medium: str = ""  # "" (node disk, counted as ephemeral storage) or "Memory" (counted as memory)
    claims: tuple[ClaimFolder, ...] = ()
    cap: Limits | None = None  # the TRE policy's maxima, applied again whatever the spec says
    image_pull_policy: str = "IfNotPresent"
    policy: SandboxPolicy = field(default=POLICY)


def job_name(child_id: str, attempt: int) -> str:
    name = f"fst-{child_id}-{attempt}"
    if len(name) > 63 or not _DNS_LABEL.match(name) or attempt < 0:
        raise ValueError(f"child id {child_id!r} / attempt {attempt} cannot name a Kubernetes Job")
    return name


def owner_labels(settings: JobSettings) -> dict[str, str]:
    """The labels every object this backend makes carries, and selects its own objects by."""
    return {
        MANAGED_BY: MANAGER,
        LABEL_ROLE: ROLE_TASK,
        LABEL_TRE: settings.tre,
        LABEL_DEPLOYMENT: settings.deployment,
    }


def run_labels(settings: JobSettings, child_id: str, attempt: int) -> dict[str, str]:
    return {**owner_labels(settings), LABEL_CHILD: child_id, LABEL_ATTEMPT: str(attempt)}


def capped(limits: Limits, cap: Limits | None) -> Limits:
    if cap is None:
        return limits
    return Limits(
        cpu_cores=min(limits.cpu_cores, cap.cpu_cores),
        memory_bytes=min(limits.memory_bytes, cap.memory_bytes),
        disk_bytes=min(limits.disk_bytes, cap.disk_bytes),
        runtime_s=min(limits.runtime_s, cap.runtime_s),
        pids=min(limits.pids, cap.pids),
    )


def check_runnable(spec: RunSpec) -> None:
    """Refuse what this backend cannot yet do as asked, naming the change that makes the task run."""
    for i, step in enumerate(spec.steps):
        for what, path in (("stdin", step.stdin), ("stdout", step.stdout), ("stderr", step.stderr)):
            if path is not None:
                raise RequestRefused(
                    f"executor {i} sets {what}; this TRE's Kubernetes executor does not redirect streams "
                    f"to files: redirect inside the command instead (for example sh -c '... > {path}')"
                )
        if step.ignore_error and i < len(spec.steps) - 1:
            raise RequestRefused(
                f"executor {i} sets ignore_error; this TRE's Kubernetes executor stops at the first "
                "failed executor: only the last one may ignore its error"
            )


def _volume_for(source: Path, settings: JobSettings) -> tuple[str, str]:
    """(claim, sub path) a host folder reaches pods through; ValueError when no claim covers it."""
    resolved = source.resolve()
    for claim in settings.claims:
        root = claim.folder.resolve()
        if resolved == root or root in resolved.parents:
            return claim.claim, str(PurePosixPath(*resolved.relative_to(root).parts))
    raise ValueError(
        f"host folder {str(source)!r} is on no volume task pods can mount: name a PersistentVolumeClaim "
        "that holds it (ClaimFolder); a hostPath is never used"
    )


def _quantities(limits: Limits) -> dict[str, str]:
    return {
        "cpu": f"{max(1, round(limits.cpu_cores * 1000))}m",
        "memory": str(limits.memory_bytes),
        "ephemeral-storage": str(limits.disk_bytes),
    }


def job_manifest(spec: RunSpec, settings: JobSettings, deadline: int) -> dict[str, Any]:
    """The whole Job of one child attempt: steps in order, the sandbox on every container."""
    uid, gid = parse_user(spec.user)
    limits = capped(spec.limits, settings.cap)
    p = settings.policy
    labels = run_labels(settings, spec.child_id, spec.attempt)
    volumes: list[dict[str, Any]] = [
        {"name": "tmp", "emptyDir": {"medium": settings.tmp_medium, "sizeLimit": str(limits.disk_bytes)}}
    ]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": p.writable_tmp}]
    claims: dict[str, str] = {}
    for mount in spec.mounts:
        claim, sub_path = _volume_for(mount.source, settings)
        volume = claims.setdefault(claim, f"claim-{len(claims)}")
        mounts.append(
            {"name": volume, "mountPath": mount.target, "subPath": sub_path, "readOnly": mount.read_only}
        )
    volumes += [
        {"name": name, "persistentVolumeClaim": {"claimName": claim}} for claim, name in claims.items()
    ]
    security = {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": gid,
        "privileged": False,
        "allowPrivilegeEscalation": not p.no_new_privileges,
        "readOnlyRootFilesystem": p.read_only_root,
        "capabilities": {"drop": list(p.drop_capabilities)},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    reserved = {f"{p.reserved_env_prefix}DEADLINE": str(deadline)}
    containers = [
        {
            "name": f"step-{i}",
            "image": step.image,
            "imagePullPolicy": settings.image_pull_policy,
            "command": list(step.command),
            **({"workingDir": step.workdir} if step.workdir else {}),
            "env": [{"name": k, "value": v} for k, v in step_env(step.env, reserved, p).items()],
            "resources": {"requests": _quantities(limits), "limits": _quantities(limits)},
            "securityContext": security,
            "volumeMounts": mounts,
            "stdin": False,
            "tty": False,
        }
        for i, step in enumerate(spec.steps)
    ]
    pod_spec = {
        "restartPolicy": "Never",
        "activeDeadlineSeconds": limits.runtime_s,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "hostNetwork": False,
        "hostPID": False,
        "hostIPC": False,
        "shareProcessNamespace": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": uid,
            "runAsGroup": gid,
            "fsGroup": gid,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "initContainers": containers[:-1],
        "containers": containers[-1:],
        "volumes": volumes,
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(spec.child_id, spec.attempt),
            "namespace": settings.namespace,
            "labels": labels,
            "annotations": {
                ANNOTATION_LOGS_DIR: str(spec.logs_dir.resolve()),
                ANNOTATION_STEPS: str(len(spec.steps)),
                ANNOTATION_RUNTIME: str(limits.runtime_s),
                ANNOTATION_DEADLINE: str(deadline),
                ANNOTATION_IGNORE_LAST: "true" if spec.steps[-1].ignore_error else "false",
            },
        },
        "spec": {
            "backoffLimit": 0,
            "completions": 1,
            "parallelism": 1,
            "activeDeadlineSeconds": limits.runtime_s,
            "ttlSecondsAfterFinished": settings.ttl_after_finished_s,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


def network_policy_manifest(settings: JobSettings) -> dict[str, Any]:
    """Deny every packet to and from task pods: both directions named, no rule allowing any."""
    selector = {MANAGED_BY: MANAGER, LABEL_ROLE: ROLE_TASK}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": NETWORK_POLICY, "namespace": settings.namespace, "labels": selector},
        "spec": {"podSelector": {"matchLabels": selector}, "policyTypes": ["Ingress", "Egress"]},
    }


def network_policy_violations(policy: dict[str, Any]) -> list[str]:
    spec = policy.get("spec") or {}
    out = []
    if set(spec.get("policyTypes") or []) != {"Ingress", "Egress"}:
        out.append(f"policyTypes {spec.get('policyTypes')}, not both Ingress and Egress")
    if spec.get("ingress") or spec.get("egress"):
        out.append("a rule allows traffic")
    if (spec.get("podSelector") or {}).get("matchLabels") != {MANAGED_BY: MANAGER, LABEL_ROLE: ROLE_TASK}:
        out.append(f"selects {spec.get('podSelector')}, not every task pod")
    return out


def _container_violations(c: dict[str, Any]) -> list[str]:
    name = c.get("name", "?")
    sc = c.get("securityContext") or {}
    out = []
    if sc.get("privileged"):
        out.append(f"{name}: privileged")
    if sc.get("allowPrivilegeEscalation") is not False:
        out.append(f"{name}: privilege escalation allowed")
    if sc.get("readOnlyRootFilesystem") is not True:
        out.append(f"{name}: root filesystem writable")
    caps = sc.get("capabilities") or {}
    if "ALL" not in (caps.get("drop") or []) or caps.get("add"):
        out.append(f"{name}: capabilities {caps}")
    if sc.get("runAsNonRoot") is not True or not sc.get("runAsUser"):
        out.append(f"{name}: may run as root")
    if (sc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        out.append(f"{name}: seccomp profile {sc.get('seccompProfile')}")
    limits = (c.get("resources") or {}).get("limits") or {}
    missing = {"cpu", "memory", "ephemeral-storage"} - set(limits)
    if missing:
        out.append(f"{name}: no limit on {', '.join(sorted(missing))}")
    if c.get("stdin") or c.get("tty"):
        out.append(f"{name}: stdin or tty attached")
    return out


def violations(job: dict[str, Any]) -> list[str]:
    """Every sandbox rule (RELIABILITY 18) a Job manifest breaks; empty when it is sound."""
    spec = job.get("spec") or {}
    template = spec.get("template") or {}
    pod = template.get("spec") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    out = []
    if spec.get("backoffLimit") != 0:
        out.append(f"backoffLimit {spec.get('backoffLimit')}, not 0")
    if not (spec.get("activeDeadlineSeconds") or 0) > 0:
        out.append("no deadline (activeDeadlineSeconds)")
    if spec.get("ttlSecondsAfterFinished") is None:
        out.append("no ttlSecondsAfterFinished")
    if labels.get(MANAGED_BY) != MANAGER or labels.get(LABEL_ROLE) != ROLE_TASK:
        out.append("pod template lacks the labels the deny-all NetworkPolicy selects")
    if pod.get("restartPolicy") != "Never":
        out.append(f"restartPolicy {pod.get('restartPolicy')}")
    if pod.get("automountServiceAccountToken") is not False:
        out.append("service account token mounted")
    if pod.get("enableServiceLinks") is not False:
        out.append("service links enabled")
    out += [
        f"{key} shared"
        for key in ("hostNetwork", "hostPID", "hostIPC", "shareProcessNamespace")
        if pod.get(key)
    ]
    psc = pod.get("securityContext") or {}
    if psc.get("runAsNonRoot") is not True or not psc.get("runAsUser"):
        out.append("pod may run as root")
    if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        out.append("pod seccomp profile not RuntimeDefault")
    out += [f"hostPath volume {v.get('name')}" for v in pod.get("volumes") or [] if "hostPath" in v]
    containers = [*(pod.get("initContainers") or []), *(pod.get("containers") or [])]
    if not containers:
        out.append("no containers")
    for c in containers:
        out += _container_violations(c)
    return out


def _time(value: str | None) -> str:
    return (value or "").replace("+00:00", "Z")


def _matches(labels: dict[str, str] | None, wanted: dict[str, str]) -> bool:
    labels = labels or {}
    return all(labels.get(k) == v for k, v in wanted.items())


def _selector(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in labels.items())


@dataclass
class _Run:
    job: dict[str, Any]
    pods: list[dict[str, Any]]

    @property
    def meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = self.job["metadata"]
        return meta

    @property
    def annotations(self) -> dict[str, str]:
        found: dict[str, str] = self.meta.get("annotations") or {}
        return found

    @property
    def count(self) -> int:
        return int(self.annotations.get(ANNOTATION_STEPS, 1))

    @property
    def pod(self) -> dict[str, Any] | None:
        """The Job's pod (backoffLimit 0 makes at most one that ran); the newest if the cluster made more."""
        if not self.pods:
            return None
        return max(self.pods, key=lambda p: p["metadata"].get("creationTimestamp") or "")

    def statuses(self) -> dict[int, dict[str, Any]]:
        """step index -> its container status."""
        status = (self.pod or {}).get("status") or {}
        found = {}
        for s in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
            name = s.get("name", "")
            if name.startswith("step-") and name[5:].isdigit():
                found[int(name[5:])] = s
        return found

    def job_condition(self) -> dict[str, Any] | None:
        """The Job's Complete or Failed condition, when it has ended."""
        for condition in (self.job.get("status") or {}).get("conditions") or []:
            if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
                found: dict[str, Any] = condition
                return found
        return None

    @property
    def ended(self) -> bool:
        phase = ((self.pod or {}).get("status") or {}).get("phase")
        return self.job_condition() is not None or phase in ("Succeeded", "Failed")


class KubernetesExecutor:
    """Runs each child attempt as one hardened Job in one namespace, for one TRE.

    Everything it lists, sweeps or re-attaches is selected by the TRE and deployment labels, so several
    agents can share a namespace without touching each other's Jobs."""

    name = "kubernetes"

    def __init__(
        self,
        tre: str,
        *,
        deployment: str,
        namespace: str = "fivesafes-tasks",
        api_client: Any = None,
        ttl_after_finished_s: int = 3600,
        tmp_medium: str = "",
        claims: Iterable[ClaimFolder] = (),
        cap: Limits | None = None,
    ) -> None:
        for what, value in (("tre", tre), ("deployment", deployment)):
            if not _LABEL_VALUE.match(value):
                raise ValueError(
                    f"{what} {value!r} cannot be a Kubernetes label value (letters, digits, -_.)"
                )
        if not _DNS_LABEL.match(namespace):
            raise ValueError(f"namespace {namespace!r} is not a Kubernetes namespace name")
        if tmp_medium not in ("", "Memory"):
            raise ValueError(f"tmp_medium {tmp_medium!r}: choose '' (node disk) or 'Memory'")
        self.tre = tre
        self.deployment = deployment
        self.settings = JobSettings(
            namespace=namespace,
            tre=tre,
            deployment=deployment,
            ttl_after_finished_s=ttl_after_finished_s,
            tmp_medium=tmp_medium,
            claims=tuple(claims),
            cap=cap,
        )
        if api_client is None:  # the pod's service account in the cluster, else ~/.kube/config
            # The client's loaders carry no annotations.
            try:
                k8s_config.load_incluster_config()  # type: ignore[no-untyped-call]
            except k8s_config.ConfigException:
                k8s_config.load_kube_config()  # type: ignore[no-untyped-call]
            api_client = k8s.ApiClient()
        self._batch = k8s.BatchV1Api(api_client)
        self._core = k8s.CoreV1Api(api_client)
        self._net = k8s.NetworkingV1Api(api_client)
        self._network_policy_checked = False
        # The outcome of each run canceled by this process: cancel deletes the Job that held it.
        self._canceled: dict[str, RunResult] = {}

    @property
    def namespace(self) -> str:
        return self.settings.namespace

    # --- the Executor interface ---------------------------------------------------------------

    def start(self, spec: RunSpec) -> None:
        validate_run_spec(spec, self.settings.policy)
        check_runnable(spec)
        if spec.tre != self.tre:
            raise ValueError(f"this executor runs TRE {self.tre!r}'s work, not {spec.tre!r}")
        name = job_name(spec.child_id, spec.attempt)
        if spec.child_id in self._canceled:
            return  # a late or repeated start must not revive a canceled run
        attempts = sorted(self._runs(spec.child_id).get(spec.child_id, {}))
        if attempts and attempts[-1] > spec.attempt:
            raise ExecutorError(
                f"attempt {spec.attempt} is superseded by attempt {attempts[-1]} already here"
            )
        for attempt in attempts:
            if attempt < spec.attempt:
                self._delete_run(spec.child_id, attempt)  # superseded: the gateway refuses its updates
        if spec.attempt in attempts:
            return  # started before a crash: re-attach, never run twice
        self._ensure_network_policy()
        manifest = job_manifest(spec, self.settings, int(time.time()) + spec.limits.runtime_s)
        try:
            created = self._call(
                f"create Job {name}", self._batch.create_namespaced_job, self.namespace, manifest
            )
        except ExecutorError as exc:
            if isinstance(exc.__cause__, ApiException) and exc.__cause__.status == 409:
                return  # made by an earlier, interrupted start
            raise
        problems = violations(created)
        if problems:
            self._delete_run(spec.child_id, spec.attempt)
            raise SandboxViolation(f"Job {name} breaks the sandbox: " + "; ".join(problems))

    def poll(self, child_id: str) -> RunResult | None:
        if child_id in self._canceled:
            return self._canceled[child_id]
        run = self._latest(child_id)
        if run is None:
            return RunResult(Outcome.LOST, [], "the cluster has no Job for this run")
        pulled = self._image_pull_failure(run)
        if pulled is not None:
            results = self._collect(run)
            self._delete_run(child_id, int(run.meta["labels"][LABEL_ATTEMPT]))
            return RunResult(Outcome.FAILED, results, pulled)
        if not run.ended:
            return None
        outcome, message = self._classify(run)
        return RunResult(outcome, self._collect(run), message)

    def cancel(self, child_id: str) -> None:
        run = self._latest(child_id)
        if run is None or child_id in self._canceled:
            return
        if run.ended:
            return  # ended: its outcome stands
        self._canceled[child_id] = RunResult(Outcome.CANCELED, self._collect(run), "the run was canceled")
        self._delete_run(child_id, int(run.meta["labels"][LABEL_ATTEMPT]))

    def running(self) -> dict[str, int]:
        alive = {}
        for child_id, attempts in self._runs().items():
            attempt = max(attempts)
            run = _Run(attempts[attempt], [])
            if run.job_condition() is None and not run.meta.get("deletionTimestamp"):
                alive[child_id] = attempt
        return alive

    def cleanup(self, child_id: str) -> None:
        for attempt in self._runs(child_id).get(child_id, {}):
            self._delete_run(child_id, attempt)
        self._delete_pods({LABEL_CHILD: child_id})
        self._canceled.pop(child_id, None)

    def sweep(self, keep: set[str]) -> list[str]:
        removed = set()
        for child_id, attempts in self._runs().items():
            if child_id not in keep:
                for attempt in attempts:
                    self._delete_run(child_id, attempt)
                removed.add(child_id)
        for pod in self._list_pods({}):
            child_id = pod["metadata"]["labels"].get(LABEL_CHILD, "")
            if child_id not in keep:
                self._delete_pod(pod["metadata"]["name"])
                removed.add(child_id)
        if removed:
            log.info(
                "swept Jobs of %d orphaned run(s) of TRE %s: %s", len(removed), self.tre, sorted(removed)
            )
        return sorted(removed)

    # --- cluster state ------------------------------------------------------------------------

    def _call(self, what: str, method: Any, *args: Any, **kwargs: Any) -> Any:
        """One API call, its JSON as plain dicts; an API error in plain words."""
        data = self._request(what, method, *args, **kwargs)
        return json.loads(data) if data else {}

    def _request(self, what: str, method: Any, *args: Any, **kwargs: Any) -> bytes:
        """One API call, its body as the server sent it (the client's models are not used)."""
        try:
            response = method(*args, _preload_content=False, **kwargs)
        except ApiException as exc:
            hint = {
                403: f" (the agent's service account may not do this in namespace {self.namespace}: "
                "check its Role)",
                404: f" (is namespace {self.namespace} there?)",
            }.get(exc.status or 0, "")
            raise ExecutorError(
                f"the Kubernetes API refused to {what}: {exc.status} {exc.reason}{hint}"
            ) from exc
        body: bytes = response.data
        return body

    def _list_jobs(self, labels: dict[str, str]) -> list[dict[str, Any]]:
        wanted = {**owner_labels(self.settings), **labels}
        found = self._call(
            "list Jobs", self._batch.list_namespaced_job, self.namespace, label_selector=_selector(wanted)
        )
        # The selector narrows what the server sends; this check is what we act on.
        return [j for j in found.get("items") or [] if _matches(j["metadata"].get("labels"), wanted)]

    def _list_pods(self, labels: dict[str, str]) -> list[dict[str, Any]]:
        wanted = {**owner_labels(self.settings), **labels}
        found = self._call(
            "list Pods", self._core.list_namespaced_pod, self.namespace, label_selector=_selector(wanted)
        )
        return [p for p in found.get("items") or [] if _matches(p["metadata"].get("labels"), wanted)]

    def _runs(self, child_id: str | None = None) -> dict[str, dict[int, dict[str, Any]]]:
        """child id -> attempt -> its Job."""
        runs: dict[str, dict[int, dict[str, Any]]] = {}
        for job in self._list_jobs({LABEL_CHILD: child_id} if child_id is not None else {}):
            labels = job["metadata"]["labels"]
            runs.setdefault(labels[LABEL_CHILD], {})[int(labels.get(LABEL_ATTEMPT, -1))] = job
        return runs

    def _latest(self, child_id: str) -> _Run | None:
        attempts = self._runs(child_id).get(child_id)
        if not attempts:
            return None
        attempt = max(attempts)
        pods = self._list_pods({LABEL_CHILD: child_id, LABEL_ATTEMPT: str(attempt)})
        return _Run(attempts[attempt], pods)

    def _image_pull_failure(self, run: _Run) -> str | None:
        for i, status in sorted(run.statuses().items()):
            waiting = (status.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in IMAGE_PULL_FAILURES:
                detail = f": {waiting['message']}" if waiting.get("message") else ""
                return (
                    f"step {i + 1} of {run.count}: image {status.get('image', '?')} is not on this TRE's "
                    f"cluster and could not be pulled ({waiting['reason']}{detail})"
                )
        return None

    def _classify(self, run: _Run) -> tuple[Outcome, str]:
        condition = run.job_condition() or {}
        pod_status = (run.pod or {}).get("status") or {}
        if "DeadlineExceeded" in (condition.get("reason"), pod_status.get("reason")):
            runtime = run.annotations.get(ANNOTATION_RUNTIME, "?")
            return Outcome.TIMED_OUT, f"the run was stopped: its time limit of {runtime} s was reached"
        statuses = run.statuses()
        for i in range(run.count):
            terminated = (statuses.get(i, {}).get("state") or {}).get("terminated")
            if terminated is None:
                break
            code = int(terminated.get("exitCode", -1))
            if code == 0:
                continue
            which = f"step {i + 1} of {run.count}"
            last = i == run.count - 1
            if terminated.get("reason") == "OOMKilled":
                memory = self._memory_limit(run, i)
                return Outcome.OUT_OF_MEMORY, f"{which} ran out of memory (limit {memory >> 20} MiB)"
            if last and run.annotations.get(ANNOTATION_IGNORE_LAST) == "true":
                return Outcome.SUCCEEDED, f"all {run.count} step(s) ended; the last one's error is ignored"
            hint = {127: " (command not found in the image)", 137: " (killed)"}.get(code, "")
            return Outcome.FAILED, f"{which} exited with code {code}{hint}"
        else:
            return Outcome.SUCCEEDED, f"all {run.count} step(s) succeeded"
        if condition.get("type") == "Failed" or pod_status.get("phase") == "Failed":
            why = condition.get("message") or condition.get("reason") or pod_status.get("reason") or "unknown"
            return Outcome.FAILED, f"the run's Job failed before every step ended: {why}"
        return Outcome.SUCCEEDED, f"all {run.count} step(s) succeeded"

    def _memory_limit(self, run: _Run, i: int) -> int:
        pod_spec = run.job["spec"]["template"]["spec"]
        containers = [*(pod_spec.get("initContainers") or []), *(pod_spec.get("containers") or [])]
        value = containers[i]["resources"]["limits"]["memory"] if i < len(containers) else "0"
        return int(value) if str(value).isdigit() else 0

    # --- actions ------------------------------------------------------------------------------

    def _ensure_network_policy(self) -> None:
        """The namespace's deny-all policy for task pods, made once if missing and then checked."""
        if self._network_policy_checked:
            return
        manifest = network_policy_manifest(self.settings)
        try:
            found = self._call(
                f"read NetworkPolicy {NETWORK_POLICY}",
                self._net.read_namespaced_network_policy,
                NETWORK_POLICY,
                self.namespace,
            )
        except ExecutorError as exc:
            if not (isinstance(exc.__cause__, ApiException) and exc.__cause__.status == 404):
                raise
            found = self._call(
                f"create NetworkPolicy {NETWORK_POLICY}",
                self._net.create_namespaced_network_policy,
                self.namespace,
                manifest,
            )
        problems = network_policy_violations(found)
        if problems:
            raise SandboxViolation(
                f"NetworkPolicy {NETWORK_POLICY} in {self.namespace} does not deny all: "
                + "; ".join(problems)
            )
        self._network_policy_checked = True

    def _collect(self, run: _Run) -> list[StepResult]:
        """Write each ended (or, on cancel, started) step's log to the run's logs directory, once.

        Kubernetes keeps one stream per container, stdout and stderr interleaved: it goes to
        step-N.stdout, and step-N.stderr stays empty."""
        logs_dir = Path(run.annotations[ANNOTATION_LOGS_DIR])
        logs_dir.mkdir(parents=True, exist_ok=True)
        results = []
        pod = run.pod
        for i, status in sorted(run.statuses().items()):
            state = status.get("state") or {}
            ended = state.get("terminated")
            began = ended or state.get("running")
            if pod is None or began is None:
                continue
            stdout, stderr = logs_dir / f"step-{i}.stdout", logs_dir / f"step-{i}.stderr"
            if not stdout.exists():
                text = self._request(
                    f"read the log of step {i + 1}",
                    self._core.read_namespaced_pod_log,
                    pod["metadata"]["name"],
                    self.namespace,
                    container=f"step-{i}",
                )
                part = stdout.with_name(stdout.name + ".part")
                part.write_bytes(text)
                part.replace(stdout)
            stderr.touch()
            start = _time(began.get("startedAt"))
            results.append(
                StepResult(
                    exit_code=int(ended.get("exitCode", -1)) if ended else -1,
                    start_time=start,
                    end_time=_time(ended.get("finishedAt")) if ended else start,
                    stdout_path=stdout,
                    stderr_path=stderr,
                )
            )
        return results

    def _delete_run(self, child_id: str, attempt: int) -> None:
        """Delete the Job (its pods go with it) and its pods now, whatever the garbage collector does."""
        self._delete(
            f"delete Job {job_name(child_id, attempt)}",
            self._batch.delete_namespaced_job,
            job_name(child_id, attempt),
            body={"propagationPolicy": "Background"},
        )
        self._delete_pods({LABEL_CHILD: child_id, LABEL_ATTEMPT: str(attempt)})

    def _delete_pods(self, labels: dict[str, str]) -> None:
        for pod in self._list_pods(labels):
            self._delete_pod(pod["metadata"]["name"])

    def _delete_pod(self, name: str) -> None:
        self._delete(f"delete Pod {name}", self._core.delete_namespaced_pod, name, grace_period_seconds=0)

    def _delete(self, what: str, method: Any, name: str, **kwargs: Any) -> None:
        try:
            self._call(what, method, name, self.namespace, **kwargs)
        except ExecutorError as exc:
            if not (isinstance(exc.__cause__, ApiException) and exc.__cause__.status == 404):
                raise


__all__ = [
    "ClaimFolder",
    "JobSettings",
    "KubernetesExecutor",
    "check_runnable",
    "job_manifest",
    "job_name",
    "network_policy_manifest",
    "network_policy_violations",
    "violations",
]
