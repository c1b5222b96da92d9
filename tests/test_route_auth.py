"""RELIABILITY 1: every route refuses a caller without a valid token (401) and a caller of the wrong
role or TRE (403); the routes anyone may call are exactly the PUBLIC lists below.

The matrix is generated from the route tables of the gateway and of the TRE's own API (the agent's
admin and review app), so a new route joins it by being added. Who may call a route is looked up by
its path prefix in ROLES: a route under no known prefix, with a path parameter or a body this file
has no example of, fails here with a message that names what to add.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from httpx import Response

from fivesafes_tes.agent.admin_api import create_admin_app
from fivesafes_tes.auth import DevIssuer, StaticJwks, TokenValidator
from fivesafes_tes.db import Database
from fivesafes_tes.gateway.app import create_app
from fivesafes_tes.settings import GatewaySettings
from fivesafes_tes.submission.tables import Child
from tests.conftest import Gateway, results_store_settings

SIGNED_IN = "anyone signed in"  # what they may see is scoped by project in the domain, not by role
TASK = {"executors": [{"image": "alpine", "command": ["true"]}], "tags": {"tres": "uk-tre"}}


@dataclass(frozen=True)
class Operation:
    """One method on one route of an app's route table."""

    method: str
    path: str  # the template, e.g. /agent/v1/children/{child_id}/events
    body: str | None  # the name of the model its JSON body is parsed into, if it takes one
    query: tuple[str, ...]  # its required query parameters

    def __str__(self) -> str:
        return f"{self.method} {self.path}"

    def url(self, values: dict[str, str]) -> str:
        def fill(match: re.Match[str]) -> str:
            name = match.group(1)
            assert name in values, f"{self}: no value for path parameter {name!r}; add one to PATH_VALUES"
            return values[name]

        return re.sub(r"\{(\w+)(?::\w+)?\}", fill, self.path)

    def params(self) -> dict[str, str]:
        for name in self.query:
            assert name in QUERY_VALUES, (
                f"{self}: no value for query parameter {name!r}; add it to QUERY_VALUES"
            )
        return {name: QUERY_VALUES[name] for name in self.query}


def operations(app: FastAPI) -> list[Operation]:
    """Every (method, path) the app serves, from its route table (HEAD goes with GET)."""
    found = []
    for route in iter_route_contexts(app.routes):
        body = getattr(route, "body_field", None)
        model = body.field_info.annotation.__name__ if body is not None else None
        query = tuple(_required_query(getattr(route, "dependant", None)))
        found += [Operation(m, route.path, model, query) for m in sorted(route.methods or ()) if m != "HEAD"]
    return found


def _required_query(dependant: Any) -> Iterator[str]:
    if dependant is None:
        return
    yield from (field.alias for field in dependant.query_params if field.field_info.is_required())
    for sub in dependant.dependencies:
        yield from _required_query(sub)


def role_of(operation: Operation, roles: dict[str, str]) -> str:
    prefix = next((p for p in roles if operation.path.startswith(p)), None)
    assert prefix is not None, f"{operation}: who may call it? add its path prefix to ROLES"
    return roles[prefix]


# --- the gateway --------------------------------------------------------------------------------

GATEWAY_ROLES = {
    "/ga4gh/tes/v1/": SIGNED_IN,
    "/v1/": SIGNED_IN,
    "/api/v1/": SIGNED_IN,
    "/metrics": SIGNED_IN,
    "/admin/v1/": "federation-admin",
    "/agent/v1/": "tre-agent",
}
GATEWAY_PUBLIC = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/ga4gh/tes/v1/service-info"),
    ("GET", "/ga4gh/tes/v1/tasks/service-info"),
    ("GET", "/v1/service-info"),
    ("GET", "/v1/tasks/service-info"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/dev-issuer/.well-known/openid-configuration"),  # served only with the dev issuer on
    ("GET", "/dev-issuer/jwks.json"),
}
# The development issuer's sign-in, public by nature (it is where people get a token), and how it
# answers a call without its parameters: a request it cannot use, or a body that is not a form.
GATEWAY_SIGN_IN = {
    ("GET", "/dev-issuer/authorize"): 400,
    ("POST", "/dev-issuer/authorize"): 415,
    ("POST", "/dev-issuer/token"): 400,
}
# Valid bodies, so that a refusal is about the caller, never about the body (a task is parsed before
# its token is checked), and the right caller gets past validation.
EXAMPLE_BODIES: dict[str, Any] = {
    "TaskRequest": TASK,
    "LeaseRequest": {"wait_s": 0},
    "HeartbeatRequest": {"children": []},
    "EventRequest": {"attempt": 1, "seq": 1, "stage": "staging"},
    "Admission": None,  # the TRE's published policy: filled in from the devstack's below
    "DecisionsRequest": {"decisions": []},
    "ApprovalsIn": {"files": [{"name": "/out/a.csv", "kind": "output", "sha256": "0" * 64, "size": 1}]},
    "TreIn": {"name": "fr-tre"},
    "ProjectIn": {"name": "gamma"},
    "ProjectPatch": {"title": "x"},
    "TresIn": {"tres": ["uk-tre"]},
    "MemberIn": {"username": "dave"},
    "DecisionIn": {"decision": "approved"},
    "FileDecisionIn": {"name": "/out/a.csv", "decision": "approved"},
}


