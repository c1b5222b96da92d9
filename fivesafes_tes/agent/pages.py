"""The pages of a TRE, served by its agent beside the TRE's own API and calling the same in-TRE
functions: its admins decide on projects and people and read the policy in force; its output checkers
work through the queue of children awaiting review. Who may see what is `access.refusal`, as for the
API; every decision is audited by the domain function that records it."""

# No `from __future__ import annotations` here: FastAPI reads the routes' annotations at run time, and
# the Annotated aliases they name (Admin, Checker...) are local to `router`.

import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any
from urllib.parse import quote, urlencode

import yaml
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from fivesafes_tes import audit
from fivesafes_tes.agent import access, approvals, previews, record, review
from fivesafes_tes.agent.health import Health
from fivesafes_tes.agent.policy import TrePolicy
from fivesafes_tes.auth.principal import Role
from fivesafes_tes.auth.tokens import TokenValidator
from fivesafes_tes.db import Database
from fivesafes_tes.db.base import utcnow
from fivesafes_tes.egress.store import ObjectStore
from fivesafes_tes.settings import AgentSettings
from fivesafes_tes.web import (
    NavLink,
    OidcClient,
    PageRefused,
    SessionCookies,
    Site,
    WebSession,
    new_session_key,
)

log = logging.getLogger(__name__)
PREVIEW_READS = 8  # airlock reads at once for one review page's previews
QUEUE_PAGE = 50
MAX_REASON = 2000  # as the API's


