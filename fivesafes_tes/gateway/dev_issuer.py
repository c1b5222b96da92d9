"""The embedded development issuer's routes, served only when it is enabled: discovery, JWKS, and the
authorisation-code flow with PKCE (S256) that the pages sign in with. Its login page lets anyone be
anyone: one of the federation's demo people, picked from a list. Never enable it in production."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from sqlalchemy import select

from fivesafes_tes.auth import DevIssuer
from fivesafes_tes.auth.issuer import DevPerson, InvalidGrant
from fivesafes_tes.auth.principal import Role
from fivesafes_tes.gateway.context import context
from fivesafes_tes.submission import federation
from fivesafes_tes.submission.tables import Membership
from fivesafes_tes.web import PageRefused, read_form, render, security_headers

router = APIRouter(prefix="/dev-issuer", include_in_schema=False)
PARAMETERS = ("response_type", "client_id", "redirect_uri", "scope", "state", "nonce", "code_challenge")
TITLE = "Development sign-in"
# A redirect URI's host[:port]: its origin goes into the login page's CSP, so nothing else may be there.
HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


@router.get("/.well-known/openid-configuration")
def openid_configuration(request: Request) -> dict[str, Any]:
    return _issuer(request).openid_configuration()


@router.get("/jwks.json")
def jwks(request: Request) -> dict[str, Any]:
    return _issuer(request).jwks()


@router.get("/authorize")
def authorize(request: Request) -> Response:
    """The login page: who to sign in as, for the client and redirect URI the request names."""
    _issuer(request)
    query = dict(request.query_params)
    try:
        request_ = _authorization(query, request.query_params.get("code_challenge_method", ""))
    except PageRefused as exc:
        return _page("error.html", exc.status, message=exc.message)
    return _page(
        "dev_login.html",
        200,
        _origin(request_["redirect_uri"]),
        people=_people(request),
        request=request_,
        client=request_["client_id"],
        returns_to=_origin(request_["redirect_uri"]),
    )


@router.post("/authorize")
async def sign_in(request: Request) -> Response:
    """Sign in as the person picked: back to the client's redirect URI with a one-time code."""
    issuer = _issuer(request)
    try:
        form = await read_form(request)
        request_ = _authorization(form, form.get("code_challenge_method", ""))
    except PageRefused as exc:
        return _page("error.html", exc.status, message=exc.message)
    person = next((p for p in _people(request) if p.username == form.get("person")), None)
    if person is None:
        return _page("error.html", 400, message="pick one of the people listed")
    code = issuer.grant(
        person,
        client_id=request_["client_id"],
        redirect_uri=request_["redirect_uri"],
        code_challenge=request_["code_challenge"],
        nonce=request_["nonce"] or None,
    )
    answer = {"code": code, **({"state": request_["state"]} if request_["state"] else {})}
    separator = "&" if "?" in request_["redirect_uri"] else "?"
    return RedirectResponse(f"{request_['redirect_uri']}{separator}{urlencode(answer)}", status_code=303)


@router.post("/token")
async def token(request: Request) -> Response:
    """The code exchange (RFC 6749 4.1.3 with RFC 7636's code_verifier), for public clients."""
    issuer = _issuer(request)
    try:
        form = await read_form(request)
    except PageRefused as exc:
        return _oauth_error("invalid_request", exc.message)
    if form.get("grant_type") != "authorization_code":
        return _oauth_error("unsupported_grant_type", "only authorization_code is supported")
    try:
        tokens = issuer.redeem(
            form.get("code", ""),
            client_id=form.get("client_id", ""),
            redirect_uri=form.get("redirect_uri", ""),
            code_verifier=form.get("code_verifier", ""),
        )
    except InvalidGrant as exc:
        return _oauth_error("invalid_grant", str(exc))
    return JSONResponse(tokens, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


def _authorization(given: dict[str, str], method: str) -> dict[str, str]:
    """The authorisation request's parameters, or a 400 page saying which one is wrong."""
    request_ = {name: given.get(name, "") for name in PARAMETERS}
    if request_["response_type"] != "code":
        raise PageRefused(400, "response_type must be code (the authorisation-code flow)")
    if not request_["client_id"] or len(request_["client_id"]) > 255:
        raise PageRefused(400, "client_id is missing")
    redirect = urlsplit(request_["redirect_uri"])
    if redirect.scheme not in ("http", "https") or not HOST.fullmatch(redirect.netloc) or redirect.fragment:
        raise PageRefused(
            400, "redirect_uri must be an absolute http(s) URL (host[:port]) without a fragment"
        )
    if method != "S256" or len(request_["code_challenge"]) != 43:
        raise PageRefused(400, "PKCE is required: send a code_challenge with code_challenge_method S256")
    return request_


def _people(request: Request) -> list[DevPerson]:
    """The demo people: each project member as a researcher, a federation admin, and for each TRE an admin
    and two output checkers (two-person review needs two)."""
    with context(request).db.read() as session:
        members = sorted(set(session.scalars(select(Membership.username))))
        tres = [t.name for t in federation.list_tres(session)]
    people = [DevPerson(name, (Role.RESEARCHER.value,)) for name in members]
    people.append(DevPerson("federation-admin", (Role.FEDERATION_ADMIN.value,)))
    for tre in tres:
        people += [
            DevPerson(f"{tre}-admin", (Role.TRE_ADMIN.value,), tre),
            DevPerson(f"{tre}-checker", (Role.OUTPUT_CHECKER.value,), tre),
            DevPerson(f"{tre}-checker-2", (Role.OUTPUT_CHECKER.value,), tre),
        ]
    return people


def _page(template: str, status: int, *form_targets: str, **context_: Any) -> Response:
    response = render(template, status, site_title=TITLE, base="", me=None, nav=[], path="", **context_)
    response.headers.update(security_headers(*form_targets))
    return response


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _oauth_error(error: str, description: str) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status_code=400)


def _issuer(request: Request) -> DevIssuer:
    """The app mounts these routes only with an issuer; without one they do not exist."""
    issuer = context(request).dev_issuer
    if issuer is None:
        raise HTTPException(404, "Not Found")
    return issuer
