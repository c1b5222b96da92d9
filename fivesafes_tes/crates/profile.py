"""A request crate's metadata judged against the Five Safes RO-Crate profile (5s-crate 0.4), and made
the submitter's own.

`read_request` checks every MUST of the profile a submitter controls on the bag's
`ro-crate-metadata.json`, then rewrites what the gateway decides rather than the submitter: the
requesting agent is the authenticated person, the responsible project one they belong to, and no
AssessAction the client wrote survives (the profile's security considerations: they "could be used
to bypass the TRE compliance process"). The rest of the graph is kept as given: it is the base the
activity record grows from. Nothing named in the crate is ever fetched here.

Every refusal says what is wrong and what to change, in the words a researcher uses to fix a crate.
"""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

if TYPE_CHECKING:
    from fivesafes_tes.crates.bagit import VerifiedBag

FIVE_SAFES_PROFILE = "https://w3id.org/5s-crate/0.4"
WORKFLOW_CRATE_PROFILE = "https://w3id.org/workflowhub/workflow-ro-crate/1.0"
METADATA_FILE = "ro-crate-metadata.json"
ROOT = "./"
POTENTIAL = "PotentialActionStatus"
SHP = "https://w3id.org/shp#"
# RO-Crate 1.2 "or later minor version": the 1.2 draft the profile's examples name counts as 1.2.
_RO_CRATE = re.compile(r"^https?://w3id\.org/ro/crate/1\.(\d+)(?:-DRAFT)?/?$")
_RO_CRATE_CONTEXT = re.compile(r"^https?://w3id\.org/ro/crate/1\.\d+(?:-DRAFT)?/context/?$")
_SCHEMA = ("http://schema.org/", "https://schema.org/", "schema:")
# AssessAction and its schema.org subtypes: each is a judgement, which only a TRE may record.
ASSESS_TYPES = frozenset(
    {
        "AssessAction",
        "ChooseAction",
        "VoteAction",
        "IgnoreAction",
        "ReactAction",
        "AgreeAction",
        "DisagreeAction",
        "DislikeAction",
        "EndorseAction",
        "LikeAction",
        "WantAction",
        "ReviewAction",
    }
)
# What the CreateAction gains as the TRE works on it: a request that carries them claims a run that
# has not happened.
_TRE_SETS = ("result", "startTime", "endTime", "error")
# Terms this module reads: a crate's own context may not redefine them.
_READ_TERMS = frozenset(
    {
        "about",
        "conformsTo",
        "mainEntity",
        "mentions",
        "sourceOrganization",
        "agent",
        "instrument",
        "object",
        "actionStatus",
        "name",
        "identifier",
        "value",
        "memberOf",
        "additionalType",
        "type",
        *_TRE_SETS,
    }
)
MAX_ENTITIES = 10_000
MAX_DEPTH = 32
MAX_REFERENCES = 200_000
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


class CrateRefused(ValueError):
    """The crate does not meet the profile (or this gateway's rules for it); the message says what is
    wrong and what to change."""


class NotYourProject(CrateRefused):
    """The crate names a responsible project the submitter is not a member of."""


@dataclass(frozen=True)
class Submitter:
    """The authenticated person submitting: who they are to the gateway, and the projects they are in."""

    username: str
    subject: str
    issuer: str
    projects: tuple[str, ...]


@dataclass(frozen=True)
class RequestCrate:
    metadata: dict[str, Any]  # as kept: AssessActions removed, agent and project mapped to the submitter
    project: str  # the project the crate names (sourceOrganization), one of submitter.projects
    main_entity: str  # @id of the Workflow RO-Crate Dataset
    create_action: str  # @id of the requested CreateAction
    stripped_assess_actions: int
    checks: list[dict[str, Any]] = field(default_factory=list)


