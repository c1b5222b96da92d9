"""The TRE-admin API (`/tre/v1`), served by the agent inside the TRE only when an address is
configured: which projects and people may run work here. The CLI (`fivesafes-tes tre ...`) does the
same on the agent's database directly."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from fivesafes_tes import audit
from fivesafes_tes.agent import approvals
from fivesafes_tes.agent.tables import LocalDecision, LocalProject
from fivesafes_tes.auth import AuthError, Role, TokenValidator
from fivesafes_tes.db import Database

_bearer = HTTPBearer(auto_error=False)


class DecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decision: Literal["approved", "rejected"]
    reason: str = Field(default="", max_length=2000)


class DecisionOut(BaseModel):
    username: str
    decision: str
    reason: str
    decided_by: str


class ProjectOut(BaseModel):
    name: str
    title: str
    starts_on: str | None
    ends_on: str | None
    members: list[str]
    decisions: list[DecisionOut]


def tre_admin(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str:
    """The calling admin's username; 401 (audited) without a valid token, 403 for anyone else."""
    db, tre, validator = request.app.state.db, request.app.state.tre, request.app.state.validator
    reason = "no bearer token"
    if credentials is not None:
        try:
            claims = validator.validate(credentials.credentials)
        except AuthError as exc:
            reason = exc.reason
        else:
            if Role.TRE_ADMIN not in claims.roles:
                raise HTTPException(403, "this API is for this TRE's admins (role tre-admin)")
            if claims.tre and claims.tre != tre:
                raise HTTPException(403, f"this token is for TRE {claims.tre!r}, not {tre!r}")
            return claims.username
    with db.write() as session:
        audit.record(session, actor="anonymous", action="auth.failure", object=f"route:{request.url.path}",
                     outcome="denied", detail={"reason": reason})
    raise HTTPException(401, f"authentication required: {reason}", headers={"WWW-Authenticate": "Bearer"})


Admin = Annotated[str, Depends(tre_admin)]


def create_admin_app(db: Database, tre: str, validator: TokenValidator) -> FastAPI:
    app = FastAPI(title=f"Five Safes TES: TRE admin ({tre})", docs_url=None, redoc_url=None)
    app.state.db, app.state.tre, app.state.validator = db, tre, validator

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(x) for x in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors()]
        return JSONResponse({"detail": "; ".join(parts)}, status_code=400)

    @app.get("/tre/v1/projects", response_model=list[ProjectOut])
    def projects(_: Admin) -> list[ProjectOut]:
        with db.read() as session:
            decisions = list(session.scalars(select(LocalDecision)))
            return [
                ProjectOut(
                    name=p.name, title=p.title, starts_on=p.starts_on, ends_on=p.ends_on, members=p.members,
                    decisions=[DecisionOut(username=d.username, decision=d.decision, reason=d.reason,
                                           decided_by=d.decided_by) for d in decisions if d.project == p.name],
                )
                for p in session.scalars(select(LocalProject).order_by(LocalProject.name))
            ]

    def _decide(admin: str, project: str, body: DecisionIn, username: str = "") -> dict:
        try:
            with db.write() as session:
                approvals.decide(session, admin, project, body.decision, username=username, reason=body.reason)
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from None
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        return {"project": project, "username": username, "decision": body.decision}

    @app.put("/tre/v1/projects/{project}/decision")
    def decide_project(project: str, body: DecisionIn, admin: Admin) -> dict:
        return _decide(admin, project, body)

    @app.put("/tre/v1/projects/{project}/members/{username}/decision")
    def decide_member(project: str, username: str, body: DecisionIn, admin: Admin) -> dict:
        return _decide(admin, project, body, username)

    return app


def validator_from(issuer: str | None, audience: str, jwks_url: str | None, roles_claim: str) -> TokenValidator:
    """The admins' token validator; an admin API without an issuer to trust is refused outright."""
    from fivesafes_tes.auth import RemoteJwks, discover_jwks_url

    if not issuer:
        raise ValueError("the TRE-admin API needs FIVESAFES_AGENT_OIDC_ISSUER (whose tokens to trust)")
    return TokenValidator(issuer, audience, RemoteJwks(jwks_url or discover_jwks_url(issuer)), ["RS256", "ES256"],
                          roles_claim)
