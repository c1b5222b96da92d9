"""Kubernetes backend: each child attempt is a volume of its own, one hardened task Job, and a stage-out
Job of our own filer, all in the TRE's task namespace. No task pod shares a folder with the agent.

Each attempt gets a PersistentVolumeClaim (`fst-<child>-<attempt>`). The task's writable folders are
sub paths of it (`rw/<n>`), each input a file in it (inside its writable folder, or `in/<n>/<name>`
mounted read-only at its target), written there by our filer (`fivesafes-tes filer stage-in`, the
pod's first init container, no network) from a Secret the agent makes for the run. Datasets are other
claims, named by the TRE's policy, mounted read-only.

The TES executors of a run are the pod's next containers in order, as TESK orders them: every step but
the last is an init container, the last is the main container. The kubelet runs them one after another
and stops at the first failure, one Job covers the whole run, and its `activeDeadlineSeconds` holds the
run's time limit while the agent is dead.

When the task Job has ended (or is canceled), the agent puts each step's log (read through the API) in
the airlock's staging area itself, records the run's result on the volume (an annotation: a restarted
agent finds it there). The first `collect` then starts the stage-out Job (not `poll`, so a status pass
stays cheap however many runs end at once): our filer (`fivesafes-tes filer stage-out`) with
the volume mounted read-only and one capability in a Secret, an S3 presigned POST for this attempt's
staging prefix only, each file at most the run's disk limit, valid for minutes. The filer uploads the
files and then its manifest; `collect` fetches them (`staging_area.fetch`) once that Job is complete
and checks each against the manifest. No S3 credential ever reaches the task namespace.

Everything else the backend needs later is on the cluster as labels and annotations, so a restarted
agent re-attaches by listing by label and keeps no state of its own. The manifests are built by pure
functions and checked by `violations` and the NetworkPolicy checks, which the executor applies to what
the API server returns (RELIABILITY 18).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from fivesafes_tes.egress import staging_area
from fivesafes_tes.egress.store import ObjectMissing, ObjectStore

from .base import (
    BackendContext,
    Collected,
    ExecutorError,
    Outcome,
    RequestRefused,
    RunResult,
    RunSpec,
    StepResult,
)
from .filer import INDEX
from .sandbox import POLICY, SandboxPolicy, SandboxViolation, parse_user, step_env, validate_run_spec

log = logging.getLogger(__name__)

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "fivesafes-tes"
LABEL_ROLE = "fivesafes-tes/role"
ROLE_TASK = "task"  # task pods: the deny-all NetworkPolicy selects them
ROLE_FILER = "filer"  # stage-out pods: their NetworkPolicy allows DNS and the airlock's port, nothing else
LABEL_CHILD = "fivesafes-tes/child"
LABEL_ATTEMPT = "fivesafes-tes/attempt"
LABEL_TRE = "fivesafes-tes/tre"
LABEL_DEPLOYMENT = "fivesafes-tes/deployment"
ANNOTATION_STEPS = "fivesafes-tes/steps"
ANNOTATION_RUNTIME = "fivesafes-tes/runtime-s"
ANNOTATION_DEADLINE = "fivesafes-tes/deadline"
ANNOTATION_IGNORE_LAST = "fivesafes-tes/ignore-error-last"
ANNOTATION_WRITABLE = "fivesafes-tes/writable"  # on the volume: the writable folders, rw/<n> in order
ANNOTATION_USER = "fivesafes-tes/user"
ANNOTATION_DISK = "fivesafes-tes/disk-bytes"
ANNOTATION_RESULT = "fivesafes-tes/result"  # on the volume: how the run ended, once it has
NETWORK_POLICY = "fivesafes-tes-tasks-deny-all"
FILER_NETWORK_POLICY = "fivesafes-tes-filer-egress"
FILER_IN = "filer-in"
FILER_OUT = "filer-out"
CAPABILITY_FILE = "capability.json"
# A Secret holds at most 1 MiB: larger inputs belong in a dataset.
MAX_INPUT_BYTES = 512 << 10
# The filer's own container: Python and the standard library, streaming one file at a time.
FILER_LIMITS = {"cpu": "500m", "memory": str(512 << 20), "ephemeral-storage": str(64 << 20)}
_VOLUME_ROOT = "/fivesafes/volume"
_INPUTS_ROOT = "/fivesafes/inputs"
_CAPABILITY_ROOT = "/fivesafes/capability"
# Volume types a pod of ours may have; anything else (hostPath first of all) is an escape vector.
_SAFE_VOLUMES = ("emptyDir", "persistentVolumeClaim", "secret")

# A name or label value the API server accepts (DNS-1123 label; label values allow the same here).
_OBJECT_NAME = re.compile(r"^fst-(.+)-[0-9]+(-out|-inputs)?$")  # the child in a name of ours
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]{0,61}[A-Za-z0-9]|[A-Za-z0-9])$")
# Waiting reasons that do not heal by waiting: the image is not there and cannot be fetched.
IMAGE_PULL_FAILURES = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")


@dataclass(frozen=True)
class JobSettings:
    """What a TRE configures once for every run."""

    namespace: str
    tre: str
    deployment: str
    filer_image: str
    datasets: Mapping[str, str] = field(default_factory=dict)  # dataset name -> its claim
    storage_class: str = ""
    ttl_after_finished_s: int = 3600
    tmp_medium: str = ""  # "" (node disk, counted as ephemeral storage) or "Memory" (counted as memory)
    capability_ttl_s: int = 900
    airlock_port: int = 443
    image_pull_policy: str = "IfNotPresent"
    policy: SandboxPolicy = field(default=POLICY)


def job_name(child_id: str, attempt: int) -> str:
    """The name of the attempt's volume and task Job; its Secrets and stage-out Job add a suffix."""
    name = f"fst-{child_id}-{attempt}"
    if len(name) > 63 - len("-inputs") or not _DNS_LABEL.match(name) or attempt < 0:
        raise ValueError(f"child id {child_id!r} / attempt {attempt} cannot name a Kubernetes object")
    return name


def inputs_secret_name(child_id: str, attempt: int) -> str:
    return job_name(child_id, attempt) + "-inputs"


