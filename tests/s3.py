"""S3 for tests: moto's server on loopback over real HTTP, and a fresh bucket per test.

Fixtures `s3_endpoint` (session), `s3_store` (fresh bucket per test) and `own_s3_endpoint` (a
server to stop and restart); a module that uses them
says `pytest_plugins = ["tests.s3"]` (or the root conftest does, once, for everyone).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer

from fivesafes_tes.egress.store import ObjectStore

# Distinctive, so a leak of it into logs is unmistakable (see the log canary tests).
ACCESS_KEY = "AKIAFIVESAFESTEST"
SECRET_KEY = "canary-s3-secret-" + secrets.token_hex(12)


@dataclass
class S3Endpoint:
    url: str
    access_key: str
    secret_key: str
    region: str
    server: ThreadedMotoServer

    def store(self, bucket: str | None = None, **options: Any) -> ObjectStore:
        """A store on a new, empty bucket (or on `bucket`, created if missing)."""
        store = ObjectStore(
            self.url,
            bucket or f"test-{secrets.token_hex(8)}",
            self.access_key,
            self.secret_key,
            self.region,
            **options,
        )
        store.ensure_bucket()
        return store

    def stop(self) -> None:
        self.server.stop()

    def restart(self) -> None:
        """Serve again on the same port; moto keeps buckets and objects in-process."""
        port = int(self.url.rsplit(":", 1)[1])
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self.server.start()

    def raw_client(self) -> Any:
        """A plain boto3 client, for tests that act behind the system's back."""
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}),
        )


def start_moto() -> S3Endpoint:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return S3Endpoint(f"http://{host}:{port}", ACCESS_KEY, SECRET_KEY, "us-east-1", server)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[S3Endpoint]:
    endpoint = start_moto()
    try:
        yield endpoint
    finally:
        endpoint.server.stop()


@pytest.fixture
def own_s3_endpoint() -> Iterator[S3Endpoint]:
    """A server of the test's own, for tests that stop or restart it."""
    endpoint = start_moto()
    try:
        yield endpoint
    finally:
        endpoint.server.stop()


@pytest.fixture
def s3_store(s3_endpoint: S3Endpoint) -> ObjectStore:
    """An ObjectStore on a fresh bucket of the session's moto server."""
    return s3_endpoint.store()
