"""The activity record of a submission (a Five Safes RO-Crate: 5s-crate 0.4 on RO-Crate 1.2) and the
BagIt results crate that carries it with the released files.

Every submission has one, crate or bare TES task. It is built from plain facts (`TaskFacts`) that the
submission layer gathers through the researcher view (`submission/records.py`), so it says no more
than a researcher may see: before a release nothing the task controls (exit codes, step times, names,
sizes or counts of outputs, verdicts, finding text), only the request, the stages, the TREs' decisions
on the project and the person, and the reviewers' reasons; after a release the released files with
their SHA-256, the rules' versions and verdicts on them and each checker's decision and reason.

It is plain JSON-LD rather than `rocrate` objects. ro-crate-py 0.16 does speak RO-Crate 1.2
(`ROCrate(version="1.2")`), but it writes crates to a directory or a zip of its own layout and
re-serialises what it loads on its own terms, while the record must be a deterministic function of the
facts (the route serves it, the results crate embeds it, the tests compare it), grown entity by entity
from a request crate's own JSON-LD, and streamed into a bag by `crates.bagit.write_bag`. The tests
read the records back with `rocrate`, as an independent RO-Crate reader.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import io
import json
import mimetypes
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any, BinaryIO
from urllib.parse import quote, unquote

from fivesafes_tes import __version__
from fivesafes_tes.crates.bagit import BagEntry, write_bag
from fivesafes_tes.crates.profile import SHP, is_assessment, refs

RO_CRATE_CONTEXT = "https://w3id.org/ro/crate/1.2/context"
RO_CRATE_SPEC = "https://w3id.org/ro/crate/1.2"
FIVE_SAFES_PROFILE = "https://w3id.org/5s-crate/0.4"
WORKFLOW_RO_CRATE = "https://w3id.org/workflowhub/workflow-ro-crate/1.0"
TES_SPEC = "https://github.com/ga4gh/task-execution-schemas/tree/v1.1.0"
SHA512 = "https://www.iana.org/assignments/named-information#sha-512"
SHA256 = "https://www.iana.org/assignments/named-information#sha-256"
METADATA = "ro-crate-metadata.json"
# The software that writes the record, runs the rules and the TRE's agent (RO-Crate 1.2 wants a `url`
# for every SoftwareApplication): the package, never a deployment's own address.
SOFTWARE_URL = "https://pypi.org/project/fivesafes-tes/"

# Every entity the gateway adds has an @id under this prefix; a request crate's entities under it are
# dropped at the start, so a crate cannot pose as one of the gateway's own (a TRE, a sign-off, a checker).
OURS = "#fivesafes-tes-"

POTENTIAL = "http://schema.org/PotentialActionStatus"
ACTIVE = "http://schema.org/ActiveActionStatus"
COMPLETED = "http://schema.org/CompletedActionStatus"
FAILED = "http://schema.org/FailedActionStatus"

# A child's stage (the researcher view's `metadata.stage`) as the status of its run in that TRE.
_RUN_STATUS = {
    "received": POTENTIAL,
    "leased": POTENTIAL,
    "awaiting_tre_approval": POTENTIAL,
    "staging": ACTIVE,
    "running": ACTIVE,
    "checking": ACTIVE,
    "awaiting_review": ACTIVE,
    "released": COMPLETED,
    "partially_released": COMPLETED,
    "executor_failed": FAILED,
    "withheld": FAILED,
    "rejected_by_tre": FAILED,
    "system_failed": FAILED,
    "canceled": FAILED,
}
# A task's TES state as the status of the requested run as a whole.
_TASK_STATUS = {
    "UNKNOWN": POTENTIAL,
    "QUEUED": POTENTIAL,
    "INITIALIZING": ACTIVE,
    "RUNNING": ACTIVE,
    "PAUSED": ACTIVE,
    "COMPLETE": COMPLETED,
    "EXECUTOR_ERROR": FAILED,
    "SYSTEM_ERROR": FAILED,
    "CANCELED": FAILED,
    "PREEMPTED": FAILED,
}
_FINAL_STATES = frozenset({"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED", "PREEMPTED"})
# Stages after which the TRE's output checkers have decided (the researcher view shows the
# disclosure record), and those where the run ended without any review.
_REVIEWED = frozenset({"released", "partially_released", "executor_failed", "withheld"})
_NEVER_REVIEWED = frozenset({"rejected_by_tre", "system_failed", "canceled"})
_REVIEWING = frozenset({"awaiting_review"})


# --- the facts (the contract with the submission layer) --------------------------------------------


@dataclass(frozen=True)
class SignOffFact:
    """A TRE's admins' decision on the task's project (`on` "project") or on its submitter ("person"),
    as the TRE reported it; `decision` "" when the TRE has reported none."""

    on: str
    name: str  # the project's name, or the person's
    decision: str  # approved | rejected | pending | ""
    decided_by: str = ""
    reason: str = ""
    decided_at: str | None = None  # RFC 3339


@dataclass(frozen=True)
class RuleVerdict:
    rule: str
    version: str
    verdict: str


@dataclass(frozen=True)
class ReviewDecision:
    checker: str
    decision: str
    reason: str
    at: str


@dataclass(frozen=True)
class ReleasedFact:
    """A file a TRE released, with what the researcher view shows of its disclosure record."""

    tre: str
    file_id: int  # the gateway's released-file id: how `open_released` finds it; not in the record
    name: str  # as released: an output's container path, or step-N.stdout / step-N.stderr
    kind: str  # output | stdout | stderr
    size: int
    sha256: str
    verdict: str = ""
    rules: tuple[RuleVerdict, ...] = ()
    decisions: tuple[ReviewDecision, ...] = ()

    @property
    def path(self) -> str:
        """Where it sits in a results crate, relative to the payload root: outputs and logs apart, so
        that no output path can collide with a log."""
        if self.kind == "output":
            return f"outputs/{self.tre}/{_safe_path(self.name)}"
        return f"logs/{self.tre}/{_safe_path(self.name)}"


@dataclass(frozen=True)
class TreFacts:
    """One TRE's part of a task, as the researcher view shows it."""

    name: str
    title: str
    stage: str
    started_at: str | None = None  # when staging began (before the task could act)
    ended_at: str | None = None  # when the ending arrived, at the TRE's reporting granularity
    sign_offs: tuple[SignOffFact, ...] = ()
    reviewed: bool = False  # the disclosure record is shown (the checkers have decided)
    policy: tuple[tuple[str, str], ...] = ()  # the review policy the TRE exported
    released: tuple[ReleasedFact, ...] = ()
    withheld_reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class RequestFacts:
    """The request crate as intake kept it (`submission.tables.RequestCrate`)."""

    metadata: dict[str, Any]  # client AssessActions already removed, agent and project mapped
    external_identifier: str
    zip_sha512: str
    zip_size: int
    language: str
    checks: tuple[dict[str, Any], ...]
    stripped_assess_actions: int
    received_at: str

    def to_json(self) -> dict[str, Any]:
        """As the gateway hands it to a TRE's agent with the lease (`submission.leases.Grant.request`)."""
        return {**dataclasses.asdict(self), "checks": list(self.checks)}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> RequestFacts:
        """The facts `to_json` wrote; KeyError or TypeError if `doc` is not that."""
        return cls(
            metadata=dict(doc["metadata"]),
            external_identifier=str(doc["external_identifier"]),
            zip_sha512=str(doc["zip_sha512"]),
            zip_size=int(doc["zip_size"]),
            language=str(doc["language"]),
            checks=tuple(dict(c) for c in doc["checks"]),
            stripped_assess_actions=int(doc["stripped_assess_actions"]),
            received_at=str(doc["received_at"]),
        )


