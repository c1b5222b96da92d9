"""The gateway's pages, under /web: a researcher signs in with the federation's issuer and follows
their tasks. They call the same submission functions as the TES API, as the same user: a person is
provisioned when they sign in, exactly as on their first API call, and sees only what the API would
show them: a task's decisions and reasons as the researcher view gives them, and its released files
and results crate through the API's own download code. docs/web.md says what is still to come."""

# No `from __future__ import annotations` here: FastAPI reads the routes' annotations at run time, and
# the Annotated aliases they name are local to `router`.

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from fivesafes_tes import audit
from fivesafes_tes.auth import Claims, TokenValidator, provision
from fivesafes_tes.auth.principal import Role
from fivesafes_tes.auth.tables import User
from fivesafes_tes.db import Database
from fivesafes_tes.gateway import admin_api, results_api
from fivesafes_tes.gateway.context import context
from fivesafes_tes.gateway.errors import describe_validation, refusal_status
from fivesafes_tes.settings import GatewaySettings
from fivesafes_tes.submission import federation, results
from fivesafes_tes.submission.federation import claim_memberships
from fivesafes_tes.submission.ids import BadPageToken
from fivesafes_tes.submission.tasks import (
    Actor,
    InvalidTask,
    ListQuery,
    TaskNotFound,
    get_task,
    list_tasks,
    record_refusal,
)
from fivesafes_tes.tes.models import View
from fivesafes_tes.web import (
    NavLink,
    OidcClient,
    PageRefused,
    SessionCookies,
    Site,
    WebSession,
    new_session_key,
)

log = logging.getLogger(__name__)

PREFIX = "/web"
TASKS_PAGE = 50
# What a federation change's redirect says was done (`name`: the TRE or project; `who`: the member).
DONE = {
    "tre": "Added TRE {name}.",
    "project": "Added project {name}.",
    "details": "Saved the title and dates of project {name}.",
    "tres": "Saved the TREs of project {name}.",
    "member": "Added {who} to project {name}.",
    "removed": "Removed {who} from project {name}.",
}
# The federation forms' labels, for the fields the admin API's models name.
LABELS = {
    "name": "Name",
    "title": "Title",
    "starts_on": "Starts on",
    "ends_on": "Ends on",
    "tres": "TREs",
    "username": "Username",
}
# The federation's refusals of bad input (the API answers each with `errors.refusal_status`).
FEDERATION_REFUSALS = (federation.InvalidRequest, federation.NotFound, federation.Conflict)
NAV = (
    NavLink(f"{PREFIX}/tasks", "My tasks", None),
    NavLink(f"{PREFIX}/federation", "Federation", Role.FEDERATION_ADMIN),
)


def authorize(me: WebSession, role: Role) -> str | None:
    """The gateway's rule for its role-only pages: the role, whatever TRE the token names."""
    return None if role in me.roles else f"this page needs the role {role.value}"


def site_for(settings: GatewaySettings, validator: TokenValidator, db: Database) -> Site:
    """The gateway's pages as `settings` configure them, signing in with the issuer the API trusts."""
    public = settings.public_url.rstrip("/") + PREFIX
    if settings.web_session_key is not None:
        key = settings.web_session_key.get_secret_value().encode()
    else:
        log.warning(
            "FIVESAFES_WEB_SESSION_KEY is unset: signing page sessions with a key made for this process "
            "only, so they end when it stops and no other replica accepts them"
        )
        key = new_session_key()
    secret = settings.web_client_secret.get_secret_value() if settings.web_client_secret else None
    return Site(
        title="Five Safes TES",
        oidc=OidcClient(validator, settings.web_client_id, f"{public}/auth/callback", client_secret=secret),
        cookies=SessionCookies(
            key, settings.web_session_ttl_s, secure=public.startswith("https://"), name="fivesafes-gateway"
        ),
        authorize=authorize,
        nav=NAV,
        audit=_auditor(db),
        prefix=PREFIX,
        on_sign_in=_provisioner(db),
    )


def _provisioner(db: Database) -> Callable[[Claims], None]:
    def provision_user(claims: Claims) -> None:
        with db.write() as session:
            provision(session, claims, on_provision=claim_memberships)

    return provision_user


def _auditor(db: Database) -> Callable[[str, str, str, dict[str, str]], None]:
    def record(actor: str, action: str, outcome: str, detail: dict[str, str]) -> None:
        with db.write() as session:
            audit.record(
                session, actor=actor, action=action, object="web:pages", outcome=outcome, detail=detail
            )

    return record


