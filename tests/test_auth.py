"""Identity: token validation (RELIABILITY item 1 at the validator level), JWKS fetching,
the embedded issuer, and user provisioning on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import stat
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm
from sqlalchemy import event, func, select

from fivesafes_tes.auth import (
    AuthError,
    Claims,
    DevIssuer,
    JwksUnavailable,
    Principal,
    RemoteJwks,
    Role,
    StaticJwks,
    TokenValidator,
    User,
    UserCache,
    authenticate,
    discover_jwks_url,
    provision,
)
from fivesafes_tes.auth.issuer import _thumbprint
from fivesafes_tes.db import Database, utcnow

ISSUER = "https://gateway.test/dev-issuer"
AUDIENCE = "fivesafes-tes"


@pytest.fixture
def issuer(tmp_path: Path) -> DevIssuer:
    return DevIssuer(tmp_path / "dev-issuer", ISSUER)


@pytest.fixture
def validator(issuer: DevIssuer) -> TokenValidator:
    return TokenValidator(ISSUER, AUDIENCE, StaticJwks(issuer.jwks()), ["RS256"])


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(obj: dict[str, Any]) -> str:
    return _b64(json.dumps(obj, separators=(",", ":")).encode())


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "sub": "alice",
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 600,
        "roles": ["researcher"],
    }
    claims.update(overrides)
    return claims


def _private_key(issuer: DevIssuer) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key((issuer.directory / "signing-key.pem").read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def _public_pem(issuer: DevIssuer) -> bytes:
    public = _private_key(issuer).public_key()
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


# --- Validation -----------------------------------------------------------------------------------


def test_valid_token_gives_claims(issuer: DevIssuer, validator: TokenValidator) -> None:
    token = issuer.issue(
        "alice", ["researcher", "output-checker"], audience=AUDIENCE, tre="tre-a", email="a@example.org"
    )
    claims = validator.validate(token)
    assert claims.issuer == ISSUER
    assert claims.subject == "alice"
    assert claims.username == "alice"
    assert claims.email == "a@example.org"
    assert claims.roles == frozenset({Role.RESEARCHER, Role.OUTPUT_CHECKER})
    assert claims.tre == "tre-a"
    assert claims.raw["aud"] == AUDIENCE


def test_username_falls_back_to_subject(issuer: DevIssuer, validator: TokenValidator) -> None:
    token = issuer.sign(_claims(sub="0b7c-uuid"))
    assert validator.validate(token).username == "0b7c-uuid"


def test_audience_list_containing_ours_is_accepted(issuer: DevIssuer, validator: TokenValidator) -> None:
    assert validator.validate(issuer.sign(_claims(aud=["account", AUDIENCE]))).subject == "alice"


def test_roles_from_nested_claim(issuer: DevIssuer) -> None:
    keycloak = TokenValidator(
        ISSUER, AUDIENCE, StaticJwks(issuer.jwks()), ["RS256"], roles_claim="realm_access.roles"
    )
    token = issuer.issue(
        "bob", [], audience=AUDIENCE, extra={"realm_access": {"roles": ["tre-admin", "offline_access"]}}
    )
    assert keycloak.validate(token).roles == {"tre-admin", "offline_access"}
    assert keycloak.validate(issuer.issue("bob", ["tre-admin"], audience=AUDIENCE)).roles == frozenset()


def test_roles_from_space_separated_string(issuer: DevIssuer) -> None:
    scoped = TokenValidator(ISSUER, AUDIENCE, StaticJwks(issuer.jwks()), ["RS256"], roles_claim="scope")
    token = issuer.issue("bob", [], audience=AUDIENCE, extra={"scope": "researcher  tre-agent"})
    assert scoped.validate(token).roles == {"researcher", "tre-agent"}


def test_token_without_kid_is_accepted_when_the_key_is_unambiguous(
    issuer: DevIssuer, validator: TokenValidator
) -> None:
    token = jwt.encode(_claims(), _private_key(issuer), algorithm="RS256")
    assert validator.validate(token).subject == "alice"


def _hs256_with_public_key(issuer: DevIssuer) -> str:
    # The classic key-confusion attack; PyJWT refuses to produce it, so build it by hand.
    signing_input = f"{_segment({'alg': 'HS256', 'typ': 'JWT', 'kid': issuer.kid})}.{_segment(_claims())}"
    signature = hmac.new(_public_pem(issuer), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def _alg_none(issuer: DevIssuer, alg: str = "none") -> str:
    return f"{_segment({'alg': alg, 'typ': 'JWT', 'kid': issuer.kid})}.{_segment(_claims())}."


def _other_key_same_kid(issuer: DevIssuer) -> str:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(_claims(), other, algorithm="RS256", headers={"kid": issuer.kid})


def _tampered_payload(issuer: DevIssuer) -> str:
    header, _, signature = issuer.issue("alice", ["researcher"], audience=AUDIENCE).split(".")
    return f"{header}.{_segment(_claims(roles=['federation-admin']))}.{signature}"


def _cut(token: str, segment: int, keep: int) -> str:
    """``token`` ending ``keep`` characters into its ``segment``-th segment."""
    start = sum(len(part) + 1 for part in token.split(".")[:segment])
    return token[: start + keep]


def _without(claim: str) -> Callable[[DevIssuer], str]:
    def make(issuer: DevIssuer) -> str:
        claims = _claims()
        del claims[claim]
        return issuer.sign(claims)

    return make


REFUSED: dict[str, tuple[Callable[[DevIssuer], str], str | None]] = {
    "empty": (lambda i: "", "no token"),
    "garbage": (lambda i: "not a token at all", "malformed token"),
    "three garbage segments": (lambda i: "aaa.bbb.ccc", "malformed token"),
    "truncated in payload": (
        lambda i: _cut(i.issue("alice", [], audience=AUDIENCE), 0, 30),
        "malformed token",
    ),
    # Depending on the bytes cut, base64 decoding or the signature check fails first.
    "truncated signature": (lambda i: _cut(i.issue("alice", [], audience=AUDIENCE), 2, 100), None),
    "header only": (lambda i: i.issue("alice", [], audience=AUDIENCE).split(".")[0], "malformed token"),
    "huge": (lambda i: "a" * 20_000, "token too large"),
    "signed by another key": (_other_key_same_kid, "bad signature"),
    "tampered payload": (_tampered_payload, "bad signature"),
    "expired": (lambda i: i.issue("alice", [], audience=AUDIENCE, ttl_s=-120), "token expired"),
    "nbf in future": (
        lambda i: i.issue("alice", [], audience=AUDIENCE, extra={"nbf": int(time.time()) + 600}),
        "token not yet valid",
    ),
    "iat in future": (
        lambda i: i.issue("alice", [], audience=AUDIENCE, extra={"iat": int(time.time()) + 600}),
        "token not yet valid",
    ),
    "wrong issuer": (
        lambda i: i.issue("alice", [], audience=AUDIENCE, extra={"iss": "https://evil.test"}),
        "wrong issuer",
    ),
    "wrong audience": (lambda i: i.issue("alice", [], audience="another-service"), "wrong audience"),
    "missing sub": (_without("sub"), "missing claim sub"),
    "missing exp": (_without("exp"), "missing claim exp"),
    "missing iat": (_without("iat"), "missing claim iat"),
    "missing iss": (_without("iss"), "missing claim iss"),
    "missing aud": (_without("aud"), "missing claim aud"),
    "empty sub": (lambda i: i.sign(_claims(sub="")), "invalid claim sub"),
    "roles not a list": (lambda i: i.sign(_claims(roles={"admin": True})), "invalid roles claim"),
    "alg none": (_alg_none, "algorithm not allowed"),
    "alg None": (lambda i: _alg_none(i, "None"), "algorithm not allowed"),
    "HS256 with public key": (_hs256_with_public_key, "algorithm not allowed"),
    "RS512 outside allow-list": (
        lambda i: jwt.encode(_claims(), _private_key(i), algorithm="RS512", headers={"kid": i.kid}),
        "algorithm not allowed",
    ),
    "unknown kid": (
        lambda i: jwt.encode(_claims(), _private_key(i), algorithm="RS256", headers={"kid": "no-such-key"}),
        "unknown signing key",
    ),
}


@pytest.mark.parametrize("case", REFUSED)
def test_refused(case: str, issuer: DevIssuer, validator: TokenValidator) -> None:
    make, reason = REFUSED[case]
    token = make(issuer)
    with pytest.raises(AuthError) as caught:
        validator.validate(token)
    assert reason is None or caught.value.reason == reason
    if len(token) > 20:
        assert token not in str(caught.value)
        assert token[-20:] not in repr(caught.value)


def test_hs256_refused_even_if_allowed_by_mistake(issuer: DevIssuer) -> None:
    with pytest.raises(ValueError, match="HS256"):
        TokenValidator(ISSUER, AUDIENCE, StaticJwks(issuer.jwks()), ["RS256", "HS256"])
    with pytest.raises(ValueError, match="none"):
        TokenValidator(ISSUER, AUDIENCE, StaticJwks(issuer.jwks()), ["none"])
    with pytest.raises(ValueError, match="cannot be used with a public JWKS"):
        TokenValidator(ISSUER, AUDIENCE, StaticJwks(issuer.jwks()), [])


def test_key_is_bound_to_its_declared_algorithm(issuer: DevIssuer) -> None:
    both = TokenValidator(ISSUER, AUDIENCE, StaticJwks(issuer.jwks()), ["RS256", "PS256"])
    token = jwt.encode(_claims(), _private_key(issuer), algorithm="PS256", headers={"kid": issuer.kid})
    with pytest.raises(AuthError, match="unknown signing key"):
        both.validate(token)

    undeclared = {"keys": [{k: v for k, v in issuer.jwks()["keys"][0].items() if k != "alg"}]}
    assert (
        TokenValidator(ISSUER, AUDIENCE, StaticJwks(undeclared), ["PS256"]).validate(token).subject == "alice"
    )


def test_ec_key_verifies_es256_only(issuer: DevIssuer) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    jwk = {**ECAlgorithm.to_jwk(private.public_key(), as_dict=True), "kid": "ec-1"}
    jwks = {"keys": [jwk, *issuer.jwks()["keys"]]}
    validator = TokenValidator(ISSUER, AUDIENCE, StaticJwks(jwks), ["RS256", "ES256"])
    assert (
        validator.validate(jwt.encode(_claims(), private, "ES256", headers={"kid": "ec-1"})).subject
        == "alice"
    )
    rsa_token_claiming_ec_kid = jwt.encode(_claims(), _private_key(issuer), "RS256", headers={"kid": "ec-1"})
    with pytest.raises(AuthError, match="unknown signing key"):
        validator.validate(rsa_token_claiming_ec_kid)


def test_jwks_skips_encryption_and_unusable_keys(issuer: DevIssuer) -> None:
    jwks = {
        "keys": [
            {"kty": "RSA", "use": "enc", "alg": "RSA-OAEP", "kid": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
            *issuer.jwks()["keys"],
        ]
    }
    validator = TokenValidator(ISSUER, AUDIENCE, StaticJwks(jwks), ["RS256"])
    assert validator.validate(issuer.issue("alice", [], audience=AUDIENCE)).subject == "alice"


# --- Remote JWKS ----------------------------------------------------------------------------------


class FakeIdp:
    """A real HTTP server on loopback serving whatever documents the test puts in ``routes``."""

    def __init__(self) -> None:
        self.routes: dict[str, Any] = {}
        self.hits: dict[str, int] = {}
        self.failing = False
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                idp.hits[self.path] = idp.hits.get(self.path, 0) + 1
                document = idp.routes.get(self.path)
                if idp.failing or document is None:
                    self.send_error(500 if idp.failing else 404)
                    return
                body = json.dumps(document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.issuer_url = self.base + "/dev-issuer"

    def serve(self, issuer: DevIssuer) -> None:
        self.routes["/dev-issuer/.well-known/openid-configuration"] = issuer.openid_configuration()
        self.routes["/dev-issuer/jwks.json"] = issuer.jwks()

    @property
    def jwks_hits(self) -> int:
        return self.hits.get("/dev-issuer/jwks.json", 0)


@pytest.fixture
def idp() -> Iterator[FakeIdp]:
    idp = FakeIdp()
    thread = threading.Thread(target=idp.server.serve_forever, daemon=True)
    thread.start()
    yield idp
    idp.server.shutdown()
    idp.server.server_close()
    thread.join()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _random_kid_token(issuer: DevIssuer, n: int) -> str:
    return jwt.encode(_claims(), _private_key(issuer), "RS256", headers={"kid": f"random-{n}"})


def test_discovery(idp: FakeIdp, tmp_path: Path) -> None:
    idp.serve(DevIssuer(tmp_path / "a", idp.issuer_url))
    assert discover_jwks_url(idp.issuer_url) == idp.issuer_url + "/jwks.json"


def test_discovery_refuses_a_document_for_another_issuer(idp: FakeIdp, tmp_path: Path) -> None:
    idp.serve(DevIssuer(tmp_path / "a", "https://someone-else.test"))
    with pytest.raises(JwksUnavailable, match="does not describe"):
        discover_jwks_url(idp.issuer_url)
    with pytest.raises(JwksUnavailable):
        discover_jwks_url(idp.base + "/nowhere")


def test_remote_jwks_rotation_cache_and_rate_limit(idp: FakeIdp, tmp_path: Path) -> None:
    old = DevIssuer(tmp_path / "old", idp.issuer_url)
    new = DevIssuer(tmp_path / "new", idp.issuer_url)
    idp.serve(old)
    clock = Clock()
    jwks = RemoteJwks(discover_jwks_url(idp.issuer_url), ttl_s=300, min_refresh_interval_s=10, clock=clock)
    validator = TokenValidator(idp.issuer_url, AUDIENCE, jwks, ["RS256"])

    assert validator.validate(old.issue("alice", [], audience=AUDIENCE)).subject == "alice"
    validator.validate(old.issue("alice", [], audience=AUDIENCE))
    assert idp.jwks_hits == 1, "cached"

    idp.serve(new)  # the IdP rotates its key
    clock.now += 11
    assert validator.validate(new.issue("bob", [], audience=AUDIENCE)).subject == "bob"
    assert idp.jwks_hits == 2, "unknown kid triggers one re-fetch"

    for n in range(20):
        with pytest.raises(AuthError, match="unknown signing key"):
            validator.validate(_random_kid_token(new, n))
    assert idp.jwks_hits == 2, "random kids right after a fetch fetch nothing"

    clock.now += 11
    for n in range(20):
        with pytest.raises(AuthError, match="unknown signing key"):
            validator.validate(_random_kid_token(new, n))
    assert idp.jwks_hits == 3, "at most one fetch per interval"

    clock.now += 301
    validator.validate(new.issue("bob", [], audience=AUDIENCE))
    assert idp.jwks_hits == 4, "expired cache is refreshed"


def test_remote_jwks_concurrent_unknown_kids_fetch_once(idp: FakeIdp, tmp_path: Path) -> None:
    issuer = DevIssuer(tmp_path / "a", idp.issuer_url)
    idp.serve(issuer)
    clock = Clock()
    validator = TokenValidator(
        idp.issuer_url, AUDIENCE, RemoteJwks(idp.issuer_url + "/jwks.json", clock=clock), ["RS256"]
    )
    validator.validate(issuer.issue("alice", [], audience=AUDIENCE))
    clock.now += 11
    tokens = [_random_kid_token(issuer, n) for n in range(16)]
    barrier = threading.Barrier(len(tokens))
    reasons: list[str] = []

    def attempt(token: str) -> None:
        barrier.wait()
        try:
            validator.validate(token)
        except AuthError as exc:
            reasons.append(exc.reason)

    threads = [threading.Thread(target=attempt, args=(token,)) for token in tokens]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert reasons == ["unknown signing key"] * len(tokens)
    assert idp.jwks_hits == 2


def test_remote_jwks_outage(idp: FakeIdp, tmp_path: Path) -> None:
    issuer = DevIssuer(tmp_path / "a", idp.issuer_url)
    idp.serve(issuer)
    idp.failing = True
    clock = Clock()
    jwks = RemoteJwks(idp.issuer_url + "/jwks.json", clock=clock)
    validator = TokenValidator(idp.issuer_url, AUDIENCE, jwks, ["RS256"])
    token = issuer.issue("alice", [], audience=AUDIENCE)
    with pytest.raises(JwksUnavailable):
        validator.validate(token)
    with pytest.raises(JwksUnavailable):
        validator.validate(token)
    assert idp.jwks_hits == 1, "a down IdP is not retried on every request"

    idp.failing = False
    clock.now += 11
    validator.validate(token)
    idp.failing = True
    clock.now += 400
    assert validator.validate(token).subject == "alice", "the last good keys outlive a failed refresh"


# --- Embedded issuer ------------------------------------------------------------------------------


def test_dev_issuer_key_persists_and_is_private(tmp_path: Path) -> None:
    directory = tmp_path / "dev-issuer"
    first = DevIssuer(directory, ISSUER + "/")
    second = DevIssuer(directory, ISSUER)
    assert first.kid == second.kid
    assert first.issuer_url == ISSUER
    assert stat.S_IMODE((directory / "signing-key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    validator = TokenValidator(ISSUER, AUDIENCE, StaticJwks(second.jwks()), ["RS256"])
    assert validator.validate(first.issue("alice", ["researcher"], audience=AUDIENCE)).roles == {"researcher"}


def test_dev_issuer_tightens_loose_key_permissions(tmp_path: Path) -> None:
    directory = tmp_path / "dev-issuer"
    DevIssuer(directory, ISSUER)
    (directory / "signing-key.pem").chmod(0o644)
    DevIssuer(directory, ISSUER)
    assert stat.S_IMODE((directory / "signing-key.pem").stat().st_mode) == 0o600


def test_dev_issuers_starting_together_agree_on_one_key(tmp_path: Path) -> None:
    directory = tmp_path / "dev-issuer"
    barrier = threading.Barrier(8)
    kids: list[str] = []

    def start() -> None:
        barrier.wait()
        kids.append(DevIssuer(directory, ISSUER).kid)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(kids) == 8
    assert len(set(kids)) == 1
    assert [p.name for p in directory.iterdir()] == ["signing-key.pem"]


def test_kid_is_the_rfc7638_thumbprint() -> None:
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3"
        "oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdA"
        "ZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-k"
        "EgU8awapJzKnqDKgw"
    )
    assert _thumbprint({"kty": "RSA", "n": n, "e": "AQAB"}) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_dev_issuer_documents(issuer: DevIssuer) -> None:
    config = issuer.openid_configuration()
    assert config["issuer"] == ISSUER
    assert config["jwks_uri"] == ISSUER + "/jwks.json"
    assert config["id_token_signing_alg_values_supported"] == ["RS256"]
    (key,) = issuer.jwks()["keys"]
    assert key["kid"] == issuer.kid
    assert key["alg"] == "RS256"
    assert key["use"] == "sig"
    assert not {"d", "p", "q", "dp", "dq", "qi"} & key.keys(), "no private material published"


def test_issued_token_claims(issuer: DevIssuer) -> None:
    token = issuer.issue("carol", ["tre-agent"], audience=AUDIENCE, ttl_s=60, tre="tre-b")
    assert jwt.get_unverified_header(token) == {"alg": "RS256", "kid": issuer.kid, "typ": "JWT"}
    payload = jwt.decode(token, options={"verify_signature": False})
    assert payload["iss"] == ISSUER
    assert payload["sub"] == "carol"
    assert payload["preferred_username"] == "carol"
    assert payload["exp"] - payload["iat"] == 60
    assert payload["nbf"] == payload["iat"]
    assert payload["roles"] == ["tre-agent"]
    assert payload["tre"] == "tre-b"
    assert payload["jti"]
    assert "email" not in payload


# --- Principal ------------------------------------------------------------------------------------


def test_principal_has_role() -> None:
    principal = Principal(1, ISSUER, "alice", "alice", frozenset({"researcher"}), None)
    assert principal.has_role(Role.RESEARCHER)
    assert principal.has_role(Role.TRE_ADMIN, "researcher")
    assert not principal.has_role(Role.OUTPUT_CHECKER)
    assert not principal.has_role()


# --- Provisioning ---------------------------------------------------------------------------------


def _claims_for(username: str = "alice", roles: tuple[str, ...] = ("researcher",), **kw: Any) -> Claims:
    return Claims(
        issuer=ISSUER,
        subject=f"sub-{username}",
        username=kw.pop("display", username),
        email=kw.pop("email", None),
        roles=frozenset(roles),
        tre=kw.pop("tre", None),
        raw={},
    )


def _user_count(database: Database) -> int:
    with database.read() as session:
        return session.scalar(select(func.count()).select_from(User)) or 0


def test_provision_creates_then_reuses(database: Database) -> None:
    with database.write() as session:
        created = provision(session, _claims_for())
        user_id = created.id
    with database.write() as session:
        again = provision(session, _claims_for())
        assert again.id == user_id
    assert _user_count(database) == 1
    with database.read() as session:
        user = session.get(User, user_id)
        assert user is not None
        assert (user.issuer, user.subject, user.username, user.roles) == (
            ISSUER,
            "sub-alice",
            "alice",
            ["researcher"],
        )


def test_provision_follows_changed_claims(database: Database) -> None:
    with database.write() as session:
        user_id = provision(session, _claims_for()).id
    changed = _claims_for(
        roles=("output-checker", "researcher"), display="Alice A", email="alice@example.org"
    )
    with database.write() as session:
        assert provision(session, changed).id == user_id
    with database.read() as session:
        user = session.get(User, user_id)
        assert user is not None
        assert user.roles == ["output-checker", "researcher"]
        assert (user.username, user.email) == ("Alice A", "alice@example.org")


def test_provision_touches_last_seen_at_most_once_a_minute(database: Database) -> None:
    start = utcnow()
    with database.write() as session:
        provision(session, _claims_for(), now=start)
    with database.write() as session:
        user = provision(session, _claims_for(), now=start + timedelta(seconds=30))
        assert not session.is_modified(user), "nothing to write within the minute"
    with database.write() as session:
        user = provision(session, _claims_for(), now=start + timedelta(seconds=61))
        assert session.is_modified(user)
    with database.read() as session:
        seen = session.scalars(select(User.last_seen_at)).one()
        assert abs(
            seen.replace(tzinfo=None) - (start + timedelta(seconds=61)).replace(tzinfo=None)
        ) < timedelta(seconds=1)


def test_concurrent_first_use_creates_one_user(database: Database) -> None:
    barrier = threading.Barrier(10)
    ids: list[int] = []
    errors: list[BaseException] = []

    def first_request() -> None:
        barrier.wait()
        try:
            with database.write() as session:
                ids.append(provision(session, _claims_for("dora")).id)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=first_request) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(ids) == 10
    assert len(set(ids)) == 1
    assert _user_count(database) == 1


def test_authenticate_uses_cache_on_the_hot_path(
    database: Database, issuer: DevIssuer, validator: TokenValidator
) -> None:
    statements: list[str] = []
    event.listen(database.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    cache = UserCache()
    token = issuer.issue("erin", ["tre-agent"], audience=AUDIENCE, tre="tre-a")

    principal = authenticate(database, validator, token, cache)
    assert principal == Principal(
        principal.user_id, ISSUER, "erin", "erin", frozenset({"tre-agent"}), "tre-a"
    )
    first_round = len(statements)
    assert first_round > 0

    assert authenticate(database, validator, token, cache) == principal
    assert len(statements) == first_round, "a cached user costs no query"

    promoted = issuer.issue("erin", ["tre-agent", "tre-admin"], audience=AUDIENCE, tre="tre-a")
    assert authenticate(database, validator, promoted, cache).user_id == principal.user_id
    with database.read() as session:
        user = session.get(User, principal.user_id)
        assert user is not None
        assert user.roles == ["tre-admin", "tre-agent"]

    with pytest.raises(AuthError):
        authenticate(database, validator, token[:-5], cache)


def test_user_cache_expires_and_evicts() -> None:
    clock = Clock()
    cache = UserCache(maxsize=2, ttl_s=60, clock=clock)
    alice, bob, carol = _claims_for("alice"), _claims_for("bob"), _claims_for("carol")
    cache.put(alice, 1)
    cache.put(bob, 2)
    assert cache.get(alice) == 1
    cache.put(carol, 3)  # evicts bob, the least recently used
    assert cache.get(bob) is None
    assert cache.get(alice) == 1
    assert cache.get(carol) == 3
    assert cache.get(_claims_for("alice", roles=("tre-admin",))) is None, "role change misses"
    clock.now += 61
    assert cache.get(alice) is None
    assert len(cache) == 1
