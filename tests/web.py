"""A live TRE site for the page tests: the gateway with its development issuer and one agent's admin
app with its pages, each served on loopback, the agent trusting the gateway's issuer as in the
embedded stack. `sign_in` walks the real authorisation-code flow over HTTP, as a browser would."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from fastapi import FastAPI

from fivesafes_tes import devstack
from fivesafes_tes.agent.admin_api import create_admin_app
from fivesafes_tes.agent.health import Health
from fivesafes_tes.agent.loop import open_database
from fivesafes_tes.agent.pages import site_for
from fivesafes_tes.agent.policy import Dataset, TrePolicy
from fivesafes_tes.agent.tables import LocalProject
from fivesafes_tes.auth import DevIssuer, StaticJwks, TokenValidator
from fivesafes_tes.db import Database
from fivesafes_tes.egress.store import ObjectStore
from fivesafes_tes.gateway.app import create_app
from fivesafes_tes.gateway.context import app_context
from fivesafes_tes.settings import AgentSettings, GatewaySettings
from tests.conftest import TEST_FEDERATION

TRE = "uk-tre"
SESSION_KEY = "k" * 40


@dataclass
class TreSite:
    gateway_url: str
    url: str  # the agent's pages and API
    issuer: DevIssuer
    db: Database  # the agent's
    app: FastAPI  # the agent's admin app, with its pages

    def token(self, user: str, role: str, tre: str | None = TRE) -> str:
        """A token as the API takes it, for checks beside the pages."""
        return self.issuer.issue(user, [role], audience=devstack.TRE_AUDIENCE, tre=tre)


@contextmanager
def tre_site(
    tmp_path: Path,
    *,
    secure: bool = False,
    store: ObjectStore | None = None,
    health: Callable[[], Health] | None = None,
) -> Iterator[TreSite]:
    """A gateway (development issuer, test federation) and uk-tre's pages, both on loopback; `store` is
    the airlock previews come from, `health` what the health page shows."""
    gateway_port, agent_port = devstack.free_port(), devstack.free_port()
    gateway_settings = GatewaySettings(
        data_dir=tmp_path / "gateway",
        public_url=f"http://127.0.0.1:{gateway_port}",
        dev_issuer=True,
        allowed_images=["*"],
    )
    gateway_db = Database(gateway_settings.effective_database_url)
    gateway_db.upgrade()
    devstack.seed_federation(gateway_db, TEST_FEDERATION)
    gateway = create_app(gateway_settings, db=gateway_db)
    issuer = app_context(gateway).dev_issuer
    assert issuer is not None
    settings = AgentSettings(
        tre=TRE,
        data_dir=tmp_path / "agent",
        admin_listen=f"127.0.0.1:{agent_port}",
        oidc_issuer=issuer.issuer_url,
        oidc_audience=devstack.TRE_AUDIENCE,
        web_session_key=SESSION_KEY,
        web_public_url=f"{'https' if secure else 'http'}://127.0.0.1:{agent_port}",
    )
    db = open_database(settings)
    with db.write() as session:
        session.add(LocalProject(name="alpha", title="Alpha study", members=["alice", "carol"]))
        session.add(LocalProject(name="beta", title="Beta study", members=["bob"]))
    validator = TokenValidator(issuer.issuer_url, devstack.TRE_AUDIENCE, StaticJwks(issuer.jwks()), ["RS256"])
    policy = TrePolicy(
        allowed_images=["fivesafes/*"],
        datasets={"omop": Dataset(path=tmp_path, description="synthetic OMOP extract")},
        grants={"alpha": ["omop"]},
    )
    agent = create_admin_app(
        db, TRE, validator, site=site_for(settings, validator, db), policy=policy, store=store, health=health
    )
    servers = [
        devstack.serve(gateway, "127.0.0.1", gateway_port),
        devstack.serve(agent, "127.0.0.1", agent_port),
    ]
    try:
        yield TreSite(f"http://127.0.0.1:{gateway_port}", f"http://127.0.0.1:{agent_port}", issuer, db, agent)
    finally:
        for server, thread in servers:
            server.should_exit = True
            thread.join(timeout=10)
        db.dispose()
        gateway_db.dispose()


@dataclass
class GatewaySite:
    """The gateway with its pages (under /web) and its development issuer."""

    url: str
    issuer: DevIssuer
    db: Database
    app: FastAPI

    @property
    def gateway_url(self) -> str:
        return self.url

    def token(self, user: str) -> str:
        """A researcher's token for the TES API."""
        return self.issuer.issue(user, ["researcher"], audience="fivesafes-tes")


