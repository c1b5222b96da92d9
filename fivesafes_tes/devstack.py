"""The embedded default: a gateway and its token issuer on loopback, in one process.

`fivesafes-tes dev` and `fivesafes-tes demo` use it; so do the tests that need a live server.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import uvicorn

from fivesafes_tes.auth import DevIssuer
from fivesafes_tes.db import Database
from fivesafes_tes.gateway.app import create_app, dev_issuer_url
from fivesafes_tes.settings import GatewaySettings


# The embedded federation: two TREs and two projects. alice and carol share `diabetes-cancer`, which
# runs in both TREs; bob alone is in `cardio`, in the UK TRE only. Each member's first project is
# their default.
DEV_FEDERATION: dict = {
    "tres": {"uk-tre": "UK TRE (synthetic)", "sg-tre": "Singapore TRE (synthetic)"},
    "projects": {
        "diabetes-cancer": (["uk-tre", "sg-tre"], ["alice", "carol"]),
        "cardio": (["uk-tre"], ["bob"]),
    },
}


def seed_federation(db: Database, federation_spec: dict = DEV_FEDERATION) -> None:
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
        return s.getsockname()[1]


@dataclass
class DevStack:
    """A running gateway (with the embedded issuer) served by uvicorn in a background thread."""

    settings: GatewaySettings
    server: uvicorn.Server
    thread: threading.Thread
    issuer: DevIssuer

    @property
    def url(self) -> str:
        return self.settings.public_url

    def token(self, user: str, *roles: str, **kwargs) -> str:  # type: ignore[no-untyped-def]
        return self.issuer.issue(user, list(roles) or ["researcher"], audience=self.settings.oidc_audience, **kwargs)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

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
    **overrides: object,
) -> DevStack:
    """Migrate the database, then serve the gateway until `stop()`; returns once it answers."""
    port = port or free_port(host)
    overrides.setdefault("allowed_images", ["*"])
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
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the gateway did not start on {host}:{port}")
        time.sleep(0.02)
    issuer = DevIssuer(settings.dev_issuer_dir, dev_issuer_url(settings))
    return DevStack(settings=settings, server=server, thread=thread, issuer=issuer)