def stage_out_name(child_id: str, attempt: int) -> str:
    """The stage-out Job, and the Secret holding its capability."""
    return job_name(child_id, attempt) + "-out"


def owner_labels(settings: JobSettings) -> dict[str, str]:
    """The labels every object this backend makes carries, and selects its own objects by."""
    return {MANAGED_BY: MANAGER, LABEL_TRE: settings.tre, LABEL_DEPLOYMENT: settings.deployment}


def run_labels(settings: JobSettings, child_id: str, attempt: int) -> dict[str, str]:
    return {**owner_labels(settings), LABEL_CHILD: child_id, LABEL_ATTEMPT: str(attempt)}


def check_runnable(spec: RunSpec) -> None:
    """Refuse what this backend cannot do as asked, naming the change that makes the task run."""
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
    size = sum(len(f.content) for f in spec.inputs)
    if size > MAX_INPUT_BYTES:
        raise RequestRefused(
            f"the task's literal inputs hold {size} bytes; this TRE's Kubernetes executor passes at most "
            f"{MAX_INPUT_BYTES} in all: ask the TRE to provide large inputs as a dataset"
        )


@dataclass(frozen=True)
class Layout:
    """Where a run's files live in its volume: writable folder n at `rw/<n>`; an input inside a writable
    folder in that folder, any other input n at `in/<n>/<its name>`, mounted read-only at its target."""

    folders: list[str]  # volume paths of the writable folders, in the spec's order
    inputs: dict[str, str]  # the inputs Secret's data key -> volume path
    input_mounts: list[tuple[str, str]]  # (container path, volume path) of inputs outside writable folders

    @classmethod
    def of(cls, spec: RunSpec) -> Layout:
        folders = [f"rw/{n}" for n in range(len(spec.writable))]
        inputs: dict[str, str] = {}
        mounts = []
        for n, item in enumerate(spec.inputs):
            target = PurePosixPath(item.target)
            holders = [
                (len(PurePosixPath(w).parts), i)
                for i, w in enumerate(spec.writable)
                if PurePosixPath(w) in target.parents
            ]
            if holders:
                _, i = max(holders)  # the innermost writable folder is the one mounted there
                inputs[str(n)] = f"rw/{i}/{target.relative_to(spec.writable[i])}"
            else:
                inputs[str(n)] = f"in/{n}/{target.name}"
                mounts.append((item.target, inputs[str(n)]))
        return cls(folders, inputs, mounts)


def _quantities(cpu_cores: float, memory_bytes: int, disk_bytes: int) -> dict[str, str]:
    return {
        "cpu": f"{max(1, round(cpu_cores * 1000))}m",
        "memory": str(memory_bytes),
        "ephemeral-storage": str(disk_bytes),
    }


def _security(uid: int, gid: int, policy: SandboxPolicy) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": gid,
        "privileged": False,
        "allowPrivilegeEscalation": not policy.no_new_privileges,
        "readOnlyRootFilesystem": policy.read_only_root,
        "capabilities": {"drop": list(policy.drop_capabilities)},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _pod_spec(
    uid: int,
    gid: int,
    deadline_s: int,
    init: list[dict[str, Any]],
    main: list[dict[str, Any]],
    volumes: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "restartPolicy": "Never",
        "activeDeadlineSeconds": deadline_s,
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
            "fsGroup": gid,  # the volume's root is the task's group's, so its uid can write there
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "initContainers": init,
        "containers": main,
        "volumes": volumes,
    }


def _job(
    name: str,
    settings: JobSettings,
    labels: dict[str, str],
    annotations: dict[str, str],
    deadline_s: int,
    pod: dict[str, Any],
) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": settings.namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": {
            "backoffLimit": 0,
            "completions": 1,
            "parallelism": 1,
            "activeDeadlineSeconds": deadline_s,
            "ttlSecondsAfterFinished": settings.ttl_after_finished_s,
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }


def _filer(
    name: str,
    verb: str,
    uid: int,
    gid: int,
    settings: JobSettings,
    env: dict[str, str],
    mounts: list[dict[str, Any]],
) -> dict[str, Any]:
    """Our filer's container, under the same sandbox as a task's."""
    return {
        "name": name,
        "image": settings.filer_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["fivesafes-tes", "filer", verb],
        "env": [{"name": k, "value": v} for k, v in {"HOME": "/tmp", **env}.items()],
        "resources": {"requests": dict(FILER_LIMITS), "limits": dict(FILER_LIMITS)},
        "securityContext": _security(uid, gid, settings.policy),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, *mounts],
        "terminationMessagePolicy": "FallbackToLogsOnError",  # its last words explain a failure
        "stdin": False,
        "tty": False,
    }


def volume_manifest(spec: RunSpec, settings: JobSettings) -> dict[str, Any]:
    """The attempt's own volume, sized for its disk limit and inputs; it remembers what stage-out needs."""
    size = spec.limits.disk_bytes + sum(len(f.content) for f in spec.inputs)
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": job_name(spec.child_id, spec.attempt),
            "namespace": settings.namespace,
            "labels": run_labels(settings, spec.child_id, spec.attempt),
            "annotations": {
                ANNOTATION_WRITABLE: json.dumps(spec.writable),
                ANNOTATION_USER: spec.user,
                ANNOTATION_DISK: str(spec.limits.disk_bytes),
                ANNOTATION_STEPS: str(len(spec.steps)),
            },
        },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": str(size)}},
            **({"storageClassName": settings.storage_class} if settings.storage_class else {}),
        },
    }


def _secret(
    name: str, settings: JobSettings, labels: dict[str, str], data: dict[str, bytes]
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": settings.namespace, "labels": labels},
        "type": "Opaque",
        "immutable": True,
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }


def inputs_secret_manifest(spec: RunSpec, settings: JobSettings) -> dict[str, Any]:
    """The inputs and where stage-in writes them (`index.json`), for the filer-in container only."""
    layout = Layout.of(spec)
    index = json.dumps({"inputs": layout.inputs, "folders": layout.folders}).encode()
    data = {str(n): f.content for n, f in enumerate(spec.inputs)} | {INDEX: index}
    labels = run_labels(settings, spec.child_id, spec.attempt)
    return _secret(inputs_secret_name(spec.child_id, spec.attempt), settings, labels, data)