@contextmanager
def gateway_site(tmp_path: Path, database_url: str | None = None) -> Iterator[GatewaySite]:
    """A gateway on loopback serving its pages, with the development issuer and the test federation, on
    `database_url` (a migrated database) or else a SQLite file in `tmp_path`."""
    port = devstack.free_port()
    settings = GatewaySettings(
        data_dir=tmp_path / "gateway",
        database_url=database_url,
        public_url=f"http://127.0.0.1:{port}",
        dev_issuer=True,
        allowed_images=["*"],
        web_pages=True,
        web_session_key=SESSION_KEY,
    )
    db = Database(settings.effective_database_url)
    db.upgrade()
    devstack.seed_federation(db, TEST_FEDERATION)
    app = create_app(settings, db=db)
    issuer = app_context(app).dev_issuer
    assert issuer is not None
    server, thread = devstack.serve(app, "127.0.0.1", port)
    try:
        yield GatewaySite(f"http://127.0.0.1:{port}", issuer, db, app)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        db.dispose()


def sign_in(site: TreSite | GatewaySite, person: str, next_path: str = "/") -> httpx.Client:
    """A client signed in to the pages as `person` (one of the development issuer's demo people)."""
    return sign_in_landing(site, person, next_path)[0]


def sign_in_landing(
    site: TreSite | GatewaySite, person: str, next_path: str = "/"
) -> tuple[httpx.Client, str]:
    """`sign_in`, with where the site sent the browser once signed in."""
    client = httpx.Client(base_url=site.url, timeout=10)
    start = "/web/login" if isinstance(site, GatewaySite) else "/login"
    to_issuer = client.get(start, params={"next": next_path})
    assert to_issuer.status_code == 303, to_issuer.text
    login_page = client.get(to_issuer.headers["location"])
    assert login_page.status_code == 200, login_page.text
    form = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', login_page.text))
    form["person"] = person
    back = client.post(f"{site.gateway_url}/dev-issuer/authorize", data=_unescaped(form))
    assert back.status_code == 303, back.text
    landed = client.get(back.headers["location"])
    assert landed.status_code == 303, landed.text
    return client, landed.headers["location"]


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


def _unescaped(form: dict[str, str]) -> dict[str, str]:
    import html

    return {name: html.unescape(value) for name, value in form.items()}


TABLE = b"region,n\nnorth,120\nsouth,3\neast,45\n"  # row 2's n is the small cell
CONTENTS = {
    "/out/table.csv": TABLE,
    "/out/tool.bin": b"\x7fELF\x02\x01\x01\x00" + bytes(56),
    "step-0.stdout": b"done\n",
}


def hold_child(
    db: Database, child_id: str = "child-1", submitter: str = "alice", store: ObjectStore | None = None
) -> None:
    """A child of project alpha awaiting review, holding a table whose row 2, column n the small-cell
    rule flagged, a file marked never to be released, and a clean stdout; with `store`, their bytes are
    in that airlock."""
    import hashlib

    from fivesafes_tes.agent.tables import HeldFileRecord, LocalChild

    small_cell = {
        "rule": "small_cell",
        "version": "1",
        "verdict": "fail",
        "findings": [
            {"message": "small_cell: a count of 3 is below 10", "verdict": "fail", "column": "n", "row": 2}
        ],
    }
    never = {
        "rule": "file_type",
        "version": "1",
        "verdict": "fail",
        "findings": [{"message": "file_type: an executable", "verdict": "fail", "never_release": True}],
    }
    files = [
        ("/out/table.csv", "fail", [small_cell]),
        ("/out/tool.bin", "fail", [never]),
        ("step-0.stdout", "pass", []),
    ]
    with db.write() as session:
        session.add(
            LocalChild(
                child_id=child_id,
                task_id=f"task-{child_id}",
                attempt=1,
                stage="awaiting_review",
                project="alpha",
                username=submitter,
                task={"executors": [{"image": "fivesafes/stats:1", "command": ["python", "count.py"]}]},
                result={"outcome": {"outcome": "complete", "message": "", "steps": [{"exit_code": 0}]}},
            )
        )
        for name, verdict, results in files:
            key = f"{child_id}/{name.lstrip('/')}"
            if store is not None:
                store.put_bytes(key, CONTENTS[name])
            session.add(
                HeldFileRecord(
                    child_id=child_id,
                    key=key,
                    name=name,
                    kind="stdout" if name.startswith("step-") else "file",
                    size=len(CONTENTS[name]),
                    sha256=hashlib.sha256(CONTENTS[name]).hexdigest(),
                    verdict=verdict,
                    results=results,
                )
            )
