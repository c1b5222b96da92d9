"""Signing in with the OIDC issuer the APIs trust: the authorisation-code flow with PKCE (S256), `state`
and `nonce`. The access token is validated exactly as the API validates it, so a page knows a person
as the API would; the ID token must be addressed to this client, carry the nonce sent, and name the
same person. Neither token is kept."""

from __future__ import annotations

import hmac
import secrets
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx

from fivesafes_tes.auth.pkce import pkce_challenge
from fivesafes_tes.auth.tokens import AuthError, Claims, JwksUnavailable, TokenValidator
from fivesafes_tes.web.session import LoginState

_TIMEOUT_S = 10.0


class LoginFailed(Exception):
    """The sign-in cannot complete; the message is safe to show and says what to do."""


class IssuerUnavailable(Exception):
    """The identity provider cannot be reached or answered nonsense: our side's problem, not the user's."""


@dataclass(frozen=True, slots=True)
class Endpoints:
    authorization: str
    token: str


class OidcClient:
    """One site's OIDC client of one issuer. Its endpoints are discovered at the first sign-in (the
    issuer need not be up when the site starts) unless given."""

    def __init__(
        self,
        validator: TokenValidator,
        client_id: str,
        redirect_uri: str,
        *,
        client_secret: str | None = None,
        endpoints: Endpoints | None = None,
        scope: str = "openid profile",
    ) -> None:
        self.validator = validator
        self.id_validator = validator.for_audience(client_id)
        self.client_id = client_id
        self.redirect_uri = redirect_uri
        self._secret = client_secret
        self._endpoints = endpoints
        self._lock = threading.Lock()
        self.scope = scope

    def endpoints(self) -> Endpoints:
        with self._lock:
            if self._endpoints is None:
                self._endpoints = _discover(self.validator.issuer)
            return self._endpoints

    def begin(self, next_path: str) -> tuple[str, LoginState]:
        """Where to send the browser to sign in, and what its return must match."""
        login = LoginState(
            state=secrets.token_urlsafe(32),
            nonce=secrets.token_urlsafe(32),
            verifier=secrets.token_urlsafe(64),
            next=next_path,
        )
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.client_id,
                "redirect_uri": self.redirect_uri,
                "scope": self.scope,
                "state": login.state,
                "nonce": login.nonce,
                "code_challenge": pkce_challenge(login.verifier),
                "code_challenge_method": "S256",
            }
        )
        authorization = self.endpoints().authorization
        return f"{authorization}{'&' if '?' in authorization else '?'}{query}", login

    def finish(self, login: LoginState, state: str, code: str) -> Claims:
        """The person who signed in, from the code the issuer sent back with `state`."""
        if not hmac.compare_digest(state.encode(), login.state.encode()):
            raise LoginFailed("this sign-in does not match the one this browser started; sign in again")
        tokens = self._exchange(code, login.verifier)
        try:
            claims = self.validator.validate(_text(tokens, "access_token"))
            identity = self.id_validator.validate(_text(tokens, "id_token"))
        except AuthError as exc:
            raise LoginFailed(
                f"the identity provider's token was refused ({exc.reason}); sign in again"
            ) from None
        except JwksUnavailable as exc:
            raise IssuerUnavailable(str(exc)) from None
        nonce = identity.raw.get("nonce")
        if not isinstance(nonce, str) or not hmac.compare_digest(nonce.encode(), login.nonce.encode()):
            raise LoginFailed("the identity provider's ID token is not for this sign-in; sign in again")
        if (identity.issuer, identity.subject) != (claims.issuer, claims.subject):
            raise LoginFailed("the identity provider's tokens name two different people; sign in again")
        return claims

    def _exchange(self, code: str, verifier: str) -> dict[str, Any]:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_uri,
            "client_id": self.client_id,
            "code_verifier": verifier,
        }
        if self._secret:
            form["client_secret"] = self._secret
        try:
            response = httpx.post(
                self.endpoints().token, data=form, timeout=_TIMEOUT_S, headers={"Accept": "application/json"}
            )
        except httpx.HTTPError as exc:
            raise IssuerUnavailable(f"token endpoint: {type(exc).__name__}") from None
        if response.status_code in (400, 401):
            raise LoginFailed("the identity provider refused this sign-in's code; sign in again")
        if response.status_code != 200:
            raise IssuerUnavailable(f"token endpoint answered {response.status_code}")
        try:
            body = response.json()
        except ValueError:
            raise IssuerUnavailable("token endpoint answered no JSON") from None
        if not isinstance(body, dict):
            raise IssuerUnavailable("token endpoint answered no JSON object")
        return body


def _text(tokens: dict[str, Any], name: str) -> str:
    value = tokens.get(name)
    if not isinstance(value, str) or not value:
        raise LoginFailed(
            f"the identity provider sent no {name}; is the `openid` scope allowed for this client?"
        )
    return value


def _discover(issuer: str) -> Endpoints:
    """The issuer's authorisation and token endpoints, from a discovery document naming that issuer."""
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    try:
        response = httpx.get(url, timeout=_TIMEOUT_S, headers={"Accept": "application/json"})
        response.raise_for_status()
        document = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise IssuerUnavailable(f"GET {url}: {type(exc).__name__}") from None
    if not isinstance(document, dict) or document.get("issuer") != issuer:
        raise IssuerUnavailable(f"{url} does not describe issuer {issuer}")
    found = [document.get("authorization_endpoint"), document.get("token_endpoint")]
    if not all(isinstance(u, str) and u.startswith(("https://", "http://")) for u in found):
        raise IssuerUnavailable(f"{url} names no authorization and token endpoints")
    return Endpoints(found[0], found[1])  # type: ignore[arg-type]