def job_manifest(spec: RunSpec, settings: JobSettings, deadline: int) -> dict[str, Any]:
    """The task Job of one child attempt: stage-in, then the steps in order, each container sandboxed."""
    uid, gid = parse_user(spec.user)
    limits = spec.limits
    p = settings.policy
    name = job_name(spec.child_id, spec.attempt)
    layout = Layout.of(spec)
    volumes: list[dict[str, Any]] = [
        {"name": "tmp", "emptyDir": {"medium": settings.tmp_medium, "sizeLimit": str(limits.disk_bytes)}},
        {"name": "volume", "persistentVolumeClaim": {"claimName": name}},
        {
            "name": "inputs",
            "secret": {"secretName": inputs_secret_name(spec.child_id, spec.attempt), "defaultMode": 0o440},
        },
    ]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": p.writable_tmp}]
    mounts += [
        {"name": "volume", "mountPath": target, "subPath": sub_path}
        for target, sub_path in zip(spec.writable, layout.folders, strict=True)
    ]
    mounts += [
        {"name": "volume", "mountPath": target, "subPath": sub_path, "readOnly": True}
        for target, sub_path in layout.input_mounts
    ]
    for i, dataset in enumerate(spec.datasets):
        claim = settings.datasets.get(dataset.name)
        if claim is None:
            raise ValueError(
                f"dataset {dataset.name!r} has no PersistentVolumeClaim in this TRE's policy (its `claim`)"
            )
        volumes.append(
            {"name": f"dataset-{i}", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        )
        mounts.append({"name": f"dataset-{i}", "mountPath": dataset.target, "readOnly": True})
    reserved = {f"{p.reserved_env_prefix}DEADLINE": str(deadline)}
    steps = [
        {
            "name": f"step-{i}",
            "image": step.image,
            "imagePullPolicy": settings.image_pull_policy,
            "command": list(step.command),
            **({"workingDir": step.workdir} if step.workdir else {}),
            "env": [{"name": k, "value": v} for k, v in step_env(step.env, reserved, p).items()],
            "resources": {
                "requests": _quantities(limits.cpu_cores, limits.memory_bytes, limits.disk_bytes),
                "limits": _quantities(limits.cpu_cores, limits.memory_bytes, limits.disk_bytes),
            },
            "securityContext": _security(uid, gid, p),
            "volumeMounts": mounts,
            "stdin": False,
            "tty": False,
        }
        for i, step in enumerate(spec.steps)
    ]
    stage_in = _filer(
        FILER_IN,
        "stage-in",
        uid,
        gid,
        settings,
        {"FIVESAFES_FILER_INPUTS": _INPUTS_ROOT, "FIVESAFES_FILER_VOLUME": _VOLUME_ROOT},
        [
            {"name": "volume", "mountPath": _VOLUME_ROOT},
            {"name": "inputs", "mountPath": _INPUTS_ROOT, "readOnly": True},
        ],
    )
    pod = _pod_spec(uid, gid, limits.runtime_s, [stage_in, *steps[:-1]], steps[-1:], volumes)
    annotations = {
        ANNOTATION_STEPS: str(len(spec.steps)),
        ANNOTATION_RUNTIME: str(limits.runtime_s),
        ANNOTATION_DEADLINE: str(deadline),
        ANNOTATION_IGNORE_LAST: "true" if spec.steps[-1].ignore_error else "false",
    }
    labels = {**run_labels(settings, spec.child_id, spec.attempt), LABEL_ROLE: ROLE_TASK}
    return _job(name, settings, labels, annotations, limits.runtime_s, pod)


def stage_out_manifest(child_id: str, attempt: int, user: str, settings: JobSettings) -> dict[str, Any]:
    """The stage-out Job: our filer with the volume read-only and the capability Secret, no more."""
    uid, gid = parse_user(user)
    name = stage_out_name(child_id, attempt)
    volumes: list[dict[str, Any]] = [
        {"name": "tmp", "emptyDir": {"medium": settings.tmp_medium, "sizeLimit": str(64 << 20)}},
        {
            "name": "volume",
            "persistentVolumeClaim": {"claimName": job_name(child_id, attempt), "readOnly": True},
        },
        {"name": "capability", "secret": {"secretName": name, "defaultMode": 0o440}},
    ]
    filer = _filer(
        FILER_OUT,
        "stage-out",
        uid,
        gid,
        settings,
        {
            "FIVESAFES_FILER_VOLUME": _VOLUME_ROOT,
            "FIVESAFES_FILER_CAPABILITY": f"{_CAPABILITY_ROOT}/{CAPABILITY_FILE}",
        },
        [
            {"name": "volume", "mountPath": _VOLUME_ROOT, "readOnly": True},
            {"name": "capability", "mountPath": _CAPABILITY_ROOT, "readOnly": True},
        ],
    )
    deadline_s = settings.capability_ttl_s  # the capability is worthless after that anyway
    pod = _pod_spec(uid, gid, deadline_s, [], [filer], volumes)
    labels = {**run_labels(settings, child_id, attempt), LABEL_ROLE: ROLE_FILER}
    return _job(name, settings, labels, {}, deadline_s, pod)


def network_policy_manifest(settings: JobSettings) -> dict[str, Any]:
    """Deny every packet to and from task pods: both directions named, no rule allowing any."""
    selector = {MANAGED_BY: MANAGER, LABEL_ROLE: ROLE_TASK}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": NETWORK_POLICY, "namespace": settings.namespace, "labels": selector},
        "spec": {"podSelector": {"matchLabels": selector}, "policyTypes": ["Ingress", "Egress"]},
    }


def _filer_ports(settings: JobSettings) -> list[dict[str, Any]]:
    return [
        {"protocol": "UDP", "port": 53},
        {"protocol": "TCP", "port": 53},
        {"protocol": "TCP", "port": settings.airlock_port},
    ]


