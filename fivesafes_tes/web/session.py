"""The pages' session: a cookie the server signs, holding who signed in and their CSRF token, and
nothing else (no token of the identity provider ever reaches the browser). Its signature carries its
time, so a stolen or kept cookie stops working after the session's lifetime whatever the browser does."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.responses import Response

from fivesafes_tes.auth.principal import Person
from fivesafes_tes.auth.tokens import Claims

LOGIN_TTL_S = 600  # from leaving for the identity provider to coming back


@dataclass(frozen=True, slots=True)
class WebSession:
    """Someone signed in: their identity as the issuer's token named it, and their CSRF token."""

    issuer: str
    subject: str
    username: str
    roles: frozenset[str]
    tre: str | None
    csrf: str

    @classmethod
    def of(cls, claims: Claims) -> WebSession:
        """A new session (with a new CSRF token) for the person `claims` name."""
        return cls(
            claims.issuer,
            claims.subject,
            claims.username,
            claims.roles,
            claims.tre,
            secrets.token_urlsafe(32),
        )

    @property
    def person(self) -> Person:
        return Person(self.issuer, self.subject, self.username)


@dataclass(frozen=True, slots=True)
class LoginState:
    """What a sign-in must come back with: the `state` and `nonce` sent, the PKCE verifier kept, and the
    page to return to."""

    state: str
    nonce: str
    verifier: str
    next: str


class SessionCookies:
    """Reads and writes a site's session cookie and its short-lived sign-in cookie, both signed with
    `key` and named after `name`.

    Both are HttpOnly and SameSite=Lax (the identity provider's redirect back is a top-level GET, which
    Lax lets through); with `secure` they are Secure and `__Host-` prefixed, so no subdomain can set them."""

    def __init__(self, key: bytes, ttl_s: int, *, secure: bool, name: str = "fivesafes") -> None:
        if len(key) < 32:
            raise ValueError("the session key must be at least 32 bytes")
        self.ttl_s = ttl_s
        self.secure = secure
        prefix = "__Host-" if secure else ""
        # Named per site: cookies are not kept apart by port, so sites sharing a host name would
        # otherwise overwrite each other's (the embedded stack serves them all on 127.0.0.1).
        self.session_name = f"{prefix}{name}-session"
        self.login_name = f"{prefix}{name}-login"
        self._session = URLSafeTimedSerializer(key, salt="fivesafes-tes.web.session")
        self._login = URLSafeTimedSerializer(key, salt="fivesafes-tes.web.login")

    def session(self, cookies: dict[str, str]) -> WebSession | None:
        """The session in `cookies`, or None if there is none, it was not signed by us, or it expired."""
        data = _load(self._session, cookies.get(self.session_name), self.ttl_s)
        try:
            return WebSession(
                issuer=_text(data["iss"]),
                subject=_text(data["sub"]),
                username=_text(data["name"]),
                roles=frozenset(_text(r) for r in data["roles"]),
                tre=None if data["tre"] is None else _text(data["tre"]),
                csrf=_text(data["csrf"]),
            )
        except (KeyError, TypeError, ValueError):
            return None

    def start_session(self, response: Response, session: WebSession) -> None:
        value = self._session.dumps(
            {
                "iss": session.issuer,
                "sub": session.subject,
                "name": session.username,
                "roles": sorted(session.roles),
                "tre": session.tre,
                "csrf": session.csrf,
            }
        )
        self._set(response, self.session_name, value, self.ttl_s)

    def end_session(self, response: Response) -> None:
        self._set(response, self.session_name, "", 0)

    def login(self, cookies: dict[str, str]) -> LoginState | None:
        data = _load(self._login, cookies.get(self.login_name), LOGIN_TTL_S)
        try:
            return LoginState(
                _text(data["state"]), _text(data["nonce"]), _text(data["verifier"]), _text(data["next"])
            )
        except (KeyError, TypeError, ValueError):
            return None

    def start_login(self, response: Response, login: LoginState) -> None:
        value = self._login.dumps(
            {"state": login.state, "nonce": login.nonce, "verifier": login.verifier, "next": login.next}
        )
        self._set(response, self.login_name, value, LOGIN_TTL_S)

    def end_login(self, response: Response) -> None:
        self._set(response, self.login_name, "", 0)

    def _set(self, response: Response, name: str, value: str, max_age: int) -> None:
        response.set_cookie(
            name, value, max_age=max_age, path="/", secure=self.secure, httponly=True, samesite="lax"
        )


def _load(serializer: URLSafeTimedSerializer, value: str | None, max_age: int) -> Any:
    if not value:
        return {}
    try:
        return serializer.loads(value, max_age=max_age)
    except BadSignature:  # also an expired one (SignatureExpired)
        return {}


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("not a string")
    return value