def read_request(bag: VerifiedBag, submitter: Submitter) -> RequestCrate:
    """The request in `bag`, checked against the profile and made `submitter`'s; CrateRefused if it
    does not meet a MUST a submitter controls."""
    metadata = copy.deepcopy(bag.metadata())
    _check_graph(metadata)
    stripped = _strip_assessments(metadata)
    entities = _index(metadata["@graph"])
    _check_descriptor(entities)
    root = entities[ROOT]
    if "Dataset" not in _types(root):
        raise CrateRefused('the root data entity (@id "./") must have @type Dataset')
    if FIVE_SAFES_PROFILE not in refs(root.get("conformsTo")):
        raise CrateRefused(
            f'the root data entity (@id "./") must declare the Five Safes profile: add '
            f'"conformsTo": {{"@id": "{FIVE_SAFES_PROFILE}"}} to it'
        )
    main = _main_entity(root, entities, bag)
    action = _create_action(root, entities, main, bag, stripped)
    project_id, project = _project(root, entities, submitter)
    _make_submitters(metadata, entities, action, project_id, submitter)
    checks = [
        {
            "check": "bagit",
            "passed": True,
            "detail": f"BagIt manifests verified: {len(bag.payload)} payload files, "
            f"External-Identifier {bag.external_identifier}",
        },
        {
            "check": "profile",
            "passed": True,
            "detail": f"meets every requirement of {FIVE_SAFES_PROFILE} a submitter controls"
            + (f"; {stripped} client-supplied AssessAction(s) removed" if stripped else ""),
        },
    ]
    return RequestCrate(
        metadata=metadata,
        project=project,
        main_entity=main,
        create_action=action["@id"],
        stripped_assess_actions=stripped,
        checks=checks,
    )


# --- the graph ---------------------------------------------------------------------------------


def _check_graph(metadata: Any) -> None:
    """A flattened RO-Crate graph of bounded size, every reference of which stays inside the crate."""
    if not isinstance(metadata, dict) or not isinstance(metadata.get("@graph"), list):
        raise CrateRefused(
            f'data/{METADATA_FILE} must be a JSON object with an "@graph" array of entities '
            "(RO-Crate 1.2 flattened JSON-LD)"
        )
    _check_context(metadata.get("@context"))
    graph = metadata["@graph"]
    if len(graph) > MAX_ENTITIES:
        raise CrateRefused(
            f"data/{METADATA_FILE} has {len(graph)} entities; this gateway takes at most {MAX_ENTITIES}: "
            "describe folders as one Dataset rather than every file"
        )
    for n, entity in enumerate(graph):
        if not isinstance(entity, dict) or not isinstance(entity.get("@id"), str) or not entity["@id"]:
            raise CrateRefused(f'@graph[{n}] must be an object with a non-empty string "@id"')
    for entity in graph:
        _check_entity(entity)


def _check_context(context: Any) -> None:
    """The RO-Crate context, optionally extended with terms of the crate's own, none of which may change
    what the terms this module reads mean, or where relative @ids resolve."""
    for _ in _walk(context):  # no NUL anywhere, and bounded
        pass
    items = context if isinstance(context, list) else [context]
    if not any(isinstance(i, str) and _RO_CRATE_CONTEXT.match(i) for i in items):
        raise CrateRefused(
            '"@context" must name the RO-Crate context, e.g. '
            '"@context": "https://w3id.org/ro/crate/1.2/context"'
        )
    for item in items:
        if isinstance(item, str):
            if not _RO_CRATE_CONTEXT.match(item):
                raise CrateRefused(
                    f'"@context" names {item!r}; only the RO-Crate context (and terms defined inline) '
                    "is accepted, since nothing is fetched here"
                )
        elif isinstance(item, dict):
            redefined = sorted(k for k in item if k.startswith("@") or k in _READ_TERMS)
            if redefined:
                raise CrateRefused(
                    f'"@context" redefines {", ".join(redefined)}; remove these from the crate\'s own '
                    "context (the RO-Crate context defines them)"
                )
        else:
            raise CrateRefused('"@context" must be the RO-Crate context URL, or a list of it and objects')


def _index(graph: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    entities: dict[str, dict[str, Any]] = {}
    for entity in graph:
        if entity["@id"] in entities:
            raise CrateRefused(
                f'two entities have "@id": {entity["@id"]!r}; merge them into one (each @id appears '
                "once in a flattened RO-Crate)"
            )
        entities[entity["@id"]] = entity
    return entities


def _types(entity: dict[str, Any], *, keys: tuple[str, ...] = ("@type",)) -> set[str]:
    found: set[str] = set()
    for key in keys:
        value = entity.get(key)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str):
                found.add(_local(item))
    return found


