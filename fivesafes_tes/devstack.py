"""The embedded default: a gateway, its token issuer, an S3 endpoint and one agent per synthetic TRE,
on loopback, in one process.

`fivesafes-tes dev` and `fivesafes-tes demo` use it; so do the tests that need a live federation.
Each TRE gets its own synthetic OMOP dataset (different populations), its own airlock bucket and its
own agent database; the agents reach the gateway only over HTTP, as they would from inside a TRE.
"""

from __future__ import annotations

import logging
import secrets
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, TypedDict

import uvicorn
from pydantic import SecretStr
from starlette.applications import Starlette

from fivesafes_tes.auth import DevIssuer
from fivesafes_tes.db import Database
from fivesafes_tes.gateway.app import create_app, dev_issuer_url
from fivesafes_tes.gateway.context import app_context
from fivesafes_tes.settings import AirlockStoreSettings, GatewaySettings, ResultsStoreSettings

if TYPE_CHECKING:
    from fivesafes_tes.agent.review import ReviewPolicy


class FederationSpec(TypedDict):
    """A federation to seed: TRE name -> title; project name -> (its TREs, its members)."""

    tres: dict[str, str]
    projects: dict[str, tuple[list[str], list[str]]]


# The embedded federation: two TREs and two projects. alice and carol share `diabetes-cancer`, which
# runs in both TREs; bob alone is in `cardio`, in the UK TRE only. Each member's first project is
# their default.
DEV_FEDERATION: FederationSpec = {
    "tres": {"uk-tre": "UK TRE (synthetic)", "sg-tre": "Singapore TRE (synthetic)"},
    "projects": {
        "diabetes-cancer": (["uk-tre", "sg-tre"], ["alice", "carol"]),
        "cardio": (["uk-tre"], ["bob"]),
    },
}
# What each TRE's admins have approved in the embedded stack: the demo project and its two people.
# `cardio` and bob are left undecided, so their work waits for a decision (awaiting_tre_approval).
DEV_APPROVALS: dict[str, list[str]] = {"diabetes-cancer": ["alice", "carol"]}
DATASET_SEED = 20261123
TRE_AUDIENCE = "fivesafes-tre"  # of tokens for each TRE's own API (the agent's default)


def seed_federation(db: Database, federation_spec: FederationSpec = DEV_FEDERATION) -> None:
    """Create the embedded federation unless it is already there (restarts keep their state)."""
    from fivesafes_tes.submission import federation

    with db.write() as session:
        if federation.list_tres(session):
            return
        for tre, title in federation_spec["tres"].items():
            federation.add_tre(session, "devstack", tre, title)
        defaults: set[str] = set()
        for name, (tres, members) in federation_spec["projects"].items():
            federation.add_project(session, "devstack", name, tres=tres)
            for user in members:
                federation.add_member(session, "devstack", name, user, default=user not in defaults)
                defaults.add(user)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]  # (host, port) for an IPv4 socket
        return port


