"""Server-rendered pages shared by the gateway and each TRE's agent: Jinja2 templates and one
stylesheet, no script; sign-in with the OIDC issuer the APIs trust (authorisation code with PKCE); a
signed session cookie holding only who signed in and a CSRF token; a strict Content-Security-Policy.
docs/web.md says how it fits together."""

from fivesafes_tes.web.headers import (
    CONTENT_SECURITY_POLICY,
    SECURITY_HEADERS,
    SecurityHeaders,
    security_headers,
)
from fivesafes_tes.web.oidc import Endpoints, IssuerUnavailable, LoginFailed, OidcClient
from fivesafes_tes.web.session import LoginState, SessionCookies, WebSession
from fivesafes_tes.web.site import (
    STATIC,
    NavLink,
    PageRefused,
    SignInRequired,
    Site,
    check_csrf,
    new_session_key,
    read_form,
    render,
)

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "SECURITY_HEADERS",
    "STATIC",
    "Endpoints",
    "IssuerUnavailable",
    "LoginFailed",
    "LoginState",
    "NavLink",
    "OidcClient",
    "PageRefused",
    "SecurityHeaders",
    "SessionCookies",
    "SignInRequired",
    "Site",
    "WebSession",
    "check_csrf",
    "new_session_key",
    "read_form",
    "render",
    "security_headers",
]