def filer_network_policy_manifest(settings: JobSettings) -> dict[str, Any]:
    """Stage-out pods may reach DNS and the airlock's port, and nothing may reach them."""
    selector = {MANAGED_BY: MANAGER, LABEL_ROLE: ROLE_FILER}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": FILER_NETWORK_POLICY, "namespace": settings.namespace, "labels": selector},
        "spec": {
            "podSelector": {"matchLabels": selector},
            "policyTypes": ["Ingress", "Egress"],
            "egress": [{"ports": _filer_ports(settings)}],
        },
    }


def network_policy_violations(policy: dict[str, Any]) -> list[str]:
    """How the task pods' policy fails to deny all traffic; empty when it denies all."""
    spec = policy.get("spec") or {}
    out = []
    if set(spec.get("policyTypes") or []) != {"Ingress", "Egress"}:
        out.append(f"policyTypes {spec.get('policyTypes')}, not both Ingress and Egress")
    if spec.get("ingress") or spec.get("egress"):
        out.append("a rule allows traffic")
    if (spec.get("podSelector") or {}).get("matchLabels") != {MANAGED_BY: MANAGER, LABEL_ROLE: ROLE_TASK}:
        out.append(f"selects {spec.get('podSelector')}, not every task pod")
    return out


def filer_network_policy_violations(policy: dict[str, Any], settings: JobSettings) -> list[str]:
    """How the stage-out pods' policy allows more than DNS and the airlock's port; empty when it does not."""
    spec = policy.get("spec") or {}
    out = []
    if set(spec.get("policyTypes") or []) != {"Ingress", "Egress"}:
        out.append(f"policyTypes {spec.get('policyTypes')}, not both Ingress and Egress")
    if spec.get("ingress"):
        out.append("a rule allows ingress")
    allowed = {(p["protocol"], p["port"]) for p in _filer_ports(settings)}
    for rule in spec.get("egress") or []:
        ports = rule.get("ports") or []
        if not ports:
            out.append("an egress rule allows every port")
        out += [
            f"egress to {p.get('protocol', 'TCP')}/{p.get('port')}"
            + (f"-{p['endPort']}" if p.get("endPort") else "")
            for p in ports
            if (p.get("protocol", "TCP"), p.get("port")) not in allowed or p.get("endPort")
        ]
    if (spec.get("podSelector") or {}).get("matchLabels") != {MANAGED_BY: MANAGER, LABEL_ROLE: ROLE_FILER}:
        out.append(f"selects {spec.get('podSelector')}, not every stage-out pod")
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
    if c.get("ports"):
        out.append(f"{name}: ports exposed")
    return out


def violations(job: dict[str, Any]) -> list[str]:
    """Every sandbox rule (RELIABILITY 18) a Job manifest (task or stage-out) breaks; empty when sound."""
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
    if labels.get(MANAGED_BY) != MANAGER or labels.get(LABEL_ROLE) not in (ROLE_TASK, ROLE_FILER):
        out.append("pod template lacks the labels our NetworkPolicies select")
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
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds or not kinds <= set(_SAFE_VOLUMES):
            out.append(f"{'/'.join(sorted(kinds)) or 'unknown'} volume {volume.get('name')}")
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


def _annotations(obj: dict[str, Any]) -> dict[str, str]:
    found: dict[str, str] = (obj.get("metadata") or {}).get("annotations") or {}
    return found


def _attempt(obj: dict[str, Any]) -> int:
    return int(obj["metadata"]["labels"].get(LABEL_ATTEMPT, -1))