def _local(term: str) -> str:
    for prefix in _SCHEMA:
        if term.startswith(prefix):
            return term[len(prefix) :]
    return term


def refs(value: Any) -> list[str]:
    """The @ids a property refers to ({"@id": ...}, or a list of them); other values are not references."""
    items = value if isinstance(value, list) else [value]
    return [i["@id"] for i in items if isinstance(i, dict) and isinstance(i.get("@id"), str)]


def _walk(node: Any) -> Iterator[tuple[dict[str, Any], int]]:
    """Every JSON object under `node`, with its depth; bounded so a crafted document costs little."""
    stack: list[tuple[Any, int]] = [(node, 0)]
    seen = 0
    while stack:
        value, depth = stack.pop()
        seen += 1
        if seen > MAX_REFERENCES or depth > MAX_DEPTH:
            raise CrateRefused(
                f"data/{METADATA_FILE} nests too deeply or holds too many values; a flattened RO-Crate "
                f'refers to entities by {{"@id": ...}} (at most {MAX_DEPTH} levels here)'
            )
        if isinstance(value, dict):
            if any("\x00" in key for key in value):
                raise CrateRefused(_NUL)
            yield value, depth
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
        elif isinstance(value, str) and "\x00" in value:
            raise CrateRefused(_NUL)


_NUL = f"data/{METADATA_FILE} holds a NUL character (\\u0000), which is accepted nowhere here; remove it"


def _check_entity(entity: dict[str, Any]) -> None:
    """Every @id is inside the bag's payload, a local "#name" or "_:" blank node, or an absolute URI
    (which this gateway never fetches); never a path outside the crate, nor a file on some machine.
    Entities are described at the top level of the graph, not nested in another's properties."""
    for node, depth in _walk(entity):
        if "@id" in node:
            ref = node["@id"]
            if not isinstance(ref, str):
                raise CrateRefused(f'entity {entity["@id"]!r} has an "@id" that is not a string: {ref!r}')
            why = unsafe_reference(ref)
            if why:
                raise CrateRefused(f"@id {ref!r} {why}")
        if depth and ("@type" in node or is_assessment(node)):
            raise CrateRefused(
                f"entity {entity['@id']!r} describes another entity inside one of its properties; "
                'describe each entity at the top level of @graph and refer to it by {"@id": ...}'
            )


def unsafe_reference(ref: str) -> str | None:
    """Why `ref` may not appear in a request crate, or None."""
    if "\x00" in ref or "\\" in ref:
        return "holds a NUL or a backslash; use '/' between the parts of a path inside data/"
    if ref.startswith(("#", "_:")) or ref == ROOT:
        return None
    scheme = _SCHEME.match(ref)
    if scheme and len(scheme.group(1)) > 1:
        if scheme.group(1).lower() == "file":
            return (
                "is a file on some machine; put the file in the crate's data/ folder and refer to it by its "
                "path there"
            )
        return None
    if scheme or ref.startswith("/"):
        return "is an absolute path; refer to files by their path inside the crate's data/ folder"
    decoded = re.sub(r"%2[eE]", ".", re.sub(r"%2[fF]", "/", ref))
    if any(part == ".." for part in decoded.split("/")):
        return (
            'points outside the crate (".."); the RO-Crate root is data/, and only files inside it may '
            "be referenced"
        )
    return None


# --- what the profile requires ------------------------------------------------------------------


