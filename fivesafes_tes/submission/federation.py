"""The federation as the gateway knows it: TREs, projects, members, and which TREs a project uses.

Federation admins change it (every change audited); submissions read it to find a task's project
and target TREs; agents read their slice of it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from fivesafes_tes import audit
from fivesafes_tes.auth.principal import name_key
from fivesafes_tes.auth.tables import User
from fivesafes_tes.db.base import utcnow
from fivesafes_tes.submission.tables import Membership, Project, ProjectTre, PublishedPolicy, Tre
from fivesafes_tes.tes.admission import Admission

_SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


class NotFound(LookupError):
    """A named TRE, project or member does not exist; the message names it."""


class Conflict(Exception):
    """The thing already exists, or the change contradicts what is stored."""


class Forbidden(Exception):
    """The caller may not do this; the message says why in the caller's terms."""


class InvalidRequest(ValueError):
    """Bad input an admin or researcher can fix; the message says how."""


def _slug(kind: str, name: str) -> str:
    if not _SLUG.match(name):
        raise InvalidRequest(
            f"{kind} name {name!r} must be 1-63 lower-case letters, digits and hyphens, "
            "starting and ending with a letter or digit"
        )
    return name


# --- TREs -------------------------------------------------------------------------------------


def add_tre(session: Session, actor: str, name: str, title: str = "") -> Tre:
    _slug("TRE", name)
    if session.scalar(select(Tre).where(Tre.name == name)):
        raise Conflict(f"TRE {name!r} already exists")
    tre = Tre(name=name, title=title)
    session.add(tre)
    session.flush()
    audit.record(session, actor=actor, action="admin.tre.add", object=f"tre:{name}", outcome="ok")
    return tre


def tre_by_name(session: Session, name: str) -> Tre:
    tre = session.scalar(select(Tre).where(Tre.name == name))
    if tre is None:
        raise NotFound(f"no TRE named {name!r}")
    return tre


def list_tres(session: Session) -> list[Tre]:
    return list(session.scalars(select(Tre).order_by(Tre.name)))


def publish_policy(session: Session, tre: Tre, admission: Admission) -> bool:
    """Keep what `tre`'s agent says it will run, for checking tasks at submission; audited when it
    changes. Returns whether it changed (an agent publishes at every sync)."""
    if admission.tre != tre.name:
        raise InvalidRequest(f"tre: this agent publishes for {tre.name!r}, not {admission.tre!r}")
    document = admission.model_dump(mode="json")
    row = session.get(PublishedPolicy, tre.id, with_for_update=True)
    if row is not None and row.document == document:
        return False
    if row is None:
        session.add(PublishedPolicy(tre_id=tre.id, document=document, published_at=utcnow()))
    else:
        row.document, row.published_at = document, utcnow()
    audit.record(
        session,
        actor=f"agent:{tre.name}",
        action="tre.policy",
        object=f"tre:{tre.name}",
        outcome="published",
        detail=document,
    )
    return True


def published_policies(session: Session, tre_ids: list[int]) -> dict[int, Admission]:
    """What each of these TREs last published it will run; a TRE that has not published is absent."""
    if not tre_ids:
        return {}
    rows = session.scalars(select(PublishedPolicy).where(PublishedPolicy.tre_id.in_(tre_ids)))
    return {row.tre_id: Admission.model_validate(row.document) for row in rows}


# --- projects ---------------------------------------------------------------------------------


@dataclass
class ProjectView:
    name: str
    title: str
    starts_on: date | None
    ends_on: date | None
    tres: list[str]
    members: list[str]
    default_for: list[str]


def add_project(
    session: Session,
    actor: str,
    name: str,
    *,
    title: str = "",
    starts_on: date | None = None,
    ends_on: date | None = None,
    tres: list[str] | None = None,
) -> Project:
    _slug("project", name)
    _check_dates(starts_on, ends_on)
    if session.scalar(select(Project).where(Project.name == name)):
        raise Conflict(f"project {name!r} already exists")
    project = Project(name=name, title=title, starts_on=starts_on, ends_on=ends_on)
    session.add(project)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="admin.project.add",
        object=f"project:{name}",
        outcome="ok",
        detail={"starts_on": str(starts_on or ""), "ends_on": str(ends_on or "")},
    )
    if tres:
        set_project_tres(session, actor, name, tres)
    return project