def _ended_as(job: dict[str, Any]) -> dict[str, Any] | None:
    """A Job's Complete or Failed condition, when it has ended."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            found: dict[str, Any] = condition
            return found
    return None


def _encode(result: RunResult) -> str:
    steps = [[s.exit_code, s.start_time, s.end_time] for s in result.steps]
    return json.dumps({"outcome": result.outcome.value, "message": result.message, "steps": steps})


def _decode(text: str) -> RunResult:
    found = json.loads(text)
    steps = [StepResult(int(code), start, end) for code, start, end in found["steps"]]
    return RunResult(Outcome(found["outcome"]), steps, found["message"])


@dataclass
class _Run:
    """A task Job and its pods."""

    job: dict[str, Any]
    pods: list[dict[str, Any]]

    @property
    def count(self) -> int:
        return int(_annotations(self.job).get(ANNOTATION_STEPS, 1))

    @property
    def pod(self) -> dict[str, Any] | None:
        """The Job's pod (backoffLimit 0 makes at most one that ran); the newest if the cluster made more."""
        if not self.pods:
            return None
        return max(self.pods, key=lambda p: p["metadata"].get("creationTimestamp") or "")

    def containers(self) -> dict[str, dict[str, Any]]:
        """container name -> its status."""
        status = (self.pod or {}).get("status") or {}
        every = [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
        return {s.get("name", ""): s for s in every}

    def statuses(self) -> dict[int, dict[str, Any]]:
        """step index -> its container status."""
        return {
            int(name[5:]): s
            for name, s in self.containers().items()
            if name.startswith("step-") and name[5:].isdigit()
        }

    @property
    def ended(self) -> bool:
        phase = ((self.pod or {}).get("status") or {}).get("phase")
        return _ended_as(self.job) is not None or phase in ("Succeeded", "Failed")


class KubernetesExecutor:
    """Runs each child attempt as a volume, a hardened task Job and a stage-out Job in one namespace, for
    one TRE.

    Everything it lists, sweeps or re-attaches is selected by the TRE and deployment labels, so several
    agents can share a namespace without touching each other's objects."""

    name = "kubernetes"

    def __init__(
        self,
        tre: str,
        *,
        deployment: str,
        store: ObjectStore,
        filer_image: str,
        datasets: Mapping[str, str] | None = None,
        namespace: str = "fivesafes-tasks",
        api_client: Any = None,
        storage_class: str = "",
        ttl_after_finished_s: int = 3600,
        tmp_medium: str = "",
        capability_ttl_s: int = 900,
        airlock_port: int = 443,
        snapshot_ttl_s: float = 1.0,
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
        if not filer_image:
            raise ValueError(
                "the Kubernetes executor needs our own image for its filer: set "
                "FIVESAFES_AGENT_KUBERNETES_FILER_IMAGE to the agent's image"
            )
        for name, claim in (datasets or {}).items():
            if not _DNS_SUBDOMAIN.match(claim):
                raise ValueError(f"dataset {name!r}: claim {claim!r} is not a PersistentVolumeClaim name")
        self.tre = tre
        self.deployment = deployment
        self.store = store
        self.settings = JobSettings(
            namespace=namespace,
            tre=tre,
            deployment=deployment,
            filer_image=filer_image,
            datasets=dict(datasets or {}),
            storage_class=storage_class,
            ttl_after_finished_s=ttl_after_finished_s,
            tmp_medium=tmp_medium,
            capability_ttl_s=capability_ttl_s,
            airlock_port=airlock_port,
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
        self._network_policies_checked = False
        # `poll` reads the cluster from one listing per kind, at most `snapshot_ttl_s` old, instead of
        # three requests per child: a child this process changed since the listing is read directly.
        self._snapshot_ttl_s = snapshot_ttl_s
        self._snapshot: dict[str, dict[str, list[dict[str, Any]]]] = {}  # kind -> child -> objects
        self._snapshot_at = float("-inf")
        self._changed: set[str] = set()

    @classmethod
    def from_context(cls, context: BackendContext) -> KubernetesExecutor:
        """The backend the agent's settings (`FIVESAFES_AGENT_KUBERNETES_*`) describe; ValueError naming
        the dataset whose policy entry has no `claim`, or the missing setting."""
        settings = context.settings.kubernetes
        if context.store is None:
            raise ValueError("the Kubernetes executor stages outputs through the airlock: configure it")
        claims = {}
        for name, source in context.datasets.items():
            claim = getattr(source, "claim", None)
            if not claim:
                raise ValueError(
                    f"dataset {name!r} has no `claim` in the TRE policy: the Kubernetes executor mounts a "
                    "dataset from a PersistentVolumeClaim in the task namespace, never from a host path"
                )
            claims[name] = claim
        return cls(
            context.tre,
            deployment=context.deployment,
            store=context.store,
            filer_image=settings.filer_image,
            datasets=claims,
            namespace=settings.namespace,
            storage_class=settings.storage_class,
            ttl_after_finished_s=settings.ttl_after_finished_s,
            tmp_medium=settings.tmp_medium,
            capability_ttl_s=settings.capability_ttl_s,
            airlock_port=settings.airlock_port,
            snapshot_ttl_s=settings.status_snapshot_s,
        )

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
        manifest = job_manifest(spec, self.settings, int(time.time()) + spec.limits.runtime_s)
        attempts = self._attempts(spec.child_id)
        if attempts and max(attempts) > spec.attempt:
            raise ExecutorError(
                f"attempt {spec.attempt} is superseded by attempt {max(attempts)} already here"
            )
        for attempt in attempts - {spec.attempt}:
            self._delete({LABEL_CHILD: spec.child_id, LABEL_ATTEMPT: str(attempt)})  # superseded
        volume = self._create("PersistentVolumeClaim", volume_manifest(spec, self.settings))
        if ANNOTATION_RESULT in _annotations(volume):
            return  # it ended or was canceled: a late or repeated start must not revive it
        self._ensure_network_policies()
        self._create("Secret", inputs_secret_manifest(spec, self.settings))
        created = self._create("Job", manifest)  # an existing one (started before a crash) is re-attached
        problems = violations(created)
        if problems:
            self._delete({LABEL_CHILD: spec.child_id, LABEL_ATTEMPT: str(spec.attempt)})
            raise SandboxViolation(f"Job {name} breaks the sandbox: " + "; ".join(problems))

    def poll(self, child_id: str) -> RunResult | None:
        volume = self._seen_volume(child_id)
        if volume is None:
            return RunResult(Outcome.LOST, [], "the cluster has no volume for this run")
        if ANNOTATION_RESULT in _annotations(volume):
            return _decode(_annotations(volume)[ANNOTATION_RESULT])
        attempt = _attempt(volume)
        run = self._seen_task(child_id, attempt)
        if run is None:  # removed behind our back, or kept past its TTL while the agent was away
            result = RunResult(Outcome.LOST, [], "the cluster has no Job for this run")
            self._end(child_id, attempt, None, result)  # what its volume holds still comes out (collect)
            return result
        pulled = self._image_pull_failure(run)
        if pulled is not None:
            result = RunResult(Outcome.FAILED, self._steps(run), pulled)
            self._end(child_id, attempt, run, result)
            self._delete_by_name("Job", job_name(child_id, attempt))
            self._delete(
                {LABEL_CHILD: child_id, LABEL_ATTEMPT: str(attempt), LABEL_ROLE: ROLE_TASK}, ("Pod",)
            )
            return result
        if not run.ended:
            return None
        outcome, message = self._classify(run)
        result = RunResult(outcome, self._steps(run), message)
        self._end(child_id, attempt, run, result)
        return result

    def cancel(self, child_id: str) -> RunResult | None:
        volume = self._volume(child_id)
        if volume is None:
            return None
        if ANNOTATION_RESULT in _annotations(volume):
            return _decode(_annotations(volume)[ANNOTATION_RESULT])
        attempt = _attempt(volume)
        run = self._task(child_id, attempt)
        if run is None:
            return None
        if run.ended:
            return self.poll(child_id)  # ended: its outcome stands
        result = RunResult(Outcome.CANCELED, self._steps(run), "the run was canceled")
        self._end(child_id, attempt, run, result)
        self._delete_by_name("Job", job_name(child_id, attempt))
        self._delete({LABEL_CHILD: child_id, LABEL_ATTEMPT: str(attempt), LABEL_ROLE: ROLE_TASK}, ("Pod",))
        return result

    def collect(self, child_id: str, scratch: Path) -> Collected | None:
        volume = self._volume(child_id)
        if volume is None:
            return Collected()  # the cluster no longer has the run (poll says LOST): nothing is left
        annotations = _annotations(volume)
        if ANNOTATION_RESULT not in annotations:
            return None  # still running: poll ends it first
        attempt = _attempt(volume)
        job = self._read("Job", stage_out_name(child_id, attempt))
        manifest = self._manifest(child_id, attempt)
        if job is None:
            if manifest is None:
                # Started when the agent first asks for what the run left, not when poll sees the end:
                # a status pass stays cheap however many runs end at once.
                self._stage_out(child_id, attempt, volume)
                return None
        else:
            failure = self._stage_out_failure(child_id, attempt, job)
            if failure is not None:
                raise ExecutorError(failure)
            if _ended_as(job) is None:
                return None
            if manifest is None:
                raise ExecutorError(
                    "the run's stage-out filer ended without its manifest: its outputs cannot be trusted"
                )
        assert manifest is not None
        steps = int(annotations.get(ANNOTATION_STEPS, 1))
        collected = staging_area.fetch(
            self.store,
            child_id,
            attempt,
            scratch,
            max_bytes=int(annotations[ANNOTATION_DISK]) + 2 * steps * self.settings.policy.log_max_bytes,
        )
        _verify(collected, manifest)
        return collected

    def running(self) -> dict[str, int]:
        alive: dict[str, int] = {}
        for job in self._list("Job", {LABEL_ROLE: ROLE_TASK}):
            child_id = job["metadata"]["labels"].get(LABEL_CHILD, "")
            if _ended_as(job) is None and not job["metadata"].get("deletionTimestamp"):
                alive[child_id] = max(alive.get(child_id, -1), _attempt(job))
        return alive

    def cleanup(self, child_id: str) -> None:
        self._delete({LABEL_CHILD: child_id})
        staging_area.discard(self.store, child_id)

    def sweep(self, keep: set[str]) -> list[str]:
        removed = set()
        for kind in ("Job", "Pod", "PersistentVolumeClaim", "Secret"):
            for obj in self._list(kind, {}):
                child_id = obj["metadata"]["labels"].get(LABEL_CHILD, "")
                if child_id not in keep:
                    self._delete_by_name(kind, obj["metadata"]["name"])
                    removed.add(child_id)
        for child_id in removed:
            if child_id:
                staging_area.discard(self.store, child_id)
        if removed:
            log.info(
                "swept the Jobs, volumes and Secrets of %d orphaned run(s) of TRE %s: %s",
                len(removed),
                self.tre,
                sorted(removed),
            )
        return sorted(removed)

    # --- cluster state ------------------------------------------------------------------------

    def _api(self, kind: str, verb: str) -> Any:
        """The client method that does `verb` (create, read, patch, delete, list) to a `kind`."""
        snake = {
            "Job": "job",
            "Pod": "pod",
            "PersistentVolumeClaim": "persistent_volume_claim",
            "Secret": "secret",
            "NetworkPolicy": "network_policy",
        }[kind]
        api = {"Job": self._batch, "NetworkPolicy": self._net}.get(kind, self._core)
        return getattr(api, f"{verb}_namespaced_{snake}")

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

    def _create(self, kind: str, manifest: dict[str, Any]) -> dict[str, Any]:
        """Create the object; if it exists (made before a crash), the one there."""
        name = manifest["metadata"]["name"]
        self._touched((manifest["metadata"].get("labels") or {}).get(LABEL_CHILD))
        try:
            made: dict[str, Any] = self._call(
                f"create {kind} {name}", self._api(kind, "create"), self.namespace, manifest
            )
            return made
        except ExecutorError as exc:
            if not (isinstance(exc.__cause__, ApiException) and exc.__cause__.status == 409):
                raise
        found = self._read(kind, name)
        if found is None:
            raise ExecutorError(f"{kind} {name} was there and then gone: try again")
        return found

    def _read(self, kind: str, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self._call(
                f"read {kind} {name}", self._api(kind, "read"), name, self.namespace
            )
            return found
        except ExecutorError as exc:
            if isinstance(exc.__cause__, ApiException) and exc.__cause__.status == 404:
                return None
            raise

    def _list(self, kind: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        wanted = {**owner_labels(self.settings), **labels}
        found = self._call(
            f"list {kind}s", self._api(kind, "list"), self.namespace, label_selector=_selector(wanted)
        )
        # The selector narrows what the server sends; this check is what we act on.
        return [o for o in found.get("items") or [] if _matches(o["metadata"].get("labels"), wanted)]

    def _attempts(self, child_id: str) -> set[int]:
        return {
            _attempt(obj)
            for kind in ("PersistentVolumeClaim", "Job")
            for obj in self._list(kind, {LABEL_CHILD: child_id})
        }

    # --- what poll reads: a snapshot of the cluster, confirmed before any conclusion from absence ----

    def _touched(self, child_id: str | None) -> None:
        """This process changed an object of `child_id` (of anyone's, when None): the snapshot no longer
        speaks for it."""
        if child_id is None:
            self._snapshot_at = float("-inf")
        else:
            self._changed.add(child_id)

    def _snapshot_of(self, kind: str, child_id: str) -> list[dict[str, Any]] | None:
        """The child's objects of `kind` from a listing of all of ours; None when the listing cannot
        speak for the child (it changed them since) and it must be read directly."""
        if self._snapshot_ttl_s <= 0:
            return None
        if time.monotonic() - self._snapshot_at > self._snapshot_ttl_s:
            self._changed.clear()  # cleared first: a change made while listing is read directly
            self._snapshot = {kind: {} for kind in ("PersistentVolumeClaim", "Job", "Pod")}
            for listed, by_child in self._snapshot.items():  # indexed once: a pass reads it per child
                for obj in self._list(listed, {}):
                    child = (obj["metadata"].get("labels") or {}).get(LABEL_CHILD, "")
                    by_child.setdefault(child, []).append(obj)
            self._snapshot_at = time.monotonic()
        if child_id in self._changed:
            return None
        return self._snapshot[kind].get(child_id, [])

    def _seen_volume(self, child_id: str) -> dict[str, Any] | None:
        volumes = self._snapshot_of("PersistentVolumeClaim", child_id)
        if volumes:
            return max(volumes, key=_attempt)
        return self._volume(child_id)  # none in the listing: asked again, before it counts as lost

    def _seen_task(self, child_id: str, attempt: int) -> _Run | None:
        jobs = self._snapshot_of("Job", child_id)
        pods = self._snapshot_of("Pod", child_id)
        name = job_name(child_id, attempt)
        job = next((j for j in jobs or [] if j["metadata"]["name"] == name), None)
        if job is None or pods is None or job["metadata"].get("deletionTimestamp"):
            return self._task(child_id, attempt)
        wanted = {LABEL_ATTEMPT: str(attempt), LABEL_ROLE: ROLE_TASK}
        return _Run(job, [p for p in pods if _matches(p["metadata"].get("labels"), wanted)])

    def _volume(self, child_id: str) -> dict[str, Any] | None:
        """The volume of the child's latest attempt: the record of its run until cleanup."""
        volumes = self._list("PersistentVolumeClaim", {LABEL_CHILD: child_id})
        return max(volumes, key=_attempt) if volumes else None

    def _task(self, child_id: str, attempt: int) -> _Run | None:
        job = self._read("Job", job_name(child_id, attempt))
        if job is None or job["metadata"].get("deletionTimestamp"):
            return None
        pods = self._list("Pod", {LABEL_CHILD: child_id, LABEL_ATTEMPT: str(attempt), LABEL_ROLE: ROLE_TASK})
        return _Run(job, pods)

    def _manifest(self, child_id: str, attempt: int) -> dict[str, Any] | None:
        """The stage-out filer's manifest, once it has written it (last)."""
        try:
            data = self.store.get_bytes(staging_area.manifest_key(child_id, attempt))
        except ObjectMissing:
            return None
        found: dict[str, Any] = json.loads(data)
        return found

    def _image_pull_failure(self, run: _Run) -> str | None:
        for name, status in run.containers().items():
            waiting = (status.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") not in IMAGE_PULL_FAILURES:
                continue
            detail = f"({waiting['reason']}{': ' + waiting['message'] if waiting.get('message') else ''})"
            if name == FILER_IN:
                return (
                    f"this TRE's filer image {status.get('image', '?')} could not be pulled {detail}: "
                    "the TRE must fix FIVESAFES_AGENT_KUBERNETES_FILER_IMAGE"
                )
            step = f"step {int(name[5:]) + 1} of {run.count}" if name.startswith("step-") else name
            return (
                f"{step}: image {status.get('image', '?')} is not on this TRE's cluster and could not be "
                f"pulled {detail}"
            )
        return None

    def _classify(self, run: _Run) -> tuple[Outcome, str]:
        condition = _ended_as(run.job) or {}
        pod_status = (run.pod or {}).get("status") or {}
        if "DeadlineExceeded" in (condition.get("reason"), pod_status.get("reason")):
            runtime = _annotations(run.job).get(ANNOTATION_RUNTIME, "?")
            return Outcome.TIMED_OUT, f"the run was stopped: its time limit of {runtime} s was reached"
        filer = (run.containers().get(FILER_IN, {}).get("state") or {}).get("terminated") or {}
        if filer and int(filer.get("exitCode", -1)) != 0:
            why = (
                filer.get("message") or ""
            ).strip() or f"the filer exited with code {filer.get('exitCode')}"
            return Outcome.FAILED, f"the run's inputs could not be placed in its volume: {why}"
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
            if last and _annotations(run.job).get(ANNOTATION_IGNORE_LAST) == "true":
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
        containers = {
            c["name"]: c
            for c in [*(pod_spec.get("initContainers") or []), *(pod_spec.get("containers") or [])]
        }
        value = containers.get(f"step-{i}", {}).get("resources", {}).get("limits", {}).get("memory", "0")
        return int(value) if str(value).isdigit() else 0

    def _steps(self, run: _Run) -> list[StepResult]:
        """Each step that ended (or, on cancel, began)."""
        results = []
        for _, status in sorted(run.statuses().items()):
            state = status.get("state") or {}
            ended = state.get("terminated")
            began = ended or state.get("running")
            if began is None:
                continue
            start = _time(began.get("startedAt"))
            results.append(
                StepResult(
                    exit_code=int(ended.get("exitCode", -1)) if ended else -1,
                    start_time=start,
                    end_time=_time(ended.get("finishedAt")) if ended else start,
                )
            )
        return results

    def _stage_out_failure(self, child_id: str, attempt: int, job: dict[str, Any]) -> str | None:
        """Why the stage-out Job failed, or cannot succeed (its image is not there), in plain words;
        None while it runs or once it has completed."""
        ended = _ended_as(job)
        if ended is not None and ended.get("type") == "Complete":
            return None
        labels = {LABEL_CHILD: child_id, LABEL_ATTEMPT: str(attempt), LABEL_ROLE: ROLE_FILER}
        for pod in self._list("Pod", labels):
            for status in (pod.get("status") or {}).get("containerStatuses") or []:
                state = status.get("state") or {}
                waiting = state.get("waiting") or {}
                if waiting.get("reason") in IMAGE_PULL_FAILURES:
                    return (
                        f"the run's outputs could not be staged out: this TRE's filer image "
                        f"{status.get('image', '?')} could not be pulled ({waiting['reason']}): the TRE "
                        "must fix FIVESAFES_AGENT_KUBERNETES_FILER_IMAGE"
                    )
                message = ((state.get("terminated") or {}).get("message") or "").strip()
                if message and ended is not None:
                    return f"the run's outputs could not be staged out: {message}"
        if ended is None:
            return None
        if ended.get("reason") == "DeadlineExceeded":
            return (
                f"the run's outputs were not staged out within {self.settings.capability_ttl_s} s "
                "(FIVESAFES_AGENT_KUBERNETES_CAPABILITY_TTL_S)"
            )
        why = ended.get("message") or ended.get("reason") or "no reason given"
        return f"the run's outputs could not be staged out: the stage-out Job failed ({why})"

    # --- actions ------------------------------------------------------------------------------

    def _ensure_network_policies(self) -> None:
        """The namespace's deny-all policy for task pods and egress policy for stage-out pods, each made
        once if missing and then checked."""
        if self._network_policies_checked:
            return
        for manifest in (
            network_policy_manifest(self.settings),
            filer_network_policy_manifest(self.settings),
        ):
            name = manifest["metadata"]["name"]
            found = self._read("NetworkPolicy", name) or self._create("NetworkPolicy", manifest)
            if name == NETWORK_POLICY:
                problems = network_policy_violations(found)
            else:
                problems = filer_network_policy_violations(found, self.settings)
            if problems:
                raise SandboxViolation(
                    f"NetworkPolicy {name} in {self.namespace} allows too much: " + "; ".join(problems)
                )
        self._network_policies_checked = True

    def _end(self, child_id: str, attempt: int, run: _Run | None, result: RunResult) -> None:
        """Put the log of each step that began in the staging area, then record the result on the volume.

        Kubernetes keeps one stream per container, stdout and stderr interleaved: it goes to
        step-N.stdout, and step-N.stderr stays empty."""
        pod = run.pod if run is not None else None
        for i, status in sorted(run.statuses().items() if run is not None else []):
            state = status.get("state") or {}
            if pod is None or not (state.get("terminated") or state.get("running")):
                continue
            text = self._request(
                f"read the log of step {i + 1}",
                self._core.read_namespaced_pod_log,
                pod["metadata"]["name"],
                self.namespace,
                container=f"step-{i}",
                limit_bytes=self.settings.policy.log_max_bytes,
            )
            self.store.put_bytes(staging_area.log_key(child_id, attempt, i, "stdout"), text)
            self.store.put_bytes(staging_area.log_key(child_id, attempt, i, "stderr"), b"")
        self._touched(child_id)
        self._call(
            f"record the result on PersistentVolumeClaim {job_name(child_id, attempt)}",
            self._api("PersistentVolumeClaim", "patch"),
            job_name(child_id, attempt),
            self.namespace,
            {"metadata": {"annotations": {ANNOTATION_RESULT: _encode(result)}}},
            _content_type="application/merge-patch+json",
        )

    def _stage_out(self, child_id: str, attempt: int, volume: dict[str, Any]) -> None:
        """Start the stage-out Job with a fresh capability for this attempt's staging prefix only."""
        annotations = _annotations(volume)
        writable: list[str] = json.loads(annotations[ANNOTATION_WRITABLE])
        disk = int(annotations[ANNOTATION_DISK])
        name = stage_out_name(child_id, attempt)
        post = self.store.presigned_post(
            staging_area.prefix(child_id, attempt), max_bytes=disk, expires_s=self.settings.capability_ttl_s
        )
        capability = {
            "url": post["url"],
            "fields": post["fields"],
            "folders": [
                {"volume": f"rw/{n}", "path": path, "key": staging_area.folder_key(child_id, attempt, path)}
                for n, path in enumerate(writable)
            ],
            "manifest": staging_area.manifest_key(child_id, attempt),
        }
        labels = run_labels(self.settings, child_id, attempt)
        self._ensure_network_policies()
        self._delete_by_name("Secret", name)  # an earlier, expired capability
        self._create(
            "Secret", _secret(name, self.settings, labels, {CAPABILITY_FILE: json.dumps(capability).encode()})
        )
        created = self._create(
            "Job", stage_out_manifest(child_id, attempt, annotations[ANNOTATION_USER], self.settings)
        )
        problems = violations(created)
        if problems:
            self._delete_by_name("Job", name)
            self._delete_by_name("Secret", name)
            raise SandboxViolation(f"Job {name} breaks the sandbox: " + "; ".join(problems))

    def _delete(
        self,
        labels: dict[str, str],
        kinds: tuple[str, ...] = ("Job", "Pod", "PersistentVolumeClaim", "Secret"),
    ) -> None:
        """Delete every object of ours with `labels`: Jobs (their pods go with them) and pods now,
        whatever the garbage collector does, then volumes and Secrets."""
        for kind in kinds:
            for obj in self._list(kind, labels):
                child = (obj["metadata"].get("labels") or {}).get(LABEL_CHILD)
                self._delete_by_name(kind, obj["metadata"]["name"], child)

    def _delete_by_name(self, kind: str, name: str, child_id: str | None = None) -> None:
        """Delete one object; `child_id`, when the name does not say it (a Job's pods)."""
        match = _OBJECT_NAME.match(name)
        self._touched(child_id or (match[1] if match else None))
        options: dict[str, Any] = {}
        if kind == "Job":
            options["body"] = {"propagationPolicy": "Background"}  # its pods go too
        elif kind == "Pod":
            options["grace_period_seconds"] = 0
        try:
            self._call(f"delete {kind} {name}", self._api(kind, "delete"), name, self.namespace, **options)
        except ExecutorError as exc:
            if not (isinstance(exc.__cause__, ApiException) and exc.__cause__.status == 404):
                raise


def _verify(collected: Collected, manifest: dict[str, Any]) -> None:
    """Each fetched file is exactly one the filer staged out (path, size, SHA-256), and none is missing."""
    staged = {f["path"]: f for f in manifest.get("files") or []}
    if set(staged) != set(collected.files):
        extra = sorted(set(collected.files) - set(staged))
        missing = sorted(set(staged) - set(collected.files))
        raise ExecutorError(
            "the run's staging area does not hold what its filer staged out "
            f"(extra {extra}, missing {missing})"
        )
    for path, local in collected.files.items():
        with local.open("rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        if local.stat().st_size != staged[path]["size"] or digest != staged[path]["sha256"]:
            raise ExecutorError(f"{path} in the run's staging area is not the file its filer staged out")


__all__ = [
    "JobSettings",
    "KubernetesExecutor",
    "Layout",
    "check_runnable",
    "filer_network_policy_manifest",
    "filer_network_policy_violations",
    "inputs_secret_manifest",
    "job_manifest",
    "job_name",
    "network_policy_manifest",
    "network_policy_violations",
    "stage_out_manifest",
    "stage_out_name",
    "violations",
    "volume_manifest",
]