@dataclass(frozen=True)
class TaskFacts:
    task_id: str
    name: str | None
    state: str  # the TES state
    created_at: str
    document: dict[str, Any]  # the TES task as submitted (spec fields and tags)
    submitter: str  # display name
    submitter_id: str  # an IRI for them, stable and opaque (made from their issuer and subject)
    project: str
    project_title: str
    generated_at: str
    tres: tuple[TreFacts, ...] = ()
    request: RequestFacts | None = None

    @property
    def released(self) -> list[ReleasedFact]:
        return [f for tre in self.tres for f in tre.released]

    @property
    def external_identifier(self) -> str:
        """bag-info.txt's External-Identifier: the request crate's, kept as the profile recommends;
        for a bare TES task one made from its id."""
        if self.request is not None:
            return self.request.external_identifier
        return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'fivesafes-tes:task:{self.task_id}')}"


class UnsafeReleasedName(ValueError):
    """A released file's name cannot be placed inside a crate (the release path refuses such names)."""


def _safe_path(name: str) -> str:
    parts = name.lstrip("/").split("/")
    if any(p in ("", ".", "..") or "\\" in p or "\x00" in p for p in parts):
        raise UnsafeReleasedName(f"released file name {name!r} has an empty, '.' or '..' segment")
    return "/".join(parts)