def update_project(
    session: Session,
    actor: str,
    name: str,
    *,
    title: str | None = None,
    starts_on: date | None = None,
    ends_on: date | None = None,
) -> Project:
    project = project_by_name(session, name)
    if title is not None:
        project.title = title
    if starts_on is not None:
        project.starts_on = starts_on
    if ends_on is not None:
        project.ends_on = ends_on
    _check_dates(project.starts_on, project.ends_on)
    audit.record(
        session,
        actor=actor,
        action="admin.project.update",
        object=f"project:{name}",
        outcome="ok",
        detail={"starts_on": str(project.starts_on or ""), "ends_on": str(project.ends_on or "")},
    )
    return project


def _check_dates(starts_on: date | None, ends_on: date | None) -> None:
    if starts_on and ends_on and ends_on < starts_on:
        raise InvalidRequest(f"the project ends ({ends_on}) before it starts ({starts_on})")


def project_by_name(session: Session, name: str) -> Project:
    project = session.scalar(select(Project).where(Project.name == name.lower()))
    if project is None:
        raise NotFound(f"no project named {name!r}")
    return project


def set_project_tres(session: Session, actor: str, project_name: str, tre_names: list[str]) -> None:
    project = project_by_name(session, project_name)
    tres = [tre_by_name(session, n) for n in dict.fromkeys(tre_names)]
    session.execute(delete(ProjectTre).where(ProjectTre.project_id == project.id))
    session.add_all(ProjectTre(project_id=project.id, tre_id=t.id) for t in tres)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="admin.project.tres",
        object=f"project:{project.name}",
        outcome="ok",
        detail={"tres": [t.name for t in tres]},
    )


def project_tres(session: Session, project_id: int) -> list[Tre]:
    return list(
        session.scalars(
            select(Tre)
            .join(ProjectTre, ProjectTre.tre_id == Tre.id)
            .where(ProjectTre.project_id == project_id)
            .order_by(Tre.name)
        )
    )


def describe_projects(session: Session, names: list[str] | None = None) -> list[ProjectView]:
    query = select(Project).order_by(Project.name)
    if names is not None:
        query = query.where(Project.name.in_(names))
    out = []
    for project in session.scalars(query):
        members = list(
            session.scalars(
                select(Membership).where(Membership.project_id == project.id).order_by(Membership.username)
            )
        )
        out.append(
            ProjectView(
                name=project.name,
                title=project.title,
                starts_on=project.starts_on,
                ends_on=project.ends_on,
                tres=[t.name for t in project_tres(session, project.id)],
                members=[m.username for m in members],
                default_for=[m.username for m in members if m.is_default],
            )
        )
    return out


# --- members ----------------------------------------------------------------------------------


def add_member(
    session: Session, actor: str, project_name: str, username: str, *, default: bool = False
) -> None:
    """Add a person by username (compared casefolded). The row is bound at once to whoever already
    holds that name (see `claim_memberships`), else to the one user presenting it, else to the first
    who presents it later."""
    project = project_by_name(session, project_name)
    if not username or len(username) > 255:
        raise InvalidRequest("username must be 1-255 characters (the token's preferred_username)")
    name = name_key(username)
    member = session.get(Membership, (project.id, name))
    if member is None:
        member = Membership(project_id=project.id, username=name, user_id=_holder(session, name))
        session.add(member)
    if default:
        same_person = Membership.username == name
        if member.user_id is not None:
            same_person = or_(same_person, Membership.user_id == member.user_id)
        for other in session.scalars(select(Membership).where(same_person)):
            other.is_default = False
        member.is_default = True
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="admin.member.add",
        object=f"project:{project.name}",
        outcome="ok",
        detail={"username": name, "default": default, "bound": member.user_id is not None},
    )


def _holder(session: Session, name: str) -> int | None:
    """The user a new membership for `name` belongs to: the one its other memberships are bound to,
    else the only user whose username is `name`; None while that is nobody or ambiguous."""
    bound = session.scalar(
        select(Membership.user_id)
        .where(Membership.username == name, Membership.user_id.is_not(None))
        .limit(1)
    )
    if bound is not None:
        return bound
    # lower() narrows in SQL; the casefolded comparison decides (a name it misses binds on first use).
    named = [
        user_id
        for user_id, username in session.execute(
            select(User.id, User.username).where(func.lower(User.username) == name.lower())
        )
        if name_key(username) == name
    ]
    return named[0] if len(named) == 1 else None


