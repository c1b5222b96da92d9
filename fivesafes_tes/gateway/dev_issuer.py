"""Discovery and JWKS of the embedded development issuer, served only when it is enabled."""

from __future__ import annotations

from fastapi import APIRouter, Request

from fivesafes_tes.gateway.context import context

router = APIRouter(prefix="/dev-issuer", include_in_schema=False)


@router.get("/.well-known/openid-configuration")
def openid_configuration(request: Request) -> dict:
    return context(request).dev_issuer.openid_configuration()


@router.get("/jwks.json")
def jwks(request: Request) -> dict:
    return context(request).dev_issuer.jwks()