QUERY_VALUES = {"name": "/out/a.csv", "kind": "output", "sha256": "0" * 64, "size": "1"}


def _gateway_operations() -> list[Operation]:
    with tempfile.TemporaryDirectory() as folder:
        db = Database("sqlite://")
        app = create_app(GatewaySettings(data_dir=folder, database_url="sqlite://", dev_issuer=True), db=db)
        db.dispose()
    return operations(app)


def _admission(tre: str) -> dict[str, Any]:
    from fivesafes_tes.agent import staging
    from fivesafes_tes.agent.policy import TrePolicy

    return staging.admission(TrePolicy(), tre).model_dump(mode="json")


@dataclass
class Federation:
    """A gateway with one task leased to uk-tre: the values its routes' path parameters take."""

    gateway: Gateway
    task_id: str
    child_id: str

    def headers(self, user: str, *roles: str, **claims: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.gateway.token(user, *roles, **claims)}"}

    def call(self, operation: Operation, headers: dict[str, str]) -> Response:
        values = {
            "id": self.task_id,
            "task_id": self.task_id,
            "child_id": self.child_id,
            "file_id": "1",
            "name": "alpha",
            "username": "carol",
        }
        return self.gateway.client.request(
            operation.method,
            operation.url(values),
            json=body_of(operation, "uk-tre"),
            params=operation.params(),
            headers=headers,
        )

    def child(self) -> tuple[str, int, str | None]:
        with self.gateway.db.read() as session:
            child = session.get(Child, self.child_id)
            return child.stage, child.attempt, str(child.lease_expires_at)


def body_of(operation: Operation, tre: str) -> Any:
    if operation.body is None:
        return None
    assert operation.body in EXAMPLE_BODIES, (
        f"{operation} takes a {operation.body} body: add a valid example of it to EXAMPLE_BODIES"
    )
    return EXAMPLE_BODIES[operation.body] or _admission(tre)


@pytest.fixture
def federation(database_url: str, tmp_path: Path, s3_endpoint: Any) -> Iterator[Federation]:
    """With a results store, so that the upload route gets as far as asking who is calling."""
    bucket = s3_endpoint.store().bucket
    gateway = Gateway(database_url, tmp_path / "data", **results_store_settings(s3_endpoint, bucket))
    headers = {"Authorization": f"Bearer {gateway.token('agent', 'tre-agent', tre='uk-tre')}"}
    task_id = gateway.client.post(f"{Gateway.TES}/tasks", json=TASK, headers=gateway.headers()).json()["id"]
    leased = gateway.client.post("/agent/v1/leases", json={"wait_s": 0}, headers=headers).json()["leases"]
    yield Federation(gateway, task_id, leased[0]["child_id"])
    gateway.close()


def gateway_wrong_callers(fed: Federation, role: str) -> dict[str, dict[str, str]]:
    """Callers with a valid token who must be refused (403) on a route for `role`."""
    if role == "federation-admin":
        return {
            role_: fed.headers("eve", role_, tre="uk-tre")
            for role_ in ("researcher", "tre-admin", "output-checker", "tre-agent")
        }
    if role == "tre-agent":
        return {
            "researcher": fed.headers("alice"),
            "federation admin": fed.headers("fed", "federation-admin"),
            "agent naming no TRE": fed.headers("agent", "tre-agent"),
            "agent of an unknown TRE": fed.headers("agent", "tre-agent", tre="mars-tre"),
        }
    assert role == SIGNED_IN, role
    return {}