def serve(app: Any, host: str, port: int) -> tuple[uvicorn.Server, threading.Thread]:
    """`app` served by uvicorn on a background thread, with its lifespan (the delivery loop);
    returns once it listens. Stop it with `server.should_exit = True` and a join."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the gateway did not start on {host}:{port}")
        time.sleep(0.02)
    return server, thread


@dataclass
class DevStack:
    """A running gateway (with the embedded issuer) served by uvicorn in a background thread."""

    settings: GatewaySettings
    server: uvicorn.Server
    thread: threading.Thread
    issuer: DevIssuer
    app: Starlette
    s3: Any = None  # moto's ThreadedMotoServer when agents run
    s3_url: str | None = None
    agents: dict[str, Any] = field(default_factory=dict)  # TRE name -> fivesafes_tes.agent.loop.Agent
    db: Database | None = None

    def unfinished_tasks(self) -> int:
        """Tasks not yet in a final state: after a restart, those carried over from earlier runs."""
        from sqlalchemy import func, select

        from fivesafes_tes.submission.tables import Task
        from fivesafes_tes.tes.models import FINAL_STATES

        assert self.db is not None
        with self.db.read() as session:
            query = select(func.count()).select_from(Task).where(Task.state.not_in(list(FINAL_STATES)))
            return int(session.scalar(query) or 0)

    @property
    def url(self) -> str:
        return self.settings.public_url

    def token(self, user: str, *roles: str, **kwargs) -> str:  # type: ignore[no-untyped-def]
        return self.issuer.issue(
            user, list(roles) or ["researcher"], audience=self.settings.oidc_audience, **kwargs
        )

    def tre_url(self, tre: str) -> str:
        """Where TRE `tre`'s own admin and review API listens (FIVESAFES_TRE_URL for the CLI)."""
        return f"http://{self.agents[tre].settings.admin_listen}"

    def tre_token(self, user: str, role: str, tre: str, **kwargs: Any) -> str:
        """A token for TRE `tre`'s own API: a TRE admin's or an output checker's."""
        return self.issuer.issue(user, [role], audience=TRE_AUDIENCE, tre=tre, **kwargs)

    def stop(self) -> None:
        for agent in self.agents.values():
            agent.shutdown(timeout=2)
        app_context(self.app).signal.close()
        self.server.should_exit = True
        self.thread.join(timeout=10)
        if self.s3 is not None:
            self.s3.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def start(
    data_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    database_url: str | None = None,
    agents: bool = False,
    executor: str = "docker",
    report_granularity_s: float | None = None,
    allow_images: list[str] | tuple[str, ...] = (),
    auto_release: bool = False,
    required_approvals: int = 1,
    agent_database_urls: Mapping[str, str] | None = None,
    **overrides: object,
) -> DevStack:
    """Migrate the database, then serve the gateway until `stop()`; returns once it answers.

    With `agents`, also serve S3 and run one agent per TRE of the embedded federation, with `executor`
    (and `report_granularity_s`, if given, instead of the agents' setting). The TREs allow the images
    `fivesafes/*` and `allow_images`; with `auto_release` they release without a person whatever passes
    every automated rule (for trying clients only: no output checker sees it); each held file needs
    `required_approvals` distinct output checkers. `database_url` is the gateway's database and
    `agent_database_urls` each TRE's (by TRE name); SQLite files in `data_dir` where not given.
    """
    port = port or free_port(host)
    overrides.setdefault("allowed_images", ["*"])
    s3 = s3_url = None
    if agents:
        s3, s3_url = _start_s3()
        overrides["results"] = ResultsStoreSettings(
            endpoint_url=s3_url, access_key="dev", secret_key=SecretStr("dev-secret")
        )
    overrides.setdefault("web_pages", True)
    overrides.setdefault("web_session_key", SecretStr(secrets.token_hex(32)))  # sessions end with the stack
    settings = GatewaySettings(
        data_dir=data_dir,
        database_url=database_url,
        public_url=f"http://{host}:{port}",
        dev_issuer=True,
        **overrides,  # type: ignore[arg-type]
    )
    db = Database(settings.effective_database_url)
    db.upgrade()
    seed_federation(db)
    app = create_app(settings, db=db)
    store = app_context(app).results_store
    if store is not None:
        store.ensure_bucket()
    server, thread = serve(app, host, port)
    issuer = DevIssuer(settings.dev_issuer_dir, dev_issuer_url(settings))
    stack = DevStack(
        settings=settings,
        server=server,
        thread=thread,
        issuer=issuer,
        app=app,
        s3=s3,
        s3_url=s3_url,
        db=db,
    )
    if agents:
        from fivesafes_tes.agent.review import ReviewPolicy

        try:
            _start_tres(
                stack,
                data_dir,
                executor,
                report_granularity_s,
                list(allow_images),
                ReviewPolicy(auto_release=auto_release, required_approvals=required_approvals),
                dict(agent_database_urls or {}),
            )
        except BaseException:
            stack.stop()
            raise
    return stack