def _check_descriptor(entities: dict[str, dict[str, Any]]) -> None:
    descriptor = entities.get(METADATA_FILE)
    if descriptor is None:
        raise CrateRefused(
            f'data/{METADATA_FILE} must describe itself: add the metadata descriptor {{"@id": '
            f'"{METADATA_FILE}", "@type": "CreativeWork", "about": {{"@id": "./"}}, "conformsTo": '
            '{"@id": "https://w3id.org/ro/crate/1.2"}}'
        )
    if refs(descriptor.get("about")) != [ROOT]:
        raise CrateRefused(
            f'the metadata descriptor ("{METADATA_FILE}") must be "about": {{"@id": "./"}}: the crate\'s '
            "root is its data/ folder"
        )
    versions = [m for r in refs(descriptor.get("conformsTo")) if (m := _RO_CRATE.match(r))]
    if not any(int(m.group(1)) >= 2 for m in versions):
        named = ", ".join(refs(descriptor.get("conformsTo"))) or "none"
        raise CrateRefused(
            f"the metadata descriptor must declare RO-Crate 1.2 or a later 1.x (it names {named}): set "
            f'"conformsTo": {{"@id": "https://w3id.org/ro/crate/1.2"}} on "{METADATA_FILE}"'
        )
    if ROOT not in entities:
        raise CrateRefused(
            'the root data entity must have "@id": "./" (the crate is stored in a BagIt zip); rename it'
        )


def _one(entity: dict[str, Any], prop: str, what: str, fix: str) -> str:
    ids = refs(entity.get(prop))
    if len(ids) != 1 or (isinstance(entity.get(prop), list) and len(entity[prop]) != 1):
        raise CrateRefused(f'{what} must have exactly one "{prop}" {{"@id": ...}}: {fix}')
    return ids[0]


def _main_entity(root: dict[str, Any], entities: dict[str, dict[str, Any]], bag: VerifiedBag) -> str:
    main = _one(
        root,
        "mainEntity",
        'the root data entity ("./")',
        'the Workflow RO-Crate to run (a folder in data/, e.g. "workflow/", or its versioned URL)',
    )
    entity = entities.get(main)
    if entity is None:
        raise CrateRefused(
            f"mainEntity {main!r} has no entity in the @graph; describe it as a Dataset with "
            f'"conformsTo": {{"@id": "{WORKFLOW_CRATE_PROFILE}"}}'
        )
    if "Dataset" not in _types(entity) or WORKFLOW_CRATE_PROFILE not in refs(entity.get("conformsTo")):
        raise CrateRefused(
            f'mainEntity {main!r} must be a Workflow RO-Crate: give it "@type": "Dataset" and '
            f'"conformsTo": {{"@id": "{WORKFLOW_CRATE_PROFILE}"}}'
        )
    if _is_path(main):
        folder = unquote(main).rstrip("/") + "/"
        if not any(path.startswith(folder) for path in bag.payload):
            raise CrateRefused(
                f"mainEntity {main!r} names a folder of the crate, but data/{folder} holds no files; put "
                "the Workflow RO-Crate there, or name its versioned URL instead"
            )
    return main