# --- the record -----------------------------------------------------------------------------------


def ref(entity_id: str) -> dict[str, str]:
    return {"@id": entity_id}


def _types(entity: dict[str, Any]) -> list[str]:
    kind = entity.get("@type")
    return [kind] if isinstance(kind, str) else [t for t in kind or [] if isinstance(t, str)]


def _add_refs(entity: dict[str, Any], key: str, ids: list[str]) -> None:
    present = refs(entity.get(key))
    entity[key] = [ref(i) for i in present + [i for i in ids if i not in present]]


def _key(*parts: str) -> str:
    """A short, stable, opaque token for an @id made from free text (names, rules, paths)."""
    return uuid.uuid5(uuid.NAMESPACE_URL, "\x00".join(parts)).hex[:16]


class _Graph:
    """Entities by @id, in the order first added; adding an @id again keeps the first."""

    def __init__(self) -> None:
        self.entities: dict[str, dict[str, Any]] = {}

    def add(self, entity: dict[str, Any]) -> str:
        self.entities.setdefault(entity["@id"], entity)
        return str(entity["@id"])

    def __getitem__(self, entity_id: str) -> dict[str, Any]:
        return self.entities[entity_id]


def activity_record(facts: TaskFacts) -> dict[str, Any]:
    """ro-crate-metadata.json of the task's activity record: the request, the checks, each TRE's
    sign-off, run and disclosure check, and what was released."""
    graph = _Graph()
    if facts.request is not None:
        main, run, person, project = _from_request(graph, facts, facts.request)
    else:
        main, run, person, project = _from_task(graph, facts)
    root = graph["./"]
    root.setdefault("name", facts.name or f"Five Safes request, task {facts.task_id}")
    root.setdefault(
        "description",
        f"Activity record of task {facts.task_id} in project {facts.project}: who asked, what ran where, "
        "what each TRE decided and what it released.",
    )
    mentions: list[str] = [run]
    gateway = _gateway(graph)

    if facts.request is not None:
        mentions += _intake_checks(graph, facts.request, gateway)
    else:
        mentions.append(_task_validation(graph, facts, gateway))

    results: list[str] = []
    publishers: list[str] = []
    for tre in facts.tres:
        org = _tre_org(graph, tre)
        mentions.append(_sign_off(graph, facts, tre, org, main, project, person))
        files = [_released_file(graph, f) for f in tre.released]
        results += files
        if files:
            publishers.append(org)
        mentions.append(_tre_run(graph, facts, tre, main, person, files))
        if tre.stage not in _NEVER_REVIEWED:
            mentions += _disclosure(graph, facts, tre, org, files)

    action = graph[run]
    action["actionStatus"] = _TASK_STATUS.get(facts.state, POTENTIAL)
    starts = sorted((t.started_at for t in facts.tres if t.started_at), key=_moment)
    ends = sorted((t.ended_at for t in facts.tres if t.ended_at), key=_moment)
    if starts:
        action["startTime"] = starts[0]
    if facts.state in _FINAL_STATES and ends:
        action["endTime"] = ends[-1]
    if results:
        _add_refs(action, "result", results)

    _add_refs(root, "mentions", mentions)
    if results:
        _add_refs(root, "hasPart", results)
    root["datePublished"] = facts.generated_at
    if publishers:
        root["publisher"] = [ref(p) for p in publishers]
    if "license" not in root:
        root["license"] = ref(_conditions(graph, facts))
    _add_refs(root, "conformsTo", [FIVE_SAFES_PROFILE])
    graph.add(
        {
            "@id": FIVE_SAFES_PROFILE,
            "@type": "Profile",
            "name": "Five Safes RO-Crate profile",
            "version": "0.4",
        }
    )
    context = _context(facts.request.metadata) if facts.request is not None else RO_CRATE_CONTEXT
    return {"@context": context, "@graph": [_compact(e) for e in graph.entities.values()]}