def _start_tres(
    stack: DevStack,
    data_dir: Path,
    executor: str,
    report_granularity_s: float | None,
    allow_images: list[str],
    review: ReviewPolicy,
    database_urls: dict[str, str],
) -> None:
    """For each TRE: its dataset, policy, airlock bucket, agent (synced, demo approvals made) and threads."""
    from fivesafes_tes.agent import approvals
    from fivesafes_tes.agent.client import GatewayClient
    from fivesafes_tes.agent.loop import Agent, make_executor, open_database
    from fivesafes_tes.agent.policy import Dataset, TrePolicy
    from fivesafes_tes.agent.tables import LocalDecision
    from fivesafes_tes.auth import Person
    from fivesafes_tes.egress.store import ObjectStore
    from fivesafes_tes.settings import AgentSettings

    if executor == "docker":
        _ensure_images()
    for tre in DEV_FEDERATION["tres"]:
        home = data_dir / "tres" / tre
        dataset = _ensure_dataset(home / "datasets" / "omop", tre)
        policy = TrePolicy(
            allowed_images=["fivesafes/*", *allow_images],
            max_runtime_s=600,
            review=review,
            datasets={"omop": Dataset(path=dataset, description=f"synthetic OMOP CDM extract of {tre}")},
            grants={"diabetes-cancer": ["omop"]},
        )
        token = stack.issuer.issue(
            f"agent-{tre}",
            ["tre-agent"],
            audience=stack.settings.oidc_audience,
            tre=tre,
            ttl_s=30 * 24 * 3600,
        )
        # unset, the setting keeps its default (or FIVESAFES_REPORT_GRANULARITY_S)
        granularity: dict[str, Any] = (
            {} if report_granularity_s is None else {"report_granularity_s": report_granularity_s}
        )
        settings = AgentSettings(
            tre=tre,
            gateway_url=stack.url,
            token=SecretStr(token),
            data_dir=home,
            executor=executor,
            airlock=AirlockStoreSettings(
                endpoint_url=stack.s3_url,
                bucket=f"{tre}-airlock",
                access_key="dev",
                secret_key=SecretStr("dev-secret"),
            ),
            poll_wait_s=10,
            heartbeat_s=5,
            sync_s=5,
            tick_s=0.2,
            **granularity,
            admin_listen=f"127.0.0.1:{free_port()}",
            oidc_issuer=stack.issuer.issuer_url,
            oidc_audience=TRE_AUDIENCE,
            web_session_key=SecretStr(secrets.token_hex(32)),  # the pages' sessions end with the stack
            database_url=database_urls.get(tre),
        )
        db = open_database(settings)
        store = ObjectStore.from_settings(settings.airlock)
        agent = Agent(
            settings,
            client=GatewayClient.from_settings(settings),
            executor=make_executor(settings, policy, db, store),
            store=store,
            policy=policy,
            db=db,
        )
        agent.sync()
        admin = Person(stack.issuer.issuer_url, f"{tre}-admin", f"{tre}-admin")
        with agent.db.write() as session:
            for project, people in DEV_APPROVALS.items():
                if session.get(LocalDecision, (project, "")) is not None:
                    continue  # a restart keeps earlier decisions
                approvals.decide(session, admin, project, "approved", reason="demo project")
                for person in people:
                    approvals.decide(
                        session,
                        admin,
                        project,
                        "approved",
                        username=person,
                        reason="trained and accredited (demo)",
                    )
        agent.start()
        stack.agents[tre] = agent


def _start_s3() -> tuple[Any, str]:
    """moto's S3 server on loopback: the embedded stand-in for each TRE's airlock and the results store."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:  # pragma: no cover - the [dev] extra is missing
        raise RuntimeError("the embedded S3 needs moto: pip install 'fivesafes-tes[dev]'") from None
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request at INFO
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def _ensure_dataset(directory: Path, tre: str) -> Path:
    from fivesafes_tes.synthetic import generate, verify_dataset

    if not (directory / "dataset.json").exists() or verify_dataset(directory):
        generate(directory, tre, DATASET_SEED)
    return directory


def _ensure_images() -> None:
    try:
        import docker

        client = docker.from_env()
        client.ping()
    except Exception as exc:  # noqa: BLE001  any failure means the engine is not there
        raise RuntimeError(
            f"the docker executor needs a running Docker engine ({exc}); start one "
            "(scripts/services.sh --with-docker) or choose --executor local (development only, no sandbox)"
        ) from None
    from fivesafes_tes.devimages import ensure_busybox_image

    ensure_busybox_image(client)
    client.close()
