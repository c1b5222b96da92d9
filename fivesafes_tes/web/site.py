"""A site of server-rendered pages on a FastAPI app: sign-in, the session, CSRF checks on every form,
the security headers and the error pages. The gateway and each TRE's agent build one for their own
pages; who may see a page is the app's rule (`Site.authorize`), the same one its API applies."""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from starlette.staticfiles import StaticFiles

from fivesafes_tes.auth.principal import Role
from fivesafes_tes.auth.tokens import Claims
from fivesafes_tes.web.headers import SecurityHeaders
from fivesafes_tes.web.oidc import IssuerUnavailable, LoginFailed, OidcClient
from fivesafes_tes.web.session import SessionCookies, WebSession

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
MAX_FORM_BYTES = 64 * 1024
_templates = Environment(
    loader=PackageLoader("fivesafes_tes.web", "templates"),
    autoescape=select_autoescape(("html",), default=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def render(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """`template` rendered with `context` (autoescaped: nothing in it is trusted)."""
    return HTMLResponse(_templates.get_template(template).render(**context), status_code=status)


class PageRefused(Exception):
    """A page request that is refused with `status` and a message the person can act on."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class SignInRequired(Exception):
    """A page was asked for without a session: the browser is sent to sign in, then back to `next`."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


@dataclass(frozen=True)
class NavLink:
    """A link in every page's header, shown only to those who may act as `role` (None: to anyone
    signed in)."""

    path: str
    label: str
    role: Role | None


class _FromRequest:
    """`Site.page`'s default: the person is whoever the request's session names."""


_FROM_REQUEST = _FromRequest()
Authorize = Callable[[WebSession, Role], str | None]
# Records a sign-in event in the app's audit log: (actor, action, outcome, detail).
Audit = Callable[[str, str, str, dict[str, str]], None]


def _no_audit(actor: str, action: str, outcome: str, detail: dict[str, str]) -> None:
    """For apps without an audit log."""


def _nothing_to_do(claims: Claims) -> None:
    """For apps that keep nothing of who signs in."""


class Site:
    """The pages of one app, all under `prefix` ("" for the whole app). `authorize(session, role)` says why
    a signed-in person may not act as `role` here (None if they may); `nav` lists the pages in the
    header; `audit` records each sign-in, refused sign-in and sign-out; `on_sign_in` is told of each
    person signing in (the gateway provisions their user, as its API does on a first call)."""

    def __init__(
        self,
        *,
        title: str,
        oidc: OidcClient,
        cookies: SessionCookies,
        authorize: Authorize,
        nav: tuple[NavLink, ...] = (),
        audit: Audit = _no_audit,
        prefix: str = "",
        on_sign_in: Callable[[Claims], None] = _nothing_to_do,
    ) -> None:
        if prefix and (not prefix.startswith("/") or prefix.endswith("/")):
            raise ValueError("a site's prefix is empty or a path like /web")
        self.title = title
        self.prefix = prefix
        self.on_sign_in = on_sign_in
        self.oidc = oidc
        self.cookies = cookies
        self.authorize = authorize
        self.nav = nav
        self.audit = audit

    def session(self, request: Request) -> WebSession | None:
        return self.cookies.session(dict(request.cookies))

    def page(
        self,
        request: Request,
        template: str,
        status: int = 200,
        *,
        me: WebSession | _FromRequest | None = _FROM_REQUEST,
        **context: Any,
    ) -> HTMLResponse:
        """`template` in this site's frame: its title, the links `me` may follow, the sign-out form. `me`
        is the request's session unless given (None: the page is shown as to someone signed out)."""
        me = self.session(request) if isinstance(me, _FromRequest) else me
        links = self.links(me) if me is not None else []
        return render(
            template,
            status,
            site_title=self.title,
            base=self.prefix,
            me=me,
            nav=links,
            path=request.url.path,
            **context,
        )

    def links(self, me: WebSession) -> list[NavLink]:
        """The pages of `nav` that `me` may see."""
        return [link for link in self.nav if link.role is None or self.authorize(me, link.role) is None]

    def signed_in(self, role: Role | None) -> Callable[[Request], WebSession]:
        """A dependency for GET pages: the session of someone who may act as `role` (None: of anyone signed
        in); without a session the browser is sent to sign in, and anyone else gets a 403 page."""

        def dependency(request: Request) -> WebSession:
            me = self.session(request)
            if me is None:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                raise SignInRequired(target)
            self._check(me, role)
            return me

        return dependency

    def posted(self, role: Role | None) -> Callable[[Request], Awaitable[tuple[WebSession, dict[str, str]]]]:
        """A dependency for form POSTs: the session and the form, once the form's CSRF token matched the
        session's. No session is 401 (a form is never replayed through a sign-in), a missing or wrong
        token 403, and so is someone who may not act as `role`."""

        async def dependency(request: Request) -> tuple[WebSession, dict[str, str]]:
            me = self.session(request)
            if me is None:
                raise PageRefused(401, "you are not signed in (or your session ended): sign in and try again")
            form = await read_form(request)
            check_csrf(me, form)
            self._check(me, role)
            return me, form

        return dependency

    def _check(self, me: WebSession, role: Role | None) -> None:
        refused = None if role is None else self.authorize(me, role)
        if refused is not None:
            raise PageRefused(403, f"{me.username} may not see this page: {refused}")

    def install(self, app: FastAPI) -> None:
        """The security headers on every response under the prefix (of all `app` when there is none), the
        stylesheet, the sign-in routes and the error pages."""
        app.add_middleware(SecurityHeaders, prefix=self.prefix)
        app.mount(f"{self.prefix}/static", StaticFiles(directory=STATIC), name=f"static{self.prefix}")
        app.include_router(self._sign_in_routes())

        @app.exception_handler(PageRefused)
        async def _refused(request: Request, exc: PageRefused) -> Response:
            return self.page(request, "error.html", exc.status, message=exc.message)

        @app.exception_handler(SignInRequired)
        async def _sign_in(_: Request, exc: SignInRequired) -> Response:
            return RedirectResponse(
                f"{self.prefix}/login?next={quote(exc.next_path, safe='/')}", status_code=303
            )

    def _sign_in_routes(self) -> APIRouter:
        router = APIRouter(prefix=self.prefix, include_in_schema=False)

        @router.get("/login")
        def login(next: str = "/") -> Response:
            try:
                url, state = self.oidc.begin(_local(next, self.prefix))
            except IssuerUnavailable as exc:
                log.warning("sign-in cannot start: %s", exc)
                raise PageRefused(503, "the identity provider cannot be reached; try again shortly") from None
            response = RedirectResponse(url, status_code=303)
            self.cookies.start_login(response, state)
            return response

        @router.get("/auth/callback")
        def callback(request: Request, state: str = "", code: str = "", error: str = "") -> Response:
            login = self.cookies.login(dict(request.cookies))
            if error:
                raise PageRefused(401, f"the identity provider did not sign you in ({error[:100]})")
            if login is None:
                raise PageRefused(400, "this sign-in was not started here, or took too long: sign in again")
            if not state or not code:
                raise PageRefused(400, "the identity provider sent no code back: sign in again")
            try:
                claims = self.oidc.finish(login, state, code)
            except LoginFailed as exc:
                self.audit(
                    "anonymous",
                    "auth.failure",
                    "denied",
                    {"route": f"{self.prefix}/auth/callback", "reason": str(exc)},
                )
                raise PageRefused(401, str(exc)) from None
            except IssuerUnavailable as exc:
                log.warning("sign-in cannot complete: %s", exc)
                raise PageRefused(503, "the identity provider cannot be reached; try again shortly") from None
            self.on_sign_in(claims)
            self.audit(
                claims.username,
                "web.sign_in",
                "allowed",
                {"issuer": claims.issuer, "subject": claims.subject},
            )
            response = RedirectResponse(login.next, status_code=303)
            self.cookies.end_login(response)
            self.cookies.start_session(response, WebSession.of(claims))
            return response

        @router.post("/logout")
        async def logout(request: Request) -> Response:
            me = self.session(request)
            if me is None:
                raise PageRefused(401, "you are not signed in")
            check_csrf(me, await read_form(request))
            self.audit(me.username, "web.sign_out", "allowed", {"issuer": me.issuer, "subject": me.subject})
            response = self.page(request, "signed_out.html", me=None)
            self.cookies.end_session(response)
            return response

        return router


def check_csrf(me: WebSession, form: dict[str, str]) -> None:
    """Refuse (403) a form whose `csrf` field is not this session's token, compared in constant time."""
    sent = form.get("csrf", "")
    if not hmac.compare_digest(sent.encode(), me.csrf.encode()):
        raise PageRefused(
            403, "this form is out of date or was not sent from this site: reload the page and try again"
        )


async def read_form(request: Request) -> dict[str, str]:
    """An application/x-www-form-urlencoded body of at most MAX_FORM_BYTES, each field given once."""
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise PageRefused(415, "this page takes forms only")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise PageRefused(413, "this form is too large")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=100)
    except (UnicodeDecodeError, ValueError):
        raise PageRefused(400, "this form could not be read") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise PageRefused(400, f"the form field {name!r} was sent twice")
        form[name] = value
    return form


def _local(path: str, prefix: str) -> str:
    """`path` if it is a page of this site (under `prefix`), else its start page: a sign-in never sends
    the browser elsewhere."""
    parts = urlsplit(path)
    if parts.scheme or parts.netloc or not path.startswith(f"{prefix}/") or path.startswith(("//", "/\\")):
        return f"{prefix}/"
    return path


def new_session_key() -> bytes:
    """A random key for one process's sessions, where none is configured (they end when it stops)."""
    return secrets.token_bytes(32)