def _moment(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _compact(entity: dict[str, Any]) -> dict[str, Any]:
    """One value rather than a list of one, as RO-Crate 1.2's JSON-LD recommends."""
    return {k: v[0] if isinstance(v, list) and len(v) == 1 else v for k, v in entity.items()}


def _descriptor() -> dict[str, Any]:
    return {"@id": METADATA, "@type": "CreativeWork", "about": ref("./"), "conformsTo": ref(RO_CRATE_SPEC)}


def _from_task(graph: _Graph, facts: TaskFacts) -> tuple[str, str, str, str]:
    """A bare TES task's crate, synthesised: the task document as the workflow, the submitter as the
    agent of the requested run, the project."""
    graph.add(_descriptor())
    root = {
        "@id": "./",
        "@type": "Dataset",
        "name": facts.name or f"TES task {facts.task_id}",
        "description": (
            f"Activity record of TES task {facts.task_id} in project {facts.project}: who asked, what ran "
            "where, what each TRE decided and what it released."
        ),
        "identifier": facts.task_id,
        "mainEntity": ref(TASK_FOLDER),
        "sourceOrganization": ref(_project_id(facts)),
        "hasPart": [ref(TASK_FOLDER), ref(TASK_DOCUMENT)],
    }
    graph.add(root)
    graph.add(
        {
            "@id": TASK_FOLDER,
            "@type": "Dataset",
            "name": "The analysis as a TES task",
            "description": "The GA4GH TES task the researcher submitted, run as given in each TRE.",
            "conformsTo": ref(WORKFLOW_RO_CRATE),
            "hasPart": [ref(TASK_DOCUMENT)],
            "programmingLanguage": ref(_TES_LANGUAGE),
        }
    )
    graph.add(
        {
            "@id": TASK_DOCUMENT,
            "@type": ["File", "SoftwareSourceCode"],
            "name": "TES task document",
            "encodingFormat": "application/json",
            "programmingLanguage": ref(_TES_LANGUAGE),
        }
    )
    graph.add(
        {
            "@id": _TES_LANGUAGE,
            "@type": "ComputerLanguage",
            "name": "GA4GH Task Execution Service task",
            "url": _TES_LANGUAGE,
            "version": "1.1.0",
        }
    )
    graph.add(
        {"@id": WORKFLOW_RO_CRATE, "@type": "CreativeWork", "name": "Workflow RO-Crate", "version": "1.0"}
    )
    person = facts.submitter_id
    project = _project_id(facts)
    graph.add({"@id": person, "@type": "Person", "name": facts.submitter, "memberOf": [ref(project)]})
    graph.add(
        {
            "@id": project,
            "@type": "Project",
            "name": facts.project_title or facts.project or "no project (a task stored before projects)",
            "identifier": facts.project or "none",
        }
    )
    run = f"{OURS}run-{facts.task_id}"
    graph.add(
        {
            "@id": run,
            "@type": "CreateAction",
            "name": f"Run of TES task {facts.task_id} in {', '.join(t.name for t in facts.tres) or 'no TRE'}",
            "agent": ref(person),
            "instrument": ref(TASK_FOLDER),
            "actionStatus": POTENTIAL,
        }
    )
    return TASK_FOLDER, run, person, project


TASK_FOLDER = "workflow/"
TASK_DOCUMENT = "workflow/tes-task.json"
_TES_LANGUAGE = "https://ga4gh.github.io/task-execution-schemas/"  # as request crates name it


def _project_id(facts: TaskFacts) -> str:
    return f"{OURS}project-{facts.project or 'none'}"


def _from_request(graph: _Graph, facts: TaskFacts, request: RequestFacts) -> tuple[str, str, str, str]:
    """The crate the researcher sent, as intake kept it, made to grow: RO-Crate 1.2, no entity of ours
    and no AssessAction from the client (intake removed them; this is a second guard)."""
    doc = copy.deepcopy(request.metadata)
    entities = [e for e in doc.get("@graph") or [] if isinstance(e, dict) and isinstance(e.get("@id"), str)]
    dropped = {e["@id"] for e in entities if _foreign(e)}
    graph.add(_descriptor())
    for entity in entities:
        if entity["@id"] == METADATA or entity["@id"] in dropped:
            continue
        for key, value in list(entity.items()):  # and every reference to what was dropped
            if key.startswith("@") or not isinstance(value, (dict, list)):
                continue
            values = value if isinstance(value, list) else [value]
            left = [v for v in values if not (isinstance(v, dict) and _points_to(v, dropped))]
            if len(left) != len(values):
                if left:
                    entity[key] = left
                else:
                    del entity[key]
        graph.add(entity)
    _rebase(graph, request)
    root = graph["./"]
    main = refs(root.get("mainEntity"))[0]
    run = next(i for i in refs(root.get("mentions")) if "CreateAction" in _types(graph[i]))
    person = refs(graph[run].get("agent"))[0]
    project = refs(root.get("sourceOrganization"))[0]
    return main, run, person, project


def _rebase(graph: _Graph, request: RequestFacts) -> None:
    """The request's own files and folders (its workflow, its inputs) stay in the request crate, which
    the gateway does not keep: they are named by absolute `arcp://ni,...` URIs made from the SHA-512
    of the zip they came in, so that neither the record nor a results crate claims to carry them."""
    digest = base64.urlsafe_b64encode(bytes.fromhex(request.zip_sha512)).decode().rstrip("=")
    base = f"arcp://ni,sha-512;{digest}/"
    moved = {
        entity_id: base + entity_id
        for entity_id in graph.entities
        if entity_id not in ("./", METADATA)
        and not entity_id.startswith(("#", "_:"))
        and ":" not in entity_id
    }
    if not moved:
        return

    def move(value: Any) -> Any:
        if isinstance(value, list):
            return [move(v) for v in value]
        if isinstance(value, dict):
            return {
                k: moved.get(v, v) if k == "@id" and isinstance(v, str) else move(v) for k, v in value.items()
            }
        return value

    graph.entities = {moved.get(i, i): move(e) for i, e in graph.entities.items()}


def _foreign(entity: dict[str, Any]) -> bool:
    """An entity a request crate may not bring: one under our prefix, or an assessment as intake
    judges one (`profile.is_assessment`; intake has already removed those, this is a second guard)."""
    return str(entity["@id"]).startswith(OURS) or is_assessment(entity)


def _context(doc: dict[str, Any]) -> Any:
    """The request's context made RO-Crate 1.2's, keeping any local terms it defined beside it."""
    context = doc.get("@context")
    if not isinstance(context, list):
        return RO_CRATE_CONTEXT
    return [RO_CRATE_CONTEXT if isinstance(c, str) and "/ro/crate/" in c else c for c in context]


def _points_to(value: dict[str, Any], dropped: set[str]) -> bool:
    target = value.get("@id")
    return isinstance(target, str) and (target in dropped or target.startswith(OURS))


def _gateway(graph: _Graph) -> str:
    federation = graph.add(
        {
            "@id": f"{OURS}federation",
            "@type": "Organization",
            "name": "The TRE federation this Five Safes TES gateway serves",
        }
    )
    return graph.add(
        {
            "@id": f"{OURS}gateway",
            "@type": "SoftwareApplication",
            "name": "Five Safes TES gateway",
            "url": SOFTWARE_URL,
            "version": __version__,
            "provider": ref(federation),
        }
    )


def _intake_checks(graph: _Graph, request: RequestFacts, gateway: str) -> list[str]:
    """What intake checked before it stored the request: the BagIt manifests (CheckValue) and the
    profile's MUSTs a submitter controls (ValidationCheck). Intake stores nothing it refused."""
    by_check = {c.get("check"): c for c in request.checks if isinstance(c, dict)}
    bagit, profile = by_check.get("bagit", {}), by_check.get("profile", {})
    graph.add({"@id": SHA512, "@type": "DefinedTerm", "name": "sha-512 algorithm"})
    check = graph.add(
        {
            "@id": f"{OURS}check-bagit",
            "@type": "AssessAction",
            "additionalType": ref(f"{SHP}CheckValue"),
            "name": f"BagIt checksums of the request crate: {'OK' if bagit.get('passed') else 'not OK'}",
            "description": str(bagit.get("detail") or "payload and tag manifests (sha512) verified"),
            "endTime": request.received_at,
            "object": ref("./"),
            "instrument": ref(SHA512),
            "agent": ref(gateway),
            "actionStatus": COMPLETED if bagit.get("passed") else FAILED,
        }
    )
    detail = str(profile.get("detail") or "the profile's requirements a submitter controls")
    if request.stripped_assess_actions:
        detail += f"; {request.stripped_assess_actions} AssessAction(s) the request carried were removed"
    validation = graph.add(
        {
            "@id": f"{OURS}validation",
            "@type": "AssessAction",
            "additionalType": ref(f"{SHP}ValidationCheck"),
            "name": (
                "Validation against the Five Safes RO-Crate profile: "
                f"{'approved' if profile.get('passed') else 'not approved'}"
            ),
            "description": detail,
            "endTime": request.received_at,
            "object": ref("./"),
            "instrument": ref(FIVE_SAFES_PROFILE),
            "agent": ref(gateway),
            "actionStatus": COMPLETED if profile.get("passed") else FAILED,
        }
    )
    return [check, validation]


def _task_validation(graph: _Graph, facts: TaskFacts, gateway: str) -> str:
    """A bare TES task was validated against TES 1.1 and the federation's policy before it was stored;
    the gateway made its crate from it."""
    graph.add({"@id": TES_SPEC, "@type": "CreativeWork", "name": "GA4GH Task Execution Service 1.1"})
    return graph.add(
        {
            "@id": f"{OURS}validation",
            "@type": "AssessAction",
            "additionalType": ref(f"{SHP}ValidationCheck"),
            "name": "Validation of the TES task against TES 1.1 and the federation's policy: approved",
            "description": (
                "The gateway accepted the TES task (schema, image allow-list, limits, each target TRE's "
                "published admission policy) and made this crate from it."
            ),
            "endTime": facts.created_at,
            "object": [ref("./"), ref(TASK_DOCUMENT)],
            "instrument": [ref(TES_SPEC), ref(FIVE_SAFES_PROFILE)],
            "agent": ref(gateway),
            "actionStatus": COMPLETED,
        }
    )


def _tre_org(graph: _Graph, tre: TreFacts) -> str:
    return graph.add(
        {
            "@id": f"{OURS}tre-{tre.name}",
            "@type": "Organization",
            "name": tre.title or tre.name,
            "identifier": tre.name,
        }
    )


def _person(graph: _Graph, tre: TreFacts, name: str, org: str) -> str:
    """Someone of a TRE (an admin, a checker), by the name the TRE reported; scoped to that TRE."""
    return graph.add(
        {
            "@id": f"{OURS}person-{tre.name}-{_key(tre.name, name)}",
            "@type": "Person",
            "name": name,
            "affiliation": ref(org),
        }
    )


def _sign_off(
    graph: _Graph, facts: TaskFacts, tre: TreFacts, org: str, main: str, project: str, person: str
) -> str:
    """The TRE's admins' decisions on the project and on the person: approved only if both are."""
    decisions = {s.on: s for s in tre.sign_offs}
    parts, agents, times = [], [], []
    for on, label in (("project", f"project {facts.project}"), ("person", f"{facts.submitter}")):
        fact = decisions.get(on)
        if fact is None or not fact.decision:
            parts.append(f"{label}: undecided")
            continue
        line = f"{label}: {fact.decision}" + (f" by {fact.decided_by}" if fact.decided_by else "")
        parts.append(line + (f" ({fact.reason})" if fact.reason else ""))
        if fact.decided_by:
            agents.append(_person(graph, tre, fact.decided_by, org))
        if fact.decided_at and fact.decision != "pending":
            times.append(fact.decided_at)
    states = [decisions[o].decision if o in decisions else "" for o in ("project", "person")]
    if "rejected" in states:
        status, outcome = FAILED, "rejected"
    elif states == ["approved", "approved"]:
        status, outcome = COMPLETED, "approved"
    else:
        status, outcome = POTENTIAL, "pending"
    action: dict[str, Any] = {
        "@id": f"{OURS}signoff-{tre.name}",
        "@type": "AssessAction",
        "additionalType": ref(f"{SHP}SignOff"),
        "name": f"Sign-off by {tre.name} of the project and the person: {outcome}",
        "description": "; ".join(parts),
        "object": [ref("./"), ref(main), ref(project), ref(person)],
        "agent": [ref(a) for a in dict.fromkeys(agents)] or ref(org),
        "actionStatus": status,
    }
    if times and status is not POTENTIAL:
        action["endTime"] = max(times, key=_moment)
    return graph.add(action)


def _tre_run(graph: _Graph, facts: TaskFacts, tre: TreFacts, main: str, person: str, files: list[str]) -> str:
    """The run in one TRE: its status and times as the researcher view shows them, and its results."""
    action: dict[str, Any] = {
        "@id": f"{OURS}run-in-{tre.name}",
        "@type": "CreateAction",
        "name": f"Run of task {facts.task_id} in {tre.name}: {tre.stage.replace('_', ' ')}",
        "agent": ref(person),
        "instrument": ref(main),
        "actionStatus": _RUN_STATUS.get(tre.stage, POTENTIAL),
    }
    if tre.started_at:
        action["startTime"] = tre.started_at
    if tre.ended_at:
        action["endTime"] = tre.ended_at
    if files:
        action["result"] = [ref(f) for f in files]
    return graph.add(action)


def _released_file(graph: _Graph, fact: ReleasedFact) -> str:
    entity: dict[str, Any] = {
        "@id": quote(fact.path, safe="/"),
        "@type": "File",
        "name": fact.name,
        "contentSize": str(fact.size),
        "sha256": fact.sha256,
    }
    media = "text/plain" if fact.kind != "output" else mimetypes.guess_type(fact.name)[0]
    if media:
        entity["encodingFormat"] = media
    return graph.add(entity)


def _disclosure(graph: _Graph, facts: TaskFacts, tre: TreFacts, org: str, files: list[str]) -> list[str]:
    """The TRE's disclosure check: pending until its checkers decided; then the rules' versions and
    verdicts on each released file and each checker's decision and reason, and the reasons given for
    what was withheld. Nothing of a file that was not released."""
    automated = graph.add(
        {
            "@id": f"{OURS}agent-{tre.name}",
            "@type": "SoftwareApplication",
            "name": f"Five Safes TES agent of {tre.name}: the airlock's automated disclosure rules",
            "url": SOFTWARE_URL,
            "version": __version__,
            "provider": ref(org),
        }
    )
    check: dict[str, Any] = {
        "@id": f"{OURS}disclosure-{tre.name}",
        "@type": "AssessAction",
        "additionalType": ref(f"{SHP}DisclosureCheck"),
        "object": [ref("./"), *(ref(f) for f in files)],
        "agent": [ref(automated)],
    }
    mentioned = [check["@id"]]
    if not tre.reviewed:
        waiting = "in review" if tre.stage in _REVIEWING else "pending"
        check["name"] = f"Disclosure check of the outputs at {tre.name}: {waiting}"
        check["actionStatus"] = ACTIVE if tre.stage in _REVIEWING else POTENTIAL
        graph.add(check)
        return mentioned
    released = bool(files)
    outcome = "some outputs released" if released else "every output withheld"
    if released and tre.stage == "released":
        outcome = "outputs released"
    check["name"] = f"Disclosure check of the outputs at {tre.name}: {outcome}"
    check["actionStatus"] = COMPLETED if released else FAILED
    notes = [f"{k}: {v}" for k, v in tre.policy]
    if tre.withheld_reasons:
        notes.append("reasons for withholding: " + "; ".join(tre.withheld_reasons))
    if notes:
        check["description"] = "; ".join(notes)
    if tre.ended_at:
        check["endTime"] = tre.ended_at
    rules: list[str] = []
    checkers: list[str] = []
    for fact, file_id in zip(tre.released, files, strict=True):
        for verdict in fact.rules:
            rule = graph.add(
                {
                    "@id": f"{OURS}rule-{tre.name}-{_key(tre.name, verdict.rule, verdict.version)}",
                    "@type": "SoftwareApplication",
                    "name": f"disclosure rule {verdict.rule}",
                    "url": SOFTWARE_URL,
                    "version": verdict.version or "unversioned",
                    "provider": ref(org),
                }
            )
            rules.append(rule)
            mentioned.append(
                graph.add(
                    {
                        "@id": f"{OURS}verdict-{tre.name}-{_key(fact.name, verdict.rule, verdict.version)}",
                        "@type": "AssessAction",
                        "name": f"Rule {verdict.rule} {verdict.version} on {fact.name}: {verdict.verdict}",
                        "description": f"verdict: {verdict.verdict}",
                        "object": ref(file_id),
                        "instrument": ref(rule),
                        "agent": ref(automated),
                        "actionStatus": COMPLETED,
                    }
                )
            )
        for n, decision in enumerate(fact.decisions):
            checker = _person(graph, tre, decision.checker or "an output checker", org)
            checkers.append(checker)
            action: dict[str, Any] = {
                "@id": f"{OURS}review-{tre.name}-{_key(fact.name, str(n))}",
                "@type": "AssessAction",
                "name": f"{decision.checker or 'An output checker'} {decision.decision} {fact.name}"
                + (f": {decision.reason}" if decision.reason else ""),
                "object": ref(file_id),
                "agent": ref(checker),
                "actionStatus": COMPLETED,
            }
            if decision.reason:
                action["description"] = decision.reason
            if decision.at:
                action["endTime"] = decision.at
            mentioned.append(graph.add(action))
    check["agent"] += [ref(c) for c in dict.fromkeys(checkers)]
    if rules:
        check["instrument"] = [ref(r) for r in dict.fromkeys(rules)]
    graph.add(check)
    return mentioned


def _conditions(graph: _Graph, facts: TaskFacts) -> str:
    return graph.add(
        {
            "@id": f"{OURS}conditions",
            "@type": "CreativeWork",
            "name": f"Conditions of access of project {facts.project}",
            "description": (
                f"Released outputs are for the members of project {facts.project} under its agreements "
                "with the TREs that released them."
            ),
        }
    )


# --- reading a record back (the CLI's summary) ----------------------------------------------------


@dataclass(frozen=True)
class TreSummary:
    """One TRE's part of a record, in words: its run's status, sign-off and disclosure check, and the
    files it released (path in the crate, name as released, SHA-256)."""

    tre: str
    run: str
    sign_off: str
    disclosure: str
    files: tuple[tuple[str, str, str], ...]


def _status(entity: dict[str, Any] | None) -> str:
    if entity is None:
        return "-"
    status = str(entity.get("actionStatus", ""))
    return status.rsplit("/", 1)[-1].removesuffix("ActionStatus").lower() or "-"


def summarise(record: dict[str, Any]) -> list[TreSummary]:
    """Each TRE's part of an activity record this gateway wrote, in the order of its TREs."""
    by_id = {e["@id"]: e for e in record.get("@graph", []) if isinstance(e, dict) and "@id" in e}
    out = []
    for entity_id in by_id:
        if not entity_id.startswith(f"{OURS}tre-"):
            continue
        tre = entity_id.removeprefix(f"{OURS}tre-")
        run = by_id.get(f"{OURS}run-in-{tre}")
        files = []
        for file_id in refs((run or {}).get("result")):
            file = by_id.get(file_id, {})
            files.append((unquote(file_id), str(file.get("name", "")), str(file.get("sha256", ""))))
        out.append(
            TreSummary(
                tre=tre,
                run=_status(run),
                sign_off=_status(by_id.get(f"{OURS}signoff-{tre}")),
                disclosure=_status(by_id.get(f"{OURS}disclosure-{tre}")),
                files=tuple(files),
            )
        )
    return out


# --- the results crate ----------------------------------------------------------------------------


def results_record(facts: TaskFacts) -> dict[str, Any]:
    """The record as it goes into a results crate: with the publishing step (the BagIt manifests
    written over it), which the profile has recorded before the manifests are computed."""
    record = activity_record(facts)
    graph = record["@graph"]
    if not any(e["@id"] == SHA512 for e in graph):
        graph.append({"@id": SHA512, "@type": "DefinedTerm", "name": "sha-512 algorithm"})
    action: dict[str, Any] = {
        "@id": f"{OURS}bagit",
        "@type": "UpdateAction",
        "additionalType": ref(f"{SHP}GenerateCheckValue"),
        "name": "BagIt manifests of the results crate written",
        "startTime": facts.generated_at,
        "object": ref("./"),
        "instrument": ref(SHA512),
        "agent": ref(f"{OURS}gateway"),
        "actionStatus": COMPLETED,
    }
    graph.append(action)
    root = next(e for e in graph if e["@id"] == "./")
    _add_refs(root, "mentions", [f"{OURS}bagit"])
    record["@graph"] = [_compact(e) for e in graph]
    return record


def write_results_crate(
    out: BinaryIO, facts: TaskFacts, open_released: Callable[[ReleasedFact], IO[bytes]]
) -> None:
    """The BagIt-zipped results crate: data/ro-crate-metadata.json (the record), the TES task document
    of a bare TES task, and each released file at its place (`ReleasedFact.path`), opened one at a
    time through `open_released`. Nothing else: nothing unreleased, no token, no internal URL."""
    record = json.dumps(results_record(facts), indent=2, ensure_ascii=False).encode()
    entries = [BagEntry(METADATA, _bytes(record))]
    if facts.request is None:
        document = json.dumps(facts.document, indent=2, ensure_ascii=False).encode()
        entries.append(BagEntry(TASK_DOCUMENT, _bytes(document)))
    entries += [BagEntry(f.path, _opener(open_released, f)) for f in facts.released]
    write_bag(
        out,
        f"task-{facts.task_id}",
        _each(entries),
        {
            "External-Identifier": facts.external_identifier,
            "External-Description": f"Five Safes RO-Crate: results of task {facts.task_id}",
        },
    )


def _each(entries: list[BagEntry]) -> Iterator[BagEntry]:
    yield from entries


def _bytes(data: bytes) -> Callable[[], IO[bytes]]:
    return lambda: io.BytesIO(data)


def _opener(
    open_released: Callable[[ReleasedFact], IO[bytes]], fact: ReleasedFact
) -> Callable[[], IO[bytes]]:
    return lambda: open_released(fact)


__all__ = [
    "ReleasedFact",
    "RequestFacts",
    "ReviewDecision",
    "RuleVerdict",
    "SignOffFact",
    "TaskFacts",
    "TreFacts",
    "TreSummary",
    "UnsafeReleasedName",
    "activity_record",
    "results_record",
    "summarise",
    "write_results_crate",
]
