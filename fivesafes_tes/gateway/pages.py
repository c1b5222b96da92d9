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
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from fivesafes_tes import audit
from fivesafes_tes.auth import Claims, TokenValidator, provision
from fivesafes_tes.auth.principal import Role
from fivesafes_tes.auth.tables import User
from fivesafes_tes.db import Database
from fivesafes_tes.gateway import results_api
from fivesafes_tes.gateway.context import context
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
    def federation_page(request: Request, me: FederationAdmin) -> Response:
        """The federation as the admin API lists it (`/api/v1/admin/tres` and `/projects`), read-only."""
        with db.read() as session:
            tres = [(t.name, t.title) for t in federation.list_tres(session)]
            projects = federation.describe_projects(session)
        return site.page(request, "gateway/federation.html", me=me, tres=tres, projects=projects)

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
