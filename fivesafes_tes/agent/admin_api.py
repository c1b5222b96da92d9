"""The TRE's own API, served by the agent inside the TRE only when an address is configured:
`/tre/v1` for its admins (which projects and people may run work here) and `/review/v1` for its
output checkers (decisions on held files). The CLI (`fivesafes-tes tre ...`, `review ...`) calls it
with the person's own token: every decision is taken by the token's issuer and subject. Its probes,
`/healthz` and `/readyz`, need no token and say nothing about any task."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from fivesafes_tes import audit
from fivesafes_tes.agent import access, approvals, pages, record, review
from fivesafes_tes.agent.health import Health, Probes
from fivesafes_tes.agent.policy import TrePolicy
from fivesafes_tes.agent.tables import HeldFileRecord, LocalDecision, LocalProject
from fivesafes_tes.auth import AuthError, Person, Role, TokenValidator, name_key
from fivesafes_tes.db import Database
from fivesafes_tes.egress.store import ObjectStore
from fivesafes_tes.web import Site

_bearer = HTTPBearer(auto_error=False)
PREVIEW_BYTES = 64 * 1024


class DecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decision: Literal["approved", "rejected"]
    reason: str = Field(default="", max_length=2000)


class DecisionOut(BaseModel):
    username: str
    decision: str
    reason: str
    decided_by: str  # the admin's issuer#subject
    decided_by_name: str


class ProjectOut(BaseModel):
    name: str
    title: str
    starts_on: str | None
    ends_on: str | None
    members: list[str]
    decisions: list[DecisionOut]


@dataclass(frozen=True)
class TreApiState:
    """What the routes of one TRE's API share: its database, its name and whose tokens it accepts."""

    db: Database
    tre: str
    validator: TokenValidator
    require_tre_claim: bool


def tre_api_state(request: Request) -> TreApiState:
    """The state `create_admin_app` attached to the app serving `request`."""
    state = getattr(request.app.state, "tre_api", None)
    if not isinstance(state, TreApiState):
        raise TypeError("this app has no TRE API state: build it with create_admin_app")
    return state


def _caller(request: Request, credentials: HTTPAuthorizationCredentials | None, role: Role) -> Person:
    """The caller (issuer, subject, name) if their token is valid and `access.refusal` lets them act as
    `role` here; 401 (audited) or 403."""
    state = tre_api_state(request)
    db, tre, validator = state.db, state.tre, state.validator
    reason = "no bearer token"
    if credentials is not None:
        try:
            claims = validator.validate(credentials.credentials)
        except AuthError as exc:
            reason = exc.reason
        else:
            refused = access.refusal(claims.roles, claims.tre, role, tre, state.require_tre_claim)
            if refused is not None:
                raise HTTPException(403, refused)
            return claims.person
    with db.write() as session:
        audit.record(
            session,
            actor="anonymous",
            action="auth.failure",
            object=f"route:{request.url.path}",
            outcome="denied",
            detail={"reason": reason},
        )
    raise HTTPException(401, f"authentication required: {reason}", headers={"WWW-Authenticate": "Bearer"})


