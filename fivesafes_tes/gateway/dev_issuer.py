"""Discovery and JWKS of the embedded development issuer, served only when it is enabled."""

from __future__ import annotations

from fastapi import APIRouter, Request

router = APIRouter(prefix="/dev-issuer", include_in_schema=False)


@router.get("/.well-known/openid-configuration")
def openid_configuration(request: Request) -> dict:
    return request.app.state.ctx.dev_issuer.openid_configuration()


@router.get("/jwks.json")
def jwks(request: Request) -> dict:
    return request.app.state.ctx.dev_issuer.jwks()