def claim_memberships(session: Session, user: User, renamed: bool) -> None:
    """Bind to `user` the memberships added under their (casefolded) username and not yet bound.

    A name already bound to someone else stays theirs: another subject presenting the same
    preferred_username gets none of it, and when they start presenting it (`renamed`: a first
    login or a changed name) that is audited as `auth.name_conflict`."""
    name = name_key(user.username)
    holder = session.scalar(
        select(Membership.user_id)
        .where(Membership.username == name, Membership.user_id.is_not(None), Membership.user_id != user.id)
        .limit(1)
    )
    if holder is not None:
        if renamed:
            audit.record(
                session,
                actor=user.username,
                action="auth.name_conflict",
                object=f"user:{name}",
                outcome="denied",
                detail={"issuer": user.issuer, "subject": user.subject, "held_by_user_id": holder},
            )
        return
    session.execute(
        update(Membership)
        .where(Membership.username == name, Membership.user_id.is_(None))
        .values(user_id=user.id)
    )


def remove_member(session: Session, actor: str, project_name: str, username: str) -> None:
    project = project_by_name(session, project_name)
    name = name_key(username)
    member = session.get(Membership, (project.id, name))
    if member is None:
        raise NotFound(f"{username!r} is not a member of project {project.name!r}")
    session.delete(member)
    audit.record(
        session,
        actor=actor,
        action="admin.member.remove",
        object=f"project:{project.name}",
        outcome="ok",
        detail={"username": name},
    )


# --- where a task goes ------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    project: Project
    tres: list[Tre]
    # What those TREs published they will run, by TRE id; one that has not published is absent.
    policies: dict[int, Admission] = field(default_factory=dict)


def resolve_target(session: Session, user_id: int, tags: dict[str, str | None], today: date) -> Target:
    """Project from tag `project` (key in any case) or the user's default project; TREs from tag `tres`
    (`|` or `,` separated) or all of the project's TREs. Refuses what the user may not do, saying why."""
    lowered = {k.lower(): (v or "") for k, v in tags.items()}
    memberships = {
        m.project_id: m for m in session.scalars(select(Membership).where(Membership.user_id == user_id))
    }
    if "project" in lowered and lowered["project"].strip():
        project = session.scalar(select(Project).where(Project.name == lowered["project"].strip().lower()))
        if project is None or project.id not in memberships:
            raise Forbidden(
                f"you are not a member of a project named {lowered['project']!r}; "
                f"your projects: {_names(session, memberships) or 'none'}"
            )
    else:
        default = next((m for m in memberships.values() if m.is_default), None)
        if default is None and len(memberships) == 1:
            default = next(iter(memberships.values()))
        if default is None:
            raise InvalidRequest(
                "say which project this task belongs to with the tag 'project'; "
                f"your projects: {_names(session, memberships) or 'none (ask a federation admin to add you)'}"
            )
        project = session.get(Project, default.project_id)
        assert project is not None
    if project.starts_on and today < project.starts_on:
        raise Forbidden(f"project {project.name!r} starts on {project.starts_on}; submit from then on")
    if project.ends_on and today > project.ends_on:
        raise Forbidden(
            f"project {project.name!r} ended on {project.ends_on}; ask a federation admin to extend it"
        )
    available = project_tres(session, project.id)
    if not available:
        raise InvalidRequest(f"project {project.name!r} has no TREs assigned yet; ask a federation admin")
    wanted = [t.strip() for t in re.split(r"[|,]", lowered.get("tres", "")) if t.strip()]
    if not wanted:
        return Target(project, available, published_policies(session, [t.id for t in available]))
    by_name = {t.name: t for t in available}
    unknown = [t for t in wanted if t not in by_name]
    if unknown:
        raise InvalidRequest(
            f"tag tres names {', '.join(repr(u) for u in unknown)}, "
            f"not among project {project.name!r}'s TREs: "
            f"{', '.join(by_name)}"
        )
    chosen = [by_name[t] for t in dict.fromkeys(wanted)]
    return Target(project, chosen, published_policies(session, [t.id for t in chosen]))


def _names(session: Session, memberships: dict[int, Membership]) -> str:
    if not memberships:
        return ""
    return ", ".join(
        session.scalars(select(Project.name).where(Project.id.in_(memberships)).order_by(Project.name))
    )
