"""Discovery and JWKS of the embedded development issuer, served only when it is enabled."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request

from fivesafes_tes.auth import DevIssuer
from fivesafes_tes.gateway.context import context

router = APIRouter(prefix="/dev-issuer", include_in_schema=False)


@router.get("/.well-known/openid-configuration")
def openid_configuration(request: Request) -> dict[str, Any]:
    return _issuer(request).openid_configuration()


@router.get("/jwks.json")
def jwks(request: Request) -> dict[str, Any]:
    return _issuer(request).jwks()


def _issuer(request: Request) -> DevIssuer:
    """The app mounts these routes only with an issuer; without one they do not exist."""
    issuer = context(request).dev_issuer
    if issuer is None:
        raise HTTPException(404, "Not Found")
    return issuer