def _paging(path: str, page: int, total: int, **kept: str) -> dict[str, Any]:
    """Page `page` of a list of `total` in pages of QUEUE_PAGE: its number, the last page, and the links
    to the pages before and after it (None at either end), keeping the filters that are set."""
    last = max((total + QUEUE_PAGE - 1) // QUEUE_PAGE, 1)

    def link(number: int) -> str:
        return f"{path}?" + urlencode({**{k: v for k, v in kept.items() if v}, "page": number})

    return {
        "page": page,
        "last": last,
        "previous": link(page - 1) if page > 1 else None,
        "following": link(page + 1) if page < last else None,
    }


# The queue's filter by what the rules found: any file flagged, none flagged, or either.
RULE_FILTERS: dict[str, bool | None] = {"": None, "flagged": True, "passed": False}
NAV = (
    NavLink("/tre/approvals", "Approvals", Role.TRE_ADMIN),
    NavLink("/tre/policy", "Policy", Role.TRE_ADMIN),
    NavLink("/tre/health", "Agent health", Role.TRE_ADMIN),
    NavLink("/review", "Review queue", Role.OUTPUT_CHECKER),
    NavLink("/review/history", "Decisions", Role.OUTPUT_CHECKER),
)


def authorizer(tre: str, require_tre_claim: bool) -> Callable[[WebSession, Role], str | None]:
    """The pages' rule for who may act as a role here: the API's."""

    def authorize(me: WebSession, role: Role) -> str | None:
        return access.refusal(me.roles, me.tre, role, tre, require_tre_claim)

    return authorize


def site_for(settings: AgentSettings, validator: TokenValidator, db: Database) -> Site:
    """The TRE's pages as `settings` configure them, signing in with the issuer `validator` trusts and
    auditing sign-ins in `db`."""
    public = (settings.web_public_url or f"http://{settings.admin_listen}").rstrip("/")
    if settings.web_session_key is not None:
        key = settings.web_session_key.get_secret_value().encode()
    else:
        log.warning(
            "FIVESAFES_AGENT_WEB_SESSION_KEY is unset: signing page sessions with a key made for this start "
            "only, so they end when the agent restarts"
        )
        key = new_session_key()
    secret = settings.web_client_secret.get_secret_value() if settings.web_client_secret else None
    return Site(
        title=f"{settings.tre} · Five Safes TES",
        oidc=OidcClient(validator, settings.web_client_id, f"{public}/auth/callback", client_secret=secret),
        cookies=SessionCookies(
            key,
            settings.web_session_ttl_s,
            secure=public.startswith("https://"),
            name=f"fivesafes-{settings.tre}",
        ),
        authorize=authorizer(settings.tre, settings.require_tre_claim),
        nav=NAV,
        audit=_auditor(db),
    )


def _auditor(db: Database) -> Callable[[str, str, str, dict[str, str]], None]:
    def record(actor: str, action: str, outcome: str, detail: dict[str, str]) -> None:
        with db.write() as session:
            audit.record(
                session, actor=actor, action=action, object="web:pages", outcome=outcome, detail=detail
            )

    return record


def router(
    site: Site,
    db: Database,
    tre: str,
    policy: TrePolicy | None,
    store: ObjectStore | None = None,
    health: Callable[[], Health] | None = None,
) -> APIRouter:
    """The TRE's pages on `db`; `policy` is the policy in force (None: the page says it is not known),
    `store` the airlock that previews of held files come from (None: no previews), `health` says how
    the agent is doing (None: the pages run without one)."""
    pages = APIRouter(include_in_schema=False)
    Admin = Annotated[WebSession, Depends(site.signed_in(Role.TRE_ADMIN))]
    AdminForm = Annotated[tuple[WebSession, dict[str, str]], Depends(site.posted(Role.TRE_ADMIN))]
    Checker = Annotated[WebSession, Depends(site.signed_in(Role.OUTPUT_CHECKER))]
    CheckerForm = Annotated[tuple[WebSession, dict[str, str]], Depends(site.posted(Role.OUTPUT_CHECKER))]

    @pages.get("/", response_class=HTMLResponse)
    def home(request: Request) -> Response:
        me = site.session(request)
        if me is None:
            return RedirectResponse("/login", status_code=303)
        return site.page(request, "tre/home.html", me=me, tre=tre, links=site.links(me))

    @pages.get("/tre/approvals", response_class=HTMLResponse)
    def approvals_page(
        request: Request, me: Admin, decided: str = "", who: str = "", outcome: str = ""
    ) -> Response:
        with db.read() as session:
            standings = approvals.standings(session)
        return site.page(
            request,
            "tre/approvals.html",
            me=me,
            tre=tre,
            awaiting=[s for s in standings if s.awaiting],
            settled=[s for s in standings if not s.awaiting],
            done={"project": decided, "who": who, "outcome": outcome} if decided else None,
        )

    @pages.post("/tre/approvals")
    def decide(posted: AdminForm) -> Response:
        me, form = posted
        project, username = form.get("project", ""), form.get("username", "")
        decision, reason = _decision(form)
        try:
            with db.write() as session:
                approvals.decide(session, me.person, project, decision, username=username, reason=reason)
        except LookupError as exc:
            raise PageRefused(404, str(exc)) from None
        except ValueError as exc:
            raise PageRefused(400, str(exc)) from None
        query = urlencode({"decided": project, "who": username, "outcome": decision})
        return RedirectResponse(f"/tre/approvals?{query}", status_code=303)

    @pages.get("/tre/policy", response_class=HTMLResponse)
    def policy_page(request: Request, me: Admin) -> Response:
        document = None if policy is None else yaml.safe_dump(policy.model_dump(mode="json"), sort_keys=False)
        return site.page(request, "tre/policy.html", me=me, tre=tre, policy=policy, document=document)

    @pages.get("/tre/health", response_class=HTMLResponse)
    def health_page(request: Request, me: Admin) -> Response:
        now = utcnow()
        state = health() if health is not None else None
        return site.page(request, "tre/health.html", me=me, tre=tre, health=state, now=now)

    @pages.get("/review", response_class=HTMLResponse)
    def queue_page(
        request: Request, me: Checker, project: str = "", rules: str = "", page: int = 1
    ) -> Response:
        page = max(page, 1)
        if rules not in RULE_FILTERS:
            raise PageRefused(400, f"rules is one of: {', '.join(repr(r) for r in RULE_FILTERS)}")
        with db.read() as session:
            queue = review.queue(
                session,
                project=project or None,
                flagged=RULE_FILTERS[rules],
                offset=(page - 1) * QUEUE_PAGE,
                limit=QUEUE_PAGE,
            )
        return site.page(
            request,
            "review/queue.html",
            me=me,
            tre=tre,
            queue=queue,
            project=project,
            rules=rules,
            **_paging("/review", page, queue.total, project=project, rules=rules),
        )

    @pages.get("/review/history", response_class=HTMLResponse)
    def history_page(request: Request, me: Checker, q: str = "", page: int = 1) -> Response:
        page = max(page, 1)
        search = q.strip()[:200]
        with db.read() as session:
            decisions, total = review.history(
                session, search=search, offset=(page - 1) * QUEUE_PAGE, limit=QUEUE_PAGE
            )
        return site.page(
            request,
            "review/history.html",
            me=me,
            tre=tre,
            decisions=decisions,
            total=total,
            q=search,
            **_paging("/review/history", page, total, q=search),
        )

    @pages.get("/review/{child_id}", response_class=HTMLResponse)
    def child_page(
        request: Request, child_id: str, me: Checker, decided: str = "", outcome: str = ""
    ) -> Response:
        try:
            with db.read() as session:
                child = review.describe(session, child_id)
                steps = review.commands(session, child_id)
                results = review.rule_results(session, child_id)
                crate = record.activity_crate(session, tre, child_id)
        except LookupError as exc:
            raise PageRefused(404, str(exc)) from None
        required = (policy.review if policy is not None else review.ReviewPolicy()).required_approvals
        return site.page(
            request,
            "review/child.html",
            me=me,
            tre=tre,
            child=child,
            steps=steps,
            required=required,
            previews=_previews(child.files, results),
            crate=record.view(crate),
            done={"name": decided, "outcome": outcome} if decided else None,
        )

    @pages.get("/review/{child_id}/crate")
    def crate_download(child_id: str, me: Checker) -> Response:
        """The request's activity crate (`agent.record`), as the API's GET /review/v1/children/{id}/crate."""
        try:
            with db.read() as session:
                crate = record.activity_crate(session, tre, child_id)
        except LookupError as exc:
            raise PageRefused(404, str(exc)) from None
        return crate_response(crate)

    @pages.post("/review/{child_id}")
    def decide_file(child_id: str, posted: CheckerForm) -> Response:
        me, form = posted
        name = form.get("name", "")
        decision, reason = _decision(form)
        try:
            with db.write() as session:
                key = review.key_for(session, child_id, name)
                review.decide(session, child_id, key, me.person, decision, reason=reason)
        except (LookupError, review.ReviewRefused) as exc:
            raise PageRefused(review.refusal_status(exc) or 400, str(exc)) from None
        query = urlencode({"decided": name, "outcome": decision})
        return RedirectResponse(f"/review/{quote(child_id, safe='')}?{query}", status_code=303)

    def _previews(
        files: list[review.FileView], results: dict[str, list[dict[str, Any]]]
    ) -> dict[str, previews.Preview]:
        """Each file's preview, their first bytes read from the airlock a few at once (a page's time
        is then about one read's, not the sum of one read per file)."""
        if not files:
            return {}
        workers = min(PREVIEW_READS, len(files))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="preview") as pool:
            shown = pool.map(lambda f: _preview(f, results.get(f.key, [])), files)
            return {f.key: p for f, p in zip(files, shown, strict=True)}

    def _preview(file: review.FileView, results: list[dict[str, Any]]) -> previews.Preview:
        """The file's preview from its first bytes in the airlock; a note instead when there are none."""
        if store is None:
            return previews.Preview("none", note="no preview: these pages have no airlock to read from")
        if file.size == 0:
            return previews.Preview("none", note="an empty file")
        try:
            head = store.get_head(file.key, previews.HEAD_BYTES)
        except Exception:  # a missing preview must not hide the decision form
            log.exception("no preview of held file %s", file.key)
            return previews.Preview("none", note="no preview: the airlock could not be read (logged)")
        return previews.preview(file.name, head, file.size, results)

    return pages


def crate_response(crate: dict[str, Any]) -> Response:
    """An activity crate as a download of its ro-crate-metadata.json (for the pages and the API alike)."""
    return Response(
        json.dumps(crate, indent=2, ensure_ascii=False).encode(),
        media_type=record.MEDIA_TYPE,
        headers={"Content-Disposition": f'attachment; filename="{record.FILENAME}"'},
    )


def _decision(form: dict[str, str]) -> tuple[str, str]:
    """A form's decision and its reason. The pages ask a reason of every decision, approvals too: the API
    asks one of rejections only, but a checker's or admin's note is what the record is read for."""
    decision, reason = form.get("decision", ""), form.get("reason", "").strip()
    if decision not in ("approved", "rejected"):
        raise PageRefused(400, "choose Approve or Reject")
    if not reason:
        raise PageRefused(400, "say why: every decision needs a reason (the researcher reads a rejection's)")
    if len(reason) > MAX_REASON:
        raise PageRefused(400, f"the reason is too long: at most {MAX_REASON:,} characters")
    return decision, reason
