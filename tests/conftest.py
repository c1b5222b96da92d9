"""Shared fixtures: a fresh, migrated database per test on SQLite and on PostgreSQL.

PostgreSQL comes from FIVESAFES_TEST_PG_URL (a server URL whose user may CREATE DATABASE),
which `scripts/services.sh` sets up and `make test` exports. Under CI=true a missing server
fails the run instead of skipping.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from fivesafes_tes.db import Database
from fivesafes_tes.devstack import FederationSpec, seed_federation
from fivesafes_tes.gateway.context import app_context
from fivesafes_tes.settings import ResultsStoreSettings

pytest_plugins = ["tests.s3"]

IN_CI = os.environ.get("CI", "").lower() == "true"
PG_URL = os.environ.get("FIVESAFES_TEST_PG_URL", "")
_TEMPLATE = f"fivesafes_test_template_{os.getpid()}"


def need_service(name: str, available: bool, why: str = "") -> None:
    """Skip locally, fail in CI, when a service a test needs is not there."""
    if available:
        return
    message = f"{name} is not available{': ' + why if why else ''}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: a missing service is a failure)")
    pytest.skip(message)


def _pg_server_url(database: str) -> str:
    base, _, _ = PG_URL.rpartition("/")
    return f"{base}/{database}"


@pytest.fixture(scope="session")
def _pg_template() -> Iterator[str]:
    need_service("PostgreSQL", bool(PG_URL), "set FIVESAFES_TEST_PG_URL or run scripts/services.sh")
    admin = create_engine(_pg_server_url("postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{_TEMPLATE}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{_TEMPLATE}"'))
    template = Database(_pg_server_url(_TEMPLATE))
    template.upgrade()
    template.dispose()
    yield _TEMPLATE
    admin.dispose()


def _fresh_pg_database(template: str) -> Iterator[str]:
    name = f"fst_{uuid.uuid4().hex[:12]}"
    admin = create_engine(_pg_server_url("postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    try:
        yield _pg_server_url(name)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped afterwards (fails in CI without a server)."""
    need_service("PostgreSQL", bool(PG_URL), "set FIVESAFES_TEST_PG_URL or run scripts/services.sh")
    yield from _fresh_pg_database("template0")


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """A URL of an empty, migrated database: once on SQLite, once on PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'gateway.db'}"
        db = Database(url)
        db.upgrade()
        db.dispose()
        yield url
    else:
        template = request.getfixturevalue("_pg_template")
        yield from _fresh_pg_database(template)


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """A URL of an empty database, no tables at all: once on SQLite, once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
    else:
        with postgres_database() as url:
            yield url


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    yield db
    db.dispose()


TEST_FEDERATION: FederationSpec = {
    "tres": {"uk-tre": "UK", "sg-tre": "Singapore"},
    # alice and carol share `alpha` (both TREs); bob alone is in `beta` (UK only)
    "projects": {
        "alpha": (["uk-tre", "sg-tre"], ["alice", "carol"]),
        "beta": (["uk-tre"], ["bob"]),
    },
}


class Gateway:
    """An in-process gateway (embedded issuer) on the test's database, with token helpers."""

    TES = "/ga4gh/tes/v1"

    def __init__(self, database_url: str, data_dir, *, seed: bool = True, **overrides) -> None:
        from fastapi.testclient import TestClient

        from fivesafes_tes.gateway.app import create_app
        from fivesafes_tes.settings import GatewaySettings

        overrides.setdefault("allowed_images", ["*"])
        self.settings = GatewaySettings(
            data_dir=data_dir, database_url=database_url, dev_issuer=True, **overrides
        )
        self.db = Database(database_url)
        self.app = create_app(self.settings, db=self.db)
        self.issuer = app_context(self.app).dev_issuer
        self.client = TestClient(self.app)
        if seed:
            seed_federation(self.db, TEST_FEDERATION)

    def token(self, user: str = "alice", *roles: str, **kwargs) -> str:
        return self.issuer.issue(
            user, list(roles) or ["researcher"], audience=self.settings.oidc_audience, **kwargs
        )

    def headers(self, user: str = "alice", *roles: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user, *roles)}"}

    def close(self) -> None:
        self.client.close()
        self.db.dispose()


def results_store_settings(s3_endpoint, bucket: str) -> dict[str, ResultsStoreSettings]:
    """Gateway settings for a results store in `bucket` on the test S3 endpoint."""
    return {
        "results": ResultsStoreSettings(
            endpoint_url=s3_endpoint.url,
            bucket=bucket,
            access_key=s3_endpoint.access_key,
            secret_key=s3_endpoint.secret_key,
        )
    }


@pytest.fixture
def gateway(database_url: str, tmp_path) -> Iterator[Gateway]:
    gw = Gateway(database_url, tmp_path / "data")
    yield gw
    gw.close()


def gateway_forgets_policies(stack, monkeypatch, *tres: str) -> None:
    """The gateway no longer knows what these TREs will run (their agents stop publishing), as before
    they first published: it accepts what they would refuse, and each TRE must refuse it itself."""
    from sqlalchemy import delete, select

    from fivesafes_tes.submission.tables import PublishedPolicy, Tre

    for tre in tres:
        agent = stack.agents[tre]
        monkeypatch.setattr(agent.client, "publish_policy", lambda admission: False)
        began = agent._last_sync
        deadline = time.monotonic() + 30
        while agent._last_sync == began:  # a sync under way published before: wait for the next one
            assert time.monotonic() < deadline, "the agent did not sync"
            time.sleep(0.05)
    ctx = app_context(stack.server.config.app)
    with ctx.db.write() as session:
        ids = select(Tre.id).where(Tre.name.in_(tres))
        assert session.execute(
            delete(PublishedPolicy).where(PublishedPolicy.tre_id.in_(ids))
        ).rowcount == len(tres)
    ctx.targets.clear()


TRE_IDP = "https://idp.tre.example"


@contextlib.contextmanager
def served_tre_api(
    db: Database, idp_dir: Path, tre: str = "uk-tre"
) -> Iterator[tuple[str, Callable[..., str]]]:
    """A TRE's own API (admin and review) over HTTP on `db`, trusting an embedded issuer, as the CLI and
    the pages reach it: yields its URL and `token(name, role, subject)` for people of that issuer."""
    from fivesafes_tes import devstack
    from fivesafes_tes.agent.admin_api import create_admin_app
    from fivesafes_tes.auth import DevIssuer, StaticJwks, TokenValidator

    issuer = DevIssuer(idp_dir, TRE_IDP)
    validator = TokenValidator(TRE_IDP, "fivesafes-tre", StaticJwks(issuer.jwks()), ["RS256"])
    port = devstack.free_port()
    server, thread = devstack.serve(create_admin_app(db, tre, validator), "127.0.0.1", port)

    def token(name: str, role: str, subject: str) -> str:
        return issuer.issue(name, [role], audience="fivesafes-tre", tre=tre, extra={"sub": subject})

    try:
        yield f"http://127.0.0.1:{port}", token
    finally:
        server.should_exit = True
        thread.join(timeout=10)