def tre_admin(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Person:
    return _caller(request, credentials, Role.TRE_ADMIN)


def output_checker(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Person:
    return _caller(request, credentials, Role.OUTPUT_CHECKER)


Admin = Annotated[Person, Depends(tre_admin)]
Checker = Annotated[Person, Depends(output_checker)]


class FileDecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        max_length=1024, description="The file: its container path, or step-N.stdout / .stderr."
    )
    decision: Literal["approved", "rejected"]
    reason: str = Field(default="", max_length=2000)


def create_admin_app(
    db: Database,
    tre: str,
    validator: TokenValidator,
    *,
    require_tre_claim: bool = True,
    store: ObjectStore | None = None,
    site: Site | None = None,
    policy: TrePolicy | None = None,
    health: Callable[[], Health] | None = None,
    probes: Probes | None = None,
) -> FastAPI:
    """The TRE-admin and review APIs of TRE `tre`. With `require_tre_claim` (the default) a token
    must name this TRE; pass False only where `validator`'s issuer serves this TRE alone. `store` is
    the airlock, for previews of held files. With `site`, the TRE's pages too (`agent.pages`), showing
    `policy` as the policy in force and `health()` as how the agent is doing. `probes` is what the
    agent serving the app tells its probes; without it (an app on its own, in tests) it is never ready."""
    app = FastAPI(title=f"Five Safes TES: TRE admin ({tre})", docs_url=None, redoc_url=None)
    app.state.tre_api = TreApiState(db, tre, validator, require_tre_claim)
    probed = probes or Probes(stall_s=float("inf"), sync_stale_s=0.0)
    if site is not None:
        site.install(app)
        app.include_router(pages.router(site, db, tre, policy, store, health))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(x) for x in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors()]
        return JSONResponse({"detail": "; ".join(parts)}, status_code=400)

    @app.get("/healthz", include_in_schema=False)
    def healthz(response: Response) -> dict[str, str]:
        """Liveness: the agent's threads run and its work loop moves."""
        return _answer(probed.liveness(), response)

    @app.get("/readyz", include_in_schema=False)
    def readyz(response: Response) -> dict[str, str]:
        """Readiness: the database answers, recovery at start is done, and a sync is recent."""
        return _answer(probed.readiness(db), response)

    @app.get("/tre/v1/projects", response_model=list[ProjectOut])
    def projects(_: Admin) -> list[ProjectOut]:
        with db.read() as session:
            decisions = list(session.scalars(select(LocalDecision)))
            return [
                ProjectOut(
                    name=p.name,
                    title=p.title,
                    starts_on=p.starts_on,
                    ends_on=p.ends_on,
                    members=p.members,
                    decisions=[
                        DecisionOut(
                            username=d.username,
                            decision=d.decision,
                            reason=d.reason,
                            decided_by=d.decided_by,
                            decided_by_name=d.decided_by_name,
                        )
                        for d in decisions
                        if d.project == p.name
                    ],
                )
                for p in session.scalars(select(LocalProject).order_by(LocalProject.name))
            ]

    def _decide(admin: Person, project: str, body: DecisionIn, username: str = "") -> dict[str, str]:
        try:
            with db.write() as session:
                approvals.decide(
                    session, admin, project, body.decision, username=username, reason=body.reason
                )
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from None
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        return {
            "project": project,
            "username": name_key(username),
            "decision": body.decision,
            "decided_by": admin.name,
        }

    @app.put("/tre/v1/projects/{project}/decision")
    def decide_project(project: str, body: DecisionIn, admin: Admin) -> dict[str, str]:
        return _decide(admin, project, body)

    @app.put("/tre/v1/projects/{project}/members/{username}/decision")
    def decide_member(project: str, username: str, body: DecisionIn, admin: Admin) -> dict[str, str]:
        return _decide(admin, project, body, username)

    @app.get("/review/v1/children")
    def pending(_: Checker) -> list[dict[str, Any]]:
        with db.read() as session:
            return [asdict(child) for child in review.pending(session)]

    @app.get("/review/v1/children/{child_id}")
    def show(child_id: str, _: Checker) -> dict[str, Any]:
        try:
            with db.read() as session:
                return asdict(review.describe(session, child_id))
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from None

    @app.get("/review/v1/children/{child_id}/disclosure")
    def disclosure(child_id: str, _: Checker) -> dict[str, Any]:
        """The full disclosure record of a settled child (every held file, finding and decision): it
        stays inside the TRE; the gateway gets only its released part."""
        try:
            with db.read() as session:
                return review.kept_record(session, child_id)
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from None

    @app.get(
        "/review/v1/children/{child_id}/crate",
        response_class=Response,
        responses={200: {"content": {record.MEDIA_TYPE: {}}, "description": "ro-crate-metadata.json"}},
    )
    def crate(child_id: str, _: Checker) -> Response:
        """The activity crate of the child's request as this TRE knows it (`agent.record`): the request,
        the gateway's checks, this TRE's sign-off and run. It stays inside the TRE."""
        try:
            with db.read() as session:
                return pages.crate_response(record.activity_crate(session, tre, child_id))
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from None

    @app.post(
        "/review/v1/children/{child_id}/decisions",
        responses={409: {"description": "The file can never be released; `detail` says why."}},
    )
    def decide_file(child_id: str, body: FileDecisionIn, checker: Checker) -> dict[str, str]:
        try:
            with db.write() as session:
                review.decide(
                    session,
                    child_id,
                    review.key_for(session, child_id, body.name),
                    checker,
                    body.decision,
                    reason=body.reason,
                )
        except (LookupError, review.ReviewRefused) as exc:
            raise HTTPException(review.refusal_status(exc) or 400, str(exc)) from None
        return {"child_id": child_id, "name": body.name, "decision": body.decision, "checker": checker.name}

    @app.get("/review/v1/children/{child_id}/preview")
    def preview(child_id: str, name: str, _: Checker) -> dict[str, str | None]:
        """The first lines of a held file (up to 64 KiB of it), for the checker's eye; never binary."""
        if store is None:
            raise HTTPException(404, "this TRE's review API has no airlock to preview from")
        try:
            with db.read() as session:
                held = session.get(HeldFileRecord, (child_id, review.key_for(session, child_id, name)))
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from None
        assert held is not None
        if held.size > PREVIEW_BYTES:
            return {"name": name, "preview": None}
        body = store.get_bytes(held.key, expect_sha256=held.sha256, max_size=PREVIEW_BYTES)
        return {"name": name, "preview": review.preview(body)}

    return app


def _answer(verdict: dict[str, str], response: Response) -> dict[str, str]:
    if verdict["status"] != "ok":
        response.status_code = 503
        response.headers["Retry-After"] = "5"
    return verdict


def validator_from(
    issuer: str | None, audience: str, jwks_url: str | None, roles_claim: str
) -> TokenValidator:
    """The admins' token validator; an admin API without an issuer to trust is refused outright."""
    from fivesafes_tes.auth import RemoteJwks, discover_jwks_url

    if not issuer:
        raise ValueError("the TRE-admin API needs FIVESAFES_AGENT_OIDC_ISSUER (whose tokens to trust)")
    return TokenValidator(
        issuer, audience, RemoteJwks(jwks_url or discover_jwks_url(issuer)), ["RS256", "ES256"], roles_claim
    )