def router(site: Site, db: Database) -> APIRouter:
    """The gateway's pages on `db`."""
    pages = APIRouter(prefix=PREFIX, include_in_schema=False)
    SignedIn = Annotated[WebSession, Depends(site.signed_in(None))]
    FederationAdmin = Annotated[WebSession, Depends(site.signed_in(Role.FEDERATION_ADMIN))]
    FederationForm = Annotated[tuple[WebSession, dict[str, str]], Depends(site.posted(Role.FEDERATION_ADMIN))]

    @pages.get("/", response_class=HTMLResponse)
    def home(request: Request, me: SignedIn) -> Response:
        return site.page(request, "gateway/home.html", me=me)

    @pages.get("/tasks", response_class=HTMLResponse)
    def tasks_page(request: Request, me: SignedIn, page: str = "") -> Response:
        with db.read() as session:
            try:
                found = list_tasks(
                    session,
                    _actor(session, me),
                    ListQuery(page_size=TASKS_PAGE, page_token=page or None, view=View.BASIC),
                )
            except (InvalidTask, BadPageToken) as exc:
                raise PageRefused(400, str(exc)) from None
        return site.page(
            request,
            "gateway/tasks.html",
            me=me,
            tasks=found.tasks,
            following=f"{PREFIX}/tasks?page={found.next_page_token}" if found.next_page_token else None,
        )

    @pages.get("/tasks/{task_id}", response_class=HTMLResponse)
    def task_page(request: Request, task_id: str, me: SignedIn) -> Response:
        with _refusals(db):
            with db.read() as session:
                actor = _actor(session, me)
                task = get_task(session, actor, task_id, View.FULL)
            released = results_api.results_of(db, actor, task_id, f"{PREFIX}/results")
        return site.page(
            request,
            "gateway/task.html",
            me=me,
            task=task,
            results={entry.tre: entry for entry in released.tres},
            crate=f"{PREFIX}/tasks/{task_id}/crate",
        )

    @pages.get("/federation", response_class=HTMLResponse)
    def federation_page(
        request: Request, me: FederationAdmin, done: str = "", name: str = "", who: str = ""
    ) -> Response:
        """The federation as the admin API lists it (`/admin/v1/tres` and `/projects`), with a form for
        each change the admin API makes."""
        shown = {"kind": done, "name": name, "who": who} if done in DONE else None
        return _federation(request, me, done=shown)

    def _federation(
        request: Request,
        me: WebSession,
        status: int = 200,
        *,
        done: dict[str, str] | None = None,
        refused: FormRefused | None = None,
    ) -> Response:
        with db.read() as session:
            tres = [(t.name, t.title) for t in federation.list_tres(session)]
            projects = federation.describe_projects(session)
        return site.page(
            request,
            "gateway/federation.html",
            status,
            me=me,
            tres=tres,
            projects=projects,
            done=done,
            done_messages=DONE,
            refused=refused,
        )

    def _change(
        request: Request,
        me: WebSession,
        form: dict[str, str],
        where: tuple[str, str | None],
        change: Callable[[Session], None],
        done: dict[str, str],
    ) -> Response:
        """Make `change` as the admin API would and send the browser back to the federation page; bad
        input re-renders the page with what to fix beside the form `where` names (its id, and its
        project), keeping what was typed."""
        try:
            with db.write() as session:
                change(session)
        except ValidationError as exc:
            status, message = 400, describe_validation(exc, LABELS)
        except FEDERATION_REFUSALS as exc:
            status, message = refusal_status(exc) or 400, str(exc)
        else:
            admin_api.changed(request)
            return RedirectResponse(f"{PREFIX}/federation?{urlencode(done)}", status_code=303)
        form_id, project = where
        return _federation(request, me, status, refused=FormRefused(form_id, project, message, form))

    @pages.post("/federation/tres")
    def add_tre(request: Request, posted: FederationForm) -> Response:
        me, form = posted

        def change(session: Session) -> None:
            body = admin_api.TreIn(name=_field(form, "name"), title=form.get("title", ""))
            federation.add_tre(session, me.username, body.name, body.title)

        return _change(
            request, me, form, ("add-tre", None), change, {"done": "tre", "name": _field(form, "name")}
        )

    @pages.post("/federation/projects")
    def add_project(request: Request, posted: FederationForm) -> Response:
        me, form = posted

        def change(session: Session) -> None:
            body = admin_api.ProjectIn.model_validate(
                {
                    "name": _field(form, "name"),
                    "title": form.get("title", ""),
                    "starts_on": _field(form, "starts_on") or None,
                    "ends_on": _field(form, "ends_on") or None,
                    "tres": _checked_tres(form),
                }
            )
            federation.add_project(
                session,
                me.username,
                body.name,
                title=body.title,
                starts_on=body.starts_on,
                ends_on=body.ends_on,
                tres=body.tres,
            )

        done = {"done": "project", "name": _field(form, "name")}
        return _change(request, me, form, ("add-project", None), change, done)

    @pages.post("/federation/projects/{name}")
    def update_project(request: Request, name: str, posted: FederationForm) -> Response:
        me, form = posted

        def change(session: Session) -> None:
            body = admin_api.ProjectPatch.model_validate(
                {
                    "title": form.get("title"),
                    "starts_on": _field(form, "starts_on") or None,
                    "ends_on": _field(form, "ends_on") or None,
                }
            )
            federation.update_project(
                session, me.username, name, title=body.title, starts_on=body.starts_on, ends_on=body.ends_on
            )

        return _change(
            request, me, form, (f"details-{name}", name), change, {"done": "details", "name": name}
        )

    @pages.post("/federation/projects/{name}/tres")
    def set_tres(request: Request, name: str, posted: FederationForm) -> Response:
        me, form = posted

        def change(session: Session) -> None:
            body = admin_api.TresIn(tres=_checked_tres(form))
            federation.set_project_tres(session, me.username, name, body.tres)

        return _change(request, me, form, (f"tres-{name}", name), change, {"done": "tres", "name": name})

    @pages.post("/federation/projects/{name}/members")
    def add_member(request: Request, name: str, posted: FederationForm) -> Response:
        me, form = posted

        def change(session: Session) -> None:
            body = admin_api.MemberIn(username=_field(form, "username"), default="default" in form)
            federation.add_member(session, me.username, name, body.username, default=body.default)

        done = {"done": "member", "name": name, "who": _field(form, "username")}
        return _change(request, me, form, (f"member-{name}", name), change, done)

    @pages.post("/federation/projects/{name}/members/remove")
    def remove_member(request: Request, name: str, posted: FederationForm) -> Response:
        me, form = posted
        username = form.get("username", "")

        def change(session: Session) -> None:
            federation.remove_member(session, me.username, name, username)

        done = {"done": "removed", "name": name, "who": username}
        return _change(request, me, form, (f"members-{name}", name), change, done)

    # Downloads: the API's own code paths (the same authorisation, SHA-256 check, audit and streaming),
    # as the signed-in user; a refusal is the API's, as a page.
    @pages.get("/results/{file_id}")
    def download(
        request: Request, file_id: Annotated[int, PathParam(ge=1, le=2**31 - 1)], me: SignedIn
    ) -> Response:
        with _refusals(db):
            return results_api.file_download(context(request), _signed_in_actor(db, me), file_id)

    @pages.get("/tasks/{task_id}/crate")
    def crate(request: Request, task_id: str, me: SignedIn) -> Response:
        with _refusals(db):
            return results_api.crate_download(context(request), _signed_in_actor(db, me), task_id)

    return pages