def _create_action(
    root: dict[str, Any],
    entities: dict[str, dict[str, Any]],
    main: str,
    bag: VerifiedBag,
    stripped: int,
) -> dict[str, Any]:
    actions = [
        entities[r] for r in refs(root.get("mentions")) if "CreateAction" in _types(entities.get(r, {}))
    ]
    if len(actions) != 1:
        removed = f" ({stripped} AssessAction(s) the client wrote were removed first)" if stripped else ""
        raise CrateRefused(
            f"the root data entity must mention exactly one CreateAction, the requested run; it mentions "
            f'{len(actions)}{removed}: add "mentions": {{"@id": "#run-..."}} naming a CreateAction'
        )
    action = actions[0]
    name = action["@id"]
    agent = _one(action, "agent", f"CreateAction {name!r}", "the Person requesting the run")
    if "Person" not in _types(entities.get(agent, {})):
        raise CrateRefused(
            f"the agent of CreateAction {name!r} ({agent!r}) must be an entity of @type Person in the @graph"
        )
    instrument = _one(action, "instrument", f"CreateAction {name!r}", f'{{"@id": "{main}"}}, the mainEntity')
    if instrument != main:
        raise CrateRefused(
            f"CreateAction {name!r} has instrument {instrument!r}, but the crate's mainEntity is {main!r}: "
            f'set "instrument": {{"@id": "{main}"}}'
        )
    status = action.get("actionStatus")
    if isinstance(status, dict):
        status = status.get("@id")
    if not isinstance(status, str) or _local(status) != POTENTIAL:
        raise CrateRefused(
            f"CreateAction {name!r} is a request, so its actionStatus must be "
            f'"http://schema.org/{POTENTIAL}" (it is {status!r})'
        )
    claimed = [p for p in _TRE_SETS if p in action]
    if claimed:
        raise CrateRefused(
            f"CreateAction {name!r} carries {', '.join(claimed)}, which the TRE sets as the run happens; "
            "remove them from the request"
        )
    raw = action.get("object")
    items = raw if isinstance(raw, list) else ([] if raw is None else [raw])
    for item in items:
        ref = refs(item)
        if not ref:
            raise CrateRefused(
                f'the object (inputs) of CreateAction {name!r} must be references {{"@id": ...}} to '
                f"entities of the @graph; found {item!r}"
            )
        entity = entities.get(ref[0])
        if entity is None:
            raise CrateRefused(
                f"input {ref[0]!r} of CreateAction {name!r} has no entity in the @graph; describe it (a "
                "File in data/, or a PropertyValue)"
            )
        if not _is_path(ref[0]):
            continue
        path = unquote(ref[0])
        if "File" in _types(entity) and path not in bag.payload:
            raise CrateRefused(
                f"input {ref[0]!r} of CreateAction {name!r} is not in the crate: put the file at "
                f"data/{path} (and in the BagIt manifests)"
            )
        folder = path.rstrip("/") + "/"
        if "Dataset" in _types(entity) and not any(p.startswith(folder) for p in bag.payload):
            raise CrateRefused(
                f"input {ref[0]!r} of CreateAction {name!r} is a folder with no files in the crate: put "
                f"its files under data/{folder}"
            )
    return action


def _is_path(ref: str) -> bool:
    """A reference to something inside the crate's payload (not a URI, local name or blank node)."""
    return not _SCHEME.match(ref) and not ref.startswith(("#", "_:")) and ref != ROOT


def _project(
    root: dict[str, Any], entities: dict[str, dict[str, Any]], submitter: Submitter
) -> tuple[str, str]:
    """The Project entity the root names (its @id) and the submitter's project it stands for."""
    theirs = ", ".join(submitter.projects) or "none (ask a federation admin to add you to one)"
    ref = _one(
        root,
        "sourceOrganization",
        'the root data entity ("./")',
        f"the Project the request is made for, named by its name or identifier (your projects: {theirs})",
    )
    entity = entities.get(ref)
    if entity is None or "Project" not in _types(entity):
        raise CrateRefused(
            f"the root's sourceOrganization {ref!r} must be an entity of @type Project in the @graph, "
            f"whose name or identifier is one of your projects: {theirs}"
        )
    names = _project_names(entity, entities)
    mine = {p.casefold(): p for p in submitter.projects}
    matched = sorted({mine[n] for n in names if n in mine})
    if len(matched) > 1:
        raise CrateRefused(
            f"Project {ref!r} names several of your projects ({', '.join(matched)}); name exactly one by "
            "its name or identifier"
        )
    if not matched:
        given = ", ".join(sorted(names)) or "nothing"
        raise NotYourProject(
            f"the crate's Project {ref!r} (name or identifier: {given}) is not a project you are a member "
            f"of; name one of your projects by its name or identifier: {theirs}"
        )
    return ref, matched[0]


def _project_names(entity: dict[str, Any], entities: dict[str, dict[str, Any]]) -> set[str]:
    """The project's `name`, and each `identifier`: a string, or a PropertyValue's `value`."""
    found: list[Any] = [entity.get("name")]
    raw = entity.get("identifier")
    for item in raw if isinstance(raw, list) else [raw]:
        if isinstance(item, dict):
            target = entities.get(item["@id"], item) if isinstance(item.get("@id"), str) else item
            found.append(target.get("value"))
        else:
            found.append(item)
    return {v.strip().casefold() for v in found if isinstance(v, str) and v.strip()}


# --- what the gateway decides ---------------------------------------------------------------------