GATEWAY_OPERATIONS = [
    op for op in _gateway_operations() if (op.method, op.path) not in GATEWAY_PUBLIC | GATEWAY_SIGN_IN.keys()
]


@pytest.mark.parametrize("operation", GATEWAY_OPERATIONS, ids=str)
def test_every_gateway_route_refuses_a_bad_token_and_the_wrong_caller(
    federation: Federation, impostors: dict[str, DevIssuer], operation: Operation
) -> None:
    gw = federation.gateway
    role = role_of(operation, GATEWAY_ROLES)
    right = {
        SIGNED_IN: ("alice", "researcher", None),
        "federation-admin": ("fed", "federation-admin", None),
        "tre-agent": ("agent", "tre-agent", "uk-tre"),
    }[role]
    good = gw.token(right[0], right[1], tre=right[2])
    before = federation.child()
    for name, token in bad_tokens(gw.issuer, gw.settings.oidc_audience, good, impostors).items():
        response = federation.call(operation, {} if token is None else {"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, (name, response.text)
        assert response.headers["www-authenticate"].startswith("Bearer"), name
    for name, headers in gateway_wrong_callers(federation, role).items():
        response = federation.call(operation, headers)
        assert response.status_code == 403, (name, response.text)
    if "{child_id}" in operation.path:  # an agent of another TRE learns and changes nothing of this child
        other = federation.call(operation, federation.headers("agent", "tre-agent", tre="sg-tre"))
        assert other.status_code in (403, 404), other.text
    assert federation.child() == before, "a refused caller changed the child"
    # the right caller gets past authentication (so the refusals above are about the caller)
    response = federation.call(operation, {"Authorization": f"Bearer {good}"})
    assert response.status_code not in (401, 403), response.text


def test_the_gateway_routes_anyone_may_call_are_exactly_the_public_ones(federation: Federation) -> None:
    served = _gateway_operations()
    assert {(op.method, op.path) for op in served} >= GATEWAY_PUBLIC, "a PUBLIC route is no longer served"
    answers = {(op.method, op.path): federation.call(op, {}).status_code for op in served}
    assert {op for op, status in answers.items() if status != 401} == GATEWAY_PUBLIC | GATEWAY_SIGN_IN.keys()
    assert {op: answers[op] for op in GATEWAY_PUBLIC} == dict.fromkeys(GATEWAY_PUBLIC, 200)
    assert {op: answers[op] for op in GATEWAY_SIGN_IN} == GATEWAY_SIGN_IN


# --- the TRE's own API (admin and review, served by the agent inside the TRE) ------------------------

TRE_ROLES = {"/tre/v1/": "tre-admin", "/review/v1/": "output-checker"}
TRE_PUBLIC = {("GET", "/openapi.json")}  # the schema only: the app serves no docs pages
TRE_IDP = "https://idp.tre.example"
TRE_AUDIENCE = "fivesafes-tre"


def _tre_app(db: Database, issuer_jwks: dict[str, Any]) -> FastAPI:
    validator = TokenValidator(TRE_IDP, TRE_AUDIENCE, StaticJwks(issuer_jwks), ["RS256"])
    return create_admin_app(db, "uk-tre", validator)


def _tre_operations() -> list[Operation]:
    db = Database("sqlite://")
    try:
        return operations(_tre_app(db, {"keys": []}))
    finally:
        db.dispose()


@dataclass
class TreApi:
    client: TestClient
    issuer: DevIssuer

    def token(self, role: str, tre: str | None = "uk-tre") -> str:
        return self.issuer.issue("dora", [role], audience=TRE_AUDIENCE, tre=tre)

    def call(self, operation: Operation, headers: dict[str, str]) -> Response:
        values = {"project": "alpha", "username": "alice", "child_id": "no-such-child"}
        return self.client.request(
            operation.method,
            operation.url(values),
            json=body_of(operation, "uk-tre"),
            params=operation.params(),
            headers=headers,
        )


@pytest.fixture
def tre_api(tmp_path: Path) -> Iterator[TreApi]:
    from fivesafes_tes.agent.loop import open_database
    from fivesafes_tes.agent.tables import LocalProject
    from fivesafes_tes.settings import AgentSettings

    db = open_database(AgentSettings(tre="uk-tre", data_dir=tmp_path / "agent"))
    with db.write() as session:
        session.add(LocalProject(name="alpha", title="Alpha", members=["alice"]))
    issuer = DevIssuer(tmp_path / "idp", TRE_IDP)
    with TestClient(_tre_app(db, issuer.jwks())) as client:
        yield TreApi(client, issuer)
    db.dispose()


TRE_OPERATIONS = [op for op in _tre_operations() if (op.method, op.path) not in TRE_PUBLIC]


@pytest.mark.parametrize("operation", TRE_OPERATIONS, ids=str)
def test_every_tre_api_route_refuses_a_bad_token_and_the_wrong_caller(
    tre_api: TreApi, impostors: dict[str, DevIssuer], operation: Operation
) -> None:
    role = role_of(operation, TRE_ROLES)
    good = tre_api.token(role)
    for name, token in bad_tokens(tre_api.issuer, TRE_AUDIENCE, good, impostors).items():
        response = tre_api.call(operation, {} if token is None else {"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, (name, response.text)
    other_role = next(r for r in TRE_ROLES.values() if r != role)
    wrong = {
        other_role: tre_api.token(other_role),
        "researcher": tre_api.token("researcher"),
        f"{role} of another TRE": tre_api.token(role, tre="sg-tre"),
        f"{role} naming no TRE": tre_api.token(role, tre=None),
    }
    for name, token in wrong.items():
        response = tre_api.call(operation, {"Authorization": f"Bearer {token}"})
        assert response.status_code == 403, (name, response.text)
    response = tre_api.call(operation, {"Authorization": f"Bearer {good}"})
    assert response.status_code not in (401, 403), response.text


def test_the_tre_api_routes_anyone_may_call_are_exactly_the_public_ones(tre_api: TreApi) -> None:
    answers = {(op.method, op.path): tre_api.call(op, {}).status_code for op in _tre_operations()}
    assert {op for op, status in answers.items() if status != 401} == TRE_PUBLIC
    assert {op: answers[op] for op in TRE_PUBLIC} == dict.fromkeys(TRE_PUBLIC, 200)


# --- tokens that must never authenticate anyone ----------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(claims: dict[str, Any]) -> str:
    return f"{_b64(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}.{_b64(json.dumps(claims).encode())}."


def _hs256_with_public_key(issuer: DevIssuer, claims: dict[str, Any]) -> str:
    """The classic key-confusion attack: HMAC-sign with the RSA public key as the shared secret."""
    from cryptography.hazmat.primitives import serialization
    from jwt.algorithms import RSAAlgorithm

    public = RSAAlgorithm.from_jwk(json.dumps(issuer.jwks()["keys"][0]))
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": issuer.kid}).encode())
    body = _b64(json.dumps(claims).encode())
    signature = hmac.new(pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64(signature)}"


@pytest.fixture(scope="module")
def impostors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, DevIssuer]:
    """Issuers no app trusts: keys made once per module (a key pair takes a while)."""
    folder = tmp_path_factory.mktemp("impostors")
    return {
        "wrong key": DevIssuer(folder / "key", "https://placeholder.example"),
        "wrong issuer": DevIssuer(folder / "issuer", "https://evil.example/issuer"),
    }


def bad_tokens(
    issuer: DevIssuer, audience: str, good: str, impostors: dict[str, DevIssuer]
) -> dict[str, str | None]:
    """Tokens that fail validation, each in one way, for a caller whose valid token is `good`."""
    claims = json.loads(base64.urlsafe_b64decode(good.split(".")[1] + "=="))
    user, roles, tre = claims["sub"], claims.get("roles", []), claims.get("tre")
    now = int(time.time())
    forged = {**claims, "iat": now, "exp": now + 600}
    other_key, other_issuer = impostors["wrong key"], impostors["wrong issuer"]
    return {
        "none": None,
        "empty": "",
        "garbage": "not-a-jwt",
        "truncated": good[:-10],
        "expired": issuer.issue(user, roles, audience=audience, tre=tre, ttl_s=-120),
        "wrong issuer": other_issuer.issue(user, roles, audience=audience, tre=tre),
        "wrong audience": issuer.issue(user, roles, audience="someone-else", tre=tre),
        "wrong key": other_key.issue(  # as the app's issuer, with a key it never published
            user, roles, audience=audience, tre=tre, extra={"iss": issuer.issuer_url}
        ),
        "alg none": _unsigned(forged),
        "hs256 with public key": _hs256_with_public_key(issuer, forged),
    }