@dataclass(frozen=True)
class FormRefused:
    """A federation form the admin must correct: which form (its id, and its project's name if it is
    one project's), what to fix, and what they typed."""

    form: str
    project: str | None
    message: str
    typed: dict[str, str]


def _field(form: dict[str, str], name: str) -> str:
    """A name, username or date as typed, without the spaces a paste brings around it."""
    return form.get(name, "").strip()


def _checked_tres(form: dict[str, str]) -> list[str]:
    """The TREs ticked in a form: one checkbox `tre.NAME` each (a form sends each field once)."""
    return [field.removeprefix("tre.") for field in form if field.startswith("tre.")]


@contextmanager
def _refusals(db: Database) -> Iterator[None]:
    """The submission functions' refusals as pages: someone else's task or file is a 404 page, audited
    as the API audits it; a released file that cannot be sent now, a 503 page."""
    try:
        yield
    except TaskNotFound as exc:
        with db.write() as session:
            record_refusal(session, exc)
        raise PageRefused(404, exc.message) from None
    except (results.IntegrityAlert, results.NoResultsStore) as exc:
        raise PageRefused(503, str(exc)) from None


def _signed_in_actor(db: Database, me: WebSession) -> Actor:
    with db.read() as session:
        return _actor(session, me)


def _actor(session: Session, me: WebSession) -> Actor:
    """The user `me` signed in as (sign-in provisioned them), as the submission functions know callers."""
    user = session.scalar(select(User).where(User.issuer == me.issuer, User.subject == me.subject))
    if user is None:  # the database was replaced since
        raise PageRefused(403, "this gateway does not know you any more: sign out and sign in again")
    return Actor(user_id=user.id, name=user.username)
