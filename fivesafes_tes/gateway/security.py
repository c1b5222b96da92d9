"""Bearer-token authentication as a FastAPI dependency; every failure is audited once."""

from __future__ import annotations

import hmac
import logging
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from fivesafes_tes import audit
from fivesafes_tes.auth import AuthError, Principal, authenticate
from fivesafes_tes.gateway.context import context
from fivesafes_tes.submission.federation import claim_memberships
from fivesafes_tes.submission.tasks import Actor

log = logging.getLogger(__name__)
_bearer = HTTPBearer(auto_error=False, description="A JWT from the federation's OIDC issuer.")
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="fivesafes-tes"'}


def _fail(request: Request, reason: str) -> HTTPException:
    ctx = context(request)
    client = request.client.host if request.client else "unknown"
    log.info("authentication failed on %s %s from %s: %s", request.method, request.url.path, client, reason)
    with ctx.db.write() as session:
        audit.record(
            session,
            actor="anonymous",
            action="auth.failure",
            object=f"route:{request.method} {request.url.path}",
            outcome="denied",
            detail={"reason": reason, "client": client},
        )
    return HTTPException(401, f"authentication required: {reason}", headers=_CHALLENGE)


def current_principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise _fail(request, "no bearer token")
    ctx = context(request)
    try:
        return authenticate(
            ctx.db, ctx.validator, credentials.credentials, ctx.user_cache, on_provision=claim_memberships
        )
    except AuthError as exc:
        raise _fail(request, exc.reason) from None


def metrics_reader(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Prometheus may present the static metrics token; anyone else needs a valid JWT."""
    static = context(request).settings.metrics_token
    if (
        static
        and credentials
        and hmac.compare_digest(credentials.credentials.encode(), static.get_secret_value().encode())
    ):
        return
    current_principal(request, credentials)


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


async def bearer_present(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> HTTPAuthorizationCredentials:
    """For routes that validate the token themselves, in the same worker thread as their database work
    (one thread hop instead of two on the hottest write path): a missing token is refused here."""
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise await run_in_threadpool(_fail, request, "no bearer token")
    return credentials


BearerToken = Annotated[HTTPAuthorizationCredentials, Depends(bearer_present)]


def actor_of(principal: Principal) -> Actor:
    return Actor(user_id=principal.user_id, name=principal.username)