def is_assessment(entity: dict[str, Any]) -> bool:
    """An AssessAction or one of its subtypes (by `@type`, or the `type` the profile's examples use),
    or anything typed with a Safe Haven Provenance term: a judgement only a TRE may record."""
    if _types(entity, keys=("@type", "type")) & ASSESS_TYPES:
        return True
    additional = entity.get("additionalType")
    terms = refs(additional) + [
        a for a in (additional if isinstance(additional, list) else [additional]) if isinstance(a, str)
    ]
    return any(t.startswith((SHP, "shp:")) for t in terms)


def _strip_assessments(metadata: dict[str, Any]) -> int:
    """Remove every AssessAction the client wrote, every reference to one, and the entities only they
    referred to (a forged sign-off's "checker", its "policy"); return how many actions."""
    graph = metadata["@graph"]
    stripped = [e for e in graph if is_assessment(e)]
    if not stripped:
        return 0
    gone = {e["@id"] for e in stripped}
    named = {node["@id"] for e in stripped for node, _ in _walk(e) if node is not e and "@id" in node}
    kept = [e for e in graph if e["@id"] not in gone]
    for entity in kept:
        _drop_references(entity, gone)
    orphans = named - gone - _references(kept) - {ROOT, METADATA_FILE}
    metadata["@graph"] = [e for e in kept if e["@id"] not in orphans]
    return len(gone)


def _references(graph: list[dict[str, Any]]) -> set[str]:
    """Every @id some entity of `graph` refers to (not its own)."""
    return {
        node["@id"] for entity in graph for node, _ in _walk(entity) if node is not entity and "@id" in node
    }


def _drop_references(entity: dict[str, Any], gone: set[str], *, keys: tuple[str, ...] | None = None) -> None:
    """Remove from `entity`'s properties (or only `keys`) every reference to an @id in `gone`."""

    def refers(value: Any) -> bool:
        return isinstance(value, dict) and isinstance(value.get("@id"), str) and value["@id"] in gone

    for key in [k for k in entity if k != "@id" and (keys is None or k in keys)]:
        value = entity[key]
        if isinstance(value, list):
            kept = [v for v in value if not refers(v)]
            if len(kept) != len(value):
                if kept:
                    entity[key] = kept
                else:
                    del entity[key]
        elif refers(value):
            del entity[key]


def agent_id(submitter: Submitter) -> str:
    """The submitter's @id in crates: stable per (issuer, subject), naming neither."""
    return person_id(submitter.issuer, submitter.subject)


def person_id(issuer: str, subject: str) -> str:
    """A person's @id in crates (request crates' agents, every record's submitter): one formula."""
    return f"#agent-{uuid.uuid5(uuid.NAMESPACE_URL, f'{issuer}#{subject}')}"


def _make_submitters(
    metadata: dict[str, Any],
    entities: dict[str, dict[str, Any]],
    action: dict[str, Any],
    project_id: str,
    submitter: Submitter,
) -> None:
    """The requesting agent becomes the authenticated person, a member of the project; nobody else in
    the crate stays a member of it by the crate's say-so."""
    claimed = refs(action.get("agent"))[0]
    person = agent_id(submitter)
    identifier = f"{person}-identifier"
    graph = [e for e in metadata["@graph"] if e["@id"] not in (person, identifier)]
    people = {e["@id"] for e in graph if "Person" in _types(e)}
    for entity in graph:
        if "memberOf" in entity:
            _drop_references(entity, {project_id}, keys=("memberOf",))
    _drop_references(entities[project_id], people, keys=("member",))
    action["agent"] = {"@id": person}
    if claimed not in _references([e for e in graph if e["@id"] != claimed]):
        graph = [e for e in graph if e["@id"] != claimed]
    graph += [
        {
            "@id": person,
            "@type": "Person",
            "name": submitter.username,
            "identifier": {"@id": identifier},
            "memberOf": [{"@id": project_id}],
        },
        {
            "@id": identifier,
            "@type": "PropertyValue",
            "name": "OpenID Connect subject",
            "propertyID": submitter.issuer,
            "value": submitter.subject,
        },
    ]
    metadata["@graph"] = graph
